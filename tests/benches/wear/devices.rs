//! The benchmark's MQTT clients: raw 3.1.1 connections on tokio sockets (a thousand of them cost the
//! benchmark little), each a device whose client id is its thing name, or a publisher and a subscriber of
//! bridged or routed topics.

use super::*;

/// How long a client waits for an answer before the benchmark gives up on it.
pub(super) const PATIENCE: Duration = Duration::from_secs(60);

/// A connected raw client.
pub(super) struct Client {
    pub name: String,
    stream: TcpStream,
    next_pkid: u16,
}

impl Client {
    /// Connects `name` with a clean session and no keep-alive (the benchmark's clients may stay silent
    /// longer than a keep-alive allows; pings would cost the disk nothing).
    pub async fn connect(addr: SocketAddr, name: &str) -> Client {
        let connect = raw::connect_keeping_alive(name, true, 0);
        Client::connect_with(addr, name, &connect).await
    }

    /// Connects `name` with a persistent session (clean_session = false) and no keep-alive.
    pub async fn connect_keeping_session(addr: SocketAddr, name: &str) -> Client {
        let connect = raw::connect_keeping_alive(name, false, 0);
        Client::connect_with(addr, name, &connect).await
    }

    /// Connects `name` with a clean session (or a persistent one: `clean` false) and a keep-alive of
    /// 30 s, which [`Client::keep_alive`] keeps.
    pub async fn connect_pinging(addr: SocketAddr, name: &str, clean: bool) -> Client {
        let connect = raw::connect_keeping_alive(name, clean, 30);
        Client::connect_with(addr, name, &connect).await
    }

    async fn connect_with(addr: SocketAddr, name: &str, connect: &[u8]) -> Client {
        let stream = connected(addr, connect)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        Client {
            name: name.to_owned(),
            stream,
            next_pkid: 1,
        }
    }

    /// Subscribes to `filters` at QoS 1; panics if one is refused.
    pub async fn subscribe(&mut self, filters: &[String]) {
        let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
        subscribe(&mut self.stream, &filters)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
    }

    fn pkid(&mut self) -> u16 {
        let pkid = self.next_pkid;
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        pkid
    }

    /// Publishes at QoS 1 and waits for the PUBACK (acknowledging any QoS 1 publish that arrives first).
    pub async fn publish(&mut self, topic: &str, payload: &[u8]) {
        let pkid = self.pkid();
        self.send(&raw::publish(topic, 1, pkid, payload)).await;
        loop {
            let (header, body) = self.read().await;
            if header == 0x40 && body.get(..2) == Some(&pkid.to_be_bytes()[..]) {
                return;
            }
            self.acknowledge(header, &body).await;
        }
    }

    /// A Jobs API request of device `self.name` on `$aws/things/{name}/jobs/{suffix}`; waits for its reply
    /// on `…/accepted` (panics on `…/rejected`). Subscribe to the reply topics first.
    pub async fn jobs_request(&mut self, suffix: &str, body: &serde_json::Value) {
        let topic = format!("$aws/things/{}/jobs/{suffix}", self.name);
        let pkid = self.pkid();
        let payload = serde_json::to_vec(body).unwrap();
        self.send(&raw::publish(&topic, 1, pkid, &payload)).await;
        let (accepted, rejected) = (format!("{topic}/accepted"), format!("{topic}/rejected"));
        loop {
            let (header, body) = self.read().await;
            self.acknowledge(header, &body).await;
            let Some((reply, _, _, payload)) = raw::parse_publish(header, &body) else {
                continue;
            };
            if reply == accepted.as_bytes() {
                return;
            }
            assert!(
                reply != rejected.as_bytes(),
                "{}: {suffix} rejected: {}",
                self.name,
                String::from_utf8_lossy(payload)
            );
        }
    }

