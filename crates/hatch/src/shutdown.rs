//! When the long-running commands (`up`, `server`, `node`) stop: Ctrl-C or SIGTERM.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves once the operator asks hatch to stop, by Ctrl-C (SIGINT) or SIGTERM.
pub async fn requested() -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}
