//! `sprig-plugin-reset`: resets an interrupted execution's recorded state to configured values.
//!
//! Config (a `[[recovery]]` table):
//!
//! ```toml
//! status_details = { state = "reset", by = "sprig", job = "{jobId}" }
//! ```
//!
//! Answers one `SetStatusDetails` action with `status_details` (values are templates: `{thing}`,
//! `{jobId}`, `{namespace}`, `{status}` are replaced) and the outcome `Recovered`.

use std::collections::BTreeMap;

use sprig_sdk::serde::Deserialize;
use sprig_sdk::{Action, Outcome, Recovery, RecoveryContext, RecoveryHandler};

/// The plugin's config table.
#[derive(Debug, Deserialize)]
#[serde(crate = "sprig_sdk::serde", deny_unknown_fields)]
pub struct Config {
    /// The statusDetails to record (string values, as AWS IoT Jobs requires).
    pub status_details: BTreeMap<String, String>,
}

/// The handler.
pub struct Reset {
    config: Config,
}

impl RecoveryHandler for Reset {
    type Config = Config;

    fn new(config: Config) -> Result<Self, sprig_sdk::Error> {
        if config.status_details.is_empty() {
            return Err("reset: `status_details` must name at least one key".into());
        }
        Ok(Reset { config })
    }

    fn recover(&mut self, ctx: &RecoveryContext) -> Result<Recovery, sprig_sdk::Error> {
        let status_details = self
            .config
            .status_details
            .iter()
            .map(|(key, value)| (key.clone(), ctx.render(value)))
            .collect();
        Ok(Recovery {
            actions: vec![Action::SetStatusDetails { status_details }],
            outcome: Outcome::Recovered,
        })
    }
}

sprig_sdk::export_plugin!(Reset);
