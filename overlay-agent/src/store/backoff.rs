//! Capped exponential backoff with jitter, for reconnecting to the store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// First retry delay.
pub const INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between retries: an agent notices a returning store within this.
pub const MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        Self { next: INITIAL }
    }

    /// The delay to wait now (doubling up to [`MAX`], each ±20 % so that many agents
    /// do not retry in step).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(MAX);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let jitter = f64::from(nanos % 1000) / 1000.0 * 0.4 - 0.2;
        base.mul_f64(1.0 + jitter)
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// After a success: the next failure starts from [`INITIAL`] again.
    pub fn reset(&mut self) {
        self.next = INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= INITIAL.mul_f64(0.8) && first <= INITIAL.mul_f64(1.2), "{first:?}");
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= MAX.mul_f64(1.2), "{d:?}");
        }
        assert!(b.next_delay() >= MAX.mul_f64(0.8));
        b.reset();
        assert!(b.next_delay() <= INITIAL.mul_f64(1.2));
    }
}
