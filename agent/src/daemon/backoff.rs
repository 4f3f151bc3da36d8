//! After failed map writes (a full map), when to try again: backing off so
//! that a map that stays full does not cost a sync every tick.

use std::time::{Duration, Instant};

const FIRST: Duration = Duration::from_millis(500);
const MAX: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(super) struct Backoff {
    /// `None`: no wait.
    retry_at: Option<Instant>,
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            retry_at: None,
            delay: FIRST,
        }
    }
}

impl Backoff {
    pub(super) fn due(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// Waits the current delay, doubling it for the next failure.
    pub(super) fn failed(&mut self, now: Instant) {
        self.retry_at = Some(now + self.delay);
        self.delay = (self.delay * 2).min(MAX);
    }

    pub(super) fn succeeded(&mut self) {
        *self = Self::default();
    }

    /// Due at once, for a change (which is programmed backoff or not); the
    /// delay stays, should the change fail too.
    pub(super) fn wake(&mut self) {
        self.retry_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_a_cap_and_a_change_skips_the_wait() {
        let t = Instant::now();
        let mut b = Backoff::default();
        assert!(b.due(t));
        b.failed(t);
        assert!(!b.due(t) && b.due(t + FIRST));
        b.failed(t);
        assert!(!b.due(t + FIRST) && b.due(t + 2 * FIRST));
        b.wake();
        assert!(b.due(t));
        for _ in 0..20 {
            b.failed(t);
        }
        assert!(b.due(t + MAX));
        b.succeeded();
        b.failed(t);
        assert!(b.due(t + FIRST));
    }
}
