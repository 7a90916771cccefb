//! The machine registry: what `ns-ctl` (machinectl without systemd) knows about running
//! containers. One entry per machine name in `<runtime dir>/machines/`: `NAME.lock`, which the
//! container's monitor holds an exclusive flock on for the container's whole life, and
//! `NAME.json`, the facts, written once the container's PID 1 exists (to a temporary file,
//! then renamed, so that a reader never sees half an entry). A lock nobody holds means the
//! monitor is gone: any reader removes such a stale entry.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::paths::lock_current;
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

/// A running container, as `ns-ctl list` and `status` show it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub name: String,
    /// 32 hex digits, as machinectl shows it.
    pub uuid: String,
    /// "container".
    pub class: String,
    /// "ns-run".
    pub service: String,
    /// The container's PID 1, in the host's PID namespace.
    pub leader: i32,
    /// The ns-run monitor.
    pub monitor: i32,
    pub root: PathBuf,
    /// Start time, microseconds since the epoch.
    pub since_usec: u64,
    /// Host-side network interfaces (veths, moved links) by name.
    pub interfaces: Vec<String>,
    /// `-b`: an init that powers off on SIGRTMIN+4 and reboots on SIGINT.
    pub boot: bool,
    /// The container's own cgroups (one per hierarchy), to find all its processes.
    pub cgroups: Vec<PathBuf>,
    /// Its system call filter, for commands run inside later (`ns-ctl shell`).
    pub syscall_filter: Option<crate::state::SyscallFilter>,
    /// PID 1 still runs our stages (the entry is published before the payload starts):
    /// `ns-ctl shell` waits until it does not, so that nothing it runs in there sees a stage
    /// of ours or a root not yet built. Absent (false) in entries of older monitors.
    #[serde(default)]
    pub starting: bool,
    /// PID 1's namespaces when it started, as (kind, inode): `ns-ctl shell` enters these even
    /// after PID 1 left some of them (`exec unshare -U ...`), through the monitor's fds.
    #[serde(default)]
    pub namespaces: Vec<(String, u64)>,
}

/// The namespace kinds a container's processes are entered through, in the order to join
/// them (user first, so that it owns the rest; mnt last, as it changes our root).
pub const NAMESPACE_KINDS: [&str; 7] = ["user", "cgroup", "ipc", "uts", "net", "pid", "mnt"];

fn dir() -> Result<PathBuf> {
    let d = crate::paths::runtime_dir()?.join("machines");
    std::fs::create_dir_all(&d).ctx(|| format!("cannot create {}", d.display()))?;
    Ok(d)
}

/// A valid machine name: a hostname (letters, digits, `-`, `.`, `_`), as nspawn requires.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::setup(format!("not a valid machine name: {name}")))
    }
}

/// A claimed name: held by the monitor until the container is gone.
pub struct Registration {
    lock: Flock<File>,
    lock_path: PathBuf,
    json: PathBuf,
}

impl Registration {
    /// Claim `name`; refused while another container holds it. A stale entry is replaced.
    pub fn claim(name: &str) -> Result<Registration> {
        check_name(name)?;
        let d = dir()?;
        let lock_path = d.join(format!("{name}.lock"));
        match lock_current(&lock_path, FlockArg::LockExclusiveNonblock)? {
            Some(lock) => Ok(Registration {
                lock,
                lock_path,
                json: d.join(format!("{name}.json")),
            }),
            None => Err(Error::setup(format!(
                "machine {name} is already running (choose another name with -M, or --register=no)"
            ))),
        }
    }

    /// Publish the entry (atomically).
    pub fn publish(&self, m: &Machine) -> Result<()> {
        let tmp = self
            .json
            .with_extension(format!("json.{}", std::process::id()));
        let text = serde_json::to_vec_pretty(m).expect("machine serializes");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.json))
            .ctx(|| format!("cannot write {}", self.json.display()))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
    }

    /// The container is gone: remove the entry, then the lock file while still holding it.
    pub fn release(self) {
        let _ = std::fs::remove_file(&self.json);
        let _ = std::fs::remove_file(&self.lock_path);
        drop(self.lock);
    }
}

/// The running machines, by name; stale entries are removed on the way.
pub fn list() -> Result<Vec<Machine>> {
    let d = dir()?;
    let mut names: Vec<String> = std::fs::read_dir(&d)
        .ctx(|| format!("cannot read {}", d.display()))?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".lock").map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names.iter().filter_map(|n| lookup(&d, n)).collect())
}

/// The machine called `name`.
pub fn get(name: &str) -> Result<Machine> {
    check_name(name)?;
    lookup(&dir()?, name).ok_or_else(|| Error::setup(format!("no machine called {name}")))
}

/// An entry that is held, or None; a stale one (lock free) is removed. A held entry without
/// its JSON yet is a container still starting: not listed.
fn lookup(d: &Path, name: &str) -> Option<Machine> {
    let lock_path = d.join(format!("{name}.lock"));
    let json = d.join(format!("{name}.json"));
    if !lock_path.exists() {
        return None;
    }
    match lock_current(&lock_path, FlockArg::LockExclusiveNonblock) {
        Ok(Some(stale)) => {
            let _ = std::fs::remove_file(&json);
            let _ = std::fs::remove_file(&lock_path);
            drop(stale);
            None
        }
        Ok(None) => std::fs::read(&json)
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok()),
        Err(_) => None,
    }
}
