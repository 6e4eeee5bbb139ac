//! The uplink's spool: everything that goes up to the fleet, on disk from the moment it is taken until
//! the fleet broker acknowledged it, so that a dead link, a restart or a `kill -9` loses nothing.
//!
//! A segmented append-only log under `{data_dir}/uplink/` (not the jobs store, whose only writer is the
//! engine): files named by the sequence number of their first record, each record
//! `len u32 | crc32 u32 | flags u8 | topic_len u16 | topic | payload` (little-endian; `len` and the CRC
//! cover what follows them), and a `cursor` file holding the first sequence number not yet acknowledged.
//! A record is written to the file (the kernel's page cache) before its writer is told it was taken, so
//! a process that dies loses nothing it confirmed; the segments are fsync'd every [`SYNC_INTERVAL`] while
//! records arrive (on a thread of their own, `syncer`), so a power cut loses at most that window (the
//! cursor is written back by the kernel: a power cut may resend, never lose). At start-up a torn last
//! record (a write the crash cut short) is cut off. The bound (`spool_mb`) is kept a segment at a time: when the files
//! exceed it the oldest segment goes, its unacknowledged records counted as dropped and logged. Sending
//! reads from the cursor on; a reconnect or a restart resends from it, so the fleet sees duplicates only
//! of what was in flight.
//!
//! [`Spool`] is the files, synchronous; [`spawn`] runs it on a thread of its own ([`SpoolHandle`]), as the
//! async tasks must not wait on the disk.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::bridge::Bridge;
use crate::broker::Copied;
use recent::Recent;
use syncer::Syncer;

mod recent;
mod syncer;

/// How often appended records are made durable against a power cut (a process crash loses nothing).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Commands the spool's thread may be behind by before appenders wait.
const COMMAND_QUEUE: usize = 4096;
/// Commands the thread serves between two looks at the clock.
const BATCH: usize = 1024;
/// The segment size: an eighth of the bound, within these limits.
const SEGMENT_MIN: u64 = 64 << 10;
const SEGMENT_MAX: u64 = 8 << 20;
/// `len` and `crc32` before each record's body; `flags` and `topic_len` start the body.
const FRAME: usize = 8;
const BODY_HEADER: usize = 3;
const SEGMENT_SUFFIX: &str = ".seg";
const CURSOR_FILE: &str = "cursor";

/// One message to the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub payload: Bytes,
    /// 0, 1 or 2: the QoS it goes up with.
    pub qos: u8,
    pub retain: bool,
}

impl Record {
    /// Bytes the record takes in a segment.
    fn size(&self) -> u64 {
        (FRAME + BODY_HEADER + self.topic.len() + self.payload.len()) as u64
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let body_len = BODY_HEADER + self.topic.len() + self.payload.len();
        let start = out.len();
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let flags = (self.qos & 0b11) | (u8::from(self.retain) << 2);
        out.push(flags);
        out.extend_from_slice(&(self.topic.len() as u16).to_le_bytes());
        out.extend_from_slice(self.topic.as_bytes());
        out.extend_from_slice(&self.payload);
        let crc = crc32fast::hash(&out[start + FRAME..]);
        out[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode(body: &[u8]) -> Option<Record> {
        let (&flags, rest) = body.split_first()?;
        let topic_len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        let topic = rest.get(2..2 + topic_len)?;
        let payload = &rest[2 + topic_len..];
        Some(Record {
            topic: String::from_utf8(topic.to_vec()).ok()?,
            payload: Bytes::copy_from_slice(payload),
            qos: flags & 0b11,
            retain: flags & 0b100 != 0,
        })
    }
}

/// Reads the next record of a segment: `Ok(None)` at its clean end, `Err` with a torn or damaged record
/// (the end of what can be trusted), otherwise the record and its size.
fn read_record(reader: &mut impl Read) -> io::Result<Option<(Record, u64)>> {
    let mut frame = [0; FRAME];
    match reader.read_exact(&mut frame[..1]) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    reader.read_exact(&mut frame[1..])?;
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(frame[4..].try_into().unwrap_or_default());
    if len < BODY_HEADER || len > (SEGMENT_MAX as usize) * 2 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "record length"));
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    if crc32fast::hash(&body) != crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "record checksum",
        ));
    }
    let record = Record::decode(&body)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "record body"))?;
    Ok(Some((record, (FRAME + len) as u64)))
}

