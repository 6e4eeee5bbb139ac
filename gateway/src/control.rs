//! The control API: operators' requests over MQTT, answered by the jobs engine.
//!
//! An operator client publishes a boto3-shaped JSON body to `$sprig/control/{clientId}/{Operation}` and
//! gets the boto3 response on `{request topic}/accepted` or `{"code","message"}` on `{request topic}/rejected`,
//! with its `clientToken` echoed. The broker's listener only lets a client publish under its *own* client
//! id, so the id in the topic tells us who is asking: its session's principal must be an operator, whose
//! grants bound what the engine shows it. This module owns the transport side only: topic parsing, body
//! parsing into typed requests (unknown fields and wrong types are an `InvalidRequestException` naming the
//! field), the per-operator request rate (`ThrottlingException`) and the replies. [`Requests`] is that
//! handling without the listener: the fleet's requests through the uplink are answered by it too.
//!
//! Jobs and recoveries are the engine's; the routes' plugins (`ListPlugins`, `DescribePlugin`,
//! `ResetPlugin`) are runtime state of the recovery side, asked of its [`Handlers`]. A route serves
//! every namespace, so only an operator granted everything (`namespaces = ["*"]` and
//! `standard_jobs = true`, as the local operator is) may see or reset plugins; any other operator gets
//! `UnauthorizedException`. sprig's `DescribeGateway` ([`describe`]) is the gateway's state in one
//! answer, for `sprig status`; gateway-wide too, so for the same operators only.

use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::auth::{Principal, CONTROL_PREFIX};
use crate::broker::{Broker, BrokerError, InternalSender};
use crate::config::JobsConfig;
use crate::jobs::{Engine, JobsError};
use crate::recovery::handlers::HandlersError;
use crate::recovery::status::{ListPluginsRequest, PluginResponse, RouteRequest};
use crate::recovery::Handlers;

pub mod describe;

/// The largest request body accepted. A CreateJob naming 20,000 things fits; a 1 MB body does not.
pub const MAX_REQUEST_BYTES: usize = 512 * 1024;

/// The operations' names, as they appear in request topics: the one list of them in the gateway (the
/// CLI's table of operations names each through these).
pub mod op {
    pub const CREATE_JOB: &str = "CreateJob";
    pub const DELETE_JOB: &str = "DeleteJob";
    pub const DELETE_JOB_EXECUTION: &str = "DeleteJobExecution";
    pub const DESCRIBE_JOB: &str = "DescribeJob";
    pub const GET_JOB_DOCUMENT: &str = "GetJobDocument";
    pub const UPDATE_JOB: &str = "UpdateJob";
    pub const LIST_JOBS: &str = "ListJobs";
    pub const CANCEL_JOB: &str = "CancelJob";
    pub const CANCEL_JOB_EXECUTION: &str = "CancelJobExecution";
    pub const DESCRIBE_JOB_EXECUTION: &str = "DescribeJobExecution";
    pub const LIST_JOB_EXECUTIONS_FOR_JOB: &str = "ListJobExecutionsForJob";
    pub const LIST_JOB_EXECUTIONS_FOR_THING: &str = "ListJobExecutionsForThing";
    pub const LIST_RECOVERIES: &str = "ListRecoveries";
    pub const DESCRIBE_RECOVERY: &str = "DescribeRecovery";
    pub const LIST_PLUGINS: &str = "ListPlugins";
    pub const DESCRIBE_PLUGIN: &str = "DescribePlugin";
    pub const RESET_PLUGIN: &str = "ResetPlugin";
    pub const DESCRIBE_GATEWAY: &str = "DescribeGateway";
}

/// The operations served, as they appear in request topics.
pub const OPERATIONS: [&str; 18] = [
    op::CREATE_JOB,
    op::DELETE_JOB,
    op::DELETE_JOB_EXECUTION,
    op::DESCRIBE_JOB,
    op::GET_JOB_DOCUMENT,
    op::UPDATE_JOB,
    op::LIST_JOBS,
    op::CANCEL_JOB,
    op::CANCEL_JOB_EXECUTION,
    op::DESCRIBE_JOB_EXECUTION,
    op::LIST_JOB_EXECUTIONS_FOR_JOB,
    op::LIST_JOB_EXECUTIONS_FOR_THING,
    op::LIST_RECOVERIES,
    op::DESCRIBE_RECOVERY,
    op::LIST_PLUGINS,
    op::DESCRIBE_PLUGIN,
    op::RESET_PLUGIN,
    op::DESCRIBE_GATEWAY,
];

