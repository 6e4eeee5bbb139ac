//! Job notifications to devices: turns the engine's [`JobEvent`]s into AWS IoT's reserved notify topics.
//!
//! For each thing an event names, the notifier reads the thing's state in the event's scope
//! ([`Engine::snapshots`]: chunks of [`CHUNK`] things on the blocking pool, each thing's pending
//! executions from the store's in-memory index, each job decoded once per event, so an event for N
//! things costs O(N)) and sends what changed since it last told that (thing, scope) (`memory`) on AWS's
//! topics (`topics`) with AWS's bodies (`payload`). It owns "what a device is told, and when": identical
//! state is never sent twice, and, as in AWS IoT, a SUBSCRIBE sends nothing (it changes no job; a device
//! that was away learns what it missed from its persistent session or by asking, `jobs/get`). Notifications go straight to the device's connection
//! at QoS 0 ([`Broker::deliver_many`]), not through rumqttd's router, whose per-topic matching made a
//! fleet's fan-out cost N² (see `broker::direct`); only the device `{thing}` may subscribe under
//! `$aws/things/{thing}/`, so no one else could receive them. Figures: README, "Notification fan-out and
//! memory" and "Job notifications and connection churn".

mod memory;
mod payload;
mod topics;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::broker::{Broker, BrokerError, Deliveries};
use crate::jobs::clock::now_ms;
use crate::jobs::device::{DeviceExecution, JobCache, ThingSnapshot};
use crate::jobs::{Engine, JobEvent};
use crate::store::StoreError;
use memory::{Memory, Told};

/// Things whose state is read in one pass and whose messages are delivered together. Large enough that
/// a pass's set-up does not matter, small enough that the lanes of a fan-out share its work evenly.
pub const CHUNK: usize = 256;

/// One notification: (the device's client id, i.e. its thing name, borrowed from the event; topic in
/// external form; body).
type Message<'a> = (&'a str, String, Bytes);

/// Turns job events into MQTT notifications until `shutdown` turns true.
pub async fn run(
    broker: Arc<Broker>,
    engine: Arc<Engine>,
    mut events: mpsc::UnboundedReceiver<JobEvent>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BrokerError> {
    let notifier = Arc::new(Notifier {
        engine,
        broker,
        memory: Mutex::new(Memory::default()),
    });
    loop {
        let event = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            event = events.recv() => match event {
                Some(event) => event,
                None => return Ok(()),
            },
        };
        notifier.clone().notify_event(event).await;
    }
}

/// What a fan-out did, and where its time went.
#[derive(Debug, Default)]
struct Batch {
    deliveries: Deliveries,
    computing: Duration,
    delivering: Duration,
}

impl Batch {
    fn add(&mut self, other: Batch) {
        self.deliveries.add(other.deliveries);
        self.computing += other.computing;
        self.delivering += other.delivering;
    }
}

/// How many lanes a large fan-out runs on: the machine's cores.
fn lanes() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

struct Notifier {
    engine: Arc<Engine>,
    broker: Arc<Broker>,
    memory: Mutex<Memory>,
}

impl Notifier {
    /// Notifies every thing of an event, chunk by chunk, on as many lanes as the machine has cores: each
    /// lane a thread of the blocking pool that takes the next chunk not yet taken, computes and delivers
    /// it, and so on (a delivery may write to the device's socket, see `broker::wire`), so a lane that the
    /// scheduler sets aside does not leave the others idle at the end. A thing is in one chunk, so its
    /// messages keep their order; the next event waits for all lanes.
    async fn notify_event(self: Arc<Self>, event: JobEvent) {
        let started = Instant::now();
        let chunks = Arc::new(Chunks::of(event.things.len()));
        let event = Arc::new(event);
        let lanes = lanes().min(chunks.count).max(1);
        let running: Vec<_> = (0..lanes)
            .map(|_| {
                let (me, event, chunks) = (self.clone(), event.clone(), chunks.clone());
                tokio::task::spawn_blocking(move || me.notify_chunks(&event, &chunks))
            })
            .collect();
        let mut total = Batch::default();
        for lane in running {
            // A panic there is logged, not fatal: one lane's things are not told, the others are.
            match lane.await {
                Ok(batch) => total.add(batch),
                Err(e) => tracing::error!(error = %e, "notification batch failed"),
            }
        }
        let things = event.things.len();
        // Large fan-outs are worth a line at info: how long they took, and where the time went.
        if things > CHUNK {
            let remembered = self.memory.lock().unwrap_or_else(|e| e.into_inner()).len();
            let counts = total.deliveries;
            tracing::info!(
                job_id = event.job_id,
                kind = event.kind.as_str(),
                things,
                delivered = counts.delivered,
                not_subscribed = counts.not_subscribed,
                offline = counts.offline,
                dropped = counts.dropped,
                remembered,
                elapsed_ms = ms(started.elapsed()),
                snapshots_ms = ms(total.computing),
                delivering_ms = ms(total.delivering),
                "devices notified"
            );
        }
    }

    /// Computes and delivers the messages of the event's chunks of things, one chunk after the other, as
    /// long as one is left.
    fn notify_chunks(&self, event: &JobEvent, chunks: &Chunks) -> Batch {
        // One cache for the lane: the event's job is read and decoded once, not once per chunk.
        let mut jobs = JobCache::default();
        let mut batch = Batch::default();
        while let Some((start, end)) = chunks.take() {
            let begun = Instant::now();
            let messages = self.event_messages(event, &event.things[start..end], &mut jobs);
            let computed = Instant::now();
            batch.deliveries.add(self.deliver(messages));
            batch.computing += computed - begun;
            batch.delivering += computed.elapsed();
        }
        batch
    }

