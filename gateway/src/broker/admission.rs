//! Who gets in, and how fast: connection slots, counted from the CONNECT on, a few of them kept for
//! operators; and password checks that one address cannot monopolize.
//!
//! A password check is argon2: ~50 ms and 19 MiB, a few at a time (see `PASSWORD_CHECKS`). Without more
//! care, whoever sends the most CONNECTs owns that queue: 600 wrong passwords from one address made the
//! operator's CLI wait 20 s for its turn. So each address has at most [`CHECKS_PER_ADDRESS`] checks queued
//! or running, an address whose logins keep failing waits longer and longer before each next check (from
//! its fourth failure on: 100 ms, doubling, up to 5 s), and a check whose client left before its turn is
//! never run. A burst of failures from one address is logged when it starts and when it ends, not once
//! per attempt.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Shared;

/// Password checks one address may have queued or running at once.
pub(crate) const CHECKS_PER_ADDRESS: usize = 2;
/// Failures after which an address starts to wait before its next check.
const FREE_FAILURES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MOST_BACKOFF: Duration = Duration::from_secs(5);
/// A burst of failures ends after this long without one.
const BURST_QUIET: Duration = Duration::from_secs(60);
/// Addresses tracked at most; beyond, idle ones are forgotten first.
const MOST_ADDRESSES: usize = 4096;

/// A connection's place among `max_connections`, from its CONNECT to its end.
pub(crate) struct Slot {
    shared: Arc<Shared>,
    /// One of the slots kept for operators: the connection must turn out to be an operator's.
    reserved: bool,
}

impl Slot {
    /// A slot among those open to everyone, else one of the `reserved_operator_connections`; `None` when
    /// all `max_connections` are taken.
    pub(crate) fn take(shared: &Arc<Shared>) -> Option<Slot> {
        let max = shared.config.max_connections;
        let open = max.saturating_sub(shared.config.reserved_operator_connections);
        let within = |limit: usize| {
            (shared.clients)
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < limit).then_some(n + 1)
                })
                .is_ok()
        };
        let reserved = if within(open) {
            false
        } else if within(max) {
            true
        } else {
            return None;
        };
        Some(Slot {
            shared: shared.clone(),
            reserved,
        })
    }

    pub(crate) fn is_reserved(&self) -> bool {
        self.reserved
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.clients.fetch_sub(1, Ordering::AcqRel);
        self.shared.trimmer.closed();
    }
}

/// The password-check state of one address.
#[derive(Debug)]
struct Address {
    turns: Arc<Semaphore>,
    failures: u32,
    last_failure: Option<Instant>,
}

impl Address {
    fn new() -> Address {
        Address {
            turns: Arc::new(Semaphore::new(CHECKS_PER_ADDRESS)),
            failures: 0,
            last_failure: None,
        }
    }

    fn burst_over(&self, now: Instant) -> bool {
        self.last_failure
            .is_some_and(|last| now.duration_since(last) >= BURST_QUIET)
    }
}

/// How long an address with `failures` recent failed logins waits before its next check.
fn backoff(failures: u32) -> Duration {
    match failures.checked_sub(FREE_FAILURES) {
        None | Some(0) => Duration::ZERO,
        Some(n) => FIRST_BACKOFF
            .saturating_mul(1 << (n - 1).min(16))
            .min(MOST_BACKOFF),
    }
}

/// Password checks per address.
#[derive(Debug, Default)]
pub(crate) struct Logins {
    addresses: Mutex<HashMap<IpAddr, Address>>,
    /// Checks never run because their client left while waiting.
    abandoned: AtomicUsize,
}

impl Logins {
    /// Waits for `ip`'s turn (at most [`CHECKS_PER_ADDRESS`] at once) and its back-off; hold the permit
    /// until the check is done.
    pub(crate) async fn turn(&self, ip: IpAddr) -> OwnedSemaphorePermit {
        let turns = {
            let mut addresses = self.lock();
            if addresses.len() >= MOST_ADDRESSES {
                forget_idle(&mut addresses, Instant::now());
            }
            addresses
                .entry(ip)
                .or_insert_with(Address::new)
                .turns
                .clone()
        };
        // The semaphore is never closed: acquiring cannot fail.
        let permit = turns.acquire_owned().await.expect("never closed");
        // The back-off is read when the turn comes, not when the login arrived: a burst of logins that all
        // arrived before the first failure still waits for the failures found meanwhile.
        let wait = {
            let mut addresses = self.lock();
            let address = addresses.entry(ip).or_insert_with(Address::new);
            if address.burst_over(Instant::now()) {
                address.failures = 0;
            }
            backoff(address.failures)
        };
        tokio::time::sleep(wait).await;
        permit
    }

