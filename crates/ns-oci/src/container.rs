//! A container's record in the runtime's root (`ROOT/ID/state.json`, plus `ROOT/ID/exec.fifo`
//! while it waits for `start`), its status read from the kernel, and what every verb does to
//! its cgroups (list, signal, freeze).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ns_core::state::SyscallFilter;
use ns_core::{Context, Error, Result};
use ns_host::cgroups::Cgroup;
use serde::{Deserialize, Serialize};

/// What `create` records for the other verbs.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// Host pid of the container's process, and its start time (field 22 of
    /// /proc/PID/stat), so that a reused pid is not taken for it.
    pub pid: i32,
    pub start_time: u64,
    /// RFC 3339.
    pub created: String,
    pub cgroups: Vec<SavedCgroup>,
    /// Levels above them that `create` made: removed by `delete` when empty.
    pub cgroup_levels: Vec<PathBuf>,
    pub annotations: BTreeMap<String, String>,
    /// Host paths ns-mount created (SYNC-4), removed by `delete`: (path, with content).
    pub created_paths: Vec<(PathBuf, bool)>,
    /// Without a mount namespace: the mounts made on the rootfs (in our mount namespace),
    /// unmounted by `delete`.
    #[serde(default)]
    pub host_mounts: Vec<ns_host::hostmounts::HostMount>,
    /// Without a mount namespace, until `create` has recorded `host_mounts`: the rootfs's
    /// mounts before the chain started, so that `delete --force` after a killed `create`
    /// unmounts what appeared since.
    #[serde(default)]
    pub mounts_before: Option<Vec<ns_host::hostmounts::HostMount>>,
    /// For `exec`: the container's system call filter.
    pub syscall_filter: Option<SyscallFilter>,
    pub hooks: Option<oci_spec::runtime::Hooks>,
    /// For `exec`: linux.seccomp.listenerPath and listenerMetadata.
    #[serde(default)]
    pub seccomp_listener: Option<(PathBuf, String)>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct SavedCgroup {
    pub dir: PathBuf,
    pub options: String,
    pub v2: bool,
}

impl SavedCgroup {
    pub fn of(c: &Cgroup) -> SavedCgroup {
        SavedCgroup {
            dir: c.dir.clone(),
            options: c.options.clone(),
            v2: c.v2,
        }
    }

    pub fn cgroup(&self) -> Cgroup {
        Cgroup {
            dir: self.dir.clone(),
            options: self.options.clone(),
            v2: self.v2,
            nested: false,
        }
    }
}

/// `ROOT/ID`, for an id that can be a file name (runc's rule: letters, digits, `_+-.`).
pub fn dir_of(root: &Path, id: &str) -> Result<PathBuf> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if !ok {
        return Err(Error::invalid(
            "container id",
            id,
            "not a valid container id",
        ));
    }
    Ok(root.join(id))
}

pub fn fifo_of(dir: &Path) -> PathBuf {
    dir.join("exec.fifo")
}

/// The container `id`, or the one-line error "container ID does not exist".
pub fn load(root: &Path, id: &str) -> Result<(PathBuf, Saved)> {
    let dir = dir_of(root, id)?;
    if std::fs::symlink_metadata(root).is_ok() {
        // Records in a root that is not ours (or that others may write) are not believed.
        ns_core::paths::private_dir(root, 0o700)?;
    }
    let text = match std::fs::read(dir.join("state.json")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::setup(format!("container {id} does not exist")))
        }
        Err(e) => return Err(Error::setup(format!("cannot read the state of {id}: {e}"))),
    };
    let saved = serde_json::from_slice(&text)
        .map_err(|e| Error::setup(format!("bad state of container {id}: {e}")))?;
    Ok((dir, saved))
}