/// What the control API answers from: the jobs engine, the routes' plugins, and what the gateway says of
/// itself (for DescribeGateway).
pub struct Services {
    pub engine: Arc<Engine>,
    pub handlers: Arc<Handlers>,
    pub about: Arc<describe::About>,
}

/// Serves control requests until `shutdown` turns true; `subscribed` is told once requests are taken.
pub async fn serve(
    broker: Arc<Broker>,
    services: Services,
    jobs: &JobsConfig,
    mut shutdown: watch::Receiver<bool>,
    subscribed: tokio::sync::oneshot::Sender<()>,
) -> Result<(), BrokerError> {
    let mut client = broker.internal_client("sprig-control").await?;
    client.subscribe(&format!("{CONTROL_PREFIX}+/+")).await?;
    let _ = subscribed.send(());
    let (sender, mut receiver) = client.split();
    let service = Arc::new(Service {
        broker,
        requests: Requests::new(services, jobs, "mqtt"),
        sender,
    });
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            message = receiver.next() => {
                let (topic, payload) = message?;
                let service = service.clone();
                tokio::spawn(async move { service.handle(topic, payload).await });
            }
        }
    }
}

fn throttle(jobs: &JobsConfig) -> DefaultKeyedRateLimiter<String> {
    let rate = NonZeroU32::new(jobs.requests_per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(jobs.request_burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
}

struct Service {
    broker: Arc<Broker>,
    requests: Requests,
    sender: InternalSender,
}

impl Service {
    async fn handle(&self, topic: String, payload: Bytes) {
        let Some((client_id, operation)) = parse_topic(&topic) else {
            return;
        };
        let operator = match self.broker.sessions().principal(client_id) {
            Some(Principal::Operator(operator)) => Some(operator),
            _ => None,
        };
        let reply = self
            .requests
            .answer(operator, client_id, operation, &payload)
            .await;
        let suffix = if reply.accepted {
            "accepted"
        } else {
            "rejected"
        };
        if let Err(e) = self
            .sender
            .publish(&format!("{topic}/{suffix}"), reply.body)
            .await
        {
            tracing::warn!(client_id, operation, error = %e, "could not publish a control reply");
        }
    }
}

/// The answer to one control request: `accepted` (else rejected) and the JSON body, clientToken included.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub accepted: bool,
    pub body: Bytes,
}

/// The control API without its transport: checks a request's body, its operator's request rate and
/// grants, and has the engine (or the routes' plugins) answer it. The local listener's requests come
/// through [`serve`]; the fleet's through the uplink, which acts as an operator of its own.
pub struct Requests {
    engine: Arc<Engine>,
    handlers: Arc<Handlers>,
    about: Arc<describe::About>,
    throttle: DefaultKeyedRateLimiter<String>,
    /// Which API the requests come through (`mqtt`, `http`, `uplink`), for the metrics.
    api: &'static str,
}

impl Requests {
    /// Requests that come through `api` (`mqtt`, `http`, `uplink`), answered from `services`, each
    /// operator within `jobs`' request rate.
    pub fn new(services: Services, jobs: &JobsConfig, api: &'static str) -> Requests {
        Requests {
            engine: services.engine,
            handlers: services.handlers,
            about: services.about,
            throttle: throttle(jobs),
            api,
        }
    }

    /// Answers `payload` on `operation` for `operator` (`None`: the caller, named `caller` in the
    /// rejection, is no authenticated operator).
    pub async fn answer(
        &self,
        operator: Option<Arc<crate::auth::Operator>>,
        caller: &str,
        operation: &str,
        payload: &[u8],
    ) -> Reply {
        let started = std::time::Instant::now();
        // The body is read first so that every reply, throttled or unauthorized too, echoes the clientToken.
        let (token, outcome) = match parse_body(payload) {
            Err(e) => (None, Err(e)),
            Ok((token, body)) => match self.authorize(operator, caller) {
                Err(e) => (token, Err(e)),
                Ok(operator) => (token, self.dispatch(operator, operation, body).await),
            },
        };
        let outcome_label = match &outcome {
            Ok(_) => "accepted",
            Err(e) => e.code(),
        };
        // Only the operations served are labels: any name a client makes up would be a new series.
        let operation_label = OPERATIONS
            .iter()
            .find(|op| **op == operation)
            .map_or("unknown", |op| op);
        let seconds = started.elapsed().as_secs_f64();
        crate::metrics::get().request(self.api, operation_label, outcome_label, seconds);
        let (accepted, mut reply) = match outcome {
            Ok(response) => (true, response),
            Err(e) => {
                tracing::debug!(caller, operation, code = e.code(), message = %e, "control request rejected");
                (false, rejection(&e))
            }
        };
        if let (Some(token), Value::Object(map)) = (token, &mut reply) {
            map.insert("clientToken".into(), Value::String(token));
        }
        let body = Bytes::from(serde_json::to_vec(&reply).unwrap_or_default());
        Reply { accepted, body }
    }

    /// The operator, within its request rate.
    fn authorize(
        &self,
        operator: Option<Arc<crate::auth::Operator>>,
        caller: &str,
    ) -> Result<Arc<crate::auth::Operator>, JobsError> {
        let Some(operator) = operator else {
            return Err(JobsError::Unauthorized(format!(
                "client {caller} is not an authenticated operator"
            )));
        };
        if self.throttle.check_key(&operator.username).is_err() {
            return Err(JobsError::Throttling("Rate exceeded".into()));
        }
        Ok(operator)
    }

    async fn dispatch(
        &self,
        operator: Arc<crate::auth::Operator>,
        operation: &str,
        body: Value,
    ) -> Result<Value, JobsError> {
        let engine = &self.engine;
        let grants = operator.grants.clone();
        match operation {
            op::CREATE_JOB => respond(engine.create_job(grants, typed(body)?).await),
            op::DELETE_JOB => engine
                .delete_job(grants, typed(body)?)
                .await
                .map(|()| Value::Object(Map::new())),
            op::DELETE_JOB_EXECUTION => engine
                .delete_job_execution(grants, typed(body)?)
                .await
                .map(|()| Value::Object(Map::new())),
            op::DESCRIBE_JOB => respond(engine.describe_job(grants, typed(body)?).await),
            op::GET_JOB_DOCUMENT => respond(engine.get_job_document(grants, typed(body)?).await),
            op::UPDATE_JOB => engine
                .update_job(grants, typed(body)?)
                .await
                .map(|()| Value::Object(Map::new())),
            op::LIST_JOBS => respond(engine.list_jobs(grants, typed(body)?).await),
            op::CANCEL_JOB => respond(engine.cancel_job(grants, typed(body)?).await),
            op::CANCEL_JOB_EXECUTION => engine
                .cancel_job_execution(grants, typed(body)?)
                .await
                .map(|()| Value::Object(Map::new())),
            op::DESCRIBE_JOB_EXECUTION => {
                respond(engine.describe_job_execution(grants, typed(body)?).await)
            }
            op::LIST_RECOVERIES => respond(engine.list_recoveries(grants, typed(body)?).await),
            op::DESCRIBE_RECOVERY => respond(engine.describe_recovery(grants, typed(body)?).await),
            op::LIST_JOB_EXECUTIONS_FOR_JOB => respond(
                engine
                    .list_job_executions_for_job(grants, typed(body)?)
                    .await,
            ),
            op::LIST_JOB_EXECUTIONS_FOR_THING => respond(
                engine
                    .list_job_executions_for_thing(grants, typed(body)?)
                    .await,
            ),
            op::DESCRIBE_GATEWAY => {
                let _: describe::DescribeGatewayRequest = typed(body)?;
                respond(describe::describe_gateway(&self.about, engine, &operator).await)
            }
            op::LIST_PLUGINS | op::DESCRIBE_PLUGIN | op::RESET_PLUGIN => {
                may_operate_plugins(&operator, operation)?;
                self.plugins(operation, body).await
            }
            other => Err(JobsError::InvalidRequest(format!(
                "unknown operation `{other}`; sprig serves {}",
                OPERATIONS.join(", ")
            ))),
        }
    }
}

impl Requests {
    /// The operations on the routes' plugins, for an operator allowed them.
    async fn plugins(&self, operation: &str, body: Value) -> Result<Value, JobsError> {
        let handlers = &self.handlers;
        match operation {
            op::LIST_PLUGINS => {
                let request: ListPluginsRequest = typed(body)?;
                respond(
                    handlers
                        .list(request.max_results, request.next_token.as_deref())
                        .map_err(plugins_error),
                )
            }
            op::DESCRIBE_PLUGIN => {
                let request: RouteRequest = typed(body)?;
                let described = handlers.describe(&request.route_name);
                respond(
                    described
                        .map(|plugin| PluginResponse { plugin })
                        .map_err(plugins_error),
                )
            }
            _ => {
                let request: RouteRequest = typed(body)?;
                let reset = handlers.reset(&request.route_name).await;
                respond(
                    reset
                        .map(|plugin| PluginResponse { plugin })
                        .map_err(plugins_error),
                )
            }
        }
    }
}

/// Plugins serve every namespace: only an operator granted everything may see or reset them.
fn may_operate_plugins(operator: &crate::auth::Operator, operation: &str) -> Result<(), JobsError> {
    if operator.grants.covers_everything() {
        return Ok(());
    }
    Err(JobsError::Unauthorized(format!(
        "operator {} may not call {operation}: recovery plugins serve every namespace, so only an \
         operator granted every namespace (namespaces = [\"*\"]) and standard_jobs may see or reset them",
        operator.username
    )))
}

fn plugins_error(error: HandlersError) -> JobsError {
    match error {
        HandlersError::UnknownRoute { .. } => JobsError::ResourceNotFound(error.to_string()),
        HandlersError::InvalidRequest(message) => JobsError::InvalidRequest(message),
    }
}

/// Splits `$sprig/control/{clientId}/{Operation}`; replies (`…/accepted`) and other shapes are not requests.
fn parse_topic(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix(CONTROL_PREFIX)?;
    let (client_id, operation) = rest.split_once('/')?;
    (!client_id.is_empty() && !operation.is_empty() && !operation.contains('/'))
        .then_some((client_id, operation))
}

/// Checks the body's size and JSON shape and takes out the optional `clientToken`.
fn parse_body(payload: &[u8]) -> Result<(Option<String>, Value), JobsError> {
    if payload.len() > MAX_REQUEST_BYTES {
        return Err(JobsError::InvalidRequest(format!(
            "request body: {} bytes is over the limit of {MAX_REQUEST_BYTES} bytes",
            payload.len()
        )));
    }
    let value: Value = if payload.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(payload)
            .map_err(|e| JobsError::InvalidRequest(format!("request body: not valid JSON ({e})")))?
    };
    let Value::Object(mut map) = value else {
        return Err(JobsError::InvalidRequest(
            "request body: must be a JSON object".into(),
        ));
    };
    let token = match map.remove("clientToken") {
        None => None,
        Some(Value::String(t))
            if (1..=64).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Some(t)
        }
        Some(_) => {
            return Err(JobsError::InvalidRequest(
                "clientToken: must be a string of 1-64 printable ASCII characters".into(),
            ))
        }
    };
    Ok((token, Value::Object(map)))
}

