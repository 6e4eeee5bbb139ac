//! The recovery runner's records, written through the engine like every other change to the store: the
//! PENDING recoveries it runs, and each attempt and outcome it records. An outcome is written at once and
//! made durable when the runner says (it batches flushes: one per pass, or the next attempt's). A recovery's
//! end, once written, is reported like the jobs' status changes ([`events::recovery_ended`]) and counted
//! ([`super::tally`]).

use std::sync::Arc;

use super::engine::Engine;
use super::events;
use crate::model::RecoveryRecord;
use crate::store::{Store, StoreError};

impl Engine {
    /// The PENDING recoveries, of `thing` only if given; `None` if the store failed (logged).
    pub async fn open_recoveries(
        self: &Arc<Self>,
        thing: Option<String>,
    ) -> Option<Vec<RecoveryRecord>> {
        self.recovery_work(move |store| store.open_recoveries(thing.as_deref()))
            .await
    }

    /// Records `recovery` as it now stands, durable at once if `flush`, and reports (and counts) it if it
    /// ended; false if the store failed (logged; the recovery stays as it was, and nothing is reported).
    pub async fn record_recovery(self: &Arc<Self>, recovery: RecoveryRecord, flush: bool) -> bool {
        let ended = events::recovery_ended(&recovery);
        let state = recovery.state;
        let recorded = self
            .recovery_work(move |store| {
                let before = store.recovery(recovery.id)?.map(|stored| stored.state);
                store.update_recovery(&recovery)?;
                if flush {
                    store.flush()?;
                }
                Ok(before)
            })
            .await;
        let Some(before) = recorded else {
            return false;
        };
        if ended.is_some() && before != Some(state) {
            crate::metrics::get().recovery_ended(state.as_str());
        }
        self.counted_recovery(before, state);
        self.report(|| ended.into_iter().collect());
        true
    }

    /// Makes every recovery recorded so far durable; false if the store failed (logged).
    pub async fn flush_recoveries(self: &Arc<Self>) -> bool {
        self.recovery_work(|store| store.flush()).await.is_some()
    }

    /// Runs the runner's store work on the blocking pool. Not refused while the gateway shuts down: the
    /// runner stops on its own, and an outcome it has is worth keeping.
    async fn recovery_work<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Option<T> {
        match self.on_blocking_pool(|engine| work(engine.store())).await {
            Ok(Ok(value)) => Some(value),
            // A store out of service logged why once; the runner's polling would repeat it.
            Ok(Err(e)) if e.is_unavailable() => {
                tracing::debug!(error = %e, "recovery store access failed");
                None
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "recovery store access failed");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "recovery store task failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_fixture::fixture;
    use super::super::StatusChange;
    use crate::model::{Execution, Job, RecoveryReason, RecoveryRecord, RecoveryState};

    #[tokio::test]
    async fn a_recovery_is_reported_once_its_end_is_recorded() {
        let mut f = fixture(10, &[]);
        let job = Job::created("j1", None, "{}".into(), vec!["t1".into()], 1_000);
        let execution = Execution::queued("j1", "t1", 1_000);
        let mut recovery =
            RecoveryRecord::for_execution(&job, &execution, RecoveryReason::JobDeleted, 2_000);
        recovery.id = 3;
        recovery.attempts = 1;
        assert!(f.engine.record_recovery(recovery.clone(), false).await);
        recovery.state = RecoveryState::Recovered;
        assert!(f.engine.record_recovery(recovery, true).await);
        let reported = f.changes.try_recv().unwrap();
        assert!(
            matches!(
                reported,
                StatusChange::Recovery {
                    recovery_id: 3,
                    status: RecoveryState::Recovered,
                    attempts: 1,
                    ..
                }
            ),
            "{reported:?}"
        );
        assert!(
            f.changes.try_recv().is_err(),
            "the PENDING record was reported"
        );
    }
}
