//! What is in flight on one connection to the fleet broker, and how far the spool may be acknowledged:
//! pure bookkeeping, fed with what the connection reports.
//!
//! rumqttc does not say which packet id a publish got when it is handed over; it reports each publish as
//! it goes out (`Outgoing::Publish(pkid)`), in the order they were handed over. So every publish the
//! uplink hands over (spooled records and its own replies alike) is remembered in order, and the n-th
//! "went out" is the n-th handed over. A QoS 1 record is done when its PUBACK comes, a QoS 0 one when it
//! went out. The spool's cursor moves to the oldest record not done: records are acknowledged in order
//! even when the broker's PUBACKs are not.

use std::collections::{BTreeSet, HashMap, VecDeque};

/// Records handed to the connection and not yet acknowledged, at most (rumqttc's `inflight` is set to
/// the same, so none waits inside rumqttc).
pub const WINDOW: usize = 100;

/// Places the window gathers before more records are read from the spool while others are in flight:
/// a read is a round trip to the spool's thread, and refilling each place as its PUBACK came held a
/// drain to one record per round trip (25,000 a second on the benchmark's machine).
pub const REFILL: usize = WINDOW / 4;

/// The bookkeeping of one connection. [`Window::reset`] starts the next connection from the cursor.
#[derive(Debug, Default)]
pub struct Window {
    /// Publishes handed over, not yet gone out: the spool's sequence number, or `None` for the uplink's
    /// own (replies, status), which are not spooled.
    handed: VecDeque<Option<(u64, u8)>>,
    /// Packet id -> sequence number of a QoS 1 record gone out, waiting for its PUBACK.
    awaiting: HashMap<u16, u64>,
    /// Sequence numbers handed over and not done.
    open: BTreeSet<u64>,
    /// The next sequence number to hand over.
    next: u64,
    /// Every record below is done.
    done: u64,
}

impl Window {
    /// A new connection: nothing in flight, everything from `cursor` on is (re)sent.
    pub fn reset(&mut self, cursor: u64) {
        *self = Window {
            next: cursor,
            done: cursor,
            ..Window::default()
        };
    }

    /// How many more records may be handed over now.
    pub fn room(&self) -> usize {
        WINDOW.saturating_sub(self.open.len())
    }

    /// How many records to read and hand over now: the room, once it holds [`REFILL`] places (with
    /// less, more than `WINDOW - REFILL` are in flight, and their acknowledgements make more room).
    pub fn refill(&self) -> usize {
        let room = self.room();
        if room >= REFILL {
            room
        } else {
            0
        }
    }

    /// Every record below is done: where the next connection resends from.
    pub fn cursor(&self) -> u64 {
        self.done
    }

    /// The next sequence number to read from the spool.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The spool's record `seq` was handed over with `qos`.
    pub fn handed_record(&mut self, seq: u64, qos: u8) {
        self.handed.push_back(Some((seq, qos)));
        self.open.insert(seq);
        self.next = seq + 1;
    }

    /// One of the uplink's own publishes was handed over.
    pub fn handed_own(&mut self) {
        self.handed.push_back(None);
    }

    /// The oldest publish handed over went out with packet id `pkid`. Returns the new cursor if it moved.
    pub fn went_out(&mut self, pkid: u16) -> Option<u64> {
        match self.handed.pop_front()? {
            Some((seq, 0)) => self.finish(seq),
            Some((seq, _)) => {
                self.awaiting.insert(pkid, seq);
                None
            }
            None => None,
        }
    }

    /// The broker acknowledged packet id `pkid`. Returns the new cursor if it moved.
    pub fn acknowledged(&mut self, pkid: u16) -> Option<u64> {
        let seq = self.awaiting.remove(&pkid)?;
        self.finish(seq)
    }

    fn finish(&mut self, seq: u64) -> Option<u64> {
        self.open.remove(&seq);
        let done = self.open.first().copied().unwrap_or(self.next);
        (done > self.done).then(|| {
            self.done = done;
            done
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_moves_to_the_oldest_record_not_acknowledged() {
        let mut window = Window::default();
        window.reset(10);
        window.handed_record(10, 1);
        window.handed_own();
        window.handed_record(11, 1);
        window.handed_record(12, 0);
        assert_eq!(window.room(), WINDOW - 3);
        assert_eq!(window.went_out(1), None);
        assert_eq!(window.went_out(2), None, "a reply is not a record");
        assert_eq!(window.went_out(3), None);
        assert_eq!(
            window.went_out(0),
            None,
            "QoS 0 is done once out, but 10 is not"
        );
        assert_eq!(window.acknowledged(3), None, "11 is done, 10 is not");
        assert_eq!(
            window.acknowledged(2),
            None,
            "the reply's PUBACK is not a record's"
        );
        assert_eq!(window.acknowledged(1), Some(13), "10, 11 and 12 are done");
        assert_eq!((window.room(), window.next()), (WINDOW, 13));
    }

    #[test]
    fn the_window_is_refilled_a_batch_at_a_time() {
        let mut window = Window::default();
        window.reset(0);
        assert_eq!(window.refill(), WINDOW, "an empty window is filled");
        for seq in 0..WINDOW as u64 {
            window.handed_record(seq, 1);
            window.went_out(seq as u16 + 1);
        }
        assert_eq!(window.refill(), 0);
        for pkid in 1..REFILL as u16 {
            window.acknowledged(pkid);
        }
        assert_eq!(window.refill(), 0, "one place short of a batch");
        window.acknowledged(REFILL as u16);
        assert_eq!(window.refill(), REFILL);
    }

    #[test]
    fn a_new_connection_resends_from_the_cursor() {
        let mut window = Window::default();
        window.reset(0);
        window.handed_record(0, 1);
        window.handed_record(1, 1);
        window.went_out(7);
        assert_eq!(window.acknowledged(7), Some(1));
        window.reset(1);
        assert_eq!((window.next(), window.room()), (1, WINDOW));
        assert_eq!(
            window.acknowledged(7),
            None,
            "a packet id of the old connection"
        );
    }
}
