//! The container's own cgroup (-b, --property): created by the monitor on the host in every
//! mounted hierarchy (each v1 controller, name=systemd, cgroup2), joined by the chain's first
//! process before ns-enter unshares the cgroup namespace (so the namespace is rooted there),
//! and removed after exit. A booted init gets the hierarchies systemd manages delegated
//! under -U.

use std::path::{Path, PathBuf};

use ns_core::state::{CgroupLayout, CgroupMounts};
use ns_core::{Context, Error, Result};

/// A mounted hierarchy of this host: where, what (v1 controllers or `name=…`; empty for
/// cgroup2), and our own cgroup in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mountpoint: PathBuf,
    pub options: String,
    pub v2: bool,
    pub own: PathBuf,
}

/// The host's hierarchies, from /proc/self/mountinfo and /proc/self/cgroup.
pub fn hierarchies() -> Vec<Hierarchy> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let own_path = |key: &str| {
        own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            (ctl == key).then(|| PathBuf::from(path))
        })
    };
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?;
            let _source = r.next()?;
            let super_opts = r.next().unwrap_or("");
            let mountpoint = PathBuf::from(left.split_whitespace().nth(4)?);
            match fstype {
                "cgroup2" => Some(Hierarchy {
                    mountpoint,
                    options: String::new(),
                    v2: true,
                    own: own_path("")?,
                }),
                "cgroup" => {
                    let opts: Vec<&str> = super_opts
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("release_agent"))
                        .collect();
                    let key = opts.join(",");
                    Some(Hierarchy {
                        mountpoint,
                        options: key.clone(),
                        v2: false,
                        own: own_path(&key)?,
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// What the guest gets, as nspawn chooses it (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 for pure
/// cgroup2, =0 for legacy): hybrid when the host has both v1 and a unified hierarchy.
pub fn plan(hs: &[Hierarchy]) -> Result<CgroupMounts> {
    let has_v2 = hs.iter().any(|h| h.v2);
    let has_v1 = hs.iter().any(|h| !h.v2);
    let knob = std::env::var("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY")
        .ok()
        .filter(|v| !v.is_empty());
    let layout = match knob.as_deref().map(ns_core::parse_boolean) {
        Some(Some(true)) => CgroupLayout::Unified,
        Some(Some(false)) => CgroupLayout::Legacy,
        Some(None) => {
            return Err(Error::setup(
                "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY is not a boolean".into(),
            ))
        }
        None if has_v1 && has_v2 => CgroupLayout::Hybrid,
        None if has_v2 => CgroupLayout::Unified,
        None => CgroupLayout::Legacy,
    };
    if layout != CgroupLayout::Legacy && !has_v2 {
        return Err(Error::setup(
            "this host has no cgroup2 hierarchy for the guest".into(),
        ));
    }
    if layout != CgroupLayout::Unified && !hs.iter().any(|h| h.options == "name=systemd") {
        return Err(Error::setup(
            "this host has no name=systemd hierarchy for the guest".into(),
        ));
    }
    let controllers = hs
        .iter()
        .filter(|h| !h.v2 && h.options != "name=systemd")
        .map(|h| h.options.clone())
        .collect();
    Ok(CgroupMounts {
        layout,
        controllers,
    })
}

/// The hierarchies the container gets its own cgroup in, for `layout`.
fn own_hierarchies(hs: &[Hierarchy], layout: CgroupLayout) -> Vec<&Hierarchy> {
    hs.iter()
        .filter(|h| match layout {
            CgroupLayout::Unified => h.v2,
            CgroupLayout::Hybrid => h.v2 || h.options == "name=systemd",
            CgroupLayout::Legacy => h.options == "name=systemd",
        })
        .collect()
}

/// The container's cgroup in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub dir: PathBuf,
    /// The hierarchy's v1 controllers (`memory`, `cpu,cpuacct`, `name=systemd`...); empty
    /// for cgroup2.
    pub options: String,
    pub v2: bool,
}

/// Create the container's cgroups (`ns-run-NAME` beside the monitor's own) in every mounted
/// hierarchy; returns them, to configure, join and remove. For a booted init (`layout`) with
/// an `owner` (container root on the host, under -U), the hierarchies systemd manages are
/// delegated to it as nspawn does: the directory and its control files are chowned, so that
/// the guest's init may create and fill cgroups below.
pub fn create(
    layout: Option<CgroupLayout>,
    name: &str,
    owner: Option<u32>,
    journal: &mut dyn FnMut(&Path) -> Result<()>,
) -> Result<Vec<Cgroup>> {
    let hs = hierarchies();
    let delegated = layout.map(|l| own_hierarchies(&hs, l)).unwrap_or_default();
    let mut made: Vec<Cgroup> = Vec::new();
    for h in &hs {
        let rel = h.own.strip_prefix("/").unwrap_or(&h.own);
        let parent = h.mountpoint.join(rel);
        let dir = parent.join(format!("ns-run-{name}"));
        if dir.exists() {
            remove(&dir); // left by a killed monitor of the same machine
        }
        // Journaled before it exists: a monitor killed right after still has it collected.
        let r = journal(&dir).and_then(|()| {
            std::fs::create_dir(&dir).ctx(|| format!("cannot create cgroup {}", dir.display()))
        });
        if r.is_ok() {
            made.push(Cgroup {
                dir: dir.clone(),
                options: h.options.clone(),
                v2: h.v2,
            });
        }
        let r = r
            .and_then(|()| inherit_cpuset(h, &parent, &dir))
            .and_then(|()| match owner {
                Some(id) if delegated.contains(&h) => delegate(&dir, id),
                _ => Ok(()),
            });
        if let Err(e) = r {
            made.iter().for_each(|c| {
                remove(&c.dir);
            });
            return Err(e);
        }
    }
    Ok(made)
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes (nothing could join it):
/// give it its parent's.
fn inherit_cpuset(h: &Hierarchy, parent: &Path, dir: &Path) -> Result<()> {
    if h.v2 || !h.options.split(',').any(|o| o == "cpuset") {
        return Ok(());
    }
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let v = std::fs::read_to_string(parent.join(f))
            .ctx(|| format!("cannot read {}", parent.join(f).display()))?;
        std::fs::write(dir.join(f), v.trim())
            .ctx(|| format!("cannot write {}", dir.join(f).display()))?;
    }
    Ok(())
}

/// The files of a cgroup its owner needs to write to manage it (those that exist here).
const DELEGATED: &[&str] = &[
    "cgroup.clone_children",
    "cgroup.procs",
    "cgroup.subtree_control",
    "cgroup.threads",
    "notify_on_release",
    "tasks",
];

fn delegate(dir: &Path, id: u32) -> Result<()> {
    let chown = |p: &Path| {
        std::os::unix::fs::lchown(p, Some(id), Some(id))
            .ctx(|| format!("cannot chown cgroup {} to {id}", p.display()))
    };
    chown(dir)?;
    for f in DELEGATED {
        let p = dir.join(f);
        if p.exists() {
            chown(&p)?;
        }
    }
    Ok(())
}

/// Move ourselves into the cgroups (before the cgroup namespace is created).
pub fn join(cgroups: &[Cgroup]) -> Result<()> {
    for c in cgroups {
        std::fs::write(c.dir.join("cgroup.procs"), "0")
            .ctx(|| format!("cannot join cgroup {}", c.dir.display()))?;
    }
    Ok(())
}

/// Remove a cgroup and the ones the guest made below it, deepest first.
/// Returns whether it is gone. Processes of a dying PID namespace may still be leaving it
/// (EBUSY) after PID 1 was reaped: retried for up to a second.
pub fn remove(dir: &Path) -> bool {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&e.path());
            }
        }
    }
    for _ in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(_) => return false,
        }
    }
    false
}
