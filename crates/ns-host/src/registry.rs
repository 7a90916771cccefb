//! The machine registry: what `ns-ctl` (machinectl without systemd) knows about running
//! containers. One entry per machine name in `<runtime dir>/machines/`: `NAME.lock`, which the
//! container's monitor holds an exclusive flock on for the container's whole life, and
//! `NAME.json`, the facts, written once the container's PID 1 exists (to a temporary file,
//! then renamed, so that a reader never sees half an entry). A lock nobody holds means the
//! monitor is gone: any reader removes such a stale entry. Only entries of ours are believed
//! (the directory and both files ours and writable by nobody else, never reached through a
//! symlink), and only when what they name fits (cgroups that are cgroup directories): a
//! reader acts on them (signals, joins cgroups) as root.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use ns_core::paths::lock_current;
use serde::{Deserialize, Serialize};

use ns_core::{Context, Error, Result};

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
    /// The container's own cgroups (one per hierarchy: the `payload` level, the root of its
    /// cgroup namespace, below its limits), to find all its processes and to join.
    pub cgroups: Vec<PathBuf>,
    /// Its system call filter, for commands run inside later (`ns-ctl shell`).
    pub syscall_filter: Option<ns_core::state::SyscallFilter>,
    /// PID 1 still runs our stages (the entry is published before the payload starts):
    /// `ns-ctl shell` waits until it does not, so that nothing it runs in there sees a stage
    /// of ours or a root not yet built. Absent (false) in entries of older monitors.
    #[serde(default)]
    pub starting: bool,
    /// `starting` is written once, true, and holds only while the monitor holds a write lock
    /// on the first byte of the entry's lock file (an OFD lock, independent of the flock
    /// that claims the name): the entry is not rewritten when the payload starts, a second
    /// publication that cost a replacing rename per start (~0.2 ms on an ext4 /run).
    /// [`lookup`] gives `starting` as it is now. Absent (false) in older monitors' entries,
    /// whose `starting` is their file's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub start_lock: bool,
    /// PID 1's namespaces when it started, as (kind, inode): `ns-ctl shell` enters these even
    /// after PID 1 left some of them (`exec unshare -U ...`), through the monitor's fds.
    #[serde(default)]
    pub namespaces: Vec<(String, u64)>,
    /// `-a`: the sealed copy of ns-init its monitor holds, for later starts of the same
    /// build to share (see [`crate::initcopy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_copy: Option<crate::initcopy::InitCopy>,
    /// `--log-file`: where its console goes (`ns-ctl log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
}

/// The namespace kinds a container's processes are entered through, in the order to join
/// them (user first, so that it owns the rest; mnt last, as it changes our root).
pub const NAMESPACE_KINDS: [&str; 7] = ["user", "cgroup", "ipc", "uts", "net", "pid", "mnt"];

fn dir() -> Result<PathBuf> {
    ns_core::paths::runtime_subdir("machines")
}

/// A valid machine name: a hostname (letters, digits, `-`, `.`, `_`), as nspawn requires.
pub fn check_name(name: &str) -> Result<()> {
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

/// A claimed name: held by the monitor until the container is gone. Dropped (also when the
/// start fails after the claim, e.g. on a busy tree), the entry and its lock file go.
pub struct Registration {
    lock: Option<Flock<File>>,
    lock_path: PathBuf,
    json: PathBuf,
    /// The claiming process: a forked child that drops its copy removes nothing.
    owner: u32,
}

impl Registration {
    /// Claim `name`; refused while another container holds it. A stale entry is replaced.
    pub fn claim(name: &str) -> Result<Registration> {
        check_name(name)?;
        let d = dir()?;
        let lock_path = d.join(format!("{name}.lock"));
        match lock_current(&lock_path, FlockArg::LockExclusiveNonblock)? {
            Some(lock) => Ok(Registration {
                lock: Some(lock),
                lock_path,
                json: d.join(format!("{name}.json")),
                owner: std::process::id(),
            }),
            None => Err(Error::setup(format!(
                "machine {name} is already running (choose another name with -M, or --register=no)"
            ))),
        }
    }

    /// Publish the entry (atomically: a new file of ours, renamed over the entry).
    pub fn publish(&self, m: &Machine) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self
            .json
            .with_extension(format!("json.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp); // a dead monitor's, with our pid
        let text = serde_json::to_vec_pretty(m).expect("machine serializes");
        File::options()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&text))
            .and_then(|()| std::fs::rename(&tmp, &self.json))
            .ctx(|| format!("cannot write {}", self.json.display()))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
    }

    /// Hold the entry's `starting` (before it is first published with `start_lock`): a write
    /// lock on the lock file's first byte, until [`Registration::started`] or our exit.
    pub fn hold_starting(&self) -> Result<()> {
        let f = self.lock.as_ref().expect("held until dropped");
        ofd_lock(f, libc::F_WRLCK).ctx(|| format!("cannot lock {}", self.lock_path.display()))
    }

    /// The payload runs: readers see `starting` false from now on.
    pub fn started(&self) -> Result<()> {
        let f = self.lock.as_ref().expect("held until dropped");
        ofd_lock(f, libc::F_UNLCK).ctx(|| format!("cannot unlock {}", self.lock_path.display()))
    }

    /// The container is gone: remove the entry, then the lock file while still holding it
    /// (what dropping it does; named for the callers that mean it).
    pub fn release(self) {}
}

