//! Progress of a transfer that takes more than a second, on a terminal only: one line on
//! stderr, rewritten in place at most five times a second, erased at the end. Nothing at
//! all when stderr is not a terminal.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    what: String,
    total: Option<u64>,
    start: Instant,
    last: Option<Instant>,
    tty: bool,
}

impl Progress {
    pub fn new(what: String, total: Option<u64>) -> Progress {
        Progress {
            what,
            total: total.filter(|t| *t > 0),
            start: Instant::now(),
            last: None,
            tty: nix::unistd::isatty(std::io::stderr()).unwrap_or(false),
        }
    }

    pub fn update(&mut self, done: u64) {
        if !self.tty || self.start.elapsed() < Duration::from_secs(1) {
            return;
        }
        if self
            .last
            .is_some_and(|l| l.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(Instant::now());
        let rate = done as f64 / self.start.elapsed().as_secs_f64();
        let pct = match self.total {
            Some(t) => format!(" ({}%)", (done.min(t) * 100 / t)),
            None => String::new(),
        };
        ns_core::write_stderr(format_args!(
            "\r{}: {}{pct}, {}/s\x1b[K",
            self.what,
            bytes(done),
            bytes(rate as u64)
        ));
    }

    /// Erase the line, if one was shown.
    pub fn finish(&mut self) {
        if self.last.take().is_some() {
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
    pub progress: &'a mut Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        self.progress.update(self.n);
        Ok(k)
    }
}

/// Copy `from` to `to` in 128 KiB pieces, reporting.
pub fn copy(from: &mut dyn Read, to: &mut dyn Write, p: &mut Progress) -> std::io::Result<u64> {
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
