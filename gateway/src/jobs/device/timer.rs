//! The step timer: an IN_PROGRESS execution whose `stepTimeoutInMinutes` ran out becomes TIMED_OUT, as
//! AWS's does. A tokio task checks every second; the check itself is a blocking engine call, so a test
//! passes its own `now`.

use std::sync::Arc;
use std::time::Duration;

use crate::jobs::clock::now_ms;
use crate::jobs::engine::{Engine, ExecutionGroup};
use crate::jobs::transitions;
use crate::model::Job;
use crate::store::StoreError;

impl Engine {
    /// Moves every IN_PROGRESS execution whose step timer ran out by `now` to TIMED_OUT, those of one
    /// job in one transaction (see `batch` for why); returns how many.
    pub fn expire_step_timeouts(&self, now: i64) -> Result<usize, StoreError> {
        let store = self.store();
        let _writer = store.lock_writes();
        let mut groups: Vec<(Job, ExecutionGroup)> = Vec::new();
        for (job_id, thing) in store.due_deadlines(now, 1000)? {
            let at = match groups.iter().position(|(job, _)| job.job_id == job_id) {
                Some(at) => at,
                None => {
                    let Some(job) = store.job(&job_id)? else {
                        continue;
                    };
                    let group = ExecutionGroup::new(&job);
                    groups.push((job, group));
                    groups.len() - 1
                }
            };
            let Some(execution) = store.execution(&job_id, &thing)? else {
                continue;
            };
            let group = &mut groups[at].1;
            if let Some(timed_out) = transitions::time_out(&group.job, &execution, now) {
                group.push(timed_out);
            }
        }
        let mut expired = 0;
        for (before, group) in groups.into_iter().filter(|(_, g)| !g.is_empty()) {
            for execution in self.commit_execution_group(&before, group)?.1 {
                let (job_id, thing) = (&execution.job_id, &execution.thing_name);
                tracing::info!(job_id, thing, "step timeout: execution TIMED_OUT");
                expired += 1;
            }
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
