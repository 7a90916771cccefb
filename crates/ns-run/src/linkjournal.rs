//! `--link-journal=` and `-j`: nspawn's journal linking, decided from the options and what
//! the host has at `/var/log/journal/ID` (ID: the container's machine id). The host side of
//! it (a directory or a symlink made on the host, the guest's directory in the tree) is done
//! by [`ns_host::guestjournal::prepare`] once the plan is complete; `host` mode's bind is
//! an ordinary mount op of the plan, made by ns-mount.

use std::path::{Path, PathBuf};

use ns_core::state::{Idmap, JournalLink, MountOp, Source};
use ns_core::{Error, Result};

use crate::cli::Cli;

/// nspawn's modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    No,
    Auto,
    Host,
    Guest,
}

/// The mode and whether failing to link is skipped (`try-…`, and `auto`). `-j` is
/// `try-guest`; `--link-journal=` given too wins (clap keeps no order between them).
fn mode(c: &Cli) -> Result<(Mode, bool)> {
    Ok(
        match (c.link_journal.as_deref(), c.link_journal_try_guest) {
            (None, false) | (Some("auto"), _) => (Mode::Auto, true),
            (None, true) | (Some("try-guest"), _) => (Mode::Guest, true),
            (Some("no"), _) => (Mode::No, false),
            (Some("host"), _) => (Mode::Host, false),
            (Some("try-host"), _) => (Mode::Host, true),
            (Some("guest"), _) => (Mode::Guest, false),
            (Some(v), _) => {
                return Err(Error::invalid(
                    "--link-journal",
                    v,
                    "not one of no, auto, host, try-host, guest, try-guest",
                ))
            }
        },
    )
}

/// What `/var/log/journal/ID` is on the host.
enum HostPath {
    Missing,
    Symlink(PathBuf),
    Directory,
    /// Something else (a file), or a directory that is a mount point.
    Other(&'static str),
}

fn host_path(p: &Path) -> HostPath {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return HostPath::Missing;
    };
    if m.file_type().is_symlink() {
        return HostPath::Symlink(std::fs::read_link(p).unwrap_or_default());
    }
    if !m.is_dir() {
        return HostPath::Other("already exists and is neither a symlink nor a directory");
    }
    let parent = p.parent().and_then(|d| std::fs::metadata(d).ok());
    if parent.is_some_and(|d| d.dev() != m.dev()) {
        return HostPath::Other("already a mount point, refusing to use for journal");
    }
    HostPath::Directory
}

/// The decision for a container whose machine id is `uuid` and tree `root`: what the host
/// side makes, and `host` mode's bind. None where nothing is linked: `no`, `-x` (as nspawn),
/// `auto` finding nothing on the host, a `try-…` mode that cannot link.
pub fn plan(c: &Cli, uuid: &str, root: &Path) -> Result<(Option<JournalLink>, Option<MountOp>)> {
    let (mode, try_) = mode(c)?;
    if mode == Mode::No || c.mount.ephemeral {
        return Ok((None, None));
    }
    let id = uuid.replace('-', "");
    let shown = || match (&c.link_journal, mode) {
        (Some(v), _) => v.clone(),
        (None, Mode::Guest) => "try-guest".into(),
        _ => "auto".into(),
    };
    let fail = |why: String| -> Result<(Option<JournalLink>, Option<MountOp>)> {
        match try_ {
            true => Ok((None, None)),
            false => Err(Error::invalid("--link-journal", &shown(), &why)),
        }
    };
    let link = PathBuf::from("/var/log/journal").join(&id);
    let existing = host_path(&link);
    if mode == Mode::Auto && matches!(existing, HostPath::Missing) {
        // The default, and nothing to link: one lstat per start.
        return Ok((None, None));
    }
    let host_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    if host_id.trim() == id {
        return fail(format!(
            "host and machine ids are equal ({id}): refusing to link journals"
        ));
    }
    let dir = PathBuf::from("var/log/journal").join(&id);
    let in_tree = root.join(&dir);
    let guest = || JournalLink::Guest {
        link: link.clone(),
        dir: dir.clone(),
        try_,
    };
    let host = || {
        let bind = MountOp::Bind {
            source: Source::Host(link.clone()),
            dest: PathBuf::from("/").join(&dir),
            read_only: false,
            recursive: false,
            idmap: Idmap::No,
        };
        (Some(JournalLink::Host { dir: link.clone() }), Some(bind))
    };
    if let HostPath::Other(why) = existing {
        return fail(format!("{}: {why}", link.display()));
    }
    match (mode, existing) {
        (Mode::Auto, HostPath::Symlink(t)) if t == in_tree => Ok((Some(guest()), None)),
        (Mode::Auto, HostPath::Directory) => Ok(host()),
        (Mode::Auto, _) => Ok((None, None)),
        (Mode::Guest, _) if c.image_mounted => fail(
            "a disk image (-i) is mounted only where the container runs: a link on the host \
             could not reach its journal (use host)"
                .into(),
        ),
        (Mode::Guest, _) => Ok((Some(guest()), None)),
        (Mode::Host, HostPath::Missing) if !Path::new("/var/log/journal").is_dir() => fail(
            "the host keeps no persistent journal (no /var/log/journal): nothing to link to".into(),
        ),
        (Mode::Host, _) => Ok(host()),
        (Mode::No, _) => Ok((None, None)),
    }
}
