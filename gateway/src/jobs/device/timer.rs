//! The step timer: an IN_PROGRESS execution whose `stepTimeoutInMinutes` ran out becomes TIMED_OUT, as
//! AWS's does. A tokio task checks every second; the check itself is a blocking engine call, so a test
//! passes its own `now`.

use std::sync::Arc;
use std::time::Duration;

use crate::jobs::clock::now_ms;
use crate::jobs::engine::Engine;
use crate::jobs::transitions;
use crate::store::StoreError;

impl Engine {
    /// Moves every IN_PROGRESS execution whose step timer ran out by `now` to TIMED_OUT; returns how many.
    pub fn expire_step_timeouts(&self, now: i64) -> Result<usize, StoreError> {
        let store = self.store();
        let _writer = store.lock_writes();
        let mut expired = 0;
        for (job_id, thing) in store.due_deadlines(now, 1000)? {
            let (Some(job), Some(execution)) =
                (store.job(&job_id)?, store.execution(&job_id, &thing)?)
            else {
                continue;
            };
            let Some(timed_out) = transitions::time_out(&job, &execution, now) else {
                continue;
            };
            self.commit_execution(&job, timed_out)?;
            tracing::info!(job_id, thing, "step timeout: execution TIMED_OUT");
            expired += 1;
        }
        Ok(expired)
    }
}

/// Checks step timers every second until `shutdown` turns true.
pub async fn run_step_timeouts(
    engine: Arc<Engine>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        let expired = engine.on_blocking_pool(|engine| engine.expire_step_timeouts(now_ms()));
        match expired.await {
            Ok(Ok(_)) => {}
            // A store out of service logged why once; this would repeat it every second.
            Ok(Err(e)) if e.is_unavailable() => {
                tracing::debug!(error = %e, "step timeout check failed")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "step timeout check failed"),
            Err(e) => tracing::error!(error = %e, "step timeout task failed"),
        }
    }
}
