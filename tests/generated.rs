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
    render_page(page_cmd, &names[1..].join(" "), &mut buf).expect("render man page");
    out.push((PathBuf::from(format!("man/{file}.1")), buf));
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        man_pages(sub, &names, out);
    }
}

/// A man page: clap_mangen's sections, then ENVIRONMENT, FILES, EXIT STATUS
/// and EXAMPLES from `cli::man_sections` (the exit statuses replace the
/// `--help` text clap_mangen would put under EXTRA).
fn render_page(cmd: clap::Command, page: &str, w: &mut Vec<u8>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    if cmd.get_subcommands().next().is_some() {
        man.render_subcommands_section(w)?;
    }
    for section in opencti_stream_exporter::cli::man_sections(page) {
        w.extend_from_slice(format!(".SH \"{}\"\n", section.title).as_bytes());
        for (term, text) in &section.entries {
            if term.is_empty() {
                w.extend_from_slice(format!(".PP\n{}\n", roff(text)).as_bytes());
            } else {
                w.extend_from_slice(
                    format!(".TP\n\\fB{}\\fR\n{}\n", roff(term), roff(text)).as_bytes(),
                );
            }
        }
    }
    man.render_version_section(w)?;
    Ok(())
}

/// Text as roff: backslashes and hyphens escaped, no line starting with a
/// control character.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    escaped
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// clap_complete names the functions of a binary with hyphens
/// inconsistently: `cmd` gets `opencti__stream__exporter__subcmd__run` while
/// the `case` labels read `opencti__subcmd__stream__subcmd__exporter__...`, so
/// nothing after a subcommand completes. The labels are made to match.
fn fix_bash(script: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8(script).expect("UTF-8 script");
    let right = BIN.replace('-', "__");
    let wrong = BIN.replace('-', "__subcmd__");
    text.replace(&format!("{wrong}__"), &format!("{right}__"))
        .replace(&format!("        {wrong})"), &format!("        {right})"))
        .into_bytes()
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
        if shell == Shell::Bash {
            buf = fix_bash(buf);
        }
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

/// Runs bash's completion function of the generated script for the words
/// typed so far (the last one being completed) and returns COMPREPLY.
fn complete(words: &[&str]) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("completions/{BIN}.bash"));
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let program = format!(
        "source '{}'\n\
         COMP_WORDS=({})\n\
         COMP_CWORD={cword}\n\
         COMP_LINE='{}'\n\
         COMP_POINT=${{#COMP_LINE}}\n\
         _opencti__stream__exporter {BIN} '{}' '{prev}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" "),
        words.join(" "),
        words[cword],
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&program)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{program}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_the_flags_of_a_subcommand() {
    let run = complete(&[BIN, "run", "--"]);
    for flag in ["--once", "--until", "--from", "--metrics-textfile"] {
        assert!(run.contains(&flag.to_string()), "{flag} missing: {run:?}");
    }
    assert!(!run.contains(&"--verify".to_string()), "{run:?}");
    assert_eq!(complete(&[BIN, "check-stream", "--veri"]), ["--verify"]);
    assert_eq!(complete(&[BIN, "state", "sh"]), ["show"]);
    assert!(complete(&[BIN, "state", "reset", "--"]).contains(&"--start-from".to_string()));
    assert!(complete(&[BIN, "r"]).contains(&"run".to_string()));
}

#[test]
fn man_pages_have_the_operator_sections() {
    for (rel, content) in generated() {
        let name = rel.display().to_string();
        if !name.starts_with("man/") {
            continue;
        }
        let text = String::from_utf8(content).unwrap();
        for section in [
            ".SH \"ENVIRONMENT\"",
            ".SH \"FILES\"",
            ".SH \"EXIT STATUS\"",
            ".SH \"EXAMPLES\"",
        ] {
            assert!(text.contains(section), "{name}: no {section}");
        }
        assert!(text.contains("OPENCTI_JSON_LOGGING"), "{name}");
        assert!(!text.contains(".SH EXTRA"), "{name}");
    }
}
