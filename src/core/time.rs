//! Time as the core sees it: a caller-supplied, monotonic point on an arbitrary time line.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time, measured from an origin the caller chooses (the IO layer uses the moment it
/// started; tests use zero). The core never reads a clock; it only compares timestamps it was
/// given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(Duration);

impl Timestamp {
    /// The origin of the time line.
    pub const ZERO: Timestamp = Timestamp(Duration::ZERO);

    /// A timestamp `elapsed` after the origin.
    pub const fn from_duration(elapsed: Duration) -> Self {
        Timestamp(elapsed)
    }

    /// A timestamp `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Self {
        Timestamp(Duration::from_micros(micros))
    }

    /// A timestamp `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(Duration::from_millis(millis))
    }

    /// Time since the origin.
    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(rhs))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;

    fn sub(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(rhs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        let t = Timestamp::from_millis(5);
        assert_eq!(t - Duration::from_secs(1), Timestamp::ZERO);
        assert_eq!(
            Timestamp::ZERO.saturating_since(t),
            Duration::ZERO,
            "earlier minus later is zero"
        );
        assert_eq!(
            (t + Duration::from_millis(3)).saturating_since(t),
            Duration::from_millis(3)
        );
    }
}
