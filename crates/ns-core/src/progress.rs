//! Progress of a job that takes more than a second (an image import, a `--template` copy, a
//! `-U` ownership shift), on a terminal only: one line on stderr, rewritten in place at most
//! five times a second, erased at the end. Nothing at all when stderr is not a terminal. A
//! job of several steps (pull-oci: manifest, config, each layer) names the current one and
//! its size with [`Progress::step`].

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

pub struct Progress {
    what: RefCell<String>,
    total: Cell<Option<u64>>,
    /// The job's start: nothing is shown before `after`.
    start: Instant,
    /// The step's start, for its rate.
    step_start: Cell<Instant>,
    last: Cell<Option<Instant>>,
    /// A line is on the terminal, to erase.
    shown: Cell<bool>,
    tty: bool,
    /// How long a job runs before its line shows: a second (`NS_PROGRESS_AFTER=SECONDS`
    /// in the environment sets it: the tests show lines of short jobs with 0).
    after: Duration,
}

impl Progress {
    pub fn new(what: String, total: Option<u64>) -> Progress {
        let tty = nix::unistd::isatty(std::io::stderr()).unwrap_or(false);
        Progress::with(what, total, tty)
    }

    /// A progress that never shows.
    pub fn none() -> Progress {
        Progress::with(String::new(), None, false)
    }

    fn with(what: String, total: Option<u64>, tty: bool) -> Progress {
        Progress {
            what: RefCell::new(what),
            total: Cell::new(total.filter(|t| *t > 0)),
            start: Instant::now(),
            step_start: Cell::new(Instant::now()),
            last: Cell::new(None),
            shown: Cell::new(false),
            tty,
            after: std::env::var("NS_PROGRESS_AFTER")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                // (No Duration, e.g. 1e30: from_secs_f64 would panic, aborting the chain.)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .unwrap_or(Duration::from_secs(1)),
        }
    }

    /// A new step: `what` is shown with the byte counts that follow, of `total`.
    pub fn step(&self, what: String, total: Option<u64>) {
        *self.what.borrow_mut() = what;
        self.total.set(total.filter(|t| *t > 0));
        self.step_start.set(Instant::now());
        self.last.set(None);
    }

    /// `done` bytes of the current step, of `total` (the step's size from now on).
    pub fn update_of(&self, done: u64, total: u64) {
        self.total.set(Some(total).filter(|t| *t > 0));
        self.update(done);
    }

    pub fn update(&self, done: u64) {
        if !self.due() {
            return;
        }
        let rate = done as f64 / self.step_start.get().elapsed().as_secs_f64();
        let pct = match self.total.get() {
            Some(t) => format!(" ({}%)", (done.min(t) * 100 / t)),
            None => String::new(),
        };
        self.show(format_args!(
            "{}: {}{pct}, {}/s",
            self.what.borrow(),
            bytes(done),
            bytes(rate as u64)
        ));
    }

    /// `entries` entries done (files, directories...), and `done` bytes of them if counted.
    pub fn update_entries(&self, entries: u64, done: Option<u64>) {
        if self.due() {
            let size = done.map(|b| format!(", {}", bytes(b))).unwrap_or_default();
            self.show(format_args!(
                "{}: {entries} entries{size}",
                self.what.borrow()
            ));
        }
    }

    /// Whether a line is to be shown now: on a terminal, after the first second, at most
    /// five times a second.
    fn due(&self) -> bool {
        if !self.tty || self.start.elapsed() < self.after {
            return false;
        }
        if self
            .last
            .get()
            .is_some_and(|l| l.elapsed() < Duration::from_millis(200))
        {
            return false;
        }
        self.last.set(Some(Instant::now()));
        true
    }

    fn show(&self, line: std::fmt::Arguments<'_>) {
        crate::write_stderr(format_args!("\r{line}\x1b[K"));
        self.shown.set(true);
    }

    /// Erase the line, if one was shown.
    pub fn finish(&self) {
        if self.shown.replace(false) {
            crate::write_stderr(format_args!("\r\x1b[K"));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `1.5M`, as systemd's format_bytes (1024-based).
pub fn bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "K", "M", "G", "T", "P"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_shows_in_the_first_second_nor_without_a_terminal() {
        let p = Progress::with("x".into(), None, true);
        if p.after >= Duration::from_secs(1) {
            p.update(5);
            p.update_entries(3, None);
            assert!(!p.shown.get());
        }
        let p = Progress::with("x".into(), None, false);
        std::thread::sleep(p.after.min(Duration::from_millis(10)));
        p.update(5);
        assert!(!p.shown.get());
        assert_eq!(bytes(1536), "1.5K");
    }
}
