//! One module per subcommand, plus what they share: the env, the signing key, the issuer, the
//! release resolved once in every repository, and how a command that stops early says so.

pub mod approvals;
pub mod doctor;
pub mod exec;
pub mod history;
pub mod init;
pub mod keys;
pub mod logs;
pub mod maintenance;
pub mod promote;
pub mod rollout;
pub mod setup;
pub mod status;
pub mod ui;
pub mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures_util::future::join_all;

use crate::signer::Signer;

use crate::cli::{Cli, Command, KeysCommand};
use crate::config::{DeployConfig, EnvConfig};
use crate::output::{Message, Output, Summary, SummaryBody};
use crate::release::{self, Release};
use crate::resolve::Resolver;
use crate::{Error, ExitClass};

/// Environment variable: who issued the orders (default: user@hostname, or the GitHub run).
pub const ISSUED_BY_ENV: &str = "DEPLOYCTL_ISSUED_BY";
/// Environment variable: a signing key file, used when the env names none.
pub const SIGNING_KEY_ENV: &str = "DEPLOYCTL_SIGNING_KEY";

/// Runs one command line's command; every path ends with one summary message.
pub async fn dispatch(cli: Cli, out: &dyn Output) -> ExitClass {
    let command = cli.command.name();
    match run(cli, out).await {
        Ok(exit) => exit,
        Err(e) => stopped(out, command, &e),
    }
}

async fn run(cli: Cli, out: &dyn Output) -> Result<ExitClass, Error> {
    // `init` writes where --config says, else here: never into a parent's deploy.toml.
    let init_path = cli.config.clone();
    let path = match cli.config {
        Some(path) => path,
        None => find_config(&std::env::current_dir().unwrap_or_default()),
    };
    let load = || DeployConfig::load(&path);
    let json = cli.json;
    match cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "deployctl", &mut std::io::stdout());
            Ok(ExitClass::Success)
        }
        Command::Man { dir } => man(dir.as_deref()),
        Command::Keys {
            command: KeysCommand::Generate { out: file },
        } => keys::generate(file, out),
        Command::Demo => demo(out).await,
        Command::Init(args) => init::init(&args, init_path.as_deref(), out),
        Command::Push {
            reference,
            env,
            sets,
            skip_migrations,
            rerun_migration,
            expires,
            override_freeze,
        } => {
            let migrations = rollout::Migrations::from_flags(skip_migrations, rerun_migration);
            let what = rollout::What::push(&reference, migrations)
                .with_sets(one_each(sets)?)
                .with_expiry(expires)
                .with_override(override_freeze);
            rollout::rollout(&load()?, &env, what, out).await
        }
        Command::Rollback {
            env,
            to,
            expires,
            override_freeze,
        } => {
            let what = rollout::What::rollback(to.as_deref())
                .with_expiry(expires)
                .with_override(override_freeze);
            rollout::rollout(&load()?, &env, what, out).await
        }
        Command::Promote {
            from,
            to,
            skip_migrations,
            rerun_migration,
            override_freeze,
        } => {
            let migrations = rollout::Migrations::from_flags(skip_migrations, rerun_migration);
            let envs = (from.as_str(), to.as_str());
            promote::promote(&load()?, envs, migrations, override_freeze, out).await
        }
        Command::Approvals {
            env,
            show,
            out: file,
        } => match (show, file) {
            (Some(id), Some(file)) => approvals::show(&load()?, &env, &id, &file, out).await,
            _ => approvals::list(&load()?, &env, out).await,
        },
        Command::Approve {
            id,
            env,
            run,
            signature,
        } => {
            let args = approvals::ApproveArgs {
                env: &env,
                id: &id,
                run,
                signature: signature.as_deref(),
            };
            approvals::approve(&load()?, args, out).await
        }
        Command::Setup {
            env,
            dry_run,
            upgrade,
            ssh_user,
            agent_binary,
        } => {
            let args = setup::SetupArgs {
                env: &env,
                dry_run,
                mode: match upgrade {
                    true => crate::setup::Mode::Upgrade,
                    false => crate::setup::Mode::Install,
                },
                ssh_user,
                agent_binary,
            };
            setup::setup(&load()?, args, out).await
        }
        Command::Doctor { env } => doctor::doctor(&load()?, &env, out).await,
        Command::Status { env, watch } => match (env, watch) {
            (env, true) => watch::watch(&load()?, env.as_deref(), json, out).await,
            (Some(env), false) => status::status(&load()?, &env, out).await,
            (None, false) => watch::status_all(&load()?, out).await,
        },
        Command::Ui { env, listen } => ui::ui(&load()?, env.as_deref(), listen, out).await,
        Command::History { env, n } => history::history(&load()?, &env, n, out).await,
        Command::Logs { at, n } => {
            let (host, service) = (at.host.as_deref(), at.service.as_deref());
            logs::logs(&load()?, &at.env, host, service, n, out).await
        }
        Command::Exec {
            at,
            timeout,
            command,
        } => {
            let args = exec::ExecArgs {
                env: &at.env,
                host: at.host.as_deref(),
                service: at.service.as_deref(),
                timeout,
                command,
            };
            exec::exec(&load()?, args, out).await
        }
        Command::Maintenance {
            state,
            env,
            service,
            message,
        } => {
            let args = maintenance::MaintenanceArgs {
                env: &env,
                on: state == crate::cli::Switch::On,
                service: service.as_deref(),
                message,
            };
            maintenance::maintenance(&load()?, args, out).await
        }
    }
}

