//! The devices: a minimal MQTT 3.1.1 client on tokio sockets, the same code for every broker. A [`Fleet`]
//! connects N of them in batches below the brokers' listen backlogs, each subscribed to its own topic, and
//! each device's read loop records its first delivery of the current run in the shared tally.

use super::*;

/// What each device of a fleet subscribes to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Subscription {
    /// Its job notifications (sprig: `$aws/things/{thing}/jobs/+/notify-namespace-bench/`, which sprig
    /// serves itself: a Jobs-only device); mosquitto and the floor: its own notify topic.
    Notifications,
    /// `cmd/{thing}/#`, a topic-rule filter that rumqttd's router carries in sprig (device to device).
    Routed,
}

pub(super) fn thing(i: usize) -> String {
    format!("dev{i:05}")
}

pub(super) fn notify_topic(i: usize) -> String {
    format!("bench/dev{i:05}/notify")
}

pub(super) struct Fleet {
    pub(super) stop: watch::Sender<bool>,
    pub(super) tasks: JoinSet<()>,
    pub(super) connected: usize,
    /// The first few connection failures.
    pub(super) failures: Vec<String>,
}

impl Fleet {
    /// Connects `n` devices, `CONNECT_BATCH` at a time, each subscribed to its own topic.
    pub(super) async fn connect(
        addr: SocketAddr,
        n: usize,
        sprig: bool,
        tally: Arc<Tally>,
    ) -> Fleet {
        Fleet::connect_subscribed(addr, n, sprig, Subscription::Notifications, tally).await
    }

    /// Connects `n` devices, `CONNECT_BATCH` at a time, each subscribed as `subscription` says.
    pub(super) async fn connect_subscribed(
        addr: SocketAddr,
        n: usize,
        sprig: bool,
        subscription: Subscription,
        tally: Arc<Tally>,
    ) -> Fleet {
        let (stop, stop_rx) = watch::channel(false);
        let mut fleet = Fleet {
            stop,
            tasks: JoinSet::new(),
            connected: 0,
            failures: Vec::new(),
        };
        let deadline = Instant::now() + FLEET_TIMEOUT;
        let mut failed = 0;
        for batch in (0..n).collect::<Vec<_>>().chunks(CONNECT_BATCH) {
            if Instant::now() >= deadline {
                failed += n - batch[0];
                fleet
                    .failures
                    .push(format!("fleet not connected within {FLEET_TIMEOUT:?}"));
                break;
            }
            let mut connecting = JoinSet::new();
            for &i in batch {
                let filter = match subscription {
                    Subscription::Notifications if sprig => format!(
                        "$aws/things/{}/jobs/+/notify-namespace-{NAMESPACE}/",
                        thing(i)
                    ),
                    Subscription::Notifications => notify_topic(i),
                    Subscription::Routed => format!("cmd/{}/#", thing(i)),
                };
                connecting.spawn(async move {
                    tokio::time::timeout(
                        DEVICE_TIMEOUT,
                        connect_client(addr, &thing(i), Some(&filter)),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("{}: no answer within {DEVICE_TIMEOUT:?}", thing(i)))
                    })
                });
            }
            while let Some(joined) = connecting.join_next().await {
                match joined {
                    Ok(Ok((reader, writer))) => {
                        fleet.connected += 1;
                        let tally = tally.clone();
                        let stop = stop_rx.clone();
                        fleet.tasks.spawn(device_loop(reader, writer, tally, stop));
                    }
                    Ok(Err(e)) => {
                        failed += 1;
                        if fleet.failures.len() < 5 {
                            fleet.failures.push(e);
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        if fleet.failures.len() < 5 {
                            fleet.failures.push(e.to_string());
                        }
                    }
                }
            }
        }
        if failed > 0 {
            eprintln!(
                "fanout:   {failed} of {n} devices failed to connect: {:?}",
                fleet.failures
            );
        }
        fleet
    }

    /// Every device sends DISCONNECT and closes its socket.
    pub(super) async fn disconnect(mut self) {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(FLEET_TIMEOUT, all).await.is_err() {
            eprintln!("fanout:   devices did not disconnect within {FLEET_TIMEOUT:?}");
            self.tasks.abort_all();
        }
    }
}

/// Reads PUBLISHes (acknowledging QoS 1) and counts them until told to stop or the connection ends.
pub(super) async fn device_loop(
    mut reader: BufReader<OwnedReadHalf>,
    mut writer: OwnedWriteHalf,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = 0u64;
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                let _ = writer.write_all(&[0xE0, 0x00]).await;
                let _ = writer.shutdown().await;
                return;
            }
            packet = read_packet(&mut reader) => {
                let Ok((header, body)) = packet else {
                    tally.lost.store(true, Ordering::SeqCst);
                    return;
                };
                if header >> 4 != 3 {
                    continue;
                }
                let Some((topic, qos, pkid, payload)) = parse_publish(header, &body) else {
                    continue;
                };
                tally.delivered(&mut seen, topic, payload, qos);
                if qos == 1 {
                    let [hi, lo] = pkid.to_be_bytes();
                    if writer.write_all(&[0x40, 0x02, hi, lo]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// CONNECT (clean session, no keep-alive) and, with a filter, SUBSCRIBE at QoS 1; both acknowledged.
pub(super) async fn connect_client(
    addr: SocketAddr,
    client_id: &str,
    filter: Option<&str>,
) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{client_id}: connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(2048, read);
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
    put_str(&mut connect, client_id.as_bytes());
    write
        .write_all(&packet(0x10, &connect))
        .await
        .map_err(|e| format!("{client_id}: CONNECT: {e}"))?;
    let (header, body) = read_packet(&mut reader)
        .await
        .map_err(|e| format!("{client_id}: CONNACK: {e}"))?;
    if header != 0x20 || body.len() != 2 || body[1] != 0 {
        return Err(format!("{client_id}: refused: {header:#x} {body:?}"));
    }
    if let Some(filter) = filter {
        let mut subscribe = vec![0, 1];
        put_str(&mut subscribe, filter.as_bytes());
        subscribe.push(1);
        write
            .write_all(&packet(0x82, &subscribe))
            .await
            .map_err(|e| format!("{client_id}: SUBSCRIBE: {e}"))?;
        let (header, body) = read_packet(&mut reader)
            .await
            .map_err(|e| format!("{client_id}: SUBACK: {e}"))?;
        if header != 0x90 || body.len() != 3 || body[2] > 2 {
            return Err(format!(
                "{client_id}: subscription to {filter} refused: {header:#x} {body:?}"
            ));
        }
    }
    Ok((reader, write))
}
