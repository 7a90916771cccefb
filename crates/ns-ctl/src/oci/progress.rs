//! One progress line on a terminal, updated in place: only when stderr is a terminal, and
//! only once the job has taken a second (a quick pull prints nothing); cleared at the end.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

pub struct Progress {
    on: bool,
    start: Instant,
    last: Cell<Option<Instant>>,
    /// What is being read ("layer 2/3 sha256:0123…").
    step: RefCell<String>,
    shown: Cell<bool>,
}

impl Progress {
    /// Progress for a terminal on stderr, else none.
    pub fn on_tty() -> Progress {
        Progress::new(nix::unistd::isatty(std::io::stderr()).unwrap_or(false))
    }

    #[cfg(test)]
    pub fn none() -> Progress {
        Progress::new(false)
    }

    fn new(on: bool) -> Progress {
        Progress {
            on,
            start: Instant::now(),
            last: Cell::new(None),
            step: RefCell::new(String::new()),
            shown: Cell::new(false),
        }
    }

    /// A new step: its name is shown with the byte counts that follow.
    pub fn step(&self, what: String) {
        if self.on {
            *self.step.borrow_mut() = what;
            self.last.set(None);
        }
    }

    /// `done` of `total` bytes of the current step.
    pub fn bytes(&self, done: u64, total: u64) {
        if !self.on || self.start.elapsed() < Duration::from_secs(1) {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .get()
            .is_some_and(|t| now - t < Duration::from_millis(100))
            && done < total
        {
            return;
        }
        self.last.set(Some(now));
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        eprint!(
            "\r\x1b[K{}: {:.1} of {:.1} MiB",
            self.step.borrow(),
            mib(done),
            mib(total)
        );
        self.shown.set(true);
    }

    /// Clear the line, if one was shown.
    pub fn clear(&self) {
        if self.shown.replace(false) {
            eprint!("\r\x1b[K");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}