    /// Hands the messages, in order, to their devices' connections. Never blocks (see the module doc).
    fn deliver(&self, messages: Vec<Message<'_>>) -> Deliveries {
        let counts = self.broker.deliver_many(messages);
        let sent = counts.delivered + counts.queued;
        crate::metrics::get().notifications_sent.inc_by(sent as u64);
        if counts.invalid > 0 {
            tracing::error!(count = counts.invalid, "notifications with invalid topics");
        }
        counts
    }

    fn event_messages<'a>(
        &self,
        event: &JobEvent,
        things: &'a [String],
        jobs: &mut JobCache,
    ) -> Vec<Message<'a>> {
        let timestamp = now_ms() / 1000;
        let mut messages = Vec::with_capacity(things.len() * 2);
        let scope = event.namespace_id.as_deref();
        let snapshots = match self.engine.snapshots(things, scope, jobs) {
            Ok(snapshots) => snapshots,
            Err(e) => {
                let count = things.len();
                tracing::error!(count, job_id = event.job_id, error = %e, "cannot notify devices");
                return messages;
            }
        };
        let changes = self.remember(things, scope, &snapshots);
        for ((thing, snapshot), changes) in things.iter().zip(snapshots).zip(changes) {
            let told = (snapshot, changes);
            if let Err(e) = self.thing_event(event, thing, told, timestamp, jobs, &mut messages) {
                tracing::error!(thing, job_id = event.job_id, error = %e, "cannot notify the device");
            }
        }
        messages
    }

    /// The messages one event makes for one thing, given its state in the event's scope and what changed
    /// since it was last told.
    fn thing_event<'a>(
        &self,
        event: &JobEvent,
        thing: &'a str,
        (snapshot, changes): (ThingSnapshot, memory::Changes),
        timestamp: i64,
        jobs: &mut JobCache,
        out: &mut Vec<Message<'a>>,
    ) -> Result<(), StoreError> {
        let scope = event.namespace_id.as_deref();
        let Some(ns) = scope else {
            if changes.pending {
                let body = payload::jobs_changed(timestamp, &snapshot.pending);
                out.push((thing, topics::notify(thing), body));
            }
            if changes.next {
                out.push(next_message(thing, None, timestamp, &snapshot));
            }
            return Ok(());
        };
        let job_id = &event.job_id;
        let looked_up;
        let execution = match &snapshot.next {
            Some(next) if &next.job_id == job_id => Some(next),
            _ if is_pending(&snapshot, job_id) => {
                looked_up = self.engine.pending_execution(thing, scope, job_id, jobs)?;
                looked_up.as_ref()
            }
            _ => None,
        };
        let body =
            payload::job_changed(timestamp, job_id, event.kind, execution, &snapshot.pending);
        let topic = topics::job_in_namespace(thing, job_id, ns);
        out.push((thing, topic, body));
        if changes.next {
            out.push(next_message(thing, scope, timestamp, &snapshot));
        }
        Ok(())
    }

    /// Records what a chunk's things are told now; what changed for each. One lock for the chunk: the
    /// lanes of a fan-out share the memory.
    fn remember(
        &self,
        things: &[String],
        scope: Option<&str>,
        snapshots: &[ThingSnapshot],
    ) -> Vec<memory::Changes> {
        let told: Vec<Told> = snapshots.iter().map(Told::of).collect();
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        let told = things.iter().zip(told);
        told.map(|(thing, now)| memory.tell(thing, scope, now))
            .collect()
    }
}

/// An event's things cut into chunks of [`CHUNK`], taken one at a time by the lanes.
struct Chunks {
    things: usize,
    count: usize,
    next: AtomicUsize,
}

impl Chunks {
    fn of(things: usize) -> Chunks {
        Chunks {
            things,
            count: things.div_ceil(CHUNK),
            next: AtomicUsize::new(0),
        }
    }

    /// The next chunk no lane has taken yet, as a range of the event's things.
    fn take(&self) -> Option<(usize, usize)> {
        let chunk = self.next.fetch_add(1, Ordering::Relaxed);
        (chunk < self.count).then(|| (chunk * CHUNK, ((chunk + 1) * CHUNK).min(self.things)))
    }
}

fn next_message<'a>(
    thing: &'a str,
    scope: Option<&str>,
    timestamp: i64,
    snapshot: &ThingSnapshot,
) -> Message<'a> {
    let next: Option<&DeviceExecution> = snapshot.next.as_ref();
    (
        thing,
        topics::notify_next(thing, scope),
        payload::next_changed(timestamp, next),
    )
}

fn is_pending(snapshot: &ThingSnapshot, job_id: &str) -> bool {
    let pending = &snapshot.pending;
    pending
        .in_progress_jobs
        .iter()
        .chain(&pending.queued_jobs)
        .any(|s| s.job_id == job_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lanes_take_every_thing_once_in_chunks_of_at_most_chunk() {
        for things in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 10 * CHUNK + 7] {
            let chunks = Chunks::of(things);
            let taken: Vec<(usize, usize)> = std::iter::from_fn(|| chunks.take()).collect();
            assert_eq!(taken.len(), chunks.count, "{things} things");
            let mut next = 0;
            for (start, end) in taken {
                assert_eq!(start, next, "{things} things: chunks follow each other");
                assert!(end > start && end - start <= CHUNK, "{things} things");
                next = end;
            }
            assert_eq!(next, things, "{things} things: all taken");
            assert_eq!(chunks.take(), None, "nothing is taken twice");
        }
    }
}
