//! systemd's notify protocol (`Type=notify`): `READY=1` once the gateway takes clients, and, when the
//! unit sets `WatchdogSec`, `WATCHDOG=1` every half period from a loop that proves the jobs store answers
//! (a read on the blocking pool, within the period) and the async runtime runs. A gateway wedged in
//! either stops pinging, and systemd restarts it, not only a crashed one. (A store out of service after a
//! full disk still answers, with its refusal; `/healthz` reports it.) Without `NOTIFY_SOCKET` (not
//! under systemd) nothing is sent.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

use crate::store::Store;

/// Tells the service manager the gateway is ready.
pub fn ready() {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell the service manager that sprig is ready");
    }
}

/// Pings the service manager's watchdog while the store answers, until `shutdown` turns true. Returns at
/// once when the unit has no watchdog.
pub async fn watchdog(store: Arc<Store>, mut shutdown: watch::Receiver<bool>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let interval = period / 2;
    tracing::info!(
        period_ms = period.as_millis() as u64,
        "systemd watchdog: pinging while the jobs store answers"
    );
    loop {
        if store_answers(&store, interval).await {
            if let Err(e) = sd_notify::notify(&[NotifyState::Watchdog]) {
                tracing::warn!(error = %e, "cannot ping the service manager's watchdog");
            }
        } else {
            tracing::warn!("systemd watchdog: the jobs store did not answer in time; not pinging");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = async { shutdown.wait_for(|stop| *stop).await.is_ok() } => return,
        }
    }
}

/// Whether a read of the store completes within `within`. A store out of service (a full disk) answers
/// too, with its refusal: restarting the gateway would not make room, and devices are still served; only
/// a store that does not answer at all is wedged.
async fn store_answers(store: &Arc<Store>, within: Duration) -> bool {
    let store = store.clone();
    let read = tokio::task::spawn_blocking(move || {
        let _ = store.job("~watchdog");
    });
    matches!(tokio::time::timeout(within, read).await, Ok(Ok(())))
}
