//! One broker at one fleet size: its memory idle, with the fleet connected and across connect/disconnect
//! cycles, then the timed fan-out runs (a namespaced CreateJob for sprig, one publisher's N messages for
//! mosquitto and the floor), each counted by a [`Tally`] of first deliveries shared by the fleet's
//! devices, with the CPU the broker and this process spent meanwhile.

use super::*;

pub(super) struct RunResult {
    pub(super) delivered: usize,
    /// Time to the last delivery, if all N were delivered.
    pub(super) elapsed: Option<Duration>,
    /// sprig only: CreateJob request to accepted reply.
    pub(super) request: Option<Duration>,
    /// Messages that were not a first delivery of the current run (duplicates, stale runs).
    pub(super) stray: usize,
    pub(super) error: Option<String>,
    /// CPU time spent while the run was timed: (by the broker, by this process's devices).
    pub(super) cpu: Option<(Duration, Duration)>,
}

pub(super) struct BrokerResult {
    pub(super) broker: &'static str,
    pub(super) n: usize,
    pub(super) connected: usize,
    pub(super) connect_failures: Vec<String>,
    pub(super) connect_time: Option<Duration>,
    pub(super) rss_idle_kb: u64,
    pub(super) rss_connected_kb: u64,
    /// With N idle devices each holding a `cmd/{thing}/#` subscription instead (the router's, in sprig).
    pub(super) rss_routed_kb: u64,
    pub(super) rss_cycles_kb: Vec<u64>,
    pub(super) runs: Vec<RunResult>,
    /// The timed runs asked for (after a run that delivers nothing, the rest are skipped).
    pub(super) planned_runs: usize,
    /// (payload bytes, QoS) of the deliveries; for mosquitto also whether it was copied from sprig's.
    pub(super) payload: Option<(usize, u8)>,
    pub(super) payload_measured: bool,
    pub(super) note: Option<String>,
}