    /// Waits for `count` PUBLISH packets (acknowledging them), for at most `patience` between two; returns
    /// how many came.
    pub async fn receive(&mut self, count: usize, patience: Duration) -> usize {
        let mut got = 0;
        while got < count {
            let read = tokio::time::timeout(patience, read_packet_async(&mut self.stream)).await;
            let Ok(Ok((header, body))) = read else {
                break;
            };
            if header >> 4 == 3 {
                got += 1;
                self.acknowledge(header, &body).await;
            }
        }
        got
    }

    /// Pings every `period` on a task of its own, as a client library does (the gateway ends a connection
    /// silent for one and a half times its keep-alive, 30 s), acknowledging what arrives meanwhile; the
    /// connection closes when the task is aborted.
    pub fn keep_alive(mut self, period: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                self.send(&[0xC0, 0x00]).await;
                loop {
                    let (header, body) = self.read().await;
                    if header == 0xD0 {
                        break;
                    }
                    self.acknowledge(header, &body).await;
                }
            }
        })
    }

    /// Sends DISCONNECT and closes the socket.
    pub async fn disconnect(mut self) {
        self.send(&[0xE0, 0x00]).await;
        let _ = self.stream.shutdown().await;
    }

    async fn send(&mut self, packet: &[u8]) {
        self.stream
            .write_all(packet)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
    }

    async fn read(&mut self) -> (u8, Vec<u8>) {
        match tokio::time::timeout(PATIENCE, read_packet_async(&mut self.stream)).await {
            Ok(Ok(packet)) => packet,
            Ok(Err(e)) => panic!("{}: {e}", self.name),
            Err(_) => panic!(
                "{}: nothing from the gateway within {PATIENCE:?}",
                self.name
            ),
        }
    }

    /// PUBACKs a QoS 1 PUBLISH.
    async fn acknowledge(&mut self, header: u8, body: &[u8]) {
        if header >> 4 != 3 {
            return;
        }
        if let Some((_, 1, pkid, _)) = raw::parse_publish(header, body) {
            let mut puback = vec![0x40, 0x02];
            puback.extend_from_slice(&pkid.to_be_bytes());
            self.send(&puback).await;
        }
    }
}

/// Connects `names` as devices (clean sessions), 250 at a time, each subscribed to `filters(name)`.
pub(super) async fn connect_devices(
    addr: SocketAddr,
    names: &[String],
    filters: impl Fn(&str) -> Vec<String>,
) -> Vec<Client> {
    let mut devices = Vec::with_capacity(names.len());
    for group in names.chunks(250) {
        let mut joining = JoinSet::new();
        for name in group {
            let filters = filters(name);
            let name = name.clone();
            joining.spawn(async move {
                let mut device = Client::connect(addr, &name).await;
                if !filters.is_empty() {
                    device.subscribe(&filters).await;
                }
                device
            });
        }
        while let Some(device) = joining.join_next().await {
            devices.push(device.unwrap());
        }
    }
    devices
}

/// Every device sends one Jobs request (`suffix`, `body`), all at once or, with `rate` > 0, `rate`
/// requests a second in all; returns the devices once every reply came, and each request's time from
/// its publish to its reply, sorted.
pub(super) async fn every_device(
    devices: Vec<Client>,
    suffix: &str,
    body: serde_json::Value,
    rate: usize,
) -> (Vec<Client>, Vec<Duration>) {
    let started = tokio::time::Instant::now();
    let mut running = JoinSet::new();
    for (i, mut device) in devices.into_iter().enumerate() {
        let (suffix, body) = (suffix.to_owned(), body.clone());
        let at = if rate == 0 {
            started
        } else {
            started + Duration::from_secs_f64(i as f64 / rate as f64)
        };
        running.spawn(async move {
            tokio::time::sleep_until(at).await;
            let asked = Instant::now();
            device.jobs_request(&suffix, &body).await;
            (device, asked.elapsed())
        });
    }
    let (mut devices, mut answered) = (Vec::new(), Vec::new());
    while let Some(done) = running.join_next().await {
        let (device, took) = done.unwrap();
        devices.push(device);
        answered.push(took);
    }
    answered.sort();
    (devices, answered)
}

/// The `q` quantile (0.0–1.0) of `sorted`, in milliseconds.
pub(super) fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(at).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}