/// One segment file: its records are numbered from its name on.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    records: u64,
    bytes: u64,
}

/// Where sending reads: an open segment and the sequence number of its next record.
struct Cursor {
    segment: u64,
    next: u64,
    file: BufReader<File>,
}

/// The spool's files. See the module's documentation.
pub struct Spool {
    dir: PathBuf,
    /// First sequence number -> segment; the last is the one appended to.
    segments: BTreeMap<u64, Segment>,
    head: File,
    next_seq: u64,
    /// Every record below is acknowledged (or dropped).
    acked: u64,
    cursor_file: File,
    bytes: u64,
    limit: u64,
    segment_limit: u64,
    dropped: u64,
    /// Records appended since the last sync.
    unsynced: bool,
    /// The cursor moved since it was last synced (at the end only: see [`Spool::sync`]).
    cursor_unsynced: bool,
    reader: Option<Cursor>,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, bounded to `limit` bytes; a torn last record is cut off.
    pub fn open(dir: &Path, limit: u64) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(first) = first {
                segments.insert(first, scan(&path)?);
            }
        }
        let cursor_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(CURSOR_FILE))?;
        let stored_cursor = read_cursor(&cursor_file);
        let next_seq = segments
            .iter()
            .next_back()
            .map_or(stored_cursor.unwrap_or(0), |(first, s)| first + s.records);
        if segments.is_empty() {
            let path = segment_path(dir, next_seq);
            File::create(&path)?;
            segments.insert(next_seq, Segment::empty(path));
        }
        let oldest = *segments.keys().next().unwrap_or(&next_seq);
        // A missing or damaged cursor resends from the oldest record: duplicates, never a loss.
        let acked = stored_cursor.unwrap_or(oldest).clamp(oldest, next_seq);
        let head_path = &segments.values().next_back().expect("a segment").path;
        let head = OpenOptions::new().append(true).open(head_path)?;
        let bytes = segments.values().map(|s| s.bytes).sum();
        let mut spool = Spool {
            dir: dir.to_owned(),
            segments,
            head,
            next_seq,
            acked,
            cursor_file,
            bytes,
            limit: limit.max(SEGMENT_MIN),
            segment_limit: (limit / 8).clamp(SEGMENT_MIN, SEGMENT_MAX),
            dropped: 0,
            unsynced: false,
            cursor_unsynced: false,
            reader: None,
        };
        spool.remove_acknowledged_segments()?;
        Ok(spool)
    }

    /// Appends records (in order); returns the sequence number of the first. They are in the file when
    /// this returns; [`Spool::sync`] makes them durable against a power cut.
    pub fn append(&mut self, records: &[Record]) -> io::Result<u64> {
        let first = self.next_seq;
        let mut buffer = Vec::new();
        for record in records {
            // A segment holds at least one record, however large.
            let head_bytes = self.head_segment().bytes + buffer.len() as u64;
            if head_bytes > 0 && head_bytes + record.size() > self.segment_limit {
                self.write_head(&mut buffer)?;
                self.roll()?;
            }
            record.encode_into(&mut buffer);
            self.next_seq += 1;
            self.head_segment_mut().records += 1;
        }
        self.write_head(&mut buffer)?;
        self.drop_oldest_beyond_limit()?;
        Ok(first)
    }

    /// Everything below `upto` was acknowledged by the fleet broker: the cursor moves on (persisted), and
    /// segments wholly behind it are removed.
    pub fn acknowledge(&mut self, upto: u64) -> io::Result<()> {
        let upto = upto.min(self.next_seq);
        if upto <= self.acked {
            return Ok(());
        }
        crate::metrics::get().uplink_sent.inc_by(upto - self.acked);
        self.acked = upto;
        self.cursor_file.write_all_at(&encode_cursor(upto), 0)?;
        self.cursor_unsynced = true;
        self.remove_acknowledged_segments()
    }

    /// Up to `max` records from `from` on (from the oldest kept, if `from` was dropped), with their
    /// sequence numbers.
    pub fn read(&mut self, from: u64, max: usize) -> io::Result<Vec<(u64, Record)>> {
        let from = from.max(self.oldest());
        let mut out = Vec::new();
        if from >= self.next_seq {
            return Ok(out);
        }
        let mut reader = match self.reader.take() {
            Some(reader) if reader.next == from => reader,
            _ => self.seek(from)?,
        };
        while out.len() < max && reader.next < self.next_seq {
            let records = self.segments.get(&reader.segment).map_or(0, |s| s.records);
            if reader.next >= reader.segment + records {
                // Read to its end: on to the next segment (numbered on from it, bar a torn tail's gap).
                match self.segments.range(reader.segment + 1..).next() {
                    Some((&next, _)) => reader = self.seek(next)?,
                    None => break,
                }
                continue;
            }
            match read_record(&mut reader.file)? {
                Some((record, _)) => {
                    out.push((reader.next, record));
                    reader.next += 1;
                }
                None => break,
            }
        }
        self.reader = Some(reader);
        Ok(out)
    }

    /// A duplicate of the head segment's handle when records were appended since the last sync: for a
    /// sync on another thread ([`Syncer`]); [`Spool::synced`] once it is taken. The cursor is left to the
    /// kernel's writeback: a power cut before it wrote the cursor resends what the fleet had acknowledged
    /// (duplicates, never a loss), and an fsync of the cursor at every sync would rewrite its page as often
    /// as the records' (the SD card's wear: README, Benchmarks).
    fn to_sync(&self) -> io::Result<Option<Vec<File>>> {
        if !self.unsynced {
            return Ok(None);
        }
        Ok(Some(vec![self.head.try_clone()?]))
    }

    /// The files handed out by [`Spool::to_sync`] are being synced.
    fn synced(&mut self) {
        self.unsynced = false;
    }

    /// Makes what was appended durable (fsync), if anything was since the last time.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.head.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// [`Spool::sync`], and the cursor too: for the end.
    pub fn sync_all(&mut self) -> io::Result<()> {
        self.sync()?;
        if self.cursor_unsynced {
            self.cursor_file.sync_data()?;
            self.cursor_unsynced = false;
        }
        Ok(())
    }

    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The first sequence number not acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Records dropped to keep the bound since the spool was opened.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes the segment files take.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn oldest(&self) -> u64 {
        self.acked.max(*self.segments.keys().next().unwrap_or(&0))
    }

    fn head_segment(&self) -> &Segment {
        self.segments.values().next_back().expect("a head segment")
    }

    fn head_segment_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a head segment")
    }

    fn write_head(&mut self, buffer: &mut Vec<u8>) -> io::Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        self.head.write_all(buffer)?;
        self.head_segment_mut().bytes += buffer.len() as u64;
        self.bytes += buffer.len() as u64;
        self.unsynced = true;
        buffer.clear();
        Ok(())
    }

    /// Starts a new head segment at `next_seq` (the old one made durable first).
    fn roll(&mut self) -> io::Result<()> {
        self.head.sync_data()?;
        let path = segment_path(&self.dir, self.next_seq);
        self.head = OpenOptions::new().create(true).append(true).open(&path)?;
        self.segments.insert(self.next_seq, Segment::empty(path));
        sync_dir(&self.dir)
    }

    /// Drops the oldest segments while the files exceed the bound (never the head).
    fn drop_oldest_beyond_limit(&mut self) -> io::Result<()> {
        while self.bytes > self.limit && self.segments.len() > 1 {
            let Some((first, segment)) = self.segments.pop_first() else {
                break;
            };
            let next_first = *self.segments.keys().next().unwrap_or(&self.next_seq);
            let lost = next_first.saturating_sub(self.acked.max(first));
            self.dropped += lost;
            crate::metrics::get().uplink_spool_dropped.inc_by(lost);
            self.bytes -= segment.bytes;
            fs::remove_file(&segment.path)?;
            tracing::warn!(
                dropped = lost,
                dropped_total = self.dropped,
                limit_bytes = self.limit,
                "uplink: the spool is full; dropped its oldest messages (uplink.spool_mb)"
            );
            if self.acked < next_first {
                self.acked = next_first;
                self.cursor_file
                    .write_all_at(&encode_cursor(next_first), 0)?;
            }
            self.reader = None;
        }
        Ok(())
    }

    /// Removes segments (not the head) whose records are all acknowledged.
    fn remove_acknowledged_segments(&mut self) -> io::Result<()> {
        while self.segments.len() > 1 {
            let mut firsts = self.segments.keys();
            let (Some(&oldest), Some(&next)) = (firsts.next(), firsts.next()) else {
                break;
            };
            if next > self.acked {
                break;
            }
            let segment = self.segments.remove(&oldest).expect("listed");
            self.bytes -= segment.bytes;
            fs::remove_file(&segment.path)?;
            if self.reader.as_ref().is_some_and(|r| r.segment == oldest) {
                self.reader = None;
            }
        }
        Ok(())
    }

    /// A reader positioned at record `seq` of the segment holding it.
    fn seek(&self, seq: u64) -> io::Result<Cursor> {
        let (&first, segment) = self
            .segments
            .range(..=seq)
            .next_back()
            .or_else(|| self.segments.iter().next())
            .expect("a segment");
        let mut file = BufReader::new(File::open(&segment.path)?);
        file.seek(SeekFrom::Start(0))?;
        let mut next = first;
        while next < seq && next < first + segment.records {
            read_record(&mut file)?;
            next += 1;
        }
        Ok(Cursor {
            segment: first,
            next,
            file,
        })
    }
}

