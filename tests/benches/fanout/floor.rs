//! The floor: the least any broker could do for the benchmark's traffic, to read the other columns against.
//!
//! A child process of the benchmark (started with `SPRIG_FANOUT_FLOOR_PORT` set) that speaks just enough
//! MQTT 3.1.1 for the benchmark's clients: CONNECT → CONNACK, SUBSCRIBE → SUBACK (the filter is kept as the
//! device's topic), DISCONNECT. When a client publishes a payload it has not seen, it writes one QoS 0
//! PUBLISH of that payload, on each device's own topic, to every device: no queue, no matching, no
//! lookup, no state, from one thread per core (kept for the process's life, so its CPU time can be read),
//! each on its share of the sockets. Later publishes of the
//! same payload are ignored (the benchmark's publisher sends N of them). What a run takes here is what the
//! kernel's loopback TCP and the benchmark's own devices cost on this machine, so no broker can beat it;
//! a broker's distance to it is what the broker itself spends.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::{packet, parse_publish, publish, read_packet};

/// A subscribed device: the writing half of its socket (shared with the fan-out threads) and its topic.
struct Device {
    socket: Arc<OwnedWriteHalf>,
    topic: String,
}

struct Floor {
    devices: Mutex<HashMap<u64, Device>>,
    /// The payload last fanned out, so the publisher's further copies are ignored.
    last_payload: Mutex<Vec<u8>>,
    next_id: AtomicU64,
    /// One writer thread per core, kept for the process's life (so its CPU time can be read).
    writers: Vec<std::sync::mpsc::Sender<Share>>,
}

/// A writer thread's part of one fan-out, and where to say it is done.
struct Share {
    devices: Vec<(Arc<OwnedWriteHalf>, String)>,
    payload: Arc<Vec<u8>>,
    done: std::sync::mpsc::Sender<()>,
}

fn writer(shares: std::sync::mpsc::Receiver<Share>) {
    for share in shares {
        for (socket, topic) in &share.devices {
            write_fully(socket, &publish(topic, 0, 0, &share.payload));
        }
        let _ = share.done.send(());
    }
}

/// Serves on 127.0.0.1:`port` until killed.
pub fn serve(port: u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let writers = (0..threads)
            .map(|i| {
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name(format!("floor-writer-{i}"))
                    .spawn(move || writer(rx))
                    .unwrap();
                tx
            })
            .collect();
        let floor = Arc::new(Floor {
            devices: Mutex::default(),
            last_payload: Mutex::default(),
            next_id: AtomicU64::new(0),
            writers,
        });
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to close rather than spin.
                    eprintln!("floor: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let floor = floor.clone();
            tokio::spawn(async move {
                let _ = floor.client(stream).await;
            });
        }
    });
}

impl Floor {
    async fn client(self: Arc<Self>, stream: TcpStream) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let socket = Arc::new(write);
        let mut reader = BufReader::with_capacity(2048, read);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let result = async {
            loop {
                let (header, body) = read_packet(&mut reader).await?;
                match header >> 4 {
                    1 => send(&socket, &[0x20, 0x02, 0x00, 0x00]).await?,
                    3 => self.publish(header, &body),
                    8 => {
                        let topic = subscribed_filter(&body)?;
                        self.devices.lock().unwrap().insert(
                            id,
                            Device {
                                socket: socket.clone(),
                                topic,
                            },
                        );
                        let mut suback = body[..2].to_vec();
                        suback.push(0x00);
                        send(&socket, &packet(0x90, &suback)).await?;
                    }
                    14 => return Ok(()),
                    _ => {}
                }
            }
        }
        .await;
        self.devices.lock().unwrap().remove(&id);
        drain(&mut reader).await;
        result
    }

    fn publish(&self, header: u8, body: &[u8]) {
        let Some((_, _, _, payload)) = parse_publish(header, body) else {
            return;
        };
        {
            let mut last = self.last_payload.lock().unwrap();
            if last.as_slice() == payload {
                return;
            }
            *last = payload.to_vec();
        }
        let devices: Vec<(Arc<OwnedWriteHalf>, String)> = self
            .devices
            .lock()
            .unwrap()
            .values()
            .map(|d| (d.socket.clone(), d.topic.clone()))
            .collect();
        let payload = Arc::new(payload.to_vec());
        let per_writer = devices.len().div_ceil(self.writers.len()).max(1);
        let (done, finished) = std::sync::mpsc::channel();
        let mut parts = 0;
        for (part, writer) in devices.chunks(per_writer).zip(&self.writers) {
            let share = Share {
                devices: part.to_vec(),
                payload: payload.clone(),
                done: done.clone(),
            };
            if writer.send(share).is_ok() {
                parts += 1;
            }
        }
        for _ in 0..parts {
            let _ = finished.recv();
        }
    }
}

/// The topic filter of a SUBSCRIBE body (packet id, then one length-prefixed filter and its QoS).
fn subscribed_filter(body: &[u8]) -> std::io::Result<String> {
    let invalid = || std::io::Error::new(ErrorKind::InvalidData, "malformed SUBSCRIBE");
    let len = u16::from_be_bytes([
        *body.get(2).ok_or_else(invalid)?,
        *body.get(3).ok_or_else(invalid)?,
    ]);
    let filter = body.get(4..4 + len as usize).ok_or_else(invalid)?;
    String::from_utf8(filter.to_vec()).map_err(|_| invalid())
}

/// Writes all of `bytes`, waiting while the socket's send buffer is full.
async fn send(socket: &OwnedWriteHalf, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        socket.writable().await?;
        match socket.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `bytes` from a thread outside the runtime, retrying while the send buffer is full.
fn write_fully(socket: &OwnedWriteHalf, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match socket.try_write(bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Reads until the peer closes, so the socket is not reset under a write still in flight.
async fn drain(reader: &mut BufReader<OwnedReadHalf>) {
    let mut sink = [0u8; 256];
    while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
}
