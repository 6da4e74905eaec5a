//! `deploy-agent bridge`: the far end of the SSH transport. The controller's SSH session runs
//! it; it joins its stdin/stdout to the agent's socket so no port is ever opened.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(
        "cannot reach the agent at {path}: {source} (is deploy-agent running, and may this user use its socket?)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bridge: {0}")]
    Io(#[from] std::io::Error),
}

/// Relays stdin → socket and socket → stdout. When the client closes its side the socket's
/// write half is shut (so the agent sees the end of requests) while replies still flow; the
/// bridge ends when the agent closes the connection or stdout goes away.
pub async fn bridge(socket: &Path) -> Result<(), BridgeError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| BridgeError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    relay(tokio::io::stdin(), tokio::io::stdout(), stream).await
}

pub async fn relay<I, O>(mut input: I, mut output: O, stream: UnixStream) -> Result<(), BridgeError>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let (mut from_agent, mut to_agent) = stream.into_split();
    let upstream = async {
        tokio::io::copy(&mut input, &mut to_agent).await?;
        to_agent.shutdown().await?;
        // Keep the downstream going until the agent is done answering.
        std::future::pending::<std::io::Result<()>>().await
    };
    let downstream = async {
        tokio::io::copy(&mut from_agent, &mut output).await?;
        output.flush().await
    };
    tokio::select! {
        r = upstream => r?,
        r = downstream => r?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn relays_both_ways_and_ends_when_the_agent_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let agent = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(b"reply to ").await.unwrap();
            s.write_all(&got).await.unwrap();
        });
        let (client, bridge_in) = tokio::io::duplex(64);
        let (bridge_out, mut client_out) = tokio::io::duplex(64);
        let stream = UnixStream::connect(&path).await.unwrap();
        let relayed = tokio::spawn(relay(bridge_in, bridge_out, stream));
        let mut client = client;
        client.write_all(b"request\n").await.unwrap();
        drop(client);
        let mut answer = Vec::new();
        client_out.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"reply to request\n");
        relayed.await.unwrap().unwrap();
        agent.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_clear_error() {
        let err = bridge(Path::new("/nonexistent/agent.sock"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/agent.sock"), "{err}");
    }
}