impl Segment {
    fn empty(path: PathBuf) -> Segment {
        Segment {
            path,
            records: 0,
            bytes: 0,
        }
    }
}

/// Counts a segment's records; a torn or damaged tail is cut off (the records before it are kept).
fn scan(path: &Path) -> io::Result<Segment> {
    let mut reader = BufReader::new(File::open(path)?);
    let (mut records, mut bytes) = (0, 0);
    let torn = loop {
        match read_record(&mut reader) {
            Ok(Some((_, size))) => {
                records += 1;
                bytes += size;
            }
            Ok(None) => break false,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ) =>
            {
                break true
            }
            Err(e) => return Err(e),
        }
    };
    if torn {
        tracing::warn!(
            segment = %path.display(),
            kept = records,
            "uplink: the spool's last write was cut short (a crash); the torn record is removed"
        );
        OpenOptions::new().write(true).open(path)?.set_len(bytes)?;
    }
    Ok(Segment {
        path: path.to_owned(),
        records,
        bytes,
    })
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SEGMENT_SUFFIX}"))
}

fn encode_cursor(seq: u64) -> [u8; 12] {
    let mut out = [0; 12];
    out[..8].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&out[..8]);
    out[8..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn read_cursor(file: &File) -> Option<u64> {
    let mut bytes = [0; 12];
    file.read_exact_at(&mut bytes, 0).ok()?;
    let crc = u32::from_le_bytes(bytes[8..].try_into().ok()?);
    (crc32fast::hash(&bytes[..8]) == crc)
        .then(|| u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()))
}

