//! The control socket's server: the socket file and the accept loop.
//!
//! The socket is made mode 0660, in the configured group, and removed on a
//! clean exit. A socket file left by a crash is replaced; one that a live
//! process still answers on is not (two agents must not share one). Each
//! connection runs in its own task: one request line, one answer line.
//! `status` is answered from the [`StatusView`] at once; an operator action
//! is handed to the agent, with the caller's uid from `SO_PEERCRED`.

use std::future::Future;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::protocol::{decode_request, encode, Answer, Request, MAX_REQUEST};
use super::snapshot::StatusView;
use crate::agent::{Control, OperatorAction};
use crate::config::ControlGroup;

/// Read and write (owner and group), nothing for others.
pub const SOCKET_MODE: u32 = 0o660;

/// A client has this long to send its request, and to take its answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; more wait in the listen backlog.
const MAX_CLIENTS: usize = 16;

/// What carries out operator actions: the agent's [`Control`] (a fake in tests).
pub trait Operate: Clone + Send + Sync + 'static {
    /// Carries out `action` for `uid`; the answer says what was done,
    /// `None` when the agent has stopped.
    fn operate(
        &self,
        action: OperatorAction,
        uid: Option<u32>,
    ) -> impl Future<Output = Option<String>> + Send;
}

impl Operate for Control {
    fn operate(
        &self,
        action: OperatorAction,
        uid: Option<u32>,
    ) -> impl Future<Output = Option<String>> + Send {
        Control::operate(self, action, uid)
    }
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "another process answers on the control socket {path}: another agent uses it. \
         Give this one its own ([control] socket = \"…\" in its config) or stop the other"
    )]
    Live { path: PathBuf },
    #[error("{path} exists and is not a socket: refusing to replace it; remove it, or set [control] socket to another path")]
    NotASocket { path: PathBuf },
    #[error("cannot create the control socket {path}: {error}{hint}")]
    Io {
        path: PathBuf,
        error: io::Error,
        hint: &'static str,
    },
    #[error(
        "cannot give the control socket {path} to group {group}: {error}; the agent must run in that group: \
         under systemd set Group={group} in the unit (it may not chown), by hand run it as root"
    )]
    Group {
        path: PathBuf,
        group: String,
        error: io::Error,
    },
}

fn io_error(path: &Path, error: io::Error) -> BindError {
    let hint = match error.kind() {
        io::ErrorKind::PermissionDenied => {
            ": run the agent as root or under its systemd unit (RuntimeDirectory=route-failover), \
             or set [control] socket to a path this user may create"
        }
        _ => "",
    };
    BindError::Io {
        path: path.to_path_buf(),
        error,
        hint,
    }
}

/// The bound socket; its file is removed when this (or the server it was
/// handed to) is dropped.
#[derive(Debug)]
pub struct ControlSocket {
    listener: std::os::unix::net::UnixListener,
    file: SocketFile,
}

impl ControlSocket {
    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

/// The socket file as we made it: removed on drop, unless another
/// process has put its own in its place meanwhile.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            match std::fs::remove_file(&self.path) {
                Ok(()) => debug!(socket = %self.path.display(), "control socket removed"),
                Err(e) => {
                    warn!(socket = %self.path.display(), error = %e, "cannot remove the control socket");
                }
            }
        }
    }
}

/// Creates the socket at `path`: replaces a stale one, refuses to take
/// over a live one or any other file, then sets its group and mode 0660.
pub fn bind(path: &Path, group: Option<&ControlGroup>) -> Result<ControlSocket, BindError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_error(path, e))?;
    }
    clear_stale(path)?;
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| io_error(path, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_error(path, e))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_error(path, e))?;
    // From here on the file is ours, and removed again if a step fails.
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Some(group) = group {
        // The unit's seccomp filter forbids chown; there the process's own
        // group (Group=) makes this a no-op.
        if meta.gid() != group.gid {
            std::os::unix::fs::chown(path, None, Some(group.gid)).map_err(|error| {
                BindError::Group {
                    path: path.to_path_buf(),
                    group: group.name.clone(),
                    error,
                }
            })?;
        }
        warn_if_unreachable(path, group);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| io_error(path, e))?;
    Ok(ControlSocket { listener, file })
}

