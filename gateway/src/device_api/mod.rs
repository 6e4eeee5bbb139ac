//! The AWS IoT Jobs device API over MQTT: devices publish requests under `$aws/things/{thing}/jobs/…` and
//! get AWS's payloads back on `{request topic}/accepted` or `{request topic}/rejected`, so a device written
//! against AWS IoT Jobs (AWS IoT Device SDK, Greengrass nucleus) works unchanged. The broker's topic ACL
//! lets only the client whose id is `{thing}` publish under `$aws/things/{thing}/`, so the thing in the
//! topic is the caller. This module owns the transport side: topic routing (`topic`), body parsing and
//! reply shapes (`request`), and the runtime that answers each thing's requests in the order sent while
//! different things proceed in parallel. The rules themselves are the engine's (`jobs::device`).

mod request;
mod topic;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};

use crate::broker::{Broker, BrokerError, Delivery};
use crate::jobs::device::{DeviceError, DeviceErrorCode};
use crate::jobs::Engine;
use request::{DescribeRequest, StartNextRequest, UpdateRequest};
use topic::{Api, Request};

/// Worker tasks; each thing's requests always go to the same one, which answers them one at a time. As
/// many things' requests are in flight at once, and their writes share a store transaction
/// (`jobs::device`, which is told this number): enough that a fleet's updates make large groups.
pub const WORKERS: usize = 64;

/// Requests waiting per worker. Beyond that a request is answered `RequestThrottled` at once rather than
/// leaving the router's log for our subscription to overflow (it would silently skip requests).
const QUEUE_DEPTH: usize = 1024;

/// Serves device requests until `shutdown` turns true; `subscribed` is told once requests are taken.
pub async fn serve(
    broker: Arc<Broker>,
    engine: Arc<Engine>,
    mut shutdown: watch::Receiver<bool>,
    subscribed: tokio::sync::oneshot::Sender<()>,
) -> Result<(), BrokerError> {
    let mut client = broker.internal_client("device-api").await?;
    client.subscribe(topic::REQUEST_FILTER).await?;
    let _ = subscribed.send(());
    // Replies go straight to the requesting device's connection (`Broker::deliver`), never through the
    // router (see `broker::direct`); only the device may subscribe to its own reply topics.
    let (_, mut receiver) = client.split();
    let service = Arc::new(Service { engine, broker });
    // Dropping the senders (when this returns) lets each worker finish its queue and stop.
    let shards: Vec<mpsc::Sender<Incoming>> = (0..WORKERS)
        .map(|_| {
            let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
            tokio::spawn(work(service.clone(), rx));
            tx
        })
        .collect();
    loop {
        let (topic, payload) = tokio::select! {
            () = crate::broker::stopped(&mut shutdown) => return Ok(()),
            message = receiver.next() => message?,
        };
        service.dispatch(&shards, topic, payload).await;
    }
}

/// A request on its way to a worker.
struct Incoming {
    topic: String,
    request: Request,
    payload: Bytes,
}

struct Service {
    engine: Arc<Engine>,
    broker: Arc<Broker>,
}

/// One worker: answers its queue's requests in order.
async fn work(service: Arc<Service>, mut queue: mpsc::Receiver<Incoming>) {
    while let Some(incoming) = queue.recv().await {
        service.handle(incoming).await;
    }
}

/// The worker that serves `thing`: a stable hash, so one thing's requests are never reordered.
fn shard_of(thing: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    thing.hash(&mut hasher);
    (hasher.finish() % WORKERS as u64) as usize
}