/// Makes a new or removed file name durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What the spool's thread takes: its handles' commands, and the broker's copies.
struct Inputs {
    commands: mpsc::Receiver<Command>,
    copies: Option<Copies>,
}

impl Inputs {
    /// The next command, waiting for one; `None` once every handle is gone.
    async fn next(&mut self) -> Option<Command> {
        let Some(copies) = &mut self.copies else {
            return self.commands.recv().await;
        };
        tokio::select! {
            command = self.commands.recv() => command,
            Some(copied) = copies.queue.recv() => Some(copies.append(copied)),
        }
    }

    /// The next command already queued, if any.
    fn try_next(&mut self) -> Option<Command> {
        self.commands.try_recv().ok().or_else(|| {
            let copies = self.copies.as_mut()?;
            let copied = copies.queue.try_recv().ok()?;
            Some(copies.append(copied))
        })
    }
}

impl Copies {
    /// The append of a copied publish, under its fleet topic; one on no `out` topic is confirmed at
    /// once and goes nowhere (an append of nothing).
    fn append(&self, copied: Copied) -> Command {
        let Copied {
            topic,
            payload,
            retain,
            taken,
            ..
        } = copied;
        match self.bridge.outgoing(&topic) {
            Some((topic, qos)) => Command::Append(
                Record {
                    topic,
                    payload,
                    qos,
                    retain,
                },
                taken,
            ),
            None => {
                if let Some(taken) = taken {
                    let _ = taken.send(());
                }
                Command::Nothing
            }
        }
    }
}