/// Hold the container's lock until the returned file is dropped: `create` holds it while it
/// sets the container up, `start` and `delete` wait for it (so that neither acts on a
/// container half made, and two `start`s do not both wait on the fifo).
pub fn lock(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let f = std::fs::File::open(dir).ctx(|| format!("cannot open {}", dir.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::setup(format!("cannot lock {}: {}", dir.display(), e.desc())))
}

/// Write state.json atomically (a temporary file renamed over it).
pub fn save(dir: &Path, s: &Saved) -> Result<()> {
    let tmp = dir.join(".state.json");
    let path = dir.join("state.json");
    std::fs::write(&tmp, serde_json::to_vec(s).expect("state serializes"))
        .ctx(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).ctx(|| format!("cannot write {}", path.display()))
}

/// Start time and state letter of `pid`, from /proc/PID/stat.
pub fn stat_of(pid: i32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    Some((fields.get(19)?.parse().ok()?, state))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `create` is at work (or was killed at work: `delete --force` cleans up).
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl Saved {
    /// Its process exists (not a zombie) and is the one `create` started.
    pub fn alive(&self) -> bool {
        matches!(stat_of(self.pid), Some((t, s)) if t == self.start_time && s != 'Z' && s != 'X')
    }

    pub fn status(&self, dir: &Path) -> Status {
        if self.pid == 0 {
            Status::Creating
        } else if !self.alive() {
            Status::Stopped
        } else if self.frozen() {
            Status::Paused
        } else if fifo_of(dir).exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    /// The state as runc prints it (and as hooks read it on stdin).
    pub fn state_json(&self, status: &str) -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "id": self.id,
            "pid": self.pid,
            "status": status,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": "",
            "annotations": self.annotations,
        })
    }

    /// The cgroup whose `cgroup.procs` lists the container's processes: cgroup2's when it
    /// has one, else the first v1 one.
    fn procs_dir(&self) -> Option<&Path> {
        self.cgroups
            .iter()
            .find(|c| c.v2)
            .or_else(|| self.cgroups.first())
            .map(|c| c.dir.as_path())
    }

    /// Every process in the container's cgroup (host pids); without cgroups (rootless),
    /// its one process while it lives.
    pub fn pids(&self) -> Vec<i32> {
        match self.procs_dir() {
            Some(d) => ns_host::cgroups::procs_below(d),
            None if self.alive() => vec![self.pid],
            None => vec![],
        }
    }

    /// The freezer: v1's `freezer.state`, or cgroup2's `cgroup.freeze`.
    fn freezer(&self) -> Option<(PathBuf, bool)> {
        self.cgroups
            .iter()
            .find(|c| !c.v2 && c.options.split(',').any(|o| o == "freezer"))
            .map(|c| (c.dir.join("freezer.state"), false))
            .or_else(|| {
                self.cgroups
                    .iter()
                    .find(|c| c.v2 && c.dir.join("cgroup.freeze").exists())
                    .map(|c| (c.dir.join("cgroup.freeze"), true))
            })
    }

    pub fn frozen(&self) -> bool {
        match self.freezer() {
            Some((f, false)) => std::fs::read_to_string(f).is_ok_and(|s| s.trim() != "THAWED"),
            Some((f, true)) => std::fs::read_to_string(f).is_ok_and(|s| s.trim() == "1"),
            None => false,
        }
    }

    /// Freeze or thaw every process of the container, and wait until it is done.
    pub fn set_frozen(&self, freeze: bool) -> Result<()> {
        let (file, v2) = self.freezer().ok_or_else(|| {
            Error::setup(format!(
                "container {} has no freezer cgroup (started without root?)",
                self.id
            ))
        })?;
        let value = match (v2, freeze) {
            (false, true) => "FROZEN",
            (false, false) => "THAWED",
            (true, true) => "1",
            (true, false) => "0",
        };
        std::fs::write(&file, value)
            .ctx(|| format!("cannot write {value} to {}", file.display()))?;
        // v1 goes through FREEZING, cgroup2 says `frozen 1` in cgroup.events when done: wait
        // (bounded) until it is what we asked.
        let done = || match v2 {
            false => std::fs::read_to_string(&file).is_ok_and(|s| s.trim() == value),
            true => std::fs::read_to_string(file.with_file_name("cgroup.events"))
                .is_ok_and(|e| e.lines().any(|l| l == format!("frozen {value}"))),
        };
        for _ in 0..1000 {
            if done() {
                return Ok(());
            }
            if freeze && !v2 {
                let _ = std::fs::write(&file, value);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(Error::setup(format!(
            "container {} did not become {value}",
            self.id
        )))
    }

    /// Send `sig` to the container's process, or (`all`) to every process in its cgroup:
    /// frozen first, so that none forks meanwhile, then thawed so that they see it.
    pub fn signal(&self, sig: i32, all: bool) -> Result<()> {
        if !all {
            if !self.alive() {
                // containerd's shim recognises runc's words: "container not running".
                return Err(Error::setup(format!(
                    "cannot signal {}: container not running",
                    self.id
                )));
            }
            return ns_core::sys::kill_raw(nix::unistd::Pid::from_raw(self.pid), sig)
                .ctx(|| format!("cannot signal container {}", self.id));
        }
        let was_frozen = self.frozen();
        let freezer = self.freezer().is_some();
        if freezer && !was_frozen {
            let _ = self.set_frozen(true);
        }
        for p in self.pids() {
            let _ = ns_core::sys::kill_raw(nix::unistd::Pid::from_raw(p), sig);
        }
        if freezer && (!was_frozen || sig == libc::SIGKILL) {
            let _ = self.set_frozen(false);
        }
        Ok(())
    }

    /// Kill everything in the container and wait (bounded) until its cgroup is empty.
    pub fn kill_all(&self) {
        let _ = self.signal(libc::SIGKILL, true);
        for _ in 0..500 {
            if self.pids().is_empty() && !self.alive() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Now, as RFC 3339 in UTC with nanoseconds (what runc prints).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (y, mo, day, h, mi, s) = ns_core::utc(d.as_secs() as i64);
    format!(
        "{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{s:02}.{:09}Z",
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_file_names() {
        assert!(dir_of(Path::new("/r"), "abc-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(dir_of(Path::new("/r"), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn own_stat_is_read() {
        let (t, s) = stat_of(std::process::id() as i32).unwrap();
        assert!(t > 0);
        assert!("RS".contains(s), "{s}");
    }

    #[test]
    fn rfc3339_looks_right() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