impl Service {
    /// Queues a received message with its thing's worker; replies and notifications are dropped here.
    async fn dispatch(&self, shards: &[mpsc::Sender<Incoming>], topic: String, payload: Bytes) {
        let Some(request) = topic::parse_topic(&topic) else {
            return;
        };
        let shard = &shards[shard_of(&request.thing)];
        let incoming = Incoming {
            topic,
            request,
            payload,
        };
        match shard.try_send(incoming) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(incoming)) => {
                tracing::warn!(thing = incoming.request.thing, "device request queue full");
                let token = request::parse_body(&incoming.payload)
                    .ok()
                    .and_then(|(token, _)| token);
                let busy = DeviceError::new(
                    DeviceErrorCode::RequestThrottled,
                    "the gateway is busy; retry later",
                );
                self.reply(&incoming.topic, token, Err(busy)).await;
            }
            Err(mpsc::error::TrySendError::Closed(incoming)) => {
                tracing::error!(
                    topic = incoming.topic,
                    "device API worker gone; request dropped"
                );
            }
        }
    }

    /// Answers one request. The body is read first so that every reply can echo the clientToken.
    async fn handle(&self, incoming: Incoming) {
        let Incoming {
            topic,
            request,
            payload,
        } = incoming;
        let started = std::time::Instant::now();
        let operation = request.api.as_ref().map_or("unknown", Api::operation);
        let (token, outcome) = match request::parse_body(&payload) {
            Err(e) => (None, Err(e)),
            Ok((token, body)) => match request.api {
                Err(e) => (token, Err(e)),
                Ok(api) => (token, self.call(request.thing, api, body).await),
            },
        };
        let outcome_label = match &outcome {
            Ok(_) => "accepted",
            Err(e) => e.code.as_str(),
        };
        let seconds = started.elapsed().as_secs_f64();
        crate::metrics::get().request("device", operation, outcome_label, seconds);
        self.reply(&topic, token, outcome).await;
    }

    /// Runs one API call on the engine; the accepted payload's fields without timestamp and token.
    async fn call(
        &self,
        thing: String,
        api: Api,
        body: Value,
    ) -> Result<Map<String, Value>, DeviceError> {
        let engine = &self.engine;
        match api {
            Api::GetPending => {
                let pending = engine.device_pending(thing, None).await?;
                Ok(into_map(request::to_json(&pending)))
            }
            Api::StartNext => {
                let r: StartNextRequest = request::typed(body)?;
                let execution = engine
                    .device_start_next(thing, None, r.status_details, r.step_timeout_in_minutes)
                    .await?;
                Ok(with_optional("execution", execution))
            }
            Api::Describe { namespace, target } => {
                let r: DescribeRequest = request::typed(body)?;
                let execution = engine
                    .device_describe(
                        thing,
                        namespace,
                        target,
                        r.execution_number,
                        r.include_job_document.unwrap_or(true),
                    )
                    .await?;
                Ok(with_optional("execution", execution))
            }
            Api::Update { namespace, job_id } => {
                let r: UpdateRequest = request::typed(body)?;
                let outcome = engine
                    .device_update(thing, namespace, job_id, r.into())
                    .await?;
                let mut fields = with_optional("executionState", outcome.execution_state);
                if let Some(document) = outcome.job_document {
                    fields.insert("jobDocument".into(), document);
                }
                Ok(fields)
            }
        }
    }

    /// Publishes the outcome on `{topic}/accepted` or `{topic}/rejected`.
    async fn reply(
        &self,
        topic: &str,
        token: Option<String>,
        outcome: Result<Map<String, Value>, DeviceError>,
    ) {
        let (suffix, body) = match outcome {
            Ok(fields) => ("accepted", request::accepted(fields, token)),
            Err(e) => {
                tracing::debug!(topic, code = e.code.as_str(), message = %e.message, "device request rejected");
                ("rejected", request::rejected(&e, token))
            }
        };
        let payload = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let reply_topic = format!("{topic}/{suffix}");
        let thing = topic::thing_of(topic);
        // A device's subscriptions under its own thing are granted when its SUBSCRIBE is read, so a request
        // published right after it is answered on them. Not subscribed: AWS IoT drops the reply too.
        match self.broker.deliver(thing, &reply_topic, payload) {
            Delivery::Delivered | Delivery::Queued => {}
            Delivery::NotSubscribed => {
                tracing::debug!(
                    topic = reply_topic,
                    "device API reply: the device is not subscribed to it"
                )
            }
            other => {
                tracing::warn!(topic = reply_topic, delivery = ?other, "device API reply not delivered")
            }
        }
    }
}

/// `{key: value}` when there is a value, else `{}`: AWS leaves the key out (e.g. no `execution` when nothing
/// is pending).
fn with_optional<T: serde::Serialize>(key: &str, value: Option<T>) -> Map<String, Value> {
    let mut fields = Map::new();
    if let Some(value) = value {
        fields.insert(key.into(), request::to_json(&value));
    }
    fields
}

fn into_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thing_always_lands_on_the_same_worker() {
        let first = shard_of("pump-1");
        assert!(first < WORKERS);
        assert!((0..100).all(|_| shard_of("pump-1") == first));
        // Different things spread over the workers.
        let used: std::collections::HashSet<usize> = (0..4 * WORKERS)
            .map(|i| shard_of(&format!("t-{i}")))
            .collect();
        assert!(used.len() > WORKERS / 2, "{used:?}");
    }
}