#[cfg(feature = "demo")]
async fn demo(out: &dyn Output) -> Result<ExitClass, Error> {
    crate::demo::run(out).await
}

#[cfg(not(feature = "demo"))]
async fn demo(_out: &dyn Output) -> Result<ExitClass, Error> {
    Err(Error::Usage(
        "this deployctl was built without the demo (cargo feature `demo`); run scripts/demo \
         from a checkout of deployctl"
            .into(),
    ))
}

/// The man page on stdout, or into `dir` with the pages of the subcommands its SUBCOMMANDS
/// section names (`deployctl-push(1)`, …), so `man deployctl-push` finds one.
fn man(dir: Option<&std::path::Path>) -> Result<ExitClass, Error> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .map_err(|e| Error::Refused(format!("writing the man page: {e}")))?;
        return Ok(ExitClass::Success);
    };
    let failed = |e: std::io::Error| {
        Error::Refused(format!("writing the man pages into {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    clap_mangen::generate_to(cmd, dir).map_err(failed)?;
    println!(
        "wrote deployctl.1 and its subcommands' pages into {}",
        dir.display()
    );
    Ok(ExitClass::Success)
}

/// The deploy.toml a command uses when neither `--config` nor `DEPLOYCTL_CONFIG` names one: the
/// first in `dir` or a parent of it (as git finds its repository), else `deploy.toml` here,
/// whose absence the loader reports.
pub fn find_config(dir: &std::path::Path) -> PathBuf {
    dir.ancestors()
        .map(|d| d.join("deploy.toml"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("deploy.toml"))
}

/// Says why `command` stopped before doing its job, and returns its exit class.
pub fn stopped(out: &dyn Output, command: &'static str, e: &Error) -> ExitClass {
    let body = SummaryBody::Stopped {
        result: e.exit(),
        error: e.to_string(),
    };
    let summary = Summary::new(command, body);
    let exit = summary.exit();
    out.emit(&Message::Summary(summary));
    exit
}

pub(crate) fn find_env<'a>(cfg: &'a DeployConfig, name: &str) -> Result<&'a EnvConfig, Error> {
    cfg.env(name).map_err(Error::Refused)
}

/// The signing key: the env's `signing_key`, else `$DEPLOYCTL_SIGNING_KEY`, else the first key
/// of ssh-agent, else `~/.config/deployctl/key`.
pub(crate) async fn load_signer(env: &EnvConfig) -> Result<Signer, Error> {
    let from_file = |p: &std::path::Path, why: &str| {
        Signer::from_key_file(p).map_err(|e| Error::Refused(format!("signing key ({why}): {e}")))
    };
    if let Some(p) = &env.signing_key {
        return from_file(p, &format!("signing_key of env {}", env.name));
    }
    if let Some(p) = std::env::var_os(SIGNING_KEY_ENV).filter(|p| !p.is_empty()) {
        return from_file(&PathBuf::from(p), &format!("${SIGNING_KEY_ENV}"));
    }
    let default = default_key_path();
    let agent_problem = match std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()) {
        Some(sock) => match Signer::from_agent(&PathBuf::from(sock), None).await {
            Ok(s) => return Ok(s),
            Err(e) => Some(e.to_string()),
        },
        None => None,
    };
    if default.exists() {
        return from_file(&default, "the default key");
    }
    Err(Error::Refused(format!(
        "no signing key: set signing_key in [env.{}], set ${SIGNING_KEY_ENV}, load a key into ssh-agent{}, or create {} with `deployctl keys generate`",
        env.name,
        agent_problem.map(|p| format!(" ({p})")).unwrap_or_default(),
        default.display()
    )))
}

