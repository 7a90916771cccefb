//! systemd credentials for the container, as nspawn hands them over: `--set-credential=ID:VALUE`
//! (C escapes in VALUE) and `--load-credential=ID:PATH` (an absolute path read on the host,
//! else a credential of ns-run's own, from its `$CREDENTIALS_DIRECTORY`) become files
//! `/run/host/credentials/ID`, mode 0400, in a ramfs of their own (never swapped out), mode
//! 0500 and read-only; ns-caps names it in the payload's `$CREDENTIALS_DIRECTORY` (a booted
//! systemd imports them as system credentials). The values are read when the command line is
//! planned and travel in the state, which only the chain's stages read.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::Mode;
use ns_core::state::Credential;
use ns_core::{Context, Error, Result};

use crate::inroot::{make_read_only, mount_fs, open_in_root};

/// Where the container finds them.
pub const DIR: &str = "/run/host/credentials";
/// systemd's limits: one credential, and all of them together (1 MiB each).
const ONE_MAX: usize = 1024 * 1024;
const ALL_MAX: usize = 1024 * 1024;

/// The credentials of `--set-credential=` (`set`) and `--load-credential=` (`load`), checked
/// as nspawn checks them: a valid name, given once, a value within systemd's limits.
pub fn parse(set: &[String], load: &[String]) -> Result<Vec<Credential>> {
    let mut out: Vec<Credential> = Vec::new();
    let given = set
        .iter()
        .map(|v| ("--set-credential", v))
        .chain(load.iter().map(|v| ("--load-credential", v)));
    for (option, v) in given {
        let bad = |why: String| Error::invalid(option, v, &why);
        let (id, rest) = v
            .split_once(':')
            .ok_or_else(|| bad("missing value (ID:VALUE)".into()))?;
        // The name only: the value may be a secret (nspawn's messages name the credential).
        if !name_valid(id) {
            return Err(Error::setup(format!(
                "{option}: not a valid credential name: {id:?}"
            )));
        }
        if out.iter().any(|c| c.id == id) {
            return Err(Error::setup(format!(
                "{option}: duplicate credential '{id}'"
            )));
        }
        let value = if option == "--set-credential" {
            unescape(rest).ok_or_else(|| {
                Error::setup(format!("{option}: bad escape in the value of '{id}'"))
            })?
        } else {
            read(rest).map_err(&bad)?
        };
        if value.len() > ONE_MAX {
            return Err(Error::setup(format!(
                "{option}: '{id}' is larger than {ONE_MAX} bytes"
            )));
        }
        out.push(Credential {
            id: id.to_string(),
            value,
        });
    }
    if out.iter().map(|c| c.value.len()).sum::<usize>() > ALL_MAX {
        return Err(Error::setup(format!(
            "credentials: more than {ALL_MAX} bytes in all"
        )));
    }
    Ok(out)
}

/// systemd's credential_name_valid: a file name (not `.` or `..`, no `/`, at most 255
/// bytes) of printable ASCII without `:`.
fn name_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'/' && b != b':')
}

/// `--load-credential`'s PATH: a file on the host (absolute), or one of ns-run's own
/// credentials by name.
fn read(path: &str) -> std::result::Result<Vec<u8>, String> {
    let file = if Path::new(path).is_absolute() {
        path.into()
    } else {
        match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(d) if name_valid(path) => Path::new(&d).join(path),
            Some(_) => return Err(format!("not a valid credential name: {path:?}")),
            None => return Err("no credentials were passed to ns-run to take it from".into()),
        }
    };
    let f =
        std::fs::File::open(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut value = Vec::new();
    use std::io::Read;
    f.take(ONE_MAX as u64 + 1)
        .read_to_end(&mut value)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    Ok(value)
}

/// systemd's cunescape: `\a \b \f \n \r \t \v \\ \" \' \s`, `\xHH`, `\NNN` (octal),
/// `\uXXXX` and `\UXXXXXXXX` (as UTF-8). None for a bad escape.
fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex =
        |d: &[u8]| -> Option<u32> { u32::from_str_radix(std::str::from_utf8(d).ok()?, 16).ok() };
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = *b.get(i + 1)?;
        i += 2;
        let simple = match c {
            b'a' => Some(7),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(11),
            b'\\' | b'"' | b'\'' => Some(c),
            b's' => Some(b' '),
            _ => None,
        };
        if let Some(v) = simple {
            out.push(v);
            continue;
        }
        match c {
            b'x' => {
                let v = hex(b.get(i..i + 2)?)?;
                out.push(v as u8);
                i += 2;
            }
            b'0'..=b'7' => {
                let d = b.get(i - 1..i + 2)?;
                if !d.iter().all(|x| (b'0'..=b'7').contains(x)) {
                    return None;
                }
                let v = u32::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()?;
                out.push(u8::try_from(v).ok()?);
                i += 2;
            }
            b'u' | b'U' => {
                let n = if c == b'u' { 4 } else { 8 };
                let ch = char::from_u32(hex(b.get(i..i + n)?)?)?;
                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                i += n;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The ramfs at /run/host/credentials with one file per credential, then read-only
/// (called while /run/host is still writable).
pub fn mount(root: &OwnedFd, credentials: &[Credential]) -> Result<()> {
    if credentials.is_empty() {
        return Ok(());
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs(root, DIR, "ramfs", flags, Some("mode=0700"))?;
    let dir = open_in_root(root, Path::new(DIR), None)?;
    for c in credentials {
        let fd = nix::fcntl::openat(
            dir.as_fd(),
            c.id.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o400),
        )
        .ctx(|| format!("cannot write credential {}", c.id))?;
        use std::io::Write;
        std::fs::File::from(fd)
            .write_all(&c.value)
            .ctx(|| format!("cannot write credential {}", c.id))?;
    }
    nix::sys::stat::fchmodat(
        dir.as_fd(),
        ".",
        Mode::from_bits_truncate(0o500),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .ctx(|| format!("cannot chmod {DIR}"))?;
    make_read_only(root, Path::new(DIR), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn values_are_unescaped_as_systemd_does() {
        assert_eq!(unescape(r"a\nb\x41\101\s\\").unwrap(), b"a\nbAA \\");
        assert_eq!(unescape(r"\u00e9").unwrap(), "é".as_bytes());
        for bad in [r"\", r"\q", r"\x4", r"\8", r"\u12"] {
            assert!(unescape(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn names_and_duplicates_are_checked() {
        let c = parse(&v(&["a:1", "b:x:y"]), &[]).unwrap();
        assert_eq!(c[1].value, b"x:y");
        let err = |set: &[&str]| parse(&v(set), &[]).unwrap_err().msg;
        assert_eq!(
            err(&["a:1", "a:2"]),
            "--set-credential: duplicate credential 'a'"
        );
        assert!(err(&["a/b:1"]).contains("not a valid credential name"));
        assert!(err(&["..:1"]).contains("not a valid credential name"));
        assert!(err(&["novalue"]).contains("missing value"));
    }
}