/// A command to the spool's thread.
enum Command {
    /// Nothing to do (a copy that goes nowhere).
    Nothing,
    /// Append; `taken` is told once the record is in the file.
    Append(Record, Option<oneshot::Sender<()>>),
    Acknowledge(u64),
    Read {
        from: u64,
        max: usize,
        reply: oneshot::Sender<Vec<(u64, Record)>>,
    },
}

/// The spool on its own thread. Clone it freely; the thread ends when every handle is dropped.
#[derive(Clone)]
pub struct SpoolHandle {
    commands: mpsc::Sender<Command>,
    tail: watch::Receiver<Position>,
    recent: Recent,
}

/// Where the spool stands: the next sequence number to be appended, and the first not acknowledged (or
/// dropped to keep the bound).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub next_seq: u64,
    pub acked: u64,
}

/// Why the spool's thread no longer answers.
#[derive(Debug, thiserror::Error)]
#[error("uplink: the spool stopped (see the log for its last error)")]
pub struct SpoolStopped;

impl SpoolHandle {
    /// Appends a record without waiting for the file (order with other appends is kept); `taken`, if
    /// given, is told once it is in the file.
    pub async fn push(
        &self,
        record: Record,
        taken: Option<oneshot::Sender<()>>,
    ) -> Result<(), SpoolStopped> {
        self.send(Command::Append(record, taken)).await
    }

    /// Everything below `upto` was acknowledged.
    pub async fn acknowledge(&self, upto: u64) -> Result<(), SpoolStopped> {
        self.send(Command::Acknowledge(upto)).await
    }

    /// Up to `max` records from `from` on, of those appended so far (that [`position`](Self::position)
    /// counts; appends still on their way may be missing): from those appended last, in memory, when they
    /// hold `from` (the tail of a spool that the link keeps up with), else read back from the files by the
    /// thread.
    pub async fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Record)>, SpoolStopped> {
        if let Some(records) = self.recent.read(from, max) {
            return Ok(records);
        }
        let (reply, records) = oneshot::channel();
        self.send(Command::Read { from, max, reply }).await?;
        records.await.map_err(|_| SpoolStopped)
    }

    /// Where the spool stands now; changes as records are appended and acknowledged.
    pub fn position(&self) -> watch::Receiver<Position> {
        self.tail.clone()
    }

    async fn send(&self, command: Command) -> Result<(), SpoolStopped> {
        self.commands.send(command).await.map_err(|_| SpoolStopped)
    }
}

/// Local clients' publishes on the `out` topics, as the broker copies them (see
/// [`Broker::copy_routed`](crate::broker::Broker::copy_routed)), and how they go up: the spool's thread
/// takes them straight from the broker, so a publisher's PUBACK waits for one hand-off only.
pub struct Copies {
    pub queue: mpsc::Receiver<Copied>,
    pub bridge: Bridge,
}

/// Runs `spool` on a thread of its own (`sprig-spool`), taking `copies` too.
pub fn spawn(spool: Spool, copies: Option<Copies>) -> io::Result<SpoolHandle> {
    let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
    let (tail, position) = watch::channel(position_of(&spool));
    let runtime = tokio::runtime::Handle::current();
    let inputs = Inputs {
        commands: receiver,
        copies,
    };
    let recent = Recent::new(spool.segment_limit);
    let appended = recent.clone();
    std::thread::Builder::new()
        .name("sprig-spool".into())
        .spawn(move || serve(spool, inputs, tail, appended, runtime))?;
    Ok(SpoolHandle {
        commands,
        tail: position,
        recent,
    })
}

