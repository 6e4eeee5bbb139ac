//! The benchmark's MQTT clients, raw MQTT 3.1.1 on tokio sockets and the same for every local side: the
//! publishers on the local broker, and the sink on the fleet broker that counts what arrives.
//!
//! Every message carries its run's tag and its number at the start of its payload, so the sink counts
//! each run's distinct messages and duplicates whatever order and topic they come on.

use super::*;

/// Bytes of every message's payload: the run's tag, the number, padding.
const PAYLOAD: usize = 64;
/// Digits of a message's number in its payload.
const DIGITS: usize = 10;
/// Publishes written to the socket at once, at most.
const WRITE_BATCH: usize = 100;
/// How often the sink says it is alive (the brokers' keep-alive is 30 s; a QoS 0 run sends no PUBACKs).
const PING_EVERY: Duration = Duration::from_secs(10);

/// The sink's filters: the bridged messages, sprig's uplink status, and the mosquitto bridge's
/// notification topic (see `sides`).
const SINK_FILTERS: [&str; 3] = ["sites/site-7/dt/#", SPRIG_STATUS, BRIDGE_STATE];
pub(super) const SPRIG_STATUS: &str = "sprig/site-7/status";
pub(super) const BRIDGE_STATE: &str = "sites/site-7/bridge-state";

fn payload(run: u8, n: usize) -> Vec<u8> {
    let mut payload = format!("{}{n:0DIGITS$}", run as char).into_bytes();
    payload.resize(PAYLOAD, b'.');
    payload
}

/// The run's tag and the message's number, if `payload` is one of the benchmark's.
fn identify(payload: &[u8]) -> Option<(u8, usize)> {
    let (&run, rest) = payload.split_first()?;
    let n = std::str::from_utf8(rest.get(..DIGITS)?)
        .ok()?
        .parse()
        .ok()?;
    Some((run, n))
}

/// What the publishers of one run got done.
pub(super) struct Published {
    /// QoS 1: messages the local broker acknowledged; QoS 0: messages written to the sockets.
    pub(super) taken: usize,
    /// From the first publish until the last was taken.
    pub(super) elapsed: Duration,
    /// Why a publisher stopped early, if one did.
    pub(super) failure: Option<String>,
}

/// Publishes messages `0..count` of run `run` at `qos` from `connections` clients (`pub-{i}`, each on
/// its own topic `dt/q{qos}/pub-{i}`, the numbers dealt out in turn), as fast as the local broker takes
/// them: QoS 1 with at most `window` unacknowledged per connection. Gives up after `within`.
pub(super) async fn publish(
    addr: SocketAddr,
    (run, qos): (u8, u8),
    count: usize,
    connections: usize,
    window: usize,
    within: Duration,
) -> Published {
    let taken = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut publishers = JoinSet::new();
    for i in 0..connections {
        let numbers: Vec<usize> = (i..count).step_by(connections).collect();
        let client = Publisher {
            client_id: format!("pub-{i}"),
            topic: format!("dt/q{qos}/pub-{i}"),
            run,
            qos,
            window,
            taken: taken.clone(),
        };
        publishers.spawn(async move { client.send(addr, numbers).await });
    }
    let mut failure = None;
    let all = async {
        while let Some(done) = publishers.join_next().await {
            if let Err(e) = done.expect("publisher task") {
                failure.get_or_insert(e.to_string());
            }
        }
    };
    if tokio::time::timeout(within, all).await.is_err() {
        failure.get_or_insert(format!("not all taken within {within:?}"));
    }
    Published {
        taken: taken.load(Ordering::SeqCst),
        elapsed: started.elapsed(),
        failure,
    }
}

/// One publishing connection.
struct Publisher {
    client_id: String,
    topic: String,
    run: u8,
    qos: u8,
    window: usize,
    /// Shared by the run's publishers: how many messages the local broker has taken.
    taken: Arc<AtomicUsize>,
}

