//! sprig's `DescribeGateway`: the one answer `sprig status` prints for a person on the gateway. The jobs'
//! counts come from the engine, which keeps them as it commits (no walk of the store per request); the
//! connections and the uplink from the gauges the broker and the uplink keep ([`crate::metrics`]); the
//! gateway's id, version and start from what the daemon says of it ([`About`]). It is about every
//! namespace, so, like the plugin operations, only an operator granted everything may ask.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::jobs::api::GatewayJobs;
use crate::jobs::{Engine, JobsError};

/// The kinds of client connection the broker counts (`sprig_connections{kind}`).
pub const CONNECTION_KINDS: [&str; 2] = ["device", "operator"];

/// What the gateway says of itself, fixed when `sprig run` starts.
#[derive(Debug, Clone)]
pub struct About {
    pub gateway_id: String,
    /// When the gateway started: the uptime is counted from here.
    pub started: Instant,
    /// The same moment, epoch ms.
    pub started_at_ms: i64,
    /// Whether `[uplink]` is configured (the uplink's state is shown only then).
    pub uplink: bool,
}

impl About {
    /// A gateway named `gateway_id` starting now.
    pub fn starting_now(gateway_id: &str, uplink: bool) -> About {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        About {
            gateway_id: gateway_id.to_owned(),
            started: Instant::now(),
            started_at_ms: since_epoch.as_millis() as i64,
            uplink,
        }
    }
}

/// DescribeGateway takes no parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescribeGatewayRequest {}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeGatewayResponse {
    pub gateway_id: String,
    /// sprig's version.
    pub version: &'static str,
    pub started_at: f64,
    pub uptime_seconds: u64,
    /// Client connections open now, by kind.
    pub connections: BTreeMap<&'static str, i64>,
    #[serde(flatten)]
    pub jobs: GatewayJobs,
    /// Absent when `[uplink]` is not configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkStatus>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UplinkStatus {
    pub connected: bool,
    /// Messages in the spool not yet acknowledged by the fleet broker, and the spool's bytes.
    pub spool_messages: i64,
    pub spool_bytes: i64,
}

/// Answers DescribeGateway for `operator`.
pub async fn describe_gateway(
    about: &About,
    engine: &Arc<Engine>,
    operator: &crate::auth::Operator,
) -> Result<DescribeGatewayResponse, JobsError> {
    if !operator.grants.covers_everything() {
        return Err(JobsError::Unauthorized(format!(
            "operator {} may not call DescribeGateway: it counts the jobs of every namespace, so only an \
             operator granted every namespace (namespaces = [\"*\"]) and standard_jobs may call it",
            operator.username
        )));
    }
    let jobs = engine.describe_gateway_jobs().await?;
    let metrics = crate::metrics::get();
    let uplink = about.uplink.then(|| UplinkStatus {
        connected: metrics.uplink_connected.get() > 0,
        spool_messages: metrics.uplink_spool_messages.get(),
        spool_bytes: metrics.uplink_spool_bytes.get(),
    });
    Ok(DescribeGatewayResponse {
        gateway_id: about.gateway_id.clone(),
        version: env!("CARGO_PKG_VERSION"),
        started_at: about.started_at_ms as f64 / 1000.0,
        uptime_seconds: about.started.elapsed().as_secs(),
        connections: CONNECTION_KINDS
            .into_iter()
            .map(|kind| (kind, metrics.open_connections(kind)))
            .collect(),
        jobs,
        uplink,
    })
}
