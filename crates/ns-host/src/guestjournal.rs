//! `--link-journal=`'s host side ([`ns_core::state::JournalLink`], decided by ns-run's plan):
//! made before the container starts and left in place afterwards, as nspawn leaves them
//! (the journal is kept, the host's link keeps pointing at it for `journalctl -D` or `-M`).
//!
//! `guest`: the guest's `/var/log/journal/ID` is made in the tree (each missing level owned
//! as its parent, so a tree shifted into an id range stays so), walked fd-relative without
//! following any symlink the tree may hold; the host's `/var/log/journal/ID` becomes a
//! symlink to it (an older symlink replaced, an empty directory removed first).
//! `host`: the host's `/var/log/journal/ID` is made (never its parent); a symlink there
//! is replaced by it. ns-mount binds it over the guest's.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::stat::Mode;
use ns_core::state::JournalLink;
use ns_core::{Context, Error, Result};

/// Make what `link` needs on the host and in the tree at `root`.
pub fn prepare(link: &JournalLink, root: &Path) -> Result<()> {
    match link {
        JournalLink::Guest { link, dir, try_ } => {
            let in_tree = root.join(dir);
            // A try mode (`-j`, `auto`) skips what cannot be linked: a tree whose journal
            // directory cannot be made (a symlink the container put there, say) runs as it
            // is, as nspawn's warns and goes on.
            match make_in_tree(root, dir).and_then(|()| replace_with_symlink(link, &in_tree)) {
                Err(_) if *try_ => Ok(()),
                r => r,
            }
        }
        JournalLink::Host { dir } => {
            if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
                std::fs::remove_file(dir).ctx(|| format!("cannot remove {}", dir.display()))?;
            }
            match nix::unistd::mkdir(dir, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(e) => Err(Error::setup(format!(
                    "--link-journal: cannot create {}: {}",
                    dir.display(),
                    e.desc()
                ))),
            }
        }
    }
}

/// `mkdir -p root/rel`, fd-relative and never through a symlink; a new level gets its
/// parent's owner.
fn make_in_tree(root: &Path, rel: &Path) -> Result<()> {
    let shown = |p: &Path| format!("--link-journal: cannot create {}", root.join(p).display());
    let mut at: OwnedFd = crate::hostpaths::open_host(root, "link the journal in")?;
    let mut walked = std::path::PathBuf::new();
    for part in rel.iter() {
        walked.push(part);
        match nix::sys::stat::mkdirat(at.as_fd(), part, Mode::from_bits_truncate(0o755)) {
            Ok(()) => {
                let st = nix::sys::stat::fstat(at.as_fd()).ctx(|| shown(&walked))?;
                nix::unistd::fchownat(
                    at.as_fd(),
                    part,
                    Some(st.st_uid.into()),
                    Some(st.st_gid.into()),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .ctx(|| shown(&walked))?;
            }
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(Error::setup(format!("{}: {}", shown(&walked), e.desc()))),
        }
        at = ns_core::walk::open_dir_at(at.as_fd(), part).map_err(|e| {
            Error::setup(format!(
                "{}: {} (a symlink or not a directory)",
                shown(&walked),
                e.desc()
            ))
        })?;
    }
    Ok(())
}

/// The host's `link` made a symlink to `target`: one already pointing there stays, another
/// symlink is replaced, an empty directory removed first.
fn replace_with_symlink(link: &Path, target: &Path) -> Result<()> {
    let fail = |e: std::io::Error| {
        Error::setup(format!(
            "--link-journal: cannot link {} to {}: {}",
            link.display(),
            target.display(),
            ns_core::error::io_desc(&e)
        ))
    };
    match std::fs::symlink_metadata(link) {
        Ok(m) if m.file_type().is_symlink() => {
            if std::fs::read_link(link).is_ok_and(|t| t == target) {
                return Ok(());
            }
            std::fs::remove_file(link).map_err(fail)?;
        }
        Ok(m) if m.is_dir() => std::fs::remove_dir(link).map_err(fail)?,
        Ok(_) => return Err(fail(std::io::Error::from_raw_os_error(libc::EEXIST))),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, link).map_err(fail)
}
