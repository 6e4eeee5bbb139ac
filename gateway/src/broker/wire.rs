//! A connection's socket as the gateway's direct deliveries reach it: written at once by the deliverer
//! while the connection's writer is idle, handed to the writer's queue otherwise.
//!
//! This module owns the hand-off between a connection's writer task and whoever delivers to it (the
//! notifier, the device API's replies, presence events). Waking a writer task for each message cost more
//! than the message's own system call when a job's notifications fanned out to 10,000 devices (README,
//! "Notification fan-out and memory"), and almost every device is idle then: nothing waits for it, its
//! writer sleeps. So while the writer says it is idle (nothing of its own to write, no reply of the reader's
//! on its way to it, its queue empty), a QoS 0 message is encoded and written to the socket by the
//! deliverer itself, under this wire's lock; the moment the writer has anything to write it takes the wire
//! back under the same lock, and every message goes through its queue again, in order behind what it
//! writes. A write the socket takes only part of leaves its end to the writer, which puts it before
//! anything else, so packets never interleave. Messages that need the writer's state (QoS 1, too large for
//! the client) and TLS connections always go through the queue.

use std::cell::RefCell;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use super::backlog::Waiting;
use super::codec::{self, Version};

/// What a connection's direct queue carries.
#[derive(Debug)]
pub(crate) enum Direct {
    /// A message for the writer to encode and write.
    Message(Waiting),
    /// Wakes the writer to write the end of a packet the socket took only part of (see [`Wire::take_over`]).
    Rest,
}

/// Why [`Wire::deliver`] did not deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The writer's queue is full: the client stopped reading.
    Full,
    /// The writer is gone.
    Closed,
}

/// One connection's way in for direct deliveries.
#[derive(Debug)]
pub(crate) struct Wire {
    /// The plain TCP socket the writer writes to too; `None` for TLS (its writer owns the session state).
    socket: Option<Arc<OwnedWriteHalf>>,
    queue: flume::Sender<Box<Direct>>,
    version: Version,
    /// The client's Maximum Packet Size: a message above it goes to the writer, which drops and counts it.
    max_packet: Option<usize>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The writer sleeps with nothing to write: deliverers write to the socket themselves.
    idle: bool,
    /// Commands the reader sent the writer that it has not yet said it took (see [`Wire::park`]).
    announced: usize,
    /// The end of a packet the socket took only part of, for the writer to write first.
    rest: Option<Bytes>,
    /// The writer ended: nothing is written to the socket past it.
    closed: bool,
}

/// The most a thread's encoding buffer keeps between messages.
const SCRATCH_KEPT: usize = 64 * 1024;

thread_local! {
    /// Where a deliverer encodes the packet it writes: one buffer per thread, not one per message.
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(1024));
}

impl Wire {
    /// A wire on `queue`; with `socket`, messages are written to it directly while the writer is idle.
    pub(crate) fn new(
        queue: flume::Sender<Box<Direct>>,
        socket: Option<Arc<OwnedWriteHalf>>,
        version: Version,
        max_packet: Option<usize>,
    ) -> Wire {
        Wire {
            socket,
            queue,
            version,
            max_packet,
            // Not idle until the writer says so: the CONNACK and a resumed session's backlog go first.
            state: Mutex::new(State::default()),
        }
    }

    /// A wire that only queues.
    #[cfg(test)]
    pub(crate) fn queue_only(queue: flume::Sender<Box<Direct>>) -> Wire {
        Wire::new(queue, None, Version::V311, None)
    }

