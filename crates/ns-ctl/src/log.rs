//! `ns-ctl log NAME [-f]`: the console of a machine that runs with `--log-file` (every one
//! `ns-ctl start` starts: /run/ns-run/logs/NAME.log), which machinectl would read from the
//! journal. The log is PATH.1 (before the last rotation) then PATH, both root's own files;
//! `-f` follows it, across rotations (by the inode), until the machine is gone.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ns_core::{Context, Error, Result};
use ns_host::registry;

/// Where `ns-ctl start` keeps machine NAME's log.
pub fn path_for(name: &str) -> Result<PathBuf> {
    // A machine's name, never a path (`..`, `/`) to some other file of root's.
    registry::check_name(name)?;
    Ok(ns_core::paths::runtime_subdir("logs")?.join(format!("{name}.log")))
}

/// The log of machine `name`: the running machine's `--log-file`, else where `ns-ctl start`
/// keeps it (a machine that ended leaves its log there until it is started again).
fn find(name: &str) -> Result<PathBuf> {
    if let Ok(m) = registry::get(name) {
        if let Some(log) = m.log {
            return Ok(log);
        }
    }
    let p = path_for(name)?;
    if p.symlink_metadata().is_err() {
        return Err(Error::setup(format!(
            "no log of machine {name} ({} does not exist; machines started by ns-ctl start or with --log-file have one)",
            p.display()
        )));
    }
    Ok(p)
}

/// The log `path` (root's own, not writable by others), opened to read.
fn open(path: &Path) -> Result<std::fs::File> {
    ns_core::paths::open_ours(path)
}

/// What of a console's output reaches a terminal: text, newlines, tabs, carriage returns and
/// colours (CSI ... m); any other control character and escape sequence is the container's
/// to send to whoever reads its log (a title, the clipboard: OSC 52), so its ESC is dropped
/// and the rest shows as text. So are the C1 controls (U+0080..U+009F: CSI, OSC to a
/// terminal that reads them in UTF-8) and bytes of no UTF-8 character (a lone 0x9b is CSI to
/// a terminal that is not UTF-8; a character split across two reads is lost with them).
fn for_terminal(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        text_for_terminal(chunk.valid().as_bytes(), &mut out);
    }
    out
}

/// [`for_terminal`] of valid UTF-8 `b`.
fn text_for_terminal(b: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == 0x1b {
            let sgr = b[i + 1..].first() == Some(&b'[') && {
                let end = b[i + 2..]
                    .iter()
                    .position(|x| !(x.is_ascii_digit() || *x == b';'));
                end.is_some_and(|e| b[i + 2 + e] == b'm')
            };
            if sgr {
                let e = b[i + 2..].iter().position(|x| *x == b'm').unwrap_or(0);
                out.extend_from_slice(&b[i..i + 3 + e]);
                i += 3 + e;
                continue;
            }
        } else if c == 0xc2 && b.get(i + 1).is_some_and(|n| (0x80..0xa0).contains(n)) {
            // A C1 control (valid UTF-8: 0xc2 leads a character, always followed by it).
            i += 2;
            continue;
        } else if (c >= 0x20 && c != 0x7f) || matches!(c, b'\n' | b'\t' | b'\r' | 0x08) {
            out.push(c);
        }
        i += 1;
    }
}

/// Copy what `f` has from its position on to stdout (through [`for_terminal`] on a
/// terminal).
fn drain(f: &mut std::fs::File) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let tty = nix::unistd::isatty(std::io::stdout()).unwrap_or(false);
    let mut out = std::io::stdout().lock();
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let text = if tty {
                    std::borrow::Cow::Owned(for_terminal(&buf[..n]))
                } else {
                    std::borrow::Cow::Borrowed(&buf[..n])
                };
                if out.write_all(&text).is_err() {
                    ns_core::sys::die_of_sigpipe();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::setup(format!("cannot read the log: {e}"))),
        }
    }
    let _ = out.flush();
    Ok(())
}

/// Print the log of machine `name`; with `follow`, then what comes, until it is gone.
pub fn show(name: &str, follow: bool) -> Result<i32> {
    let path = find(name)?;
    if let Ok(mut old) = open(&ns_core::logfile::older(&path)) {
        drain(&mut old)?;
    }
    let mut f = open(&path)?;
    drain(&mut f)?;
    if !follow {
        return Ok(0);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        drain(&mut f)?;
        let now = std::fs::symlink_metadata(&path).ok().map(|m| m.ino());
        let ours = f.metadata().ok().map(|m| m.ino());
        if now.is_some() && now != ours {
            // Rotated: the rest of the old file, then the new one from its start.
            drain(&mut f)?;
            f = open(&path)?;
            f.seek(SeekFrom::Start(0))
                .ctx(|| format!("cannot read {}", path.display()))?;
            continue;
        }
        if registry::get(name).is_err() {
            drain(&mut f)?;
            return Ok(0);
        }
    }
}

/// The last `n` lines of machine `name`'s log, if it has one (for `status`).
pub fn tail(m: &registry::Machine, n: usize) -> Vec<String> {
    let Some(path) = &m.log else {
        return Vec::new();
    };
    let Ok(mut f) = open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 << 10)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            l.replace('\r', "")
                .chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .collect()
        })
        .filter(|l: &String| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::for_terminal;

    #[test]
    fn a_terminal_gets_text_and_colours_not_the_containers_escapes() {
        let got = for_terminal(b"ok \x1b[0;32mOK\x1b[0m\r\n\x1b]52;c;ZXZpbA==\x07x\x1b[2Jy\x00");
        assert_eq!(
            got,
            b"ok \x1b[0;32mOK\x1b[0m\r\n]52;c;ZXZpbA==x[2Jy".to_vec()
        );
    }

    #[test]
    fn a_terminal_gets_no_c1_control_either() {
        // U+009D (OSC) and U+009B (CSI) are escapes to a terminal that reads C1 controls in
        // UTF-8 (xterm, VTE); a lone 0x9b byte is CSI to one that is not UTF-8. Other
        // characters stay, whatever their length.
        let got = for_terminal("é\u{9d}52;c;ZXZpbA==\x07 \u{9b}2J €".as_bytes());
        assert_eq!(got, "é52;c;ZXZpbA== 2J €".as_bytes());
        assert_eq!(for_terminal(b"a\x9b2Jb\x9d"), b"a2Jb".to_vec());
    }
}
