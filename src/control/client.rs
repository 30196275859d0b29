//! The client side: one request to the agent's socket, one answer, and an
//! error that says what went wrong and what to do about it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::protocol::{encode, Answer, Request, MAX_ANSWER};

/// Exit status: the agent is not running (`EX_UNAVAILABLE`).
pub const EXIT_NOT_RUNNING: u8 = 69;
/// Exit status: the agent did not answer in time (`EX_TEMPFAIL`).
pub const EXIT_NO_ANSWER: u8 = 75;
/// Exit status: the answer was not understood (`EX_PROTOCOL`).
pub const EXIT_PROTOCOL: u8 = 76;
/// Exit status: permission denied on the socket (`EX_NOPERM`).
pub const EXIT_NO_PERMISSION: u8 = 77;

/// Why the agent could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no control socket at {0}: the agent is not running (systemctl status route-failover), \
         or it listens elsewhere ([control] socket in its config; pass --socket)"
    )]
    NoSocket(PathBuf),
    #[error(
        "nothing answers on {0}: the agent is not running (the socket was left by an agent that did not \
         stop cleanly); start it: systemctl start route-failover"
    )]
    NotRunning(PathBuf),
    #[error(
        "permission denied on {0}: run as root (sudo), or as a member of the socket's group \
         ([control] group in the agent's config, and Group= in its unit; see the README, \"Operate it\")"
    )]
    PermissionDenied(PathBuf),
    #[error(
        "the agent did not answer on {path} within {after:?}; it may be busy or stuck \
         (journalctl -u route-failover); an action may still be carried out: check with `ctl status`"
    )]
    NoAnswer { path: PathBuf, after: Duration },
    #[error("could not understand the agent's answer on {path}: {detail} (are `ctl` and the agent the same version? route-failover --version)")]
    Protocol { path: PathBuf, detail: String },
    #[error("cannot talk to the agent on {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
}

impl ClientError {
    /// The exit status `ctl` ends with.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NoSocket(_) | ClientError::NotRunning(_) => EXIT_NOT_RUNNING,
            ClientError::PermissionDenied(_) => EXIT_NO_PERMISSION,
            ClientError::NoAnswer { .. } => EXIT_NO_ANSWER,
            ClientError::Protocol { .. } => EXIT_PROTOCOL,
            ClientError::Io { .. } => 1,
        }
    }

    /// A short name for machines (`ctl --json`).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::NoSocket(_) => "no-socket",
            ClientError::NotRunning(_) => "not-running",
            ClientError::PermissionDenied(_) => "permission-denied",
            ClientError::NoAnswer { .. } => "no-answer",
            ClientError::Protocol { .. } => "protocol",
            ClientError::Io { .. } => "io",
        }
    }

    fn of(path: &Path, error: io::Error) -> Self {
        let path = path.to_path_buf();
        match error.kind() {
            io::ErrorKind::NotFound => ClientError::NoSocket(path),
            io::ErrorKind::ConnectionRefused => ClientError::NotRunning(path),
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path),
            _ => ClientError::Io { path, error },
        }
    }
}

/// Sends `request` to the agent on `socket` and waits up to `timeout` for
/// the answer.
pub async fn ask(
    socket: &Path,
    request: Request,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let exchange = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(|e| ClientError::of(socket, e))?;
        stream
            .write_all(&encode(&request))
            .await
            .map_err(|e| ClientError::of(socket, e))?;
        let mut text = Vec::new();
        let limit = u64::try_from(MAX_ANSWER).unwrap_or(u64::MAX);
        stream
            .take(limit)
            .read_to_end(&mut text)
            .await
            .map_err(|e| ClientError::of(socket, e))?;
        Ok(text)
    };
    let text = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::NoAnswer {
            path: socket.to_path_buf(),
            after: timeout,
        })??;
    if text.is_empty() {
        return Err(ClientError::Protocol {
            path: socket.to_path_buf(),
            detail: "it closed the connection without an answer".to_string(),
        });
    }
    serde_json::from_slice(&text).map_err(|e| ClientError::Protocol {
        path: socket.to_path_buf(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_way_of_not_reaching_the_agent_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let request = Request::Status {};
        let t = Duration::from_secs(5);

        let e = ask(&path, request, t).await.unwrap_err();
        assert!(matches!(e, ClientError::NoSocket(_)), "{e}");
        assert_eq!(e.exit_code(), EXIT_NOT_RUNNING);
        assert!(e.to_string().contains("--socket"), "{e}");

        // A socket file left behind, nobody listening.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let e = ask(&path, request, t).await.unwrap_err();
        assert!(matches!(e, ClientError::NotRunning(_)), "{e}");
        assert_eq!(e.exit_code(), EXIT_NOT_RUNNING);
        std::fs::remove_file(&path).unwrap();

        // Something that listens but never answers.
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let silent = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(stream);
        });
        let e = ask(&path, request, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::NoAnswer { .. }), "{e}");
        assert_eq!(e.exit_code(), EXIT_NO_ANSWER);
        silent.abort();
        std::fs::remove_file(&path).unwrap();

        // Something that answers nonsense.
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 64];
            let _ = stream.read(&mut request).await.unwrap();
            stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\n")
                .await
                .unwrap();
        });
        let e = ask(&path, request, t).await.unwrap_err();
        assert!(matches!(e, ClientError::Protocol { .. }), "{e}");
        assert_eq!(e.exit_code(), EXIT_PROTOCOL);
    }
}
