//! The command line (README "Commands"), as clap derive types only; behaviour lives in
//! [`crate::commands`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "deployctl",
    version,
    about = "Push one immutable image digest to your hosts, health-gated, with automatic rollback"
)]
pub struct Cli {
    /// The app's deploy.toml [default: $DEPLOYCTL_CONFIG, else the first deploy.toml in this
    /// directory or a parent].
    #[arg(long, global = true, value_name = "PATH", env = "DEPLOYCTL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print one JSON object per event and a final summary object.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy a release — a git SHA (or a ≥7-hex prefix), a tag, or sha256:<digest>, resolved in
    /// every repository the services use — to every host of an env.
    Push {
        #[arg(value_name = "REF")]
        reference: String,
        /// The env (an `[env.NAME]` of deploy.toml) whose hosts this acts on.
        #[arg(long)]
        env: String,
        /// Resolve one service's repository at its own ref instead of REF (repeatable).
        #[arg(long = "set", value_name = "SERVICE=REF", value_parser = crate::release::parse_set)]
        sets: Vec<(String, String)>,
        /// Do not run [migrate] on the first host.
        #[arg(long)]
        skip_migrations: bool,
        /// Run [migrate] even if this digest's migration already succeeded on the first host
        /// (by default a retried rollout of the same digest does not migrate again).
        #[arg(long, conflicts_with = "skip_migrations")]
        rerun_migration: bool,
        /// To an env that needs approvals: how long the proposal waits for them (at most 7d).
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = proto::time::parse_duration)]
        expires: Duration,
        /// Run although a [[freeze]] window holds, saying why: the env's agents admit it only
        /// with their [approvals] (the proposal says so, and the journal records the override).
        #[arg(long, value_name = "REASON")]
        override_freeze: Option<String>,
    },
    /// Roll out exactly the release that runs, healthy, on every host of --from (its digests,
    /// not its ref resolved again) to --to; refused, naming the hosts, when --from is mixed,
    /// unhealthy, busy or partly unreachable.
    Promote {
        #[arg(long, value_name = "ENV")]
        from: String,
        #[arg(long, value_name = "ENV")]
        to: String,
        /// Do not run [migrate] on the first host of --to.
        #[arg(long)]
        skip_migrations: bool,
        /// Run [migrate] even if this digest's migration already succeeded there.
        #[arg(long, conflicts_with = "skip_migrations")]
        rerun_migration: bool,
        /// Run although a [[freeze]] window holds, saying why: the env's agents admit it only
        /// with their [approvals] (the proposal says so, and the journal records the override).
        #[arg(long, value_name = "REASON")]
        override_freeze: Option<String>,
    },
    /// Go back to the previous healthy release (or --to REF); no migration, no promotion gate.
    Rollback {
        /// The env (an `[env.NAME]` of deploy.toml) whose hosts this acts on.
        #[arg(long)]
        env: String,
        #[arg(long, value_name = "REF")]
        to: Option<String>,
        /// To an env that needs approvals: how long the proposal waits for them (at most 7d).
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = proto::time::parse_duration)]
        expires: Duration,
        /// Run although a [[freeze]] window holds, saying why: the env's agents admit it only
        /// with their [approvals] (the proposal says so, and the journal records the override).
        #[arg(long, value_name = "REASON")]
        override_freeze: Option<String>,
    },
    /// The proposals waiting for approvals in an env ([approvals] on its hosts).
    Approvals {
        /// The env (an `[env.NAME]` of deploy.toml) whose hosts this acts on.
        #[arg(long)]
        env: String,
        /// Write the exact bytes of this proposal to --out, to sign with
        /// `ssh-keygen -Y sign -n deployctl-approval`.
        #[arg(long, value_name = "ID", requires = "out")]
        show: Option<String>,
        #[arg(long, value_name = "FILE", requires = "show")]
        out: Option<PathBuf>,
    },
    /// Approve a proposal: sign its bytes (namespace deployctl-approval) with the env's signing
    /// key, or hand over a signature made elsewhere; with --run, roll it out once approved.
    Approve {
        #[arg(value_name = "ID")]
        id: String,
        /// The env (an `[env.NAME]` of deploy.toml) whose hosts this acts on.
        #[arg(long)]
        env: String,
        /// Roll the proposal out if it has the approvals it needs.
        #[arg(long)]
        run: bool,
        /// An armored signature of the proposal's bytes (`ssh-keygen -Y sign` writes FILE.sig).
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
    },
    /// Per host and service: agent, ref, digest, health; whether every host runs one release
    /// (every env of deploy.toml unless --env).
    Status {
        /// The env (an `[env.NAME]` of deploy.toml) to show; every env when left out.
        #[arg(long)]
        env: Option<String>,
        /// Redraw on every change the agents report (a job, a health change) until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Serve the status board as a read-only page on loopback, updated live (every env unless
    /// --env).
    Ui {
        /// The env (an `[env.NAME]` of deploy.toml) to show; every env when left out.
        #[arg(long)]
        env: Option<String>,
        /// Where to listen (loopback only; port 0 picks a free one).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// What ran where, when, signed by whom, with what outcome.
    History {
        /// The env (an `[env.NAME]` of deploy.toml) whose hosts this acts on.
        #[arg(long)]
        env: String,
        /// Entries per host.
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
    },
    /// The last log lines of the app's containers (of every host and service by default).
    Logs {
        #[command(flatten)]
        at: Where,
        #[arg(short = 'n', default_value_t = 100)]
        n: usize,
    },
    /// Run a one-off command in a container of a service's running image on one host (the
    /// env's first unless --host; the app's only service unless --service); exits with the
    /// command's exit code.
    Exec {
        #[command(flatten)]
        at: Where,
        /// Kill the command after this long (at most 1h; the service cannot be deployed
        /// meanwhile).
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = proto::time::parse_duration)]
        timeout: Duration,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Put up (on) or take down (off) the maintenance page of the services behind Caddy: a
    /// signed order to every host of the env; the route answers 503 with the message and
    /// Retry-After meanwhile, and the containers keep running.
    Maintenance {
        #[arg(value_enum)]
        state: Switch,
        /// The env (an `[env.NAME]` of deploy.toml) whose hosts this acts on.
        #[arg(long)]
        env: String,
        /// Only this service (default: every service with a `proxy`).
        #[arg(long)]
        service: Option<String>,
        /// The page's text (with `on`).
        #[arg(long, value_name = "TEXT")]
        message: Option<String>,
    },
    /// Install or upgrade the agent on every host of an env over SSH (a root or sudo login):
    /// the deploy-agent binary matching this deployctl (checksum verified), its user and the
    /// deployctl group, agent.toml and allowed_signers, the systemd unit; then check it answers.
    /// A second run changes nothing.
    Setup {
        /// The env (an `[env.NAME]` of deploy.toml) whose hosts this acts on.
        #[arg(long)]
        env: String,
        /// Print what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replace an agent binary other than this deployctl's, once no job runs there.
        #[arg(long)]
        upgrade: bool,
        /// Log in as this user for setup (root, or a user with passwordless sudo).
        #[arg(long, value_name = "USER", default_value = "root")]
        ssh_user: String,
        /// The deploy-agent to install [default: $DEPLOYCTL_AGENT_BINARY, else the deploy-agent
        /// next to this deployctl].
        #[arg(long, value_name = "PATH", env = "DEPLOYCTL_AGENT_BINARY")]
        agent_binary: Option<PathBuf>,
    },
    /// Check every host of an env, in triage order: SSH and host key, the agent and its
    /// version, the Docker engine, the image with the registry credentials, disk space, clock;
    /// each problem with its fix.
    Doctor {
        /// The env (an `[env.NAME]` of deploy.toml) whose hosts this acts on.
        #[arg(long)]
        env: String,
    },
    /// Print a shell completion script: `deployctl completions bash > /etc/bash_completion.d/deployctl`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `deployctl man > /usr/local/share/man/man1/deployctl.1`; with
    /// --dir, write it and the page of every subcommand it names (deployctl-push.1, …) there.
    Man {
        /// Write deployctl.1 and one page per subcommand into this directory (created).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Write a commented deploy.toml (here, or at --config): a skeleton, or the services of a
    /// compose file (--from); it loads as written. Never over an existing file without --force.
    Init(InitArgs),
    /// Signing keys for deploy orders.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run a local end-to-end demo: registry, demo images, an agent, push/rollback.
    /// Only in builds with the `demo` cargo feature (scripts/demo).
    #[cfg_attr(not(feature = "demo"), command(hide = true))]
    Demo,
}

/// `maintenance on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Which host and service of an env `logs` and `exec` are about.
#[derive(Debug, Clone, Args)]
pub struct Where {
    /// The env (an `[env.NAME]` of deploy.toml) whose hosts this acts on.
    #[arg(long)]
    pub env: String,
    /// Only this host (its name in deploy.toml).
    #[arg(long)]
    pub host: Option<String>,
    /// Only this service.
    #[arg(long)]
    pub service: Option<String>,
}

impl Command {
    /// The command's name, as its `--json` summary gives it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Push { .. } => "push",
            Command::Rollback { .. } => "rollback",
            Command::Completions { .. } => "completions",
            Command::Man { .. } => "man",
            Command::Promote { .. } => "promote",
            Command::Status { .. } => "status",
            Command::Ui { .. } => "ui",
            Command::History { .. } => "history",
            Command::Logs { .. } => "logs",
            Command::Exec { .. } => "exec",
            Command::Maintenance { .. } => "maintenance",
            Command::Keys { .. } => "keys generate",
            Command::Approvals { .. } => "approvals",
            Command::Approve { .. } => "approve",
            Command::Demo => "demo",
            Command::Setup { .. } => "setup",
            Command::Doctor { .. } => "doctor",
            Command::Init(_) => "init",
        }
    }
}

