//! The gateway's one source of time, shared by the host and every plugin.
//!
//! Plugins read time through the `clock` import rather than WASI clocks so that
//! tests can drive windows, cool-downs and TTLs deterministically with a
//! [`Clock::manual`] clock instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock and monotonic time.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
enum Inner {
    System {
        start: Instant,
    },
    Manual {
        wall_ms: AtomicU64,
        mono_ns: AtomicU64,
    },
}

impl Clock {
    /// Real time.
    pub fn system() -> Clock {
        Clock {
            inner: Arc::new(Inner::System {
                start: Instant::now(),
            }),
        }
    }

    /// Time that only moves when [`Clock::advance`] is called. Starts at
    /// `wall_ms` since the Unix epoch.
    pub fn manual(wall_ms: u64) -> Clock {
        Clock {
            inner: Arc::new(Inner::Manual {
                wall_ms: AtomicU64::new(wall_ms),
                mono_ns: AtomicU64::new(1),
            }),
        }
    }

    /// Move a manual clock forward. Does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Inner::Manual { wall_ms, mono_ns } = &*self.inner {
            wall_ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
            mono_ns.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match &*self.inner {
            Inner::System { .. } => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            Inner::Manual { wall_ms, .. } => wall_ms.load(Ordering::SeqCst),
        }
    }

    /// Monotonic nanoseconds from an arbitrary, gateway-wide zero point.
    pub fn monotonic_ns(&self) -> u64 {
        match &*self.inner {
            Inner::System { start } => start.elapsed().as_nanos() as u64,
            Inner::Manual { mono_ns, .. } => mono_ns.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = Clock::manual(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        let mono = clock.monotonic_ns();
        clock.advance(Duration::from_millis(250));
        assert_eq!(clock.now_ms(), 1_250);
        assert_eq!(clock.monotonic_ns() - mono, 250_000_000);
    }
}