/// A request body as the control API reads it: size and JSON checks, the `clientToken` taken out, then the
/// typed request (what [`serve`] does for each request; public for the benchmarks).
pub fn parse_request<T: DeserializeOwned>(
    payload: &[u8],
) -> Result<(Option<String>, T), JobsError> {
    let (token, body) = parse_body(payload)?;
    Ok((token, typed(body)?))
}

/// Deserializes a request, naming the offending field on failure (`force: invalid type: …`).
fn typed<T: DeserializeOwned>(body: Value) -> Result<T, JobsError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        JobsError::InvalidRequest(if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        })
    })
}

fn respond<T: serde::Serialize>(outcome: Result<T, JobsError>) -> Result<Value, JobsError> {
    outcome.map(|response| serde_json::to_value(response).unwrap_or(Value::Null))
}

fn rejection(e: &JobsError) -> Value {
    serde_json::json!({ "code": e.code(), "message": e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::api::{CreateJobRequest, DeleteJobRequest};

    #[test]
    fn only_an_operator_granted_everything_may_operate_plugins() {
        let operator = |grants| crate::auth::Operator {
            username: "acme-ops".into(),
            grants,
        };
        assert!(may_operate_plugins(&operator(crate::auth::Grants::all()), "ResetPlugin").is_ok());
        let acme_only = crate::auth::Grants {
            namespaces: ["acme".to_owned()].into(),
            standard_jobs: true,
            ..Default::default()
        };
        let refused = may_operate_plugins(&operator(acme_only), "ResetPlugin").unwrap_err();
        assert_eq!(refused.code(), "UnauthorizedException");
        assert!(
            refused
                .to_string()
                .contains("acme-ops may not call ResetPlugin"),
            "{refused}"
        );
        let no_standard_jobs = crate::auth::Grants {
            all_namespaces: true,
            ..Default::default()
        };
        assert!(may_operate_plugins(&operator(no_standard_jobs), "ListPlugins").is_err());
    }

    #[test]
    fn request_topics_are_split_and_replies_ignored() {
        assert_eq!(
            parse_topic("$sprig/control/cli-1/DeleteJob"),
            Some(("cli-1", "DeleteJob"))
        );
        assert_eq!(parse_topic("$sprig/control/cli-1/DeleteJob/accepted"), None);
        assert_eq!(parse_topic("$sprig/control//DeleteJob"), None);
        assert_eq!(parse_topic("$aws/things/x/jobs/get"), None);
    }

    #[test]
    fn bodies_are_checked_and_the_client_token_taken_out() {
        let (token, body) = parse_body(br#"{"jobId":"j1","clientToken":"abc"}"#).unwrap();
        assert_eq!(token.as_deref(), Some("abc"));
        assert_eq!(body, serde_json::json!({"jobId": "j1"}));
        assert_eq!(parse_body(b"").unwrap().1, serde_json::json!({}));
        for bad in [&b"{"[..], b"[1]", br#"{"clientToken": 5}"#] {
            assert_eq!(
                parse_body(bad).unwrap_err().code(),
                "InvalidRequestException"
            );
        }
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(parse_body(&big)
            .unwrap_err()
            .to_string()
            .contains("over the limit"));
    }

    #[test]
    fn a_request_is_parsed_as_serve_parses_it() {
        let body = br#"{"jobId":"j1","targets":["a"],"document":"{}","clientToken":"c1"}"#;
        let (token, request) = parse_request::<CreateJobRequest>(body).unwrap();
        assert_eq!(
            (token.as_deref(), request.targets),
            (Some("c1"), vec!["a".into()])
        );
        let err = parse_request::<CreateJobRequest>(br#"{"jobId":"j1"}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `targets`"), "{err}");
    }

    #[test]
    fn typed_requests_name_the_field_at_fault() {
        let wrong_type =
            typed::<DeleteJobRequest>(serde_json::json!({"jobId": "j", "force": "yes"}))
                .unwrap_err();
        assert!(
            wrong_type.to_string().starts_with("force: invalid type"),
            "{wrong_type}"
        );
        let unknown = typed::<DeleteJobRequest>(serde_json::json!({"jobId": "j", "forse": true}))
            .unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `forse`"),
            "{unknown}"
        );
        let missing = typed::<CreateJobRequest>(serde_json::json!({"targets": []})).unwrap_err();
        assert!(
            missing.to_string().contains("missing field `jobId`"),
            "{missing}"
        );
    }
}
