//! The wait between two connection attempts: doubling from [`FIRST`] up to a cap, with jitter so that a
//! fleet of gateways that lost their broker at once does not come back at once.

use std::time::Duration;

use rand::Rng;

/// The wait after the first failure.
pub const FIRST: Duration = Duration::from_secs(1);

/// Exponential backoff with "equal jitter": the n-th wait is between half and all of min(cap, FIRST·2ⁿ).
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(cap: Duration) -> Backoff {
        Backoff {
            step: FIRST.min(cap),
            cap,
        }
    }

    /// The wait before the next attempt, after a failed one; the following wait doubles.
    pub fn failed(&mut self, rng: &mut impl Rng) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.cap);
        let half = step / 2;
        half + rng.gen_range(Duration::ZERO..=step - half)
    }

    /// A connection succeeded: the next failure waits [`FIRST`] again.
    pub fn reset(&mut self) {
        self.step = FIRST.min(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn waits_double_up_to_the_cap_with_jitter_and_reset_on_success() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new(Duration::from_secs(10));
        let steps = [1, 2, 4, 8, 10, 10];
        for step in steps {
            let wait = backoff.failed(&mut rng);
            let step = Duration::from_secs(step);
            assert!(
                wait >= step / 2 && wait <= step,
                "{wait:?} for a step of {step:?}"
            );
        }
        backoff.reset();
        assert!(backoff.failed(&mut rng) <= FIRST);
    }
}
