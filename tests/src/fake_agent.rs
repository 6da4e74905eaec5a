//! An agent that is not ours: it answers `hello` and `status` on a unix socket exactly as told,
//! to show what deployctl makes of agents of another version or protocol.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use proto::wire::{AgentStatus, Reply, Request};

use crate::error::{IoContext, Result};

/// Serves until dropped (its socket file goes with its temp dir).
pub struct FakeAgent {
    dir: tempfile::TempDir,
}

impl FakeAgent {
    /// Answers `hello` with `hello` and `status` with `status`; anything else with an error.
    pub fn start(hello: Reply, status: AgentStatus) -> Result<FakeAgent> {
        let dir = tempfile::Builder::new()
            .prefix("deployctl-fake-agent-")
            .tempdir()
            .ctx(|| "creating a temp dir".into())?;
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).ctx(|| format!("binding {}", path.display()))?;
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (hello, status) = (hello.clone(), status.clone());
                std::thread::spawn(move || serve(stream, hello, status));
            }
        });
        Ok(FakeAgent { dir })
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }
}

fn serve(stream: std::os::unix::net::UnixStream, hello: Reply, status: AgentStatus) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Hello { .. }) => hello.clone(),
            Ok(Request::Status {}) => Reply::Status {
                status: status.clone(),
            },
            _ => Reply::Error {
                message: "the fake agent answers hello and status only".into(),
            },
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_default();
        text.push('\n');
        if writer.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}