impl Publisher {
    async fn send(self, addr: SocketAddr, numbers: Vec<usize>) -> std::io::Result<()> {
        let stream = connected(addr, &raw::connect(&self.client_id, None)).await?;
        let (read, mut write) = stream.into_split();
        if self.qos == 0 {
            for batch in numbers.chunks(WRITE_BATCH) {
                write.write_all(&self.encode(batch, &mut 0)).await?;
                self.taken.fetch_add(batch.len(), Ordering::SeqCst);
            }
        } else {
            let window = Arc::new(Semaphore::new(self.window));
            let acks = tokio::spawn(count_acks(
                read,
                window.clone(),
                numbers.len(),
                self.taken.clone(),
            ));
            let (mut rest, mut pkid) = (numbers.as_slice(), 0);
            while !rest.is_empty() {
                let room = take_room(&window, WRITE_BATCH.min(rest.len())).await;
                let (batch, later) = rest.split_at(room);
                write.write_all(&self.encode(batch, &mut pkid)).await?;
                rest = later;
            }
            acks.await.expect("PUBACK reader")?;
        }
        // DISCONNECT: a clean end, after everything written before it.
        write.write_all(&raw::packet(0xE0, &[])).await
    }

    /// The PUBLISHes of `numbers`, back to back; QoS 1 ones numbered on from `pkid` (1..=65535).
    fn encode(&self, numbers: &[usize], pkid: &mut u16) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(numbers.len() * (PAYLOAD + self.topic.len() + 8));
        for &n in numbers {
            if self.qos > 0 {
                *pkid = pkid.checked_add(1).unwrap_or(1);
            }
            let payload = payload(self.run, n);
            bytes.extend_from_slice(&raw::publish(&self.topic, self.qos, *pkid, &payload));
        }
        bytes
    }
}

/// Waits for room in the window for one message, then takes what else is free, up to `most`.
async fn take_room(window: &Semaphore, most: usize) -> usize {
    window.acquire().await.expect("window").forget();
    let mut room = 1;
    while room < most {
        match window.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => break,
        }
        room += 1;
    }
    room
}

/// Reads PUBACKs until `expected` came, each freeing its place in the window.
async fn count_acks(
    read: OwnedReadHalf,
    window: Arc<Semaphore>,
    expected: usize,
    taken: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(read);
    let mut acked = 0;
    while acked < expected {
        let (header, _) = read_packet_async(&mut reader).await?;
        if header >> 4 == 4 {
            acked += 1;
            taken.fetch_add(1, Ordering::SeqCst);
            window.add_permits(1);
        }
    }
    Ok(())
}

/// What the sink received of one run.
#[derive(Default)]
pub(super) struct RunArrivals {
    seen: Vec<bool>,
    pub(super) distinct: usize,
    pub(super) duplicates: usize,
    pub(super) first: Option<Instant>,
    pub(super) last: Option<Instant>,
}

impl RunArrivals {
    fn record(&mut self, n: usize, at: Instant) {
        if self.seen.len() <= n {
            self.seen.resize(n + 1, false);
        }
        if std::mem::replace(&mut self.seen[n], true) {
            self.duplicates += 1;
        } else {
            self.distinct += 1;
        }
        self.first.get_or_insert(at);
        self.last = Some(at);
    }

    /// The counts and times, without the record of which arrived.
    fn summary(&self) -> RunArrivals {
        RunArrivals {
            seen: Vec::new(),
            ..*self
        }
    }
}

/// Everything the sink received.
#[derive(Default)]
pub(super) struct Arrivals {
    runs: HashMap<u8, RunArrivals>,
    /// When messages came saying the local side connected to the fleet broker: sprig's `online`
    /// status, the mosquitto bridge's `1`.
    links_up: Vec<Instant>,
}

impl Arrivals {
    /// One PUBLISH the sink received (at `at`).
    fn record(&mut self, topic: &[u8], payload: &[u8], at: Instant) {
        let up = match topic {
            t if t == SPRIG_STATUS.as_bytes() => payload.windows(8).any(|w| w == b"\"online\""),
            t if t == BRIDGE_STATE.as_bytes() => payload == b"1",
            _ => false,
        };
        if up {
            self.links_up.push(at);
        } else if let Some((run, n)) = identify(payload) {
            self.runs.entry(run).or_default().record(n, at);
        }
    }

    fn distinct(&self, run: u8) -> usize {
        self.runs.get(&run).map_or(0, |r| r.distinct)
    }
}

/// A client of the fleet broker on a persistent session (the broker keeps its subscriptions and queues
/// its QoS 1 messages while it is away, stopped included), acknowledging and counting what arrives.
pub(super) struct Sink {
    addr: SocketAddr,
    arrivals: watch::Sender<Arrivals>,
    receiver: Option<tokio::task::JoinHandle<()>>,
}

const SINK_ID: &str = "fleet-sink";