pub(crate) fn default_key_path() -> PathBuf {
    crate::config::expand_tilde("~/.config/deployctl/key")
}

/// Who issues the orders, for the journals: `$DEPLOYCTL_ISSUED_BY`, the GitHub Actions run,
/// or user@hostname.
pub(crate) fn issued_by() -> String {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(v) = var(ISSUED_BY_ENV) {
        return v;
    }
    if var("GITHUB_ACTIONS").as_deref() == Some("true") {
        let server = var("GITHUB_SERVER_URL").unwrap_or_else(|| "https://github.com".into());
        let repo = var("GITHUB_REPOSITORY").unwrap_or_default();
        let run = var("GITHUB_RUN_ID").unwrap_or_default();
        let actor = var("GITHUB_ACTOR").unwrap_or_else(|| "?".into());
        return format!("{actor} via {server}/{repo}/actions/runs/{run}");
    }
    let user = var("USER")
        .or_else(|| var("LOGNAME"))
        .or_else(user_from_passwd)
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| var("HOSTNAME"))
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host}")
}

/// This process's user name from /etc/passwd, for when $USER is not set (cron, CI containers).
fn user_from_passwd() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_string();
    passwd_name(&std::fs::read_to_string("/etc/passwd").ok()?, &uid)
}

/// The name of `uid` in the text of /etc/passwd.
fn passwd_name(passwd: &str, uid: &str) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_string())
    })
}

/// `--set` pairs, at most one per service.
fn one_each(sets: Vec<(String, String)>) -> Result<BTreeMap<String, String>, Error> {
    let mut map = BTreeMap::new();
    for (service, reference) in sets {
        if let Some(first) = map.insert(service.clone(), reference) {
            return Err(Error::Usage(format!(
                "--set {service}=… given twice (first {service}={first})"
            )));
        }
    }
    Ok(map)
}

/// Resolves the release the user asked for — `reference` in every repository the services (and,
/// with `migration`, `[migrate] image`) use, each `--set` ref in its service's — once, all at
/// once, and says what each resolved to. Refused when any does not resolve, naming every
/// repository that failed.
pub(crate) async fn resolve_release(
    cfg: &DeployConfig,
    reference: &str,
    sets: &BTreeMap<String, String>,
    migration: bool,
    out: &dyn Output,
) -> Result<Release, Error> {
    let lookups = release::lookups(cfg, reference, sets, migration).map_err(Error::Usage)?;
    let answers = join_all(lookups.into_iter().map(|l| async move {
        let answer = match Resolver::new(&l.repository) {
            Ok(mut r) => r.resolve(&l.reference).await,
            Err(e) => Err(e),
        };
        (l, answer)
    }))
    .await;
    for resolved in answers.iter().filter_map(|(_, a)| a.as_ref().ok()) {
        out.emit(&Message::Resolved {
            reference: resolved.reference.clone(),
            image: resolved.image.clone(),
        });
    }
    release::assemble(cfg, reference, sets, &answers).map_err(Error::Refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_toml_is_found_here_or_in_a_parent() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(find_config(&deep), PathBuf::from("deploy.toml"));
        std::fs::write(root.path().join("a/deploy.toml"), "").unwrap();
        assert_eq!(find_config(&deep), root.path().join("a/deploy.toml"));
        std::fs::write(deep.join("deploy.toml"), "").unwrap();
        assert_eq!(find_config(&deep), deep.join("deploy.toml"));
    }

    #[test]
    fn passwd_lookup() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\ndeploy:x:1001:1001::/home/deploy:/bin/sh\nbroken\n";
        assert_eq!(passwd_name(passwd, "0").as_deref(), Some("root"));
        assert_eq!(passwd_name(passwd, "1001").as_deref(), Some("deploy"));
        assert_eq!(passwd_name(passwd, "7"), None);
    }
}
