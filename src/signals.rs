//! Unix signals for the daemon: SIGTERM and SIGINT stop it, SIGHUP reloads
//! the configuration, SIGUSR1 asks for failback (the operator's word for
//! `failback = "manual"` and for clearing flap damping).

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::agent::Control;

/// Cancels `shutdown` on SIGTERM or SIGINT, forwards SIGUSR1 to `control`
/// and sends on `reload` for SIGHUP.
pub fn install(
    shutdown: CancellationToken,
    control: Control,
    reload: mpsc::UnboundedSender<()>,
) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: stopping"); shutdown.cancel(); return; }
                _ = int.recv() => { info!("SIGINT: stopping"); shutdown.cancel(); return; }
                _ = hup.recv() => { info!("SIGHUP: reloading the configuration"); let _ = reload.send(()); }
                _ = usr1.recv() => control.request_failback(),
            }
        }
    });
    Ok(())
}