/// `deployctl init`: what the new deploy.toml says.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Write one service per service of this compose file that has an `image`.
    #[arg(long, value_name = "COMPOSE_FILE")]
    pub from: Option<PathBuf>,
    /// The app's name [default: the compose project's `name`, else the image's last segment].
    #[arg(long)]
    pub app: Option<String>,
    /// The repository of the app's images, no tag [default: the one most compose services use].
    #[arg(long, value_name = "REPO")]
    pub image: Option<String>,
    /// The env to write.
    #[arg(long, value_name = "ENV", default_value = "staging")]
    pub env: String,
    /// A host of the env, user@addr[:port] or `local`; repeatable, in rollout order [default:
    /// a placeholder to edit].
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// The agents' socket on the hosts, when not /run/deploy-agent/agent.sock.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<String>,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new ed25519 signing key (OpenSSH format) and print its allowed_signers line.
    Generate {
        /// Default: ~/.config/deployctl/key
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        for args in [
            &[
                "deployctl",
                "--json",
                "--config",
                "x.toml",
                "status",
                "--env",
                "s",
            ][..],
            &[
                "deployctl",
                "status",
                "--env",
                "s",
                "--json",
                "--config",
                "x.toml",
            ][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert!(cli.json);
            assert_eq!(cli.config, Some(PathBuf::from("x.toml")));
        }
        let cli = Cli::try_parse_from([
            "deployctl",
            "push",
            "abc1234",
            "--env",
            "prod",
            "--skip-migrations",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Push {
                skip_migrations: true,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["deployctl", "push", "--env", "prod"]).is_err());
        let cli = Cli::try_parse_from([
            "deployctl",
            "push",
            "v2",
            "--env",
            "prod",
            "--set",
            "web=v3",
            "--set",
            "api=v1",
        ])
        .unwrap();
        let Command::Push { sets, .. } = cli.command else {
            panic!("push expected")
        };
        assert_eq!(
            sets,
            [("web".into(), "v3".into()), ("api".into(), "v1".into())]
        );
        for bad in ["web", "=v3", "web="] {
            let args = ["deployctl", "push", "v2", "--env", "prod", "--set", bad];
            assert!(Cli::try_parse_from(args).is_err(), "{bad}");
        }
    }

    #[test]
    fn exec_takes_its_command_after_two_dashes() {
        let cli = Cli::try_parse_from([
            "deployctl",
            "exec",
            "--env",
            "s",
            "--json",
            "--",
            "/app",
            "exit",
            "7",
            "--json",
        ])
        .unwrap();
        assert!(cli.json, "flags before `--` are deployctl's");
        let Command::Exec {
            command, timeout, ..
        } = cli.command
        else {
            panic!("not exec");
        };
        assert_eq!(command, ["/app", "exit", "7", "--json"]);
        assert_eq!(timeout, Duration::from_secs(300));
        for bad in [
            &["deployctl", "exec", "--env", "s"][..],
            &["deployctl", "exec", "--env", "s", "/app"][..],
            &[
                "deployctl",
                "exec",
                "--env",
                "s",
                "--timeout",
                "soon",
                "--",
                "x",
            ][..],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
