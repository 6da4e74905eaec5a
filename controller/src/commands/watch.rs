//! `deployctl status` over every env of deploy.toml (no `--env`), and `status --watch`: the same
//! table redrawn on each change the agents' subscriptions report (README, "Watching").

use std::io::{IsTerminal, Write};

use proto::wire::AgentStatus;

use crate::config::{DeployConfig, EnvConfig};
use crate::live::{self, Board};
use crate::output::human::{Shown, Table, render, table};
use crate::output::{Message, Output, StatusSummary, Summary, SummaryBody};
use crate::{Error, ExitClass};

/// The envs a status is about: the one named, else every env.
pub fn pick_envs<'a>(
    cfg: &'a DeployConfig,
    env: Option<&str>,
) -> Result<Vec<&'a EnvConfig>, Error> {
    match env {
        Some(name) => Ok(vec![super::find_env(cfg, name)?]),
        None if cfg.envs.is_empty() => Err(Error::Refused(format!(
            "{} has no [env.*] tables",
            cfg.path.display()
        ))),
        None => Ok(cfg.envs.values().collect()),
    }
}

/// Every env's verdict, from the board's last answers (hosts not heard from yet count as
/// unreachable).
pub fn verdicts(cfg: &DeployConfig, board: &Board) -> Vec<StatusSummary> {
    let services: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
    board
        .envs
        .iter()
        .map(|e| {
            let hosts: Vec<&str> = e.hosts.iter().map(|h| h.name.as_str()).collect();
            let answers: Vec<Result<AgentStatus, String>> = e
                .hosts
                .iter()
                .map(|h| match &h.last {
                    Some(Ok(s)) => Ok(s.clone()),
                    Some(Err(e)) => Err(e.message.clone()),
                    None => Err("no answer yet".into()),
                })
                .collect();
            super::status::verdict(&e.env, &cfg.app, &services, &hosts, &answers)
        })
        .collect()
}

/// The summary of one env's status, or of several.
pub fn summary(mut envs: Vec<StatusSummary>) -> Summary {
    let body = match envs.len() {
        1 => SummaryBody::Status(envs.remove(0)),
        _ => SummaryBody::Envs { envs },
    };
    Summary::new("status", body)
}

/// The whole screen of a watch: the status table, then each env's verdict.
pub fn screen(cfg: &DeployConfig, board: &Board) -> String {
    let mut rows = Vec::new();
    for h in board.host_statuses() {
        if let Shown::Rows(_, r) = render(&Message::HostStatus(h)) {
            rows.extend(r);
        }
    }
    let mut text = table(Table::Status.header(), &rows);
    if let Shown::Out(lines) = render(&Message::Summary(summary(verdicts(cfg, board)))) {
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
    }
    text
}

/// `status` without `--env`: every env's hosts, asked once.
pub async fn status_all(cfg: &DeployConfig, out: &dyn Output) -> Result<ExitClass, Error> {
    let envs = pick_envs(cfg, None)?;
    let mut rx = live::follow(cfg, &envs);
    // Done once every host answered (or failed) once.
    let board = rx
        .wait_for(|b| {
            b.envs
                .iter()
                .all(|e| e.hosts.iter().all(|h| h.last.is_some()))
        })
        .await
        .map_err(|_| Error::Refused("the status gatherers stopped".into()))?
        .clone();
    for h in board.host_statuses() {
        out.emit(&Message::HostStatus(h));
    }
    let summary = summary(verdicts(cfg, &board));
    let exit = summary.exit();
    out.emit(&Message::Summary(summary));
    Ok(exit)
}

/// `status --watch`: redraws on every change until Ctrl-C, then ends like `status`.
pub async fn watch(
    cfg: &DeployConfig,
    env: Option<&str>,
    json: bool,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    let envs = pick_envs(cfg, env)?;
    let mut rx = live::follow(cfg, &envs);
    let terminal = std::io::stdout().is_terminal();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let board = rx.borrow_and_update().clone();
        if json {
            for h in board.host_statuses() {
                out.emit(&Message::HostStatus(h));
            }
        } else {
            let mut stdout = std::io::stdout().lock();
            let clear = if terminal { "\x1b[H\x1b[2J" } else { "\n" };
            let now = proto::time::Timestamp::now();
            let _ = writeln!(
                stdout,
                "{clear}{}(as of {now}; Ctrl-C ends)",
                screen(cfg, &board)
            );
            let _ = stdout.flush();
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = &mut interrupted => break,
        }
    }
    let summary = summary(verdicts(cfg, &rx.borrow()));
    let exit = summary.exit();
    out.emit(&Message::Summary(summary));
    Ok(exit)
}
