//! Progress of a transfer (ns_core::progress's line), and readers and copies that report
//! it.

use std::io::{Read, Write};

pub use ns_core::progress::{bytes, Progress};

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
