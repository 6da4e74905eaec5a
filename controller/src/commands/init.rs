//! `deployctl init [--from compose.yaml]`: writes a commented deploy.toml — a skeleton, or the
//! services of a compose file — that loads as it is (README, "deployctl init"). The text is
//! `deploy_toml`'s (pure); this reads the compose file, checks the result loads, and writes
//! it, never over an existing file unless `--force`.

mod compose;
mod deploy_toml;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::InitArgs;
use crate::config::{ConfigError, DeployConfig};
use crate::output::{InitSummary, Message, Output, Summary, SummaryBody};
use crate::{Error, ExitClass};

use deploy_toml::{Options, check_options, from_compose, skeleton};

/// Writes deploy.toml at `config` (`--config`), else in the current directory.
pub fn init(args: &InitArgs, config: Option<&Path>, out: &dyn Output) -> Result<ExitClass, Error> {
    let path = config.map_or_else(|| PathBuf::from("deploy.toml"), Path::to_path_buf);
    let opts = Options {
        app: args.app.clone(),
        image: args.image.clone(),
        env: args.env.clone(),
        hosts: args.hosts.clone(),
        socket: args.socket.clone(),
    };
    check_options(&opts).map_err(Error::Usage)?;
    let written = match &args.from {
        None => skeleton(&opts),
        Some(file) => {
            let yaml = std::fs::read_to_string(file).map_err(|e| ConfigError::Read {
                path: file.clone(),
                source_message: e.to_string(),
            })?;
            let shown = file.display().to_string();
            let written = from_compose(&yaml, &shown, &opts).map_err(|e| match e.at {
                Some((line, column)) => ConfigError::Invalid {
                    path: file.clone(),
                    line,
                    column,
                    message: e.message,
                },
                None => ConfigError::Unlocated {
                    path: file.clone(),
                    message: e.message,
                },
            })?;
            if written.services.is_empty() {
                return Err(Error::Refused(format!(
                    "{shown}: no service has an `image:` to deploy, so there is nothing to write"
                )));
            }
            written
        }
    };
    // What init writes must load: a failure here is deployctl's bug, not the user's.
    DeployConfig::parse(&written.text, &path).map_err(|e| {
        Error::Refused(format!(
            "the deploy.toml init made does not load ({e}); nothing was written"
        ))
    })?;
    write_new(&path, &written.text, args.force)?;
    for warning in &written.warnings {
        out.emit(&Message::Note {
            message: format!("warning: {warning}"),
        });
    }
    let summary = Summary::new(
        "init",
        SummaryBody::Init(InitSummary {
            path,
            from: args.from.clone(),
            env: args.env.clone(),
            services: written.services,
            skipped: written.skipped,
            placeholder_hosts: args.hosts.is_empty(),
        }),
    );
    let exit = summary.exit();
    out.emit(&Message::Summary(summary));
    Ok(exit)
}

/// Creates `path` with `text`; an existing file is left as it is unless `force`.
fn write_new(path: &Path, text: &str, force: bool) -> Result<(), Error> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true);
    if force {
        open.create(true).truncate(true);
    } else {
        // One call decides: no window between "does it exist" and the write.
        open.create_new(true);
    }
    let mut file = open.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::Refused(format!(
            "{} already exists; init leaves it as it is (--force replaces it)",
            path.display()
        )),
        _ => Error::Refused(format!("cannot create {}: {e}", path.display())),
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::Refused(format!("writing {}: {e}", path.display())))
}