pub(super) async fn bench_broker(
    kind: BrokerKind,
    n: usize,
    settings: &Settings,
    mosquitto_payload: Option<(usize, u8, bool)>,
) -> BrokerResult {
    let broker = Broker::start(&kind, n);
    let mut result = BrokerResult {
        broker: kind.name(),
        n,
        connected: 0,
        connect_failures: Vec::new(),
        connect_time: None,
        rss_idle_kb: 0,
        rss_connected_kb: 0,
        rss_routed_kb: 0,
        rss_cycles_kb: Vec::new(),
        runs: Vec::new(),
        planned_runs: settings.runs,
        payload: mosquitto_payload.map(|(len, qos, _)| (len, qos)),
        payload_measured: mosquitto_payload.is_some_and(|p| p.2),
        note: None,
    };
    let is_sprig = matches!(kind, BrokerKind::Sprig(_));
    let tally = Arc::new(Tally::new(is_sprig));
    tokio::time::sleep(SETTLE).await;
    result.rss_idle_kb = broker.rss_kb();

    // Memory: N idle devices, then connect/disconnect cycles.
    for cycle in 1..=settings.cycles.max(1) {
        let started = Instant::now();
        let fleet = Fleet::connect(broker.addr, n, is_sprig, tally.clone()).await;
        if cycle == 1 {
            result.connect_time = Some(started.elapsed());
            result.connected = fleet.connected;
            result.connect_failures = fleet.failures.clone();
            tokio::time::sleep(SETTLE).await;
            result.rss_connected_kb = broker.rss_kb();
        }
        let connected = fleet.connected;
        fleet.disconnect().await;
        tokio::time::sleep(SETTLE).await;
        result.rss_cycles_kb.push(broker.rss_kb());
        eprintln!(
            "fanout:   cycle {cycle}: {} of {n} connected, RSS after disconnect {} KiB",
            connected,
            result.rss_cycles_kb.last().unwrap()
        );
    }

    // Memory: N idle devices holding a subscription the router carries (not the floor's to serve).
    if !matches!(kind, BrokerKind::Floor(_)) {
        let routed = Subscription::Routed;
        let fleet =
            Fleet::connect_subscribed(broker.addr, n, is_sprig, routed, tally.clone()).await;
        tokio::time::sleep(SETTLE).await;
        result.rss_routed_kb = broker.rss_kb();
        eprintln!(
            "fanout:   {} of {n} connected holding cmd/{{thing}}/#, RSS {} KiB",
            fleet.connected, result.rss_routed_kb
        );
        fleet.disconnect().await;
        tokio::time::sleep(SETTLE).await;
    }

    // Fan-out.
    let fleet = Fleet::connect(broker.addr, n, is_sprig, tally.clone()).await;
    if fleet.connected < n {
        result.note = Some(format!(
            "fan-out fleet: only {} of {n} devices connected",
            fleet.connected
        ));
    }
    for run in 1..=settings.runs {
        let tag = NEXT_TAG.fetch_add(1, Ordering::SeqCst);
        let outcome = match &kind {
            BrokerKind::Sprig(_) => sprig_run(&broker, n, run, tag, &tally, settings).await,
            BrokerKind::Mosquitto(_) | BrokerKind::Floor(_) => {
                let (len, qos) = result.payload.expect("mosquitto payload");
                mosquitto_run(&broker, n, tag, len, qos, &tally, settings).await
            }
        };
        eprintln!(
            "fanout:   run {run}: delivered {} of {n}, {}{}",
            outcome.delivered,
            outcome
                .elapsed
                .map_or("timed out".into(), |d| format!("{:.1} ms", ms(d))),
            outcome
                .error
                .as_deref()
                .map_or(String::new(), |e| format!(" ({e})"))
        );
        if is_sprig && result.payload.is_none() && tally.payload_len.load(Ordering::SeqCst) > 0 {
            result.payload = Some((
                tally.payload_len.load(Ordering::SeqCst),
                tally.qos.load(Ordering::SeqCst),
            ));
            result.payload_measured = true;
        }
        let nothing = outcome.delivered == 0;
        result.runs.push(outcome);
        if nothing {
            result.note = Some(format!(
                "run {run} delivered nothing: remaining runs skipped"
            ));
            break;
        }
    }
    fleet.disconnect().await;
    if tally.lost.load(Ordering::SeqCst) {
        let lost = "the broker closed some device connections";
        result.note = Some(match result.note.take() {
            Some(note) => format!("{note}; {lost}"),
            None => lost.into(),
        });
    }
    drop(broker);
    result
}

pub(super) static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

/// Deliveries of the current run, shared by all devices of a fleet.
pub(super) struct Tally {
    pub(super) sprig: bool,
    /// Tag of the current run (0: none); a device counts a message once per tag.
    pub(super) current: AtomicU64,
    pub(super) reached: AtomicUsize,
    pub(super) stray: AtomicUsize,
    /// Nanoseconds since `base` of the latest first delivery.
    pub(super) last_ns: AtomicU64,
    pub(super) base: Instant,
    pub(super) payload_len: AtomicUsize,
    pub(super) qos: AtomicU8,
    /// A device's read loop ended on an error (not on our disconnect).
    pub(super) lost: AtomicBool,
}

impl Tally {
    pub(super) fn new(sprig: bool) -> Tally {
        Tally {
            sprig,
            current: AtomicU64::new(0),
            reached: AtomicUsize::new(0),
            stray: AtomicUsize::new(0),
            last_ns: AtomicU64::new(0),
            base: Instant::now(),
            payload_len: AtomicUsize::new(0),
            qos: AtomicU8::new(0),
            lost: AtomicBool::new(false),
        }
    }

    pub(super) fn start(&self, tag: u64) {
        self.reached.store(0, Ordering::SeqCst);
        self.stray.store(0, Ordering::SeqCst);
        self.last_ns.store(0, Ordering::SeqCst);
        self.current.store(tag, Ordering::SeqCst);
    }

