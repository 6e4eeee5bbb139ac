//! `sprig-plugin-rollback`: tells an interrupted device to roll back, and retries until it acknowledges.
//!
//! Config (a `[[recovery]]` table):
//!
//! ```toml
//! topic = "$aws/things/{thing}/rollback"
//! payload = "{\"jobId\":\"{jobId}\",\"action\":\"rollback\"}"
//! qos = 1                 # optional, default 1
//! ack_timeout_ms = 30000  # optional: how long to wait for the device's acknowledgement per attempt
//! max_attempts = 5        # optional: publications before giving up
//! ```
//!
//! `topic` and `payload` are templates: `{thing}`, `{jobId}`, `{namespace}` and `{status}` are replaced
//! (see `RecoveryContext::render`). Each attempt:
//! - the device acknowledged the previous attempt's command (`acknowledged`) negatively, by the sdk's
//!   convention (`RecoveryContext::negative_acknowledgement`: a JSON payload such as
//!   `{"status": "FAILED", "reason": "flash is read-only"}`): no action, `Failed` with the device's reason;
//! - the device acknowledged it otherwise (any other payload, `{}` or empty included): no action,
//!   `Recovered`;
//! - otherwise, after `max_attempts` unacknowledged publications: no action, `Failed`;
//! - otherwise: publish the rendered command and answer `RetryLater { after_ms: ack_timeout_ms }`, so the
//!   gateway calls again when the device acknowledges or the timeout elapses.

use sprig_sdk::serde::Deserialize;
use sprig_sdk::{Action, Outcome, Recovery, RecoveryContext, RecoveryHandler};

/// The plugin's config table.
#[derive(Debug, Deserialize)]
#[serde(crate = "sprig_sdk::serde", deny_unknown_fields)]
pub struct Config {
    /// Topic template.
    pub topic: String,
    /// Payload template.
    pub payload: String,
    /// QoS of the command (0 or 1).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// How long to wait for the acknowledgement of one publication, in milliseconds.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// How many unacknowledged publications before the recovery fails.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_qos() -> u8 {
    1
}

fn default_ack_timeout_ms() -> u64 {
    30_000
}

fn default_max_attempts() -> u32 {
    5
}

/// The handler.
pub struct Rollback {
    config: Config,
}

impl RecoveryHandler for Rollback {
    type Config = Config;

    fn new(config: Config) -> Result<Self, sprig_sdk::Error> {
        if config.topic.is_empty() {
            return Err("rollback: `topic` must not be empty".into());
        }
        if config.qos > 1 {
            return Err(format!("rollback: `qos` is {}, must be 0 or 1", config.qos).into());
        }
        if config.max_attempts == 0 {
            return Err("rollback: `max_attempts` must be at least 1".into());
        }
        Ok(Rollback { config })
    }

    fn recover(&mut self, ctx: &RecoveryContext) -> Result<Recovery, sprig_sdk::Error> {
        if ctx.acknowledged {
            let outcome = match ctx.negative_acknowledgement() {
                Some(reason) => {
                    sprig_sdk::warn!(
                        "{} could not roll back {}: {reason}",
                        ctx.thing_name,
                        ctx.job_id
                    );
                    Outcome::Failed {
                        reason: format!(
                            "{} reported that the rollback of {} failed: {reason}",
                            ctx.thing_name, ctx.job_id
                        ),
                    }
                }
                None => Outcome::Recovered,
            };
            return Ok(Recovery {
                actions: Vec::new(),
                outcome,
            });
        }
        if ctx.attempt > self.config.max_attempts {
            return Ok(Recovery {
                actions: Vec::new(),
                outcome: Outcome::Failed {
                    reason: format!(
                        "{} did not acknowledge the rollback of {} after {} attempts",
                        ctx.thing_name, ctx.job_id, self.config.max_attempts
                    ),
                },
            });
        }
        sprig_sdk::debug!(
            "asking {} to roll back {} (attempt {})",
            ctx.thing_name,
            ctx.job_id,
            ctx.attempt
        );
        Ok(Recovery {
            actions: vec![Action::Publish {
                topic: ctx.render(&self.config.topic),
                payload: ctx.render(&self.config.payload),
                qos: self.config.qos,
            }],
            outcome: Outcome::RetryLater {
                after_ms: self.config.ack_timeout_ms,
            },
        })
    }
}

sprig_sdk::export_plugin!(Rollback);

#[cfg(test)]
mod tests {
    use sprig_sdk::serde_json::{self, json};

    use super::*;

    fn rollback() -> Rollback {
        Rollback::new(Config {
            topic: "$aws/things/{thing}/rollback".into(),
            payload: "{\"jobId\":\"{jobId}\"}".into(),
            qos: 1,
            ack_timeout_ms: 1000,
            max_attempts: 3,
        })
        .unwrap()
    }

    fn context(attempt: u32, acknowledgement: Option<serde_json::Value>) -> RecoveryContext {
        serde_json::from_value(json!({
            "thingName": "pump-1", "jobId": "fw-1", "executionStatus": "IN_PROGRESS",
            "reason": "forceDeleted", "attempt": attempt,
            "acknowledged": acknowledgement.is_some(), "acknowledgement": acknowledgement
        }))
        .unwrap()
    }

    #[test]
    fn publishes_until_acknowledged_then_recovers() {
        let mut handler = rollback();
        let first = handler.recover(&context(1, None)).unwrap();
        assert_eq!(first.outcome, Outcome::RetryLater { after_ms: 1000 });
        assert_eq!(first.validate_for("pump-1"), Ok(()));
        assert_eq!(first.actions.len(), 1);
        for positive in [json!({}), json!(""), json!({"status": "SUCCEEDED"})] {
            let done = handler.recover(&context(2, Some(positive))).unwrap();
            assert_eq!(done.outcome, Outcome::Recovered);
            assert!(done.actions.is_empty());
        }
        let gave_up = handler.recover(&context(4, None)).unwrap();
        assert!(matches!(gave_up.outcome, Outcome::Failed { .. }));
    }

    #[test]
    fn a_negative_acknowledgement_fails_with_the_devices_reason() {
        let ack = json!({"status": "FAILED", "reason": "flash is read-only"});
        let answer = rollback().recover(&context(2, Some(ack))).unwrap();
        let Outcome::Failed { reason } = answer.outcome else {
            panic!("{answer:?}");
        };
        assert!(reason.contains("flash is read-only"), "{reason}");
        assert!(
            reason.contains("pump-1") && reason.contains("fw-1"),
            "{reason}"
        );
        assert!(answer.actions.is_empty());
    }
}