impl Drop for Registration {
    fn drop(&mut self) {
        if std::process::id() != self.owner {
            return;
        }
        let _ = std::fs::remove_file(&self.json);
        let _ = std::fs::remove_file(&self.lock_path);
        drop(self.lock.take());
    }
}

/// The running machines, by name; stale entries are removed on the way, and entries that
/// are not ours (see [`lookup`]) are left out with a warning.
pub fn list() -> Result<Vec<Machine>> {
    let d = dir()?;
    let mut names: Vec<String> = names_in(&d)
        .ctx(|| format!("cannot read {}", d.display()))?
        .collect();
    names.sort();
    let mut out = Vec::new();
    for n in &names {
        match lookup(&d, n) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => {}
            Err(e) => ns_core::errln!("ns-ctl: ignoring machine {n}: {}", e.msg),
        }
    }
    Ok(out)
}

/// The first running machine for which `f` gives something, and that. Silent: an entry that
/// cannot be read or is not ours is passed over (stale ones are removed on the way).
pub fn find_map<T>(mut f: impl FnMut(&Machine) -> Option<T>) -> Option<T> {
    let d = dir().ok()?;
    names_in(&d).ok()?.find_map(|n| f(&lookup(&d, &n).ok()??))
}

/// The machine names in the registry directory `d` (each has its lock file), unsorted.
fn names_in(d: &Path) -> std::io::Result<impl Iterator<Item = String>> {
    Ok(std::fs::read_dir(d)?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".lock").map(str::to_string)
        })
        .filter(|n| check_name(n).is_ok()))
}

/// The machine called `name`.
pub fn get(name: &str) -> Result<Machine> {
    check_name(name)?;
    lookup(&dir()?, name)?.ok_or_else(|| Error::setup(format!("no machine called {name}")))
}

/// Largest entry read.
const MAX_ENTRY: u64 = 1 << 20;

/// An entry that is held, or None; a stale one (lock free) is removed. A held entry without
/// its JSON yet is a container still starting: not listed. Its files must be ours (regular
/// files, reached without a symlink, writable only by us) and what it names plausible: its
/// name, pids above 1, cgroups that are cgroups; otherwise it is refused.
fn lookup(d: &Path, name: &str) -> Result<Option<Machine>> {
    let lock_path = d.join(format!("{name}.lock"));
    let json = d.join(format!("{name}.json"));
    if std::fs::symlink_metadata(&lock_path).is_err() {
        return Ok(None);
    }
    match lock_current(&lock_path, FlockArg::LockExclusiveNonblock)? {
        Some(stale) => {
            let _ = std::fs::remove_file(&json);
            let _ = std::fs::remove_file(&lock_path);
            drop(stale);
            Ok(None)
        }
        None => {
            let text = match ns_core::paths::read_ours(&json, MAX_ENTRY) {
                Ok(t) => t,
                Err(_) if std::fs::symlink_metadata(&json).is_err() => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut m: Machine = serde_json::from_slice(&text)
                .map_err(|e| Error::setup(format!("bad entry {}: {e}", json.display())))?;
            check_entry(&json, name, &m)?;
            if m.starting && m.start_lock {
                m.starting = starting_held(&lock_path)?;
            }
            // `starting` is now as it is: what readers show and pass on.
            m.start_lock = false;
            Ok(Some(m))
        }
    }
}

/// The first byte of a lock file, as an fcntl lock of `kind`.
fn first_byte(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 1,
        l_pid: 0,
    }
}

/// Take (`F_WRLCK`) or drop (`F_UNLCK`) the OFD lock on the first byte of `f`.
fn ofd_lock(f: &File, kind: libc::c_int) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    fcntl(f, FcntlArg::F_OFD_SETLK(&first_byte(kind))).map(drop)
}

/// Whether the monitor of the held entry whose lock file is `path` still holds its
/// `starting` (see [`Machine::start_lock`]). The lock file must still be ours.
fn starting_held(path: &Path) -> Result<bool> {
    use nix::fcntl::{fcntl, FcntlArg};
    let f = ns_core::paths::open_ours(path)?;
    let mut l = first_byte(libc::F_RDLCK);
    fcntl(&f, FcntlArg::F_OFD_GETLK(&mut l))
        .ctx(|| format!("cannot test the lock of {}", path.display()))?;
    Ok(l.l_type != libc::F_UNLCK as libc::c_short)
}

/// What an entry names must fit: its own name, pids of processes (not 0, 1 or negative),
/// cgroups that are cgroup directories.
fn check_entry(json: &Path, name: &str, m: &Machine) -> Result<()> {
    let bad = |why: String| Err(Error::setup(format!("{}: {why}", json.display())));
    if m.name != name {
        return bad(format!("names machine {}", m.name));
    }
    if m.leader <= 1 || m.monitor <= 1 {
        return bad(format!("leader {} and monitor {}", m.leader, m.monitor));
    }
    if let Some(c) = m.cgroups.iter().find(|c| !ns_core::paths::is_cgroup_dir(c)) {
        return bad(format!("{} is not a cgroup", c.display()));
    }
    Ok(())
}