fn position_of(spool: &Spool) -> Position {
    let metrics = crate::metrics::get();
    let waiting = spool.next_seq().saturating_sub(spool.acked());
    metrics.uplink_spool_messages.set(waiting as i64);
    metrics.uplink_spool_bytes.set(spool.bytes() as i64);
    Position {
        next_seq: spool.next_seq(),
        acked: spool.acked(),
    }
}

/// The spool's thread: takes commands in batches (consecutive appends become one write), has its files
/// synced every [`SYNC_INTERVAL`] while there are changes (by [`Syncer`]'s thread, so that confirmations do
/// not wait for the disk). A disk error stops the spool (logged): appenders then see [`SpoolStopped`].
fn serve(
    mut spool: Spool,
    mut inputs: Inputs,
    tail: watch::Sender<Position>,
    recent: Recent,
    runtime: tokio::runtime::Handle,
) {
    let syncer = match Syncer::start() {
        Ok(syncer) => syncer,
        Err(e) => {
            tracing::error!(error = %e, "uplink: cannot start the spool's sync thread; the spool stops");
            return;
        }
    };
    let mut last_sync = Instant::now();
    loop {
        let wait = SYNC_INTERVAL.saturating_sub(last_sync.elapsed());
        let first = runtime.block_on(async { tokio::time::timeout(wait, inputs.next()).await });
        let result = match first {
            Ok(None) => break,
            Ok(Some(command)) => serve_batch(&mut spool, command, &mut inputs, &recent),
            Err(_elapsed) => Ok(()),
        };
        let result = result.and_then(|()| {
            if let Some(failed) = syncer.failure() {
                return Err(failed);
            }
            if last_sync.elapsed() >= SYNC_INTERVAL {
                last_sync = Instant::now();
                if let Some(files) = spool.to_sync()? {
                    if syncer.request(files) {
                        spool.synced();
                    }
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::error!(error = %e, dir = %spool.dir.display(), "uplink: the spool cannot write; it stops");
            return;
        }
        tail.send_if_modified(|p| {
            let now = position_of(&spool);
            std::mem::replace(p, now) != now
        });
    }
    drop(syncer);
    if let Err(e) = spool.sync_all() {
        tracing::error!(error = %e, "uplink: the spool's last sync failed");
    }
}

/// Serves `first` and the commands already queued behind it (at most [`BATCH`], so syncs keep their
/// pace under a steady stream).
fn serve_batch(
    spool: &mut Spool,
    first: Command,
    inputs: &mut Inputs,
    recent: &Recent,
) -> io::Result<()> {
    let mut appends = Vec::new();
    let mut taken = Vec::new();
    // The cursor moves once per batch, to the furthest acknowledgement in it: one write, not one each.
    let mut acknowledged = None;
    let mut next = Some(first);
    for _ in 0..BATCH {
        let Some(command) = next.take().or_else(|| inputs.try_next()) else {
            break;
        };
        match command {
            Command::Append(record, confirm) => {
                appends.push(record);
                taken.extend(confirm);
            }
            Command::Nothing => {}
            Command::Acknowledge(upto) => acknowledged = acknowledged.max(Some(upto)),
            Command::Read { from, max, reply } => {
                flush_appends(spool, &mut appends, &mut taken, recent)?;
                let _ = reply.send(spool.read(from, max)?);
            }
        }
    }
    flush_appends(spool, &mut appends, &mut taken, recent)?;
    match acknowledged {
        Some(upto) => spool.acknowledge(upto),
        None => Ok(()),
    }
}

/// Writes `appends` to the spool (and hands them to `recent`), then confirms what `taken` waits for.
fn flush_appends(
    spool: &mut Spool,
    appends: &mut Vec<Record>,
    taken: &mut Vec<oneshot::Sender<()>>,
    recent: &Recent,
) -> io::Result<()> {
    if !appends.is_empty() {
        let first = spool.append(appends)?;
        recent.push(first, appends.drain(..));
    }
    for confirm in taken.drain(..) {
        let _ = confirm.send(());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