/// Removes a socket file nothing answers on (left by a crash).
fn clear_stale(path: &Path) -> Result<(), BindError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(path, e)),
    };
    if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
        return Err(BindError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(BindError::Live {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(socket = %path.display(), "replacing a stale control socket (left by an agent that did not stop cleanly)");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(path, e)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Says so when members of `group` could not reach the socket because a
/// directory on the way is closed to them.
fn warn_if_unreachable(path: &Path, group: &ControlGroup) {
    for dir in path.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.mode();
        let open = mode & 0o001 != 0 || (mode & 0o010 != 0 && meta.gid() == group.gid);
        if !open {
            warn!(
                socket = %path.display(),
                directory = %dir.display(),
                mode = format!("{:04o}", mode & 0o7777),
                group = %group.name,
                "members of the control group cannot reach the socket: this directory is closed to them \
                 (under systemd: Group= in the unit and RuntimeDirectoryMode=0750)"
            );
            return;
        }
    }
}

/// Answers clients until `stop` is cancelled, then removes the socket.
pub async fn serve<O: Operate>(
    socket: ControlSocket,
    ops: O,
    view: StatusView,
    stop: CancellationToken,
) {
    let ControlSocket { listener, file } = socket;
    let listener = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(socket = %file.path.display(), error = %e, "cannot serve the control socket");
            return;
        }
    };
    info!(socket = %file.path.display(), "control socket ready: route-failover ctl");
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    break;
                };
                let (ops, view) = (ops.clone(), view.clone());
                tokio::spawn(async move {
                    handle(stream, &ops, &view).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of file descriptors, say: do not spin on it.
                warn!(error = %e, "control socket: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    drop(file);
}

/// One connection: one request, one answer.
async fn handle<O: Operate>(stream: UnixStream, ops: &O, view: &StatusView) {
    let cred = stream.peer_cred().ok();
    let uid = cred.map(|c| c.uid());
    let pid = cred.and_then(|c| c.pid());
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let limit = u64::try_from(MAX_REQUEST).unwrap_or(u64::MAX);
    let mut reader = BufReader::new(read.take(limit));
    let answer = match tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Answer::Error {
            error: format!("no request within {IO_TIMEOUT:?}"),
        },
        Ok(Err(e)) => Answer::Error {
            error: format!("cannot read the request: {e}"),
        },
        Ok(Ok(n)) if n >= MAX_REQUEST && !line.ends_with('\n') => {
            // Read what is left (within bounds), or closing with unread data
            // would reset the connection before the client reads the answer.
            let rest = reader.into_inner().into_inner();
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                tokio::io::copy(&mut rest.take(1 << 20), &mut tokio::io::sink()),
            )
            .await;
            Answer::Error {
                error: format!("request longer than {MAX_REQUEST} bytes"),
            }
        }
        Ok(Ok(_)) => {
            let request = decode_request(&line);
            debug!(?request, ?uid, ?pid, "control request");
            answer(request, uid, ops, view).await
        }
    };
    let sent = tokio::time::timeout(IO_TIMEOUT, async {
        write.write_all(&encode(&answer)).await?;
        write.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        debug!(?uid, ?pid, "control client went away before its answer");
    }
}

async fn answer<O: Operate>(
    request: Result<Request, String>,
    uid: Option<u32>,
    ops: &O,
    view: &StatusView,
) -> Answer {
    match request {
        Err(error) => Answer::Error { error },
        Ok(Request::Status {}) => Answer::Status {
            status: Box::new(view.status()),
        },
        // Every action is logged with who asked: no uid, no action.
        Ok(Request::Operate { .. }) if uid.is_none() => Answer::Error {
            error: "cannot tell who is asking (SO_PEERCRED): refusing the action".to_string(),
        },
        Ok(Request::Operate { action }) => match ops.operate(action, uid).await {
            Some(answer) => Answer::Done { action, answer },
            None => Answer::Error {
                error: "the agent is stopping: nothing was done".to_string(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::Config;
    use crate::control::snapshot;
    use crate::state::OperatorRecord;

    /// Records what it was asked, answers like the agent.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Asked>>>);

    type Asked = (OperatorAction, Option<u32>);

    impl Operate for Recorder {
        async fn operate(&self, action: OperatorAction, uid: Option<u32>) -> Option<String> {
            self.0.lock().unwrap().push((action, uid));
            Some(format!("did {action:?}"))
        }
    }

    fn config() -> Config {
        Config::parse(
            r#"
[aws]
backend = "memory"
[probe]
targets = ["198.18.0.10"]
[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#,
            Path::new("test.toml"),
        )
        .unwrap()
    }

    async fn ask(path: &Path, line: &str) -> Answer {
        let mut stream = UnixStream::connect(path).await.unwrap();
        stream.write_all(line.as_bytes()).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        assert!(text.ends_with('\n'), "{text:?}");
        serde_json::from_str(&text).unwrap()
    }

    struct Running {
        path: PathBuf,
        ops: Recorder,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    fn start() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let socket = bind(&path, None).unwrap();
        let (_sink, view) = snapshot::channel(&config(), false, OperatorRecord::default());
        let ops = Recorder::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(socket, ops.clone(), view, stop.clone()));
        Running {
            path,
            ops,
            stop,
            task,
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn answers_status_and_actions_with_the_callers_uid_then_removes_the_socket() {
        let r = start();
        let mode = std::fs::metadata(&r.path).unwrap().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE, "{mode:o}");

        let Answer::Status { status } = ask(&r.path, "{\"command\":\"status\"}\n").await else {
            panic!("not a status");
        };
        assert_eq!(status.agent.pid, std::process::id());
        assert_eq!(
            status.path, None,
            "nothing is decided before the tables are read"
        );

        let answer = ask(&r.path, "{\"command\":\"operate\",\"action\":\"pause\"}\n").await;
        assert_eq!(
            answer,
            Answer::Done {
                action: OperatorAction::Pause,
                answer: "did Pause".into()
            }
        );
        let me = uzers::get_current_uid();
        assert_eq!(
            *r.ops.0.lock().unwrap(),
            vec![(OperatorAction::Pause, Some(me))]
        );

        let Answer::Error { error } = ask(&r.path, "{\"command\":\"reboot\"}\n").await else {
            panic!("a bad request was not refused");
        };
        assert!(error.contains("not a request"), "{error}");
        let long = format!("{}\n", "x".repeat(MAX_REQUEST + 10));
        let Answer::Error { error } = ask(&r.path, &long).await else {
            panic!("a long request was not refused");
        };
        assert!(error.contains("longer than"), "{error}");
        assert_eq!(r.ops.0.lock().unwrap().len(), 1);

        r.stop.cancel();
        r.task.await.unwrap();
        assert!(!r.path.exists(), "the socket outlived the server");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_a_live_one_and_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");

        // Left by a crash: a socket file nothing listens on.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let socket = bind(&path, None).expect("a stale socket is replaced");
        // Live: refused, and left alone.
        let e = bind(&path, None).unwrap_err();
        assert!(matches!(e, BindError::Live { .. }), "{e}");
        assert!(e.to_string().contains("[control] socket"), "{e}");
        assert!(path.exists());
        drop(socket);
        assert!(!path.exists());

        // Not a socket: never deleted.
        std::fs::write(&path, "precious").unwrap();
        let e = bind(&path, None).unwrap_err();
        assert!(matches!(e, BindError::NotASocket { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }

    #[test]
    fn a_socket_replaced_by_another_agent_is_not_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let first = bind(&path, None).unwrap();
        // Someone removed ours and another agent bound its own.
        std::fs::remove_file(&path).unwrap();
        let _second = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(first);
        assert!(path.exists(), "dropped another agent's socket");
    }

    #[test]
    fn the_socket_goes_to_the_configured_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        // Our own group needs no privilege: the socket is already in it.
        let gid = uzers::get_effective_gid();
        let group = ControlGroup {
            name: "ours".into(),
            gid,
        };
        let socket = bind(&path, Some(&group)).unwrap();
        let meta = std::fs::metadata(socket.path()).unwrap();
        assert_eq!((meta.gid(), meta.mode() & 0o777), (gid, SOCKET_MODE));
        drop(socket);
        if uzers::get_effective_uid() == 0 {
            // Root may give it to any group.
            let other = ControlGroup {
                name: "other".into(),
                gid: gid + 4242,
            };
            let socket = bind(&path, Some(&other)).unwrap();
            assert_eq!(std::fs::metadata(socket.path()).unwrap().gid(), gid + 4242);
        }
    }
}
