//! The control socket: a running agent answers `route-failover ctl`.
//!
//! Data flows one way. The agent's events go to a [`snapshot::StatusSink`],
//! which keeps the live view up to date; the [`server`] answers `status`
//! from that view and hands operator actions to the agent's
//! [`crate::agent::Control`], so a client never waits on the probe loop for
//! a status and never touches the agent's state directly.
//!
//! - [`protocol`]: one JSON request line, one JSON answer line; the [`protocol::Status`] view.
//! - [`snapshot`]: the sink that keeps the live view, and its read side.
//! - [`server`]: the socket file (mode 0660, group, stale sockets) and the accept loop.
//! - [`client`]: what `ctl` sends, and what went wrong when it could not ask.
//! - [`render`]: the human-readable `ctl status`.

pub mod client;
pub mod protocol;
pub mod render;
pub mod server;
pub mod snapshot;

use std::path::PathBuf;

use crate::config::ControlConfig;

/// The socket's name inside the runtime directory.
const SOCKET_NAME: &str = "control.sock";

/// Where the agent listens (and `ctl` asks) unless told otherwise:
/// systemd's `RuntimeDirectory` (`$RUNTIME_DIRECTORY`) when set, else
/// `/run/route-failover`, like the instance lock.
pub fn default_socket() -> PathBuf {
    let runtime = std::env::var_os("RUNTIME_DIRECTORY")
        .map(|dir| {
            // systemd may list several, separated by colons; the first is ours.
            dir.to_string_lossy()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .filter(|dir| !dir.is_empty());
    PathBuf::from(runtime.unwrap_or_else(|| "/run/route-failover".to_string())).join(SOCKET_NAME)
}

/// The socket the config asks for, else [`default_socket`].
pub fn socket_path(config: &ControlConfig) -> PathBuf {
    config.socket.clone().unwrap_or_else(default_socket)
}
