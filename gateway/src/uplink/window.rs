//! What is in flight on one connection to the fleet broker, and how far the spool may be acknowledged:
//! pure bookkeeping, fed with what the connection reports.
//!
//! Each spooled record is handed to the connection tagged with its sequence number, and the connection
//! reports the tags of those done: a QoS 1 record once its PUBACK came, a QoS 0 one once written. The
//! spool's cursor moves to the oldest record not done: records are acknowledged in order even when the
//! broker's PUBACKs are not.

use std::collections::BTreeMap;

/// QoS 1 records handed to the connection and not yet acknowledged, at most (the connection's own limit
/// of publishes in flight is the same; AWS IoT Core takes 100).
pub const WINDOW: usize = 100;

/// Records of any QoS handed to the connection and not yet done, at most: QoS 0 ones are done once
/// written, and a window of 100 of them made the uplink wait for each batch's write before handing the
/// next (within the connection's queue of requests, 1,024).
pub const HANDED: usize = 1000;

/// Places the window gathers before more records are handed over while others are in flight: a few, so
/// that the connection's task wakes for a batch, not for each PUBACK; a quarter of the window (when each
/// refill was a read on the spool's thread) kept a quarter of it empty while waiting, and the fleet
/// broker's round trip bounds what a window of 100 forwards.
pub const REFILL: usize = WINDOW / 12;

/// The bookkeeping of one connection. [`Window::reset`] starts the next connection from the cursor.
#[derive(Debug, Default)]
pub struct Window {
    /// Sequence numbers handed over and not done, and whether each is QoS 1.
    open: BTreeMap<u64, bool>,
    /// How many of `open` are QoS 1.
    reliable: usize,
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
        let reliable = WINDOW.saturating_sub(self.reliable);
        reliable.min(HANDED.saturating_sub(self.open.len()))
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

    /// The spool's record `seq` was handed over at `qos`.
    pub fn handed(&mut self, seq: u64, qos: u8) {
        let reliable = qos > 0;
        if self.open.insert(seq, reliable).is_none() && reliable {
            self.reliable += 1;
        }
        self.next = seq + 1;
    }

    /// The connection reports `records` done. Returns the new cursor if it moved.
    pub fn done(&mut self, records: Vec<u64>) -> Option<u64> {
        for seq in records {
            if self.open.remove(&seq) == Some(true) {
                self.reliable -= 1;
            }
        }
        let done = self.open.keys().next().copied().unwrap_or(self.next);
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
    fn the_cursor_moves_to_the_oldest_record_not_done() {
        let mut window = Window::default();
        window.reset(10);
        for seq in 10..13 {
            window.handed(seq, 1);
        }
        assert_eq!(window.room(), WINDOW - 3);
        assert_eq!(window.done(vec![12]), None, "10 is not done");
        assert_eq!(window.done(vec![11]), None, "nor now");
        assert_eq!(window.done(vec![10]), Some(13), "10, 11 and 12 are done");
        assert_eq!((window.room(), window.next()), (WINDOW, 13));
        assert_eq!(window.done(vec![10]), None, "reported twice");
    }

    #[test]
    fn qos0_records_take_no_place_of_the_brokers_in_flight_but_are_bounded() {
        let mut window = Window::default();
        window.reset(0);
        for seq in 0..WINDOW as u64 {
            window.handed(seq, 1);
        }
        assert_eq!(window.room(), 0, "100 QoS 1 in flight");
        window.done((0..WINDOW as u64).collect());
        for seq in WINDOW as u64..(WINDOW + HANDED) as u64 - 10 {
            window.handed(seq, 0);
        }
        assert_eq!(
            window.room(),
            10,
            "QoS 0 ones count against the bound of all handed"
        );
        assert_eq!(window.done(vec![WINDOW as u64]), Some(WINDOW as u64 + 1));
        assert_eq!(window.room(), 11);
    }

    #[test]
    fn the_window_is_refilled_a_batch_at_a_time() {
        let mut window = Window::default();
        window.reset(0);
        assert_eq!(window.refill(), WINDOW, "an empty window is filled");
        for seq in 0..WINDOW as u64 {
            window.handed(seq, 1);
        }
        assert_eq!(window.refill(), 0);
        window.done((0..REFILL as u64 - 1).collect());
        assert_eq!(window.refill(), 0, "one place short of a batch");
        window.done(vec![REFILL as u64 - 1]);
        assert_eq!(window.refill(), REFILL);
    }

    #[test]
    fn a_new_connection_resends_from_the_cursor() {
        let mut window = Window::default();
        window.reset(0);
        window.handed(0, 1);
        window.handed(1, 1);
        assert_eq!(window.done(vec![0]), Some(1));
        window.reset(1);
        assert_eq!(
            (window.next(), window.room(), window.cursor()),
            (1, WINDOW, 1)
        );
        assert_eq!(window.done(vec![0]), None, "a record of the old connection");
    }
}
