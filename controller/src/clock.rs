//! The controller's notion of now: the system's, or a manual one that tests set and advance, so
//! that schedules and expiry can be tested without waiting for real minutes and days.

use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};

/// Where the controller reads the time from.
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<Mutex<Timestamp>>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock that stands at `start` until [`Clock::set`] or [`Clock::advance`] moves it.
    pub fn manual(start: Timestamp) -> Clock {
        Clock(Some(Arc::new(Mutex::new(start))))
    }

    pub fn now(&self) -> Timestamp {
        match &self.0 {
            Some(manual) => *manual.lock().expect("manual clock"),
            None => Timestamp::now(),
        }
    }

    /// Moves a manual clock to `to`; the system clock cannot be moved.
    pub fn set(&self, to: Timestamp) {
        let manual = self.0.as_ref().expect("only a manual clock can be set");
        *manual.lock().expect("manual clock") = to;
    }

    /// Moves a manual clock forward by `by`.
    pub fn advance(&self, by: SignedDuration) {
        let manual = self
            .0
            .as_ref()
            .expect("only a manual clock can be advanced");
        let mut now = manual.lock().expect("manual clock");
        *now = now.saturating_add(by).expect("a clock within range");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stands_still_until_moved() {
        let start: Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
        let clock = Clock::manual(start);
        assert_eq!(clock.now(), start);
        clock.advance(SignedDuration::from_mins(90));
        assert_eq!(clock.now(), "2026-11-26T11:30:00Z".parse().unwrap());
        let copy = clock.clone();
        copy.set(start);
        assert_eq!(clock.now(), start, "clones share one time");
    }
}
