//! The per-core keep-alive pool of idle origin connections.
//!
//! Core-local (one per worker, behind a `RefCell`): no locks, no atomics. Checkout is LIFO so
//! the most recently used (least likely closed by the origin) connection goes first; the pool
//! holds at most `max_idle` connections and none older than `idle_timeout`. Expired connections
//! are dropped on checkout and by a periodic sweep (`sweep`), so the origin does not see
//! lingering sockets. Time is passed in, so the rules are tested without sleeping.

use std::time::{Duration, Instant};

use super::UpstreamConn;

/// Idle connections of one worker. Generic over the connection type so that tests can use a
/// plain value.
pub struct Pool<C = UpstreamConn> {
    /// Oldest first; checkout pops from the back.
    idle: Vec<(C, Instant)>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl<C> Pool<C> {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Pool {
            idle: Vec::with_capacity(max_idle),
            max_idle,
            idle_timeout,
        }
    }

    /// New limits (a reload): connections beyond `max_idle` are closed, oldest first; the new
    /// idle timeout applies from the next check.
    pub fn set_limits(&mut self, max_idle: usize, idle_timeout: Duration) {
        self.max_idle = max_idle;
        self.idle_timeout = idle_timeout;
        let excess = self.idle.len().saturating_sub(max_idle);
        self.idle.drain(..excess);
    }

    /// The freshest idle connection that has not expired, if any. Expired ones met on the way
    /// are dropped (closed).
    pub fn take(&mut self, now: Instant) -> Option<C> {
        while let Some((conn, since)) = self.idle.pop() {
            if now.saturating_duration_since(since) < self.idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a healthy connection that finished a response cleanly. When the pool is full the
    /// oldest idle connection is closed to make room.
    pub fn put(&mut self, conn: C, now: Instant) {
        if self.max_idle == 0 {
            return;
        }
        if self.idle.len() >= self.max_idle {
            self.idle.remove(0);
        }
        self.idle.push((conn, now));
    }

    /// Closes every connection idle for `idle_timeout` or longer.
    pub fn sweep(&mut self, now: Instant) {
        let timeout = self.idle_timeout;
        self.idle
            .retain(|(_, since)| now.saturating_duration_since(*since) < timeout);
    }

    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifo_bounded_and_expiring() {
        let t0 = Instant::now();
        let mut p: Pool<u32> = Pool::new(2, Duration::from_secs(4));
        p.put(1, t0);
        p.put(2, t0 + Duration::from_secs(1));
        p.put(3, t0 + Duration::from_secs(2)); // evicts 1
        assert_eq!(p.idle_count(), 2);
        assert_eq!(p.take(t0 + Duration::from_secs(3)), Some(3));
        // 2 went idle at t0+1s: expired at t0+5s.
        assert_eq!(p.take(t0 + Duration::from_secs(5)), None);
        assert_eq!(p.idle_count(), 0);
    }

    #[test]
    fn sweep_drops_only_expired() {
        let t0 = Instant::now();
        let mut p: Pool<u32> = Pool::new(8, Duration::from_millis(100));
        p.put(1, t0);
        p.put(2, t0 + Duration::from_millis(80));
        p.sweep(t0 + Duration::from_millis(120));
        assert_eq!(p.idle_count(), 1);
        assert_eq!(p.take(t0 + Duration::from_millis(150)), Some(2));
    }

    #[test]
    fn zero_capacity_pools_nothing() {
        let mut p: Pool<u32> = Pool::new(0, Duration::from_secs(1));
        p.put(1, Instant::now());
        assert_eq!(p.take(Instant::now()), None);
    }
}