    /// Delivers a QoS 0 message: written now if the writer is idle and the socket takes it, else queued
    /// for the writer. Never blocks.
    pub(crate) fn deliver(&self, topic: &str, payload: Bytes) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.idle {
            if let Some(socket) = &self.socket {
                let stream: &TcpStream = (**socket).as_ref();
                if self.write_now(stream, &mut state, topic, &payload) {
                    return Ok(());
                }
            }
        }
        let message = Direct::Message(Waiting::direct(topic, payload));
        self.push(&mut state, message)
    }

    /// Queues `message` for the writer (a QoS 1 message needs its packet ids and records). Never blocks.
    pub(crate) fn queue(&self, message: Waiting) -> Result<(), Refused> {
        let mut state = self.lock();
        self.push(&mut state, Direct::Message(message))
    }

    fn push(&self, state: &mut State, message: Direct) -> Result<(), Refused> {
        // Queued messages are the writer's: nothing may overtake them on the socket.
        state.idle = false;
        match self.queue.try_send(Box::new(message)) {
            Ok(()) => Ok(()),
            Err(flume::TrySendError::Full(_)) => Err(Refused::Full),
            Err(flume::TrySendError::Disconnected(_)) => Err(Refused::Closed),
        }
    }

    /// Encodes and writes one QoS 0 PUBLISH; false when the writer must send it (the socket would block,
    /// failed, or the packet is too large). Called while the writer is idle, under the lock.
    fn write_now(
        &self,
        socket: &TcpStream,
        state: &mut State,
        topic: &str,
        payload: &Bytes,
    ) -> bool {
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            let written = self.encode_and_write(socket, state, topic, payload, buf);
            // Kept for the next message, unless an unusually large one grew it.
            if buf.capacity() > SCRATCH_KEPT {
                *buf = BytesMut::with_capacity(1024);
            }
            written
        })
    }

    fn encode_and_write(
        &self,
        socket: &TcpStream,
        state: &mut State,
        topic: &str,
        payload: &Bytes,
        buf: &mut BytesMut,
    ) -> bool {
        if !encode_qos0(self.version, topic, payload, buf)
            || self.max_packet.is_some_and(|max| buf.len() > max)
        {
            return false;
        }
        match socket.try_write(buf) {
            Ok(n) if n == buf.len() => {}
            Ok(n) => {
                // The writer writes the rest before anything else; until then it is not idle.
                state.idle = false;
                state.rest = Some(Bytes::copy_from_slice(&buf[n..]));
                // The queue is empty while the writer is idle: this only fails if it is gone.
                let _ = self.queue.try_send(Box::new(Direct::Rest));
            }
            // Would block, or failed: the writer finds out for itself.
            Err(_) => return false,
        }
        codec::count_sent(topic.len() + payload.len());
        true
    }

    /// The reader is about to send the writer a command: until the writer took it, nothing is written
    /// directly (a SUBACK stays ahead of the replies to what it granted).
    pub(crate) fn announce(&self) {
        let mut state = self.lock();
        state.idle = false;
        state.announced += 1;
    }

    /// A command announced was not sent after all.
    pub(crate) fn withdraw(&self) {
        let mut state = self.lock();
        state.announced = state.announced.saturating_sub(1);
    }

    /// The writer has something to write: the wire is its own again. Returns the end of a packet the
    /// socket took only part of, to be written before anything else.
    pub(crate) fn take_over(&self) -> Option<Bytes> {
        let mut state = self.lock();
        state.idle = false;
        state.rest.take()
    }

    /// The writer has written everything and took `taken` more of the reader's commands: it is idle if
    /// nothing else is on its way to it (`queue_empty`).
    pub(crate) fn park(&self, taken: usize, queue_empty: impl FnOnce() -> bool) {
        let mut state = self.lock();
        state.announced = state.announced.saturating_sub(taken);
        state.idle = self.socket.is_some()
            && !state.closed
            && state.announced == 0
            && state.rest.is_none()
            && queue_empty();
    }

    /// The writer ended: from now on everything is queued (and dropped with the queue).
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.idle = false;
        state.closed = true;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each update leaves the state consistent: recover it after a panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Encodes a QoS 0 PUBLISH without properties onto `buf`, as [`codec::encode`] would, without making
/// the packet first (this is the fan-out's hot path); false when MQTT cannot carry it.
fn encode_qos0(version: Version, topic: &str, payload: &[u8], buf: &mut BytesMut) -> bool {
    use bytes::BufMut as _;
    let Ok(topic_len) = u16::try_from(topic.len()) else {
        return false;
    };
    let properties = usize::from(version == Version::V5);
    let mut remaining = 2 + topic.len() + properties + payload.len();
    // MQTT's Remaining Length: at most four bytes of seven bits.
    if remaining > 268_435_455 {
        return false;
    }
    buf.reserve(5 + remaining);
    buf.put_u8(0x30);
    loop {
        let byte = (remaining % 128) as u8;
        remaining /= 128;
        if remaining == 0 {
            buf.put_u8(byte);
            break;
        }
        buf.put_u8(byte | 0x80);
    }
    buf.put_u16(topic_len);
    buf.put_slice(topic.as_bytes());
    if properties == 1 {
        buf.put_u8(0);
    }
    buf.put_slice(payload);
    true
}

/// The writing half of a plain TCP socket, shared by its writer (through this) and its [`Wire`].
pub(crate) struct SharedSocket(pub(crate) Arc<OwnedWriteHalf>);

