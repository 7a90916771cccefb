//! Where the toolkit keeps its host-side state: /run/ns-run for root; for a user without
//! root (rootless `-U`), `$XDG_RUNTIME_DIR/ns-run`, else /tmp/ns-run-UID (made 0700, and
//! refused if someone else owns it).

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::PathBuf;

use crate::error::{Context, Error, Result};

/// Are we root on the host (not merely uid 0 in a user namespace)?
pub fn host_root() -> bool {
    nix::unistd::geteuid().is_root() && !in_user_namespace()
}

fn in_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
        .unwrap_or(false)
}

/// The entries of `dir` named `PREFIX<pid>` whose ns-run is gone: host-side state named by a
/// monitor's pid (cleanup journals, notify sockets, template copies) is stale then. The
/// process name is checked too, so that a reused pid does not keep stale state alive (it
/// goes a start later).
pub fn of_dead_monitors(dir: &std::path::Path, prefix: &str) -> Vec<PathBuf> {
    let alive = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "ns-run")
    };
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(prefix)
                .is_some_and(|pid| pid.parse::<u32>().is_ok() && !alive(pid))
        })
        .map(|e| e.path())
        .collect()
}

/// The state directory, created if needed.
pub fn runtime_dir() -> Result<PathBuf> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return Ok(PathBuf::from("/run/ns-run"));
    }
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(x) if x.is_dir() => x.join("ns-run"),
        _ => PathBuf::from(format!("/tmp/ns-run-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).ctx(|| format!("cannot create {}", dir.display())),
    }
    let md = std::fs::symlink_metadata(&dir).ctx(|| format!("cannot stat {}", dir.display()))?;
    if !md.is_dir() || md.uid() != uid.as_raw() {
        return Err(Error::setup(format!(
            "{} is not a directory of ours",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Where nspawn's `-M NAME` (without `-D`) and `machinectl start` find machine images.
pub const IMAGE_DIRS: &[&str] = &[
    "/var/lib/machines",
    "/var/lib/container",
    "/usr/local/lib/machines",
    "/usr/lib/machines",
];

/// The directory image NAME in the first of [`IMAGE_DIRS`] that has it.
pub fn find_image(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    IMAGE_DIRS
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_dir())
}

/// Lock the file at `path` (created if missing) with `how`; None when a non-blocking lock
/// is held by someone else. Re-checks that the file locked is still the one at `path`: whoever
/// held it last may have unlinked it meanwhile (the last member of a zone, the remover of a
/// stale registry entry), and a lock on an unlinked file guards nothing.
pub fn lock_current(
    path: &std::path::Path,
    how: nix::fcntl::FlockArg,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    use nix::fcntl::Flock;
    use std::fs::File;
    use std::os::unix::fs::MetadataExt;
    loop {
        let f = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .ctx(|| format!("cannot open {}", path.display()))?;
        let lock = match Flock::lock(f, how) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => {
                return Err(Error::setup(format!(
                    "cannot lock {}: {}",
                    path.display(),
                    e.desc()
                )))
            }
        };
        let held = lock.metadata().map(|m| m.ino()).ok();
        let current = std::fs::metadata(path).map(|m| m.ino()).ok();
        if held.is_some() && held == current {
            return Ok(Some(lock));
        }
    }
}