    /// A login from `ip` failed its password check.
    pub(crate) fn failed(&self, ip: IpAddr, username: &str) {
        let mut addresses = self.lock();
        let now = Instant::now();
        let address = addresses.entry(ip).or_insert_with(Address::new);
        if address.burst_over(now) {
            tracing::warn!(%ip, failures = address.failures, "failed logins from this address stopped");
            address.failures = 0;
        }
        address.failures += 1;
        address.last_failure = Some(now);
        if address.failures == 1 || address.failures.is_power_of_two() {
            tracing::warn!(%ip, username, failures = address.failures, "failed logins from this address (each next check waits longer)");
        }
    }

    /// A login from `ip` passed: its failures are forgotten.
    pub(crate) fn succeeded(&self, ip: IpAddr) {
        if let Some(address) = self.lock().get_mut(&ip) {
            address.failures = 0;
            address.last_failure = None;
        }
    }

    /// A client left before its password was checked.
    pub(crate) fn abandoned(&self, ip: IpAddr) {
        let total = self.abandoned.fetch_add(1, Ordering::Relaxed) + 1;
        if total.is_power_of_two() {
            tracing::info!(%ip, total, "clients left before their password was checked: checks skipped");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Address>> {
        self.addresses.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Forgets addresses with no check under way and no recent failure.
fn forget_idle(addresses: &mut HashMap<IpAddr, Address>, now: Instant) {
    addresses.retain(|_, a| {
        let busy = a.turns.available_permits() < CHECKS_PER_ADDRESS;
        let recent = a
            .last_failure
            .is_some_and(|l| now.duration_since(l) < BURST_QUIET);
        busy || recent
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_after_a_few_failures_and_doubles_to_a_ceiling() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(3), Duration::ZERO);
        assert_eq!(backoff(4), Duration::from_millis(100));
        assert_eq!(backoff(5), Duration::from_millis(200));
        assert_eq!(backoff(8), Duration::from_millis(1600));
        assert_eq!(backoff(10), MOST_BACKOFF);
        assert_eq!(backoff(u32::MAX), MOST_BACKOFF);
    }

    /// A flood arrives all at once, before any of its passwords failed: the logins still waiting when the
    /// failures come in wait for them.
    #[tokio::test(start_paused = true)]
    async fn logins_that_arrived_before_the_failures_wait_for_them() {
        let logins = Arc::new(Logins::default());
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let first = logins.turn(ip).await;
        let second = logins.turn(ip).await;
        let waiting = tokio::spawn({
            let logins = logins.clone();
            async move {
                let _permit = logins.turn(ip).await;
                tokio::time::Instant::now()
            }
        });
        tokio::task::yield_now().await;
        for _ in 0..5 {
            logins.failed(ip, "ops");
        }
        let freed = tokio::time::Instant::now();
        drop((first, second));
        let turned = waiting.await.unwrap();
        assert_eq!(
            turned - freed,
            backoff(5),
            "the back-off of the failures so far"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_address_gets_a_few_turns_at_once_and_waits_after_failures() {
        let logins = Logins::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let first = logins.turn(ip).await;
        let second = logins.turn(ip).await;
        // A third waits for one of those to end.
        let third = tokio::time::timeout(Duration::from_millis(10), logins.turn(ip)).await;
        assert!(third.is_err());
        drop((first, second));
        for _ in 0..5 {
            logins.failed(ip, "ops");
        }
        let started = tokio::time::Instant::now();
        let _turn = logins.turn(ip).await;
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        // Another address is not held up.
        let other = tokio::time::Instant::now();
        let _turn = logins.turn([10, 0, 0, 2].into()).await;
        assert_eq!(other.elapsed(), Duration::ZERO);
        logins.succeeded(ip);
        let again = tokio::time::Instant::now();
        let _turn = tokio::time::timeout(Duration::from_millis(10), logins.turn(ip)).await;
        assert!(again.elapsed() < Duration::from_millis(100));
    }
}