impl AsyncWrite for SharedSocket {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream: &TcpStream = (*self.0).as_ref();
        loop {
            std::task::ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        use std::os::fd::AsRawFd as _;
        let stream: &TcpStream = (*self.0).as_ref();
        // SAFETY: shutdown(2) on the socket's own descriptor, which `stream` keeps open.
        let result = unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
        if result == 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(io::Error::last_os_error()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{Packet, Publish};
    use tokio::io::AsyncReadExt as _;
    use tokio::net::{TcpListener, TcpSocket};

    /// A wire on a real loopback connection (its socket's send buffer `send_buffer` bytes, if given),
    /// its queue, and the client's end.
    async fn connected(
        send_buffer: Option<u32>,
    ) -> (Wire, flume::Receiver<Box<Direct>>, tokio::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = send_buffer {
            socket.set_send_buffer_size(size).unwrap();
        }
        let ours = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (client, _) = listener.accept().await.unwrap();
        let (_, write_half) = ours.into_split();
        let (tx, rx) = flume::bounded(8);
        let wire = Wire::new(tx, Some(Arc::new(write_half)), Version::V311, None);
        (wire, rx, client)
    }

    fn packet(topic: &str, payload: &[u8]) -> Vec<u8> {
        let topic = Bytes::copy_from_slice(topic.as_bytes());
        let publish = Publish::new(topic, Bytes::copy_from_slice(payload), false);
        let mut buf = BytesMut::new();
        codec::encode(Version::V311, Packet::Publish(publish, None), &mut buf).unwrap();
        buf.to_vec()
    }

    async fn read(client: &mut tokio::net::TcpStream, len: usize) -> Vec<u8> {
        let mut got = vec![0; len];
        client.read_exact(&mut got).await.unwrap();
        got
    }

    #[test]
    fn the_hot_path_encodes_a_publish_as_the_codec_does() {
        for version in [Version::V311, Version::V5] {
            for len in [0, 1, 100, 127, 128, 16_383, 16_384, 2_097_152] {
                let payload = Bytes::from(vec![b'p'; len]);
                let topic = "$aws/things/pump-1/jobs/notify-next";
                let publish = Publish::new(Bytes::from(topic), payload.clone(), false);
                let mut expected = BytesMut::new();
                codec::encode(version, Packet::Publish(publish, None), &mut expected).unwrap();
                let mut got = BytesMut::new();
                assert!(encode_qos0(version, topic, &payload, &mut got));
                assert_eq!(got, expected, "{version:?}, {len} bytes");
            }
        }
        let long = "t".repeat(65_536);
        assert!(!encode_qos0(
            Version::V311,
            &long,
            b"",
            &mut BytesMut::new()
        ));
    }

    #[tokio::test]
    async fn while_the_writer_is_idle_deliverers_write_whole_packets_to_the_socket() {
        let (wire, queue, mut client) = connected(None).await;
        wire.park(0, || queue.is_empty());
        wire.deliver("t/1", Bytes::from_static(b"one")).unwrap();
        wire.deliver("t/2", Bytes::from_static(b"two")).unwrap();
        assert!(queue.is_empty(), "written, not queued");
        let expected = [packet("t/1", b"one"), packet("t/2", b"two")].concat();
        assert_eq!(read(&mut client, expected.len()).await, expected);
    }

    #[tokio::test]
    async fn a_writer_that_is_not_idle_gets_every_message_in_its_queue() {
        let (wire, queue, _client) = connected(None).await;
        // Not idle until the writer parks (the CONNACK goes first).
        wire.deliver("t/1", Bytes::from_static(b"one")).unwrap();
        // The reader sent a command the writer has not taken: it stays ahead of what comes next.
        wire.park(0, || queue.is_empty());
        wire.announce();
        wire.deliver("t/2", Bytes::from_static(b"two")).unwrap();
        assert_eq!(queue.len(), 2);
        // Having taken it, the writer still has what is queued: not idle.
        wire.park(1, || queue.is_empty());
        wire.deliver("t/3", Bytes::from_static(b"three")).unwrap();
        assert_eq!(queue.len(), 3);
        queue.drain().for_each(drop);
        wire.park(0, || queue.is_empty());
        wire.deliver("t/4", Bytes::from_static(b"four")).unwrap();
        assert!(queue.is_empty());
        // A writer that took the wire back, or ended, gets everything again.
        wire.take_over();
        wire.deliver("t/5", Bytes::from_static(b"five")).unwrap();
        wire.close();
        wire.park(0, || true);
        wire.deliver("t/6", Bytes::from_static(b"six")).unwrap();
        assert_eq!(queue.len(), 2);
    }

    #[tokio::test]
    async fn the_end_of_a_packet_the_socket_took_in_part_goes_to_the_writer_first() {
        let (wire, queue, mut client) = connected(Some(4096)).await;
        wire.park(0, || queue.is_empty());
        // Far more than the socket's buffers hold while the client reads nothing.
        let big = vec![7u8; 2 << 20];
        wire.deliver("t/big", Bytes::from(big.clone())).unwrap();
        wire.deliver("t/next", Bytes::from_static(b"next")).unwrap();
        let woken: Vec<Direct> = queue.drain().map(|d| *d).collect();
        assert!(
            matches!(woken.as_slice(), [Direct::Rest, Direct::Message(m)] if m.topic == "t/next"),
            "{woken:?}"
        );
        let rest = wire.take_over().expect("the packet's end");
        assert!(wire.take_over().is_none(), "given once");
        let whole = packet("t/big", &big);
        assert!(rest.len() < whole.len());
        assert!(whole.ends_with(&rest));
        // What the client reads: the start the deliverer wrote, then the end, as the writer writes it.
        let start = whole.len() - rest.len();
        let (reading, writing) = tokio::join!(read(&mut client, whole.len()), async {
            let stream: &TcpStream = (**wire.socket.as_ref().unwrap()).as_ref();
            let mut written = 0;
            while written < rest.len() {
                stream.writable().await.unwrap();
                match stream.try_write(&rest[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
        });
        let () = writing;
        assert_eq!(reading[..start], whole[..start]);
        assert_eq!(reading, whole);
    }
}
