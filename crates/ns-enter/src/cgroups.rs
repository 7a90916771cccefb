//! The container's own cgroup, for a booted init: created by the monitor on the host in the
//! hierarchies systemd needs (name=systemd on a v1 or hybrid host, the unified one on a
//! hybrid or pure cgroup2 host), joined by the chain's first process before ns-enter unshares
//! the cgroup namespace (so the namespace is rooted there), and removed after exit.

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

/// Create the container's cgroups (`ns-run-NAME` beside the monitor's own); returns their
/// paths, to join and to remove. With `owner` (container root on the host, under -U), each is
/// delegated to it as nspawn does: the directory and its control files are chowned, so that
/// the guest's init may create and fill cgroups below.
pub fn create(layout: CgroupLayout, name: &str, owner: Option<u32>) -> Result<Vec<PathBuf>> {
    let hs = hierarchies();
    let mut made = Vec::new();
    for h in own_hierarchies(&hs, layout) {
        let rel = h.own.strip_prefix("/").unwrap_or(&h.own);
        let dir = h.mountpoint.join(rel).join(format!("ns-run-{name}"));
        if dir.exists() {
            remove(&dir); // left by a killed monitor of the same machine
        }
        let r = std::fs::create_dir(&dir).ctx(|| format!("cannot create cgroup {}", dir.display()));
        if r.is_ok() {
            made.push(dir.clone());
        }
        if let Err(e) = r.and_then(|()| owner.map_or(Ok(()), |id| delegate(&dir, id))) {
            made.iter().for_each(|d: &PathBuf| remove(d));
            return Err(e);
        }
    }
    Ok(made)
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
pub fn join(dirs: &[PathBuf]) -> Result<()> {
    for d in dirs {
        std::fs::write(d.join("cgroup.procs"), "0")
            .ctx(|| format!("cannot join cgroup {}", d.display()))?;
    }
    Ok(())
}

/// Remove a cgroup and the ones the guest made below it, deepest first.
pub fn remove(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
