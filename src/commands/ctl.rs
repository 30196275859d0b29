//! `route-failover ctl`: asks the running agent over its control socket.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::control::client;
use crate::control::protocol::{Answer, Request};
use crate::control::render;

/// Status comes from a snapshot at once; an action waits for the probe
/// loop, which may be in the middle of a round (at most one interval).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `request`, prints the answer (JSON with `json`), and returns the
/// exit status: 0 done, 1 refused by the agent, 69/75/76/77 when it could
/// not be asked (see [`client::ClientError::exit_code`]).
pub async fn ctl(socket: &Path, json: bool, request: Request) -> anyhow::Result<ExitCode> {
    match print(socket, json, request).await {
        // `ctl status | head`: the reader had what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => Ok(other?),
    }
}

async fn print(socket: &Path, json: bool, request: Request) -> std::io::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match client::ask(socket, request, TIMEOUT).await {
        Ok(answer) => {
            if json {
                serde_json::to_writer_pretty(&mut stdout, &answer)?;
                writeln!(stdout)?;
            }
            Ok(match answer {
                Answer::Status { status } => {
                    if !json {
                        write!(stdout, "{}", render::status(&status))?;
                    }
                    ExitCode::SUCCESS
                }
                Answer::Done { answer, .. } => {
                    if !json {
                        writeln!(stdout, "{answer}")?;
                    }
                    ExitCode::SUCCESS
                }
                Answer::Error { error } => {
                    eprintln!("error: the agent refused: {error}");
                    ExitCode::FAILURE
                }
            })
        }
        Err(e) => {
            if json {
                let error = serde_json::json!({
                    "result": "error",
                    "kind": e.kind(),
                    "error": e.to_string(),
                });
                serde_json::to_writer_pretty(&mut stdout, &error)?;
                writeln!(stdout)?;
            }
            eprintln!("error: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}
