//! The records appended last, kept in memory beside the spool's files, so that the uplink sends the spool's
//! tail (the common case: the link is up and keeps up) without asking the spool's thread to read back
//! what it has just written. A read that starts before what it holds goes to the files.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use super::Record;

/// Records it holds at most; it holds at most a segment's bytes too (see [`Recent::new`]).
const MAX_RECORDS: usize = 1024;
/// Bytes it holds at most, whatever the segment size.
const MAX_BYTES: u64 = 256 << 10;

/// The spool's tail, shared by its thread (which appends) and the uplink (which reads).
#[derive(Debug, Clone)]
pub struct Recent(Arc<Mutex<Tail>>);

#[derive(Debug)]
struct Tail {
    /// The sequence number of `records[0]`.
    first: u64,
    records: VecDeque<Record>,
    bytes: u64,
    limit: u64,
}

impl Recent {
    /// Holds at most `segment_bytes` (so that what it holds lies in the spool's last two segments, which the
    /// spool's bound never drops) and at most [`MAX_BYTES`].
    pub fn new(segment_bytes: u64) -> Recent {
        Recent(Arc::new(Mutex::new(Tail {
            first: 0,
            records: VecDeque::new(),
            bytes: 0,
            limit: segment_bytes.min(MAX_BYTES),
        })))
    }

    /// `records`, just appended to the spool from sequence number `first` on. After a gap (the tail was
    /// read from the files before this one started, say) it starts again from them.
    pub fn push(&self, first: u64, records: impl IntoIterator<Item = Record>) {
        let mut tail = self.lock();
        if tail.first + tail.records.len() as u64 != first {
            tail.records.clear();
            tail.bytes = 0;
            tail.first = first;
        }
        for record in records {
            tail.bytes += record.size();
            tail.records.push_back(record);
        }
        while tail.bytes > tail.limit || tail.records.len() > MAX_RECORDS {
            let Some(oldest) = tail.records.pop_front() else {
                break;
            };
            tail.bytes -= oldest.size();
            tail.first += 1;
        }
    }

    /// Up to `max` records from `from` on, with their sequence numbers; `None` when it does not hold
    /// `from`.
    pub fn read(&self, from: u64, max: usize) -> Option<Vec<(u64, Record)>> {
        let tail = self.lock();
        let end = tail.first + tail.records.len() as u64;
        if from < tail.first || from >= end {
            return None;
        }
        let skip = (from - tail.first) as usize;
        let records = tail.records.iter().skip(skip).take(max);
        Some((from..).zip(records.cloned()).collect())
    }

    fn lock(&self) -> MutexGuard<'_, Tail> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn record(n: u64) -> Record {
        Record {
            topic: format!("t/{n}"),
            payload: Bytes::from(vec![0; 100]),
            qos: 1,
            retain: false,
        }
    }

    fn seqs(read: Option<Vec<(u64, Record)>>) -> Option<Vec<u64>> {
        read.map(|records| {
            records
                .into_iter()
                .map(|(seq, record)| {
                    assert_eq!(record, self::record(seq));
                    seq
                })
                .collect()
        })
    }

    #[test]
    fn serves_what_it_holds_from_its_sequence_numbers_and_nothing_else() {
        let recent = Recent::new(1 << 20);
        recent.push(10, (10..15).map(record));
        assert_eq!(seqs(recent.read(12, 10)), Some(vec![12, 13, 14]));
        assert_eq!(seqs(recent.read(10, 2)), Some(vec![10, 11]));
        assert_eq!(seqs(recent.read(9, 10)), None, "before what it holds");
        assert_eq!(seqs(recent.read(15, 10)), None, "nothing appended yet");
        recent.push(15, (15..17).map(record));
        assert_eq!(seqs(recent.read(14, 10)), Some(vec![14, 15, 16]));
    }

    #[test]
    fn forgets_the_oldest_beyond_its_bounds_and_starts_again_after_a_gap() {
        let one = record(0).size();
        let recent = Recent::new(one * 3);
        recent.push(0, (0..5).map(record));
        assert_eq!(seqs(recent.read(1, 10)), None);
        assert_eq!(seqs(recent.read(2, 10)), Some(vec![2, 3, 4]));
        recent.push(9, (9..10).map(record));
        assert_eq!(
            seqs(recent.read(4, 10)),
            None,
            "the gap: 5 to 8 are not held"
        );
        assert_eq!(seqs(recent.read(9, 10)), Some(vec![9]));

        let many = Recent::new(1 << 30);
        many.push(0, (0..2000).map(record));
        assert_eq!(seqs(many.read(2000 - MAX_RECORDS as u64 - 1, 1)), None);
        assert_eq!(
            seqs(many.read(2000 - MAX_RECORDS as u64, 1)),
            Some(vec![2000 - MAX_RECORDS as u64])
        );
    }
}
