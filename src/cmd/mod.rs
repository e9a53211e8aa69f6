//! One module per subcommand; [`dispatch`] picks one.

pub mod check_stream;
pub mod run;
pub mod state;

use std::path::Path;

use anyhow::Result;

use crate::cli::{Cli, Command, StateCommand};
use crate::config::{self, Config, Overrides};
use crate::dest::dir::DirDestination;
use crate::dest::fault;
use crate::dest::s3::S3Destination;
use crate::dest::{Destination, Destinations};

/// Runs the chosen subcommand; returns the exit status.
pub fn dispatch(cli: Cli) -> Result<i32> {
    let file = config::find_file(cli.config.as_deref())?;
    let mut overrides = Overrides {
        state_path: cli.state.clone(),
        ..Overrides::default()
    };
    if let Command::Run(args) = &cli.command {
        overrides.output_dir = args.output_dir.clone();
        overrides.consumer_count = args.consumer_count.clone();
        overrides.metrics_textfile = args.metrics_textfile.clone();
    }
    let cfg = config::load(file.as_deref(), &overrides)?;
    register_secrets(&cfg);
    crate::logging::apply_config_level(cfg.log_level);
    crate::logging::set_name(&cfg.connector_name);
    match cli.command {
        Command::Run(args) => run::run(&cfg, &args, cli.quiet),
        Command::State(StateCommand::Show(args)) => state::show(&cfg, &args),
        Command::State(StateCommand::Reset(args)) => state::reset(&cfg, &args),
        Command::State(StateCommand::Import(args)) => state::import(&cfg, &args),
        Command::CheckStream(args) => check_stream::check(&cfg, &args),
    }
}

/// Makes every secret of the config masked in logs and reports.
fn register_secrets(cfg: &Config) {
    if let Ok(o) = cfg.opencti() {
        crate::secret::register(o.token.expose());
        if let Some(p) = crate::secret::url_password(&o.url) {
            crate::secret::register(p);
        }
        for (_, value) in &o.custom_headers {
            crate::secret::register(value.expose());
        }
        if let Some(p) = o
            .proxy
            .as_ref()
            .and_then(|p| crate::secret::url_password(p.expose()))
        {
            crate::secret::register(p);
        }
    }
    if let Ok(config::Output::S3 { settings, .. }) = cfg.output() {
        crate::secret::register(settings.secret_key.expose());
    }
    // A proxy's password is a secret too.
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
    ] {
        if let Some(p) = std::env::var(var)
            .ok()
            .as_deref()
            .and_then(crate::secret::url_password)
        {
            crate::secret::register(p);
        }
    }
}

/// Builds the destinations the config names (the files' one wrapped for a
/// crash test when [`fault::FAULT_VAR`] asks for it).
pub fn destinations(cfg: &Config) -> Result<Destinations> {
    let mut dests = plain_destinations(cfg)?;
    if let Some(point) = fault::Point::from_env() {
        dests.files = Box::new(fault::Faulty::new(dests.files, point));
    }
    Ok(dests)
}

fn plain_destinations(cfg: &Config) -> Result<Destinations> {
    Ok(match cfg.output()? {
        config::Output::Directory {
            root,
            dead_letter_root,
        } => Destinations {
            files: Box::new(DirDestination::new(root)),
            dead: Box::new(DirDestination::new(dead_letter_root)),
            done: None,
        },
        config::Output::S3 {
            settings,
            bucket_done,
            dead_letter_bucket,
        } => {
            let files = S3Destination::new(settings.clone())?;
            let mut dl = settings.clone();
            dl.bucket = dead_letter_bucket.clone();
            let dead = S3Destination::new(dl)?;
            let done = match bucket_done {
                Some(b) => {
                    let mut d = settings.clone();
                    d.bucket = b.clone();
                    Some(Box::new(S3Destination::new(d)?) as Box<dyn Destination>)
                }
                None => None,
            };
            Destinations {
                files: Box::new(files),
                dead: Box::new(dead),
                done,
            }
        }
    })
}

/// `path` as shown to operators.
pub fn show_path(path: &Path) -> String {
    path.display().to_string()
}
