//! Protocol-version skew, both ways (README, "Version skew"), the real binary on one side and a
//! tiny fake peer on the other over a unix socket: `deployctl status` against fake agents of
//! another version exits 3 naming the host, both versions and the fix; the real agent refuses
//! a client of another version in the hello frame every version reads.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use proto::wire::{HelloAnswer, PROTOCOL_VERSION};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::*;

/// A fake agent: answers every connection's first line with `answer`, then closes it; sends
/// each hello it read to `seen`.
async fn fake_agent(
    listener: tokio::net::UnixListener,
    answer: Value,
    seen: std::sync::mpsc::Sender<Value>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        if tokio::io::BufReader::new(read)
            .read_line(&mut line)
            .await
            .is_err()
        {
            continue;
        }
        let _ = seen.send(serde_json::from_str(&line).unwrap_or(Value::Null));
        let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
    }
}

/// Starts a fake agent per peer on a socket in `dir`, and writes `dir/deploy.toml` whose env
/// `staging` lists them, named as the peers are.
fn serve_fake_agents(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    peers: [(&str, Value); 2],
    seen: &std::sync::mpsc::Sender<Value>,
) -> anyhow::Result<std::path::PathBuf> {
    let mut hosts = Vec::new();
    for (name, answer) in peers {
        let socket = dir.join(format!("{name}.sock"));
        let listener = runtime.block_on(async { tokio::net::UnixListener::bind(&socket) })?;
        runtime.spawn(fake_agent(listener, answer, seen.clone()));
        hosts.push(format!(
            "{{ name = {}, socket = {} }}",
            quote(name),
            quote(&socket.display().to_string())
        ));
    }
    let config = dir.join("deploy.toml");
    std::fs::write(
        &config,
        format!(
            "app = \"acme\"\nimage = \"registry.example.com/acme/web\"\n[services.web]\n\
             [env.staging]\nhosts = [{}]\n",
            hosts.join(", ")
        ),
    )?;
    Ok(config)
}

#[test]
fn status_refuses_agents_of_another_version_naming_both_and_the_fix() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("deployctl-skew-")
        .tempdir()?;
    let (newer, older) = (PROTOCOL_VERSION + 1, PROTOCOL_VERSION.saturating_sub(1));
    // A newer agent answers hello with its version; an older one refuses in the frozen frame.
    let peers = [
        (
            "newer",
            json!({"type": "hello", "protocol": newer, "agent_version": "9.9.9",
                   "host": "newer", "env": "staging", "features": ["later"]}),
        ),
        (
            "older",
            json!({"type": "refused", "refusal": {"kind": "protocol-version",
                   "message": format!("this agent (deploy-agent 0.0.1) speaks protocol version {older}, the client speaks version {PROTOCOL_VERSION}"),
                   "protocol": older, "agent_version": "0.0.1"}}),
        ),
    ];
    let runtime = tokio::runtime::Runtime::new()?;
    let (seen, hellos) = std::sync::mpsc::channel();
    let config = serve_fake_agents(&runtime, dir.path(), peers, &seen)?;
    let out = std::process::Command::new(harness::hosts::deployctl_binary()?)
        .args(["status", "--env", "staging", "--json", "--config"])
        .arg(&config)
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(3),
        "exit {:?}:\n{stdout}",
        out.status
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    for (name, fix) in [
        ("newer", "use the deployctl of its version (9.9.9)"),
        ("older", "deployctl setup --env staging --upgrade"),
    ] {
        let line = lines
            .iter()
            .find(|l| l["event"] == "host_status" && l["host"] == name)
            .with_context(|| format!("no line for {name}:\n{stdout}"))?;
        let error = line["error"].as_str().unwrap_or_default();
        let version = if name == "newer" { newer } else { older };
        ensure!(
            line["reachable"] == false && line["kind"] == "protocol-version",
            "{line}"
        );
        for want in [
            format!("{name}.sock"),
            format!("protocol version {version}"),
            format!("speaks version {PROTOCOL_VERSION}"),
            fix.to_string(),
        ] {
            ensure!(error.contains(&want), "{name}: {want:?} not in {error:?}");
        }
    }
    let summary = lines.last().context("no summary")?;
    ensure!(
        summary["event"] == "summary" && summary["exit_code"] == 3 && summary["reachable"] == 0,
        "{summary}"
    );
    // deployctl said its own version in the hello both saw.
    let hellos: Vec<Value> = hellos.try_iter().collect();
    ensure!(hellos.len() == 2, "{hellos:?}");
    for hello in hellos {
        ensure!(
            hello["type"] == "hello" && hello["protocol"] == PROTOCOL_VERSION,
            "{hello}"
        );
    }
    Ok(())
}

#[test]
fn the_agent_refuses_a_client_of_another_version_in_the_frozen_hello_frame() -> anyhow::Result<()> {
    harness::require_prereqs()?;
    let agent = harness::agents::AgentProc::start(AgentSetup::new(&["registry.example.com/*"]))?;
    let future = PROTOCOL_VERSION + 1;
    let mut stream = UnixStream::connect(agent.socket())?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // A client of a later version, whose hello has grown a field: still read as a hello.
    let hello = json!({"type": "hello", "protocol": future, "client": "deployctl/99.0.0",
                       "features": ["later"]});
    stream.write_all(format!("{hello}\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let frame: Value = serde_json::from_str(&line).with_context(|| line.clone())?;
    let refusal = &frame["refusal"];
    let message = refusal["message"].as_str().unwrap_or_default();
    ensure!(
        frame["type"] == "refused"
            && refusal["kind"] == "protocol-version"
            && refusal["protocol"] == PROTOCOL_VERSION,
        "{frame}"
    );
    ensure!(
        message.contains(&format!("protocol version {PROTOCOL_VERSION}"))
            && message.contains(&format!("version {future}")),
        "both versions named: {message}"
    );
    // Readable by a client of any version: the lenient hello reader takes it.
    ensure!(
        matches!(
            proto::codec::decode::<HelloAnswer>(line.as_bytes())?,
            HelloAnswer::Refused { .. }
        ),
        "{line}"
    );
    let mut rest = String::new();
    ensure!(
        reader.read_line(&mut rest)? == 0,
        "the agent closes after refusing: {rest:?}"
    );
    // And goes on serving clients of its own version.
    let peer = block_on(async { anyhow::Ok(agent.client().await?.peer) })?;
    ensure!(peer.host == agent.host(), "{peer:?}");
    Ok(())
}