    pub(super) fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// The run a message belongs to: sprig's job id ends in `-{tag}`; mosquitto's payload starts with it.
    pub(super) fn tag_of(&self, topic: &[u8], payload: &[u8]) -> Option<u64> {
        if self.sprig {
            let topic = std::str::from_utf8(topic).ok()?;
            let job_id = topic.split('/').nth(4)?;
            job_id.rsplit('-').next()?.parse().ok()
        } else {
            std::str::from_utf8(payload.get(..20)?).ok()?.parse().ok()
        }
    }

    /// Called by a device for each PUBLISH; `seen` is the device's last counted tag.
    pub(super) fn delivered(&self, seen: &mut u64, topic: &[u8], payload: &[u8], qos: u8) {
        let now = self.now_ns();
        let current = self.current.load(Ordering::SeqCst);
        match self.tag_of(topic, payload) {
            Some(tag) if tag == current && *seen != tag => {
                *seen = tag;
                self.last_ns.fetch_max(now, Ordering::SeqCst);
                let _ = self.payload_len.compare_exchange(
                    0,
                    payload.len(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                self.qos.fetch_max(qos, Ordering::SeqCst);
                self.reached.fetch_add(1, Ordering::SeqCst);
            }
            _ => {
                self.stray.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Waits until `n` devices got the current run, or `timeout`.
    pub(super) async fn wait(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.reached.load(Ordering::SeqCst) < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}

pub(super) async fn sprig_run(
    broker: &Broker,
    n: usize,
    run: usize,
    tag: u64,
    tally: &Arc<Tally>,
    settings: &Settings,
) -> RunResult {
    let job_id = format!("fanout-n{n}-run{run}-{tag}");
    let things: Vec<String> = (0..n).map(thing).collect();
    let body = json!({
        "jobId": job_id,
        "namespaceId": NAMESPACE,
        "targets": things,
        "document": "{\"action\":\"update\"}",
    });
    let (user, pass) = broker.local_credential();
    let addr = broker.addr;
    tally.start(tag);
    // In a task of its own: the harness's Operator panics on a lost connection or a 30 s silence, and that
    // must end this run, not the benchmark.
    let create = tokio::spawn(async move {
        let mut operator = Operator::connect(addr, &user, &pass).await?;
        let sent = Instant::now();
        let reply = operator.request("CreateJob", body).await;
        let accepted = Instant::now();
        reply.map_err(|(code, message)| format!("CreateJob: {code}: {message}"))?;
        Ok::<_, String>((operator, sent, accepted))
    });
    let (mut operator, sent, accepted) = match create.await {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => return failed_run(tally, e),
        Err(e) => return failed_run(tally, format!("CreateJob: {e}")),
    };
    let cpu = cpu_now(broker);
    let threads = broker.cpu_by_thread();
    let complete = tally.wait(n, settings.run_timeout).await;
    let mut outcome = finish_run(tally, complete, accepted, Some(accepted - sent), n);
    outcome.cpu = Some(cpu_since(broker, cpu));
    if std::env::var_os("SPRIG_FANOUT_THREADS").is_some() {
        let after = broker.cpu_by_thread();
        let spent: Vec<String> = after
            .iter()
            .map(|(name, ns)| {
                (
                    name,
                    ns.saturating_sub(threads.get(name).copied().unwrap_or(0)),
                )
            })
            .filter(|(_, ns)| *ns >= 1_000_000)
            .map(|(name, ns)| format!("{name} {:.1} ms", ns as f64 / 1e6))
            .collect();
        eprintln!("fanout:   run {run} CPU by thread: {}", spent.join(", "));
    }

    // Cancel the job so the next run's notification is the same size (the namespace's pending jobs are in
    // it), and let the cancel notifications pass before the next run starts.
    let stray_before = tally.stray.load(Ordering::SeqCst);
    let cancel = tokio::spawn(async move {
        operator
            .request("CancelJob", json!({ "jobId": job_id }))
            .await
            .map_err(|(code, message)| format!("CancelJob: {code}: {message}"))
    });
    match cancel.await {
        Ok(Ok(_)) => {
            if outcome.delivered > 0 {
                let deadline = Instant::now() + settings.run_timeout;
                while tally.stray.load(Ordering::SeqCst) < stray_before + outcome.delivered
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        Ok(Err(e)) => eprintln!("fanout:   {e}"),
        Err(e) => eprintln!("fanout:   CancelJob: {e}"),
    }
    outcome
}

pub(super) async fn mosquitto_run(
    broker: &Broker,
    n: usize,
    tag: u64,
    payload_len: usize,
    qos: u8,
    tally: &Arc<Tally>,
    settings: &Settings,
) -> RunResult {
    // All N publishes encoded beforehand: the timed part is the broker's work, not the encoding.
    let mut bytes = Vec::with_capacity(n * (payload_len + 32));
    let mut payload = format!("{tag:020}").into_bytes();
    payload.resize(payload_len.max(20), b'x');
    for i in 0..n {
        let pkid = (i % 65535) as u16 + 1;
        bytes.extend_from_slice(&publish(&notify_topic(i), qos, pkid, &payload));
    }
    let (reader, mut writer) = match connect_client(broker.addr, "bench-publisher", None).await {
        Ok(pair) => pair,
        Err(e) => return failed_run(tally, format!("publisher: {e}")),
    };
    // Drain PUBACKs (QoS 1) so the broker never blocks on the publisher's socket.
    let drain = tokio::spawn(async move {
        let mut reader = reader;
        while read_packet(&mut reader).await.is_ok() {}
    });
    tally.start(tag);
    let cpu = cpu_now(broker);
    let started = Instant::now();
    let result = match writer.write_all(&bytes).await {
        Ok(()) => {
            let complete = tally.wait(n, settings.run_timeout).await;
            let mut outcome = finish_run(tally, complete, started, None, n);
            outcome.cpu = Some(cpu_since(broker, cpu));
            outcome
        }
        Err(e) => failed_run(tally, format!("publisher: {e}")),
    };
    let _ = writer.write_all(&[0xE0, 0x00]).await;
    let _ = writer.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    result
}

pub(super) fn finish_run(
    tally: &Tally,
    complete: bool,
    from: Instant,
    request: Option<Duration>,
    n: usize,
) -> RunResult {
    let delivered = tally.reached.load(Ordering::SeqCst).min(n);
    let elapsed = complete.then(|| {
        let from_ns = from.duration_since(tally.base).as_nanos() as u64;
        // A delivery may precede the reply that started the clock (sprig notifies while it answers).
        Duration::from_nanos(tally.last_ns.load(Ordering::SeqCst).saturating_sub(from_ns))
    });
    RunResult {
        delivered,
        elapsed,
        request,
        stray: tally.stray.load(Ordering::SeqCst),
        error: None,
        cpu: None,
    }
}

pub(super) fn failed_run(tally: &Tally, error: String) -> RunResult {
    RunResult {
        delivered: tally.reached.load(Ordering::SeqCst),
        elapsed: None,
        request: None,
        stray: 0,
        error: Some(error),
        cpu: None,
    }
}

/// CPU time used so far: (by the broker's threads, by this process).
pub(super) fn cpu_now(broker: &Broker) -> (Duration, Duration) {
    (broker.cpu_time(), own_cpu_time())
}

/// CPU used since `before` (from [`cpu_now`]).
pub(super) fn cpu_since(broker: &Broker, before: (Duration, Duration)) -> (Duration, Duration) {
    let now = cpu_now(broker);
    (
        now.0.saturating_sub(before.0),
        now.1.saturating_sub(before.1),
    )
}

pub(super) fn own_cpu_time() -> Duration {
    // SAFETY: getrusage writes one plain struct that we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
