//! Router links: the thread that opens them, and the names clients' links go by (a small pool of reusable
//! names, `~link-N`, not the clients' ids).
//!
//! rumqttd's `LinkBuilder::build` blocks until the router answers. Run through `spawn_blocking`, a burst of
//! connections took a thread of the runtime's blocking pool each, and the pool keeps an idle thread for as
//! long as other blocking work wakes it now and then (the step-timeout check, every second): 50
//! connections at once left ~23 threads and ~1 MiB for good. The router opens links one after the other
//! anyway, so [`LinkMaker`] opens them on one thread of its own, in turn.
//!
//! rumqttd's router remembers every client id it has seen: when a connection ends it keeps a record of
//! that id's connection events (`Graveyard`, ~1 KiB each) and never drops it, so a gateway whose clients
//! come with ever new ids (CLI calls, auto-assigned ids, reconnecting fleets, an attacker) grew without
//! bound. sprig keeps its own sessions (persistent ones included) and links to the router always clean, so
//! the router has no use for the real id: links are named from this pool instead, a name going back to it
//! when its link is closed, and the router's records stay as many as the most links ever open at once.
//!
//! The router also took over a link whose client id connected again (MQTT's session takeover); with names
//! of their own no two links collide, so sprig ends the older connection itself (see `Sessions`).
//! Reusing a name is safe: a link is closed (its DISCONNECT queued to the router, or the router dropped it
//! already) before its name is released, and the router handles its events in order.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{BrokerError, LinkParts};

/// Opens a router link under a name; blocks until the router answers.
type Open = dyn Fn(&str) -> Result<LinkParts, String> + Send;
/// A link to open, and where its outcome goes.
type Request = (String, oneshot::Sender<Result<LinkParts, String>>);

/// Opens router links on a thread of its own (`sprig-links`), one after the other.
pub(crate) struct LinkMaker {
    requests: mpsc::UnboundedSender<Request>,
}

impl LinkMaker {
    /// Starts the thread; it ends when the maker is dropped.
    pub(crate) fn start(
        open: impl Fn(&str) -> Result<LinkParts, String> + Send + 'static,
    ) -> std::io::Result<LinkMaker> {
        let open: Box<Open> = Box::new(open);
        let (requests, mut pending) = mpsc::unbounded_channel::<Request>();
        std::thread::Builder::new()
            .name("sprig-links".into())
            .spawn(move || {
                while let Some((name, reply)) = pending.blocking_recv() {
                    // The asker may have gone (its client left): the link is dropped, as it was when
                    // opened through `spawn_blocking`.
                    let _ = reply.send(open(&name));
                }
            })?;
        Ok(LinkMaker { requests })
    }

    /// Opens a clean router link named `name`, without blocking the runtime.
    pub(crate) async fn open(&self, name: &str) -> Result<LinkParts, BrokerError> {
        let stopped = || BrokerError::Link("the router link thread has stopped".into());
        let (reply, outcome) = oneshot::channel();
        (self.requests)
            .send((name.to_owned(), reply))
            .map_err(|_| stopped())?;
        outcome
            .await
            .map_err(|_| stopped())?
            .map_err(BrokerError::Link)
    }
}

/// The prefix of every link name; `~` starts internal names, which no client may use.
const PREFIX: &str = "~link-";

/// The pool of link names: names released and not taken again, and how many were ever made.
#[derive(Debug, Default)]
pub(crate) struct LinkNames {
    state: Mutex<Pool>,
}

#[derive(Debug, Default)]
struct Pool {
    free: Vec<u32>,
    made: u32,
}

impl LinkNames {
    /// A name no open link has: the lowest released one, or a new one.
    pub(crate) fn take(self: &Arc<Self>) -> LinkName {
        let mut pool = self.lock();
        let number = match pool.free.pop() {
            Some(number) => number,
            None => {
                pool.made += 1;
                pool.made
            }
        };
        LinkName {
            number,
            names: self.clone(),
        }
    }

    /// How many names were ever made: the most links open at once.
    #[cfg(test)]
    pub(crate) fn made(&self) -> u32 {
        self.lock().made
    }

    /// How many names are held now: the router links open.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        let pool = self.lock();
        pool.made as usize - pool.free.len()
    }

    fn release(&self, number: u32) {
        let mut pool = self.lock();
        // Lowest first, so that the router sees few distinct names.
        let at = pool.free.partition_point(|&n| n > number);
        pool.free.insert(at, number);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        // The pool is consistent after every statement: recover it from a panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A link's name, held as long as the link is open in the router: drop it after closing the link.
#[derive(Debug)]
pub(crate) struct LinkName {
    number: u32,
    names: Arc<LinkNames>,
}

impl LinkName {
    /// The name as the router sees it.
    pub(crate) fn to_router(&self) -> String {
        format!("{PREFIX}{}", self.number)
    }
}

impl Drop for LinkName {
    fn drop(&mut self) {
        self.names.release(self.number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_while_held_and_reused_lowest_first() {
        let names = Arc::new(LinkNames::default());
        let a = names.take();
        let b = names.take();
        let c = names.take();
        assert_eq!(
            [a.to_router(), b.to_router(), c.to_router()],
            ["~link-1", "~link-2", "~link-3"]
        );
        drop(c);
        drop(a);
        let again: Vec<LinkName> = (0..3).map(|_| names.take()).collect();
        let again: Vec<String> = again.iter().map(LinkName::to_router).collect();
        assert_eq!(again, ["~link-1", "~link-3", "~link-4"]);
        assert_eq!(names.made(), 4);
    }

    #[test]
    fn churn_makes_no_more_names_than_were_open_at_once() {
        let names = Arc::new(LinkNames::default());
        for _ in 0..1000 {
            let held: Vec<LinkName> = (0..3).map(|_| names.take()).collect();
            drop(held);
        }
        assert_eq!(names.made(), 3);
    }
}
