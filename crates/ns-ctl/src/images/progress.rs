//! Progress of a transfer that takes more than a second, on a terminal only: one line on
//! stderr, rewritten in place at most five times a second, erased at the end. Nothing at
//! all when stderr is not a terminal. A job of several steps (pull-oci: manifest, config,
//! each layer) names the current one and its size with [`Progress::step`].

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    what: RefCell<String>,
    total: Cell<Option<u64>>,
    /// The job's start: nothing is shown in its first second.
    start: Instant,
    /// The step's start, for its rate.
    step_start: Cell<Instant>,
    last: Cell<Option<Instant>>,
    /// A line is on the terminal, to erase.
    shown: Cell<bool>,
    tty: bool,
}

impl Progress {
    pub fn new(what: String, total: Option<u64>) -> Progress {
        let tty = nix::unistd::isatty(std::io::stderr()).unwrap_or(false);
        Progress::with(what, total, tty)
    }

    /// A progress that never shows.
    #[cfg(test)]
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
        if !self.tty || self.start.elapsed() < Duration::from_secs(1) {
            return;
        }
        if self
            .last
            .get()
            .is_some_and(|l| l.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.last.set(Some(Instant::now()));
        let rate = done as f64 / self.step_start.get().elapsed().as_secs_f64();
        let pct = match self.total.get() {
            Some(t) => format!(" ({}%)", (done.min(t) * 100 / t)),
            None => String::new(),
        };
        ns_core::write_stderr(format_args!(
            "\r{}: {}{pct}, {}/s\x1b[K",
            self.what.borrow(),
            bytes(done),
            bytes(rate as u64)
        ));
        self.shown.set(true);
    }

    /// Erase the line, if one was shown.
    pub fn finish(&self) {
        if self.shown.replace(false) {
            ns_core::write_stderr(format_args!("\r\x1b[K"));
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

/// A reader that reports how much was read through it.
pub struct Counting<'a, R> {
    pub inner: R,
    pub n: u64,
    pub progress: &'a Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        super::hidden::interrupted()?;
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        self.progress.update(self.n);
        Ok(k)
    }
}

/// Copy `from` to `to` in 128 KiB pieces, reporting.
pub fn copy(from: &mut dyn Read, to: &mut dyn Write, p: &Progress) -> std::io::Result<u64> {
    let mut c = Counting {
        inner: from,
        n: 0,
        progress: p,
    };
    let mut buf = vec![0u8; 128 << 10];
    loop {
        let k = match c.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..k])?;
    }
    to.flush()?;
    Ok(c.n)
}