impl Sink {
    /// Connects (a new session) and subscribes at QoS 1.
    pub(super) async fn start(addr: SocketAddr) -> std::io::Result<Sink> {
        let mut stream = connected(addr, &raw::connect_keeping_session(SINK_ID)).await?;
        subscribe(&mut stream, &SINK_FILTERS).await?;
        let mut sink = Sink {
            addr,
            arrivals: watch::channel(Arrivals::default()).0,
            receiver: None,
        };
        sink.receive(stream);
        Ok(sink)
    }

    /// Connects again after the fleet broker came back: the session it kept resumes, with what it queued.
    pub(super) async fn resume(&mut self) -> std::io::Result<()> {
        let stream = connected(self.addr, &raw::connect_keeping_session(SINK_ID)).await?;
        self.receive(stream);
        Ok(())
    }

    fn receive(&mut self, stream: TcpStream) {
        if let Some(old) = self.receiver.take() {
            old.abort();
        }
        let arrivals = self.arrivals.clone();
        self.receiver = Some(tokio::spawn(async move {
            let _ = receive(stream, arrivals).await;
        }));
    }

    /// How many times the local side said it connected to the fleet broker so far.
    pub(super) fn links_up(&self) -> usize {
        self.arrivals.borrow().links_up.len()
    }

    /// Waits until the local side says it connected to the fleet broker once more than `before` times,
    /// and returns when the message saying so arrived; `None` if it did not within `within`.
    pub(super) async fn link_up(&self, before: usize, within: Duration) -> Option<Instant> {
        let mut arrivals = self.arrivals.subscribe();
        let up = async {
            let arrivals = arrivals
                .wait_for(|a| a.links_up.len() > before)
                .await
                .ok()?;
            arrivals.links_up.get(before).copied()
        };
        tokio::time::timeout(within, up).await.ok().flatten()
    }

    /// Waits until `target` distinct messages of run `run` arrived, or until nothing arrived for
    /// `patience`; what arrived of it.
    pub(super) async fn until(&self, run: u8, target: usize, patience: Duration) -> RunArrivals {
        let mut arrivals = self.arrivals.subscribe();
        while arrivals.borrow_and_update().distinct(run) < target {
            match tokio::time::timeout(patience, arrivals.changed()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        let arrivals = arrivals.borrow();
        arrivals
            .runs
            .get(&run)
            .map(RunArrivals::summary)
            .unwrap_or_default()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(receiver) = self.receiver.take() {
            receiver.abort();
        }
    }
}

/// Reads PUBLISHes until the connection ends. What arrived is counted, and QoS 1 acknowledged, a
/// socket read at a time (one update and one write for all the packets it brought).
async fn receive(stream: TcpStream, arrivals: watch::Sender<Arrivals>) -> std::io::Result<()> {
    let (read, write) = stream.into_split();
    let (acks, to_write) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_acks(write, to_write));
    let mut reader = BufReader::with_capacity(64 << 10, read);
    let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut pubacks = Vec::new();
    let result = loop {
        let (header, body) = match read_packet_async(&mut reader).await {
            Ok(packet) => packet,
            Err(e) => break Err(e),
        };
        if header >> 4 == 3 {
            if let Some((topic, qos, pkid, payload)) = raw::parse_publish(header, &body) {
                if qos > 0 {
                    let [hi, lo] = pkid.to_be_bytes();
                    pubacks.extend_from_slice(&[0x40, 0x02, hi, lo]);
                }
                batch.push((topic.to_vec(), payload.to_vec()));
            }
        }
        if reader.buffer().is_empty() {
            let at = Instant::now();
            arrivals.send_modify(|a| {
                for (topic, payload) in batch.drain(..) {
                    a.record(&topic, &payload, at);
                }
            });
            if !pubacks.is_empty() && acks.send(std::mem::take(&mut pubacks)).is_err() {
                break Ok(());
            }
        }
    };
    writer.abort();
    result
}

/// Writes the sink's PUBACKs as they come, and a PINGREQ every [`PING_EVERY`].
async fn write_acks(
    mut write: OwnedWriteHalf,
    mut acks: mpsc::UnboundedReceiver<Vec<u8>>,
) -> std::io::Result<()> {
    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            bytes = acks.recv() => match bytes {
                Some(bytes) => write.write_all(&bytes).await?,
                None => return Ok(()),
            },
            _ = ping.tick() => write.write_all(&raw::packet(0xC0, &[])).await?,
        }
    }
}
