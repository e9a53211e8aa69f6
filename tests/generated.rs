//! The man pages under `man/` and the completions under `completions/` are
//! generated from the clap definitions. This test fails when they are stale;
//! `UPDATE_GENERATED=1 cargo test --test generated` rewrites them.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use opencti_stream_exporter::cli::Cli;

const BIN: &str = "opencti-stream-exporter";

fn man_pages(cmd: &clap::Command, parents: &[&str], out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let mut names: Vec<&str> = parents.to_vec();
    names.push(if parents.is_empty() {
        BIN
    } else {
        cmd.get_name()
    });
    let file = names.join("-");
    let leaked: &'static str = Box::leak(file.clone().into_boxed_str());
    let page_cmd = cmd.clone().name(leaked).bin_name(names.join(" "));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page_cmd)
        .render(&mut buf)
        .expect("render man page");
    out.push((PathBuf::from(format!("man/{file}.1")), buf));
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        man_pages(sub, &names, out);
    }
}

fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    man_pages(&cmd, &[], &mut out);
    for (shell, file) in [
        (Shell::Bash, format!("completions/{BIN}.bash")),
        (Shell::Zsh, format!("completions/_{BIN}")),
        (Shell::Fish, format!("completions/{BIN}.fish")),
        (Shell::Elvish, format!("completions/{BIN}.elv")),
        (Shell::PowerShell, format!("completions/_{BIN}.ps1")),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), BIN, &mut buf);
        out.push((PathBuf::from(file), buf));
    }
    out
}

#[test]
fn man_pages_and_completions_are_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var_os("UPDATE_GENERATED").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (rel, content) in generated() {
        let path = root.join(&rel);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &content).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&content[..]) {
            stale.push(rel.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "generated files are stale: {stale:?}; run `UPDATE_GENERATED=1 cargo test --test generated` and commit the result"
    );
}
