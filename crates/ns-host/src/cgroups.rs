//! The container's own cgroup (-b, --property): created by the monitor on the host in every
//! mounted hierarchy it may write (each v1 controller, name=systemd, cgroup2; inside a
//! container or a CI runner some are read-only, and skipped), in two levels as nspawn
//! makes them on a unified host: `ns-run-NAME-PID` holds the device policy and the limits,
//! and the container's processes live in its `payload` below, joined by the chain's first
//! process before ns-enter unshares the cgroup namespace (so the namespace is rooted
//! there). A container root that mounts a hierarchy sees `payload` as its root and may
//! write there, but not the level above: the kernel keeps a child within its parent's
//! device rules, pids.max, memory and CPU limits, and runs the eBPF device program of an
//! ancestor whatever the child attaches or detaches. Both are removed after exit. A booted
//! init gets `payload` in the hierarchies systemd manages delegated under -U.

use std::path::{Path, PathBuf};

use ns_core::state::{CgroupLayout, CgroupMounts};
use ns_core::{Context, Error, Result};

/// A mounted hierarchy of this host: where, what (v1 controllers or `name=…`; empty for
/// cgroup2), our own cgroup in it, and whether we may make cgroups beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mountpoint: PathBuf,
    pub options: String,
    pub v2: bool,
    pub own: PathBuf,
    /// Our own cgroup's directory is writable to us: not on a read-only mount (a container's
    /// v1 controllers, a CI runner's cgroupfs), nor refused (EACCES/EPERM: another user's, or
    /// the host's seen from a user namespace). Where it is not, the container gets no cgroup
    /// in this hierarchy.
    pub writable: bool,
}

/// The host's hierarchies, from /proc/self/mountinfo and /proc/self/cgroup: each once, at
/// its first mount (a later one may be a container's, on its rootfs in our namespace: an
/// OCI container without a mount namespace, gone when it is deleted).
pub fn hierarchies() -> Vec<Hierarchy> {
    let mut seen = Vec::new();
    let mut all = mounted_hierarchies();
    all.retain(|h| {
        let key = (h.v2, h.options.clone());
        let first = !seen.contains(&key);
        seen.push(key);
        first
    });
    all
}

fn mounted_hierarchies() -> Vec<Hierarchy> {
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
            let writable = |own: &Path| {
                let dir = mountpoint.join(own.strip_prefix("/").unwrap_or(own));
                nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_ok()
            };
            match fstype {
                "cgroup2" => {
                    let own = own_path("")?;
                    Some(Hierarchy {
                        writable: writable(&own),
                        mountpoint,
                        options: String::new(),
                        v2: true,
                        own,
                    })
                }
                "cgroup" => {
                    let opts: Vec<&str> = super_opts
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("release_agent"))
                        .collect();
                    let key = opts.join(",");
                    let own = own_path(&key)?;
                    Some(Hierarchy {
                        writable: writable(&own),
                        mountpoint,
                        options: key,
                        v2: false,
                        own,
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// What a container's /sys/fs/cgroup is made of, as nspawn 252 chooses it for the host's
/// hierarchies `hs` and the tree (`systemd`: the version of the systemd it holds), under
/// a user namespace or not (`userns`: the v1 controllers and the tmpfs writable).
/// `SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1` forces pure cgroup2, `=0` legacy; otherwise a
/// hybrid host gives hybrid to a tree with systemd 233 or later and legacy to others, a
/// pure cgroup2 host gives cgroup2 (nspawn would make a new name=systemd v1 hierarchy for a
/// tree without systemd 230: we do not add hierarchies to a host), a v1 host legacy.
/// A booted container (`boot`) needs the hierarchy its init manages (name=systemd, or
/// cgroup2 when unified) and needs it writable: an error otherwise. Other containers
/// get nothing (None) where their layout's hierarchies are missing.
pub fn plan(
    hs: &[Hierarchy],
    systemd: Option<u32>,
    userns: bool,
    boot: bool,
) -> Result<Option<CgroupMounts>> {
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
        None if has_v1 && has_v2 && systemd.is_some_and(|v| v >= 233) => CgroupLayout::Hybrid,
        None if has_v2 && !has_v1 => CgroupLayout::Unified,
        None => CgroupLayout::Legacy,
    };
    let systemd_hierarchy = hs.iter().find(|h| h.options == "name=systemd");
    let missing = if layout != CgroupLayout::Legacy && !has_v2 {
        Some("this host has no cgroup2 hierarchy for the guest")
    } else if layout != CgroupLayout::Unified && systemd_hierarchy.is_none() {
        Some("this host has no name=systemd hierarchy for the guest")
    } else {
        None
    };
    match missing {
        Some(why) if boot => return Err(Error::setup(why.into())),
        Some(_) => return Ok(None),
        None if boot => init_hierarchy_writable(hs, layout)?,
        None => {}
    }
    let controllers = hs
        .iter()
        .filter(|h| !h.v2 && h.options != "name=systemd")
        .map(|h| h.options.clone())
        .collect();
    Ok(Some(CgroupMounts {
        layout,
        controllers,
        controllers_writable: userns,
    }))
}

/// -b: the hierarchy the guest's init manages in `layout` (name=systemd, or cgroup2 when
/// unified) must be one we can make its cgroup in.
fn init_hierarchy_writable(hs: &[Hierarchy], layout: CgroupLayout) -> Result<()> {
    let unified = layout == CgroupLayout::Unified;
    let managed = hs.iter().find(|h| {
        if unified {
            h.v2
        } else {
            h.options == "name=systemd"
        }
    });
    match managed {
        Some(h) if !h.writable => Err(Error::setup(format!(
            "-b: the guest's init needs a cgroup of its own in the {} hierarchy, and {} is not writable here",
            if unified { "cgroup2" } else { "name=systemd" },
            h.mountpoint.join(h.own.strip_prefix("/").unwrap_or(&h.own)).display()
        ))),
        _ => Ok(()),
    }
}

/// The version of the systemd installed in the tree at `root` (nspawn's guess: the number
/// in `libsystemd-shared-NNN.so` in lib/systemd, lib64/systemd, usr/lib/systemd,
/// usr/lib64/systemd or Debian's usr/lib/TRIPLET/systemd). Resolved inside the tree (a
/// symlink there never leads out of it), directories only.
pub fn systemd_version(root: &Path) -> Option<u32> {
    use nix::fcntl::OFlag;
    let root = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let version = |dir: &str| -> Option<u32> {
        let names = list_in_root(&root, dir)?;
        names
            .iter()
            .filter_map(|n| {
                n.to_str()?
                    .strip_prefix("libsystemd-shared-")?
                    .strip_suffix(".so")?
                    .split(['.', '-', '~'])
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .max()
    };
    let fixed = [
        "lib/systemd",
        "lib64/systemd",
        "usr/lib/systemd",
        "usr/lib64/systemd",
    ];
    if let Some(v) = fixed.iter().find_map(|d| version(d)) {
        return Some(v);
    }
    let multiarch = list_in_root(&root, "usr/lib")?;
    multiarch
        .iter()
        .filter_map(|n| n.to_str().filter(|n| n.contains("-linux-")))
        .find_map(|n| version(&format!("usr/lib/{n}/systemd")))
}

/// The names in the directory `rel` of the tree `root` is open on, resolved inside it.
fn list_in_root(root: &std::os::fd::OwnedFd, rel: &str) -> Option<Vec<std::ffi::OsString>> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let dir = nix::fcntl::openat2(root, rel, how).ok()?;
    use std::os::fd::AsFd;
    ns_core::walk::names(dir.as_fd()).ok()
}

/// Whether a booted init manages the hierarchy (cgroup2, `v2`, or v1 with `options`) in
/// `layout`: its own cgroup there is delegated to it.
fn managed_by_init(v2: bool, options: &str, layout: CgroupLayout) -> bool {
    match layout {
        CgroupLayout::Unified => v2,
        CgroupLayout::Hybrid => v2 || options == "name=systemd",
        CgroupLayout::Legacy => options == "name=systemd",
    }
}

/// The container's level below its policy's (nspawn's name): the root of its cgroup
/// namespace, where its processes live.
pub const PAYLOAD: &str = "payload";

/// The container's cgroup in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// Where the limits and the device policy are written.
    pub dir: PathBuf,
    /// The hierarchy's v1 controllers (`memory`, `cpu,cpuacct`, `name=systemd`...); empty
    /// for cgroup2.
    pub options: String,
    pub v2: bool,
    /// The processes live in `dir/payload` (ns-run, as nspawn), not in `dir` itself (ns-oci,
    /// as runc: the caller's cgroupsPath is the container's).
    pub nested: bool,
}

impl Cgroup {
    /// The cgroup the container's processes join: the root of its cgroup namespace.
    pub fn procs_dir(&self) -> PathBuf {
        if self.nested {
            self.dir.join(PAYLOAD)
        } else {
            self.dir.clone()
        }
    }
}

/// A slice unit name (`-S`, `.slice` optional) as the path systemd gives it: each
/// dash-separated prefix is a level, `a-b.slice` is `a.slice/a-b.slice`; `-.slice` is the root.
pub fn slice_path(name: &str) -> Result<String> {
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else {
        format!("{name}.slice")
    };
    let bad = |why: &str| Error::invalid("--slice", name, why);
    let prefix = unit.strip_suffix(".slice").unwrap_or_default();
    if prefix == "-" {
        return Ok(String::new());
    }
    if unit.len() > 255
        || prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.\\-".contains(c))
    {
        return Err(bad("not a valid slice unit name"));
    }
    if prefix.starts_with('-') || prefix.ends_with('-') || prefix.contains("--") {
        return Err(bad(
            "a slice name has no empty level (leading, trailing or double -)",
        ));
    }
    let mut levels = Vec::new();
    for (i, c) in prefix.char_indices() {
        if c == '-' {
            levels.push(format!("{}.slice", &prefix[..i]));
        }
    }
    levels.push(unit);
    Ok(levels.join("/"))
}

/// Create the container's cgroups (`ns-run-NAME` in the monitor's own cgroup, in cgroup2 in
/// the nearest one at or above it that no one else may change, or under `slice` from the
/// hierarchy's root) in every mounted hierarchy that is cgroup2 (`v2`) or v1 (not `v2`);
/// returns them, to configure, then give their [`PAYLOAD`] level ([`create_payloads`])
/// and remove. `journal` learns each directory before it is made, and whether it is a
/// shared slice level (removed only while empty) rather than the container's own.
pub fn create(
    hs: &[Hierarchy],
    name: &str,
    slice: Option<&str>,
    v2: bool,
    journal: &mut dyn FnMut(&Path, bool) -> Result<()>,
) -> Result<Vec<Cgroup>> {
    let mut made: Vec<Cgroup> = Vec::new();
    for h in hs.iter().filter(|h| h.v2 == v2) {
        let (parent, dir) = place(h, name, slice);
        // Journaled before it exists: a monitor killed right after still has it collected.
        let mut attempts = 0;
        let r = journal(&dir, false).and_then(|()| loop {
            make_slice(h, slice, journal)?;
            match std::fs::create_dir(&dir) {
                // The last container of the slice removed a level meanwhile: again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                // Left by a killed monitor of the same machine: removed, then made again.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 3 => {
                    remove(&dir);
                    attempts += 1
                }
                r => break r.ctx(|| format!("cannot create cgroup {}", dir.display())),
            }
        });
        if r.is_ok() {
            made.push(Cgroup {
                dir: dir.clone(),
                options: h.options.clone(),
                v2: h.v2,
                nested: true,
            });
        }
        let r = r
            .and_then(|()| inherit_cpuset(h.v2, &h.options, &parent, &dir))
            .and_then(|()| clone_cpuset(h.v2, &h.options, &dir));
        if let Err(e) = r {
            made.iter().for_each(|c| {
                remove(&c.dir);
            });
            return Err(e);
        }
    }
    Ok(made)
}

/// The [`PAYLOAD`] level of each of `cgroups` (made by [`create`]), once their limits and
/// device policy are written: a new v1 cgroup copies its parent's device rules and CPUs
/// when it is made, and v1 refuses to close a parent's device policy over a child. For a
/// booted init (`layout`) it is delegated as nspawn does: with an `owner` (container root
/// on the host, under -U) the hierarchies systemd manages are chowned to it, and cgroup2's
/// controllers are enabled for it below the policy's level. The caller removes `cgroups`
/// (and so these) on failure.
pub fn create_payloads(
    cgroups: &[Cgroup],
    layout: Option<CgroupLayout>,
    owner: Option<u32>,
) -> Result<()> {
    for c in cgroups.iter().filter(|c| c.nested) {
        let dir = c.procs_dir();
        // Its CPUs and memory nodes are the container's ([`clone_cpuset`]).
        std::fs::create_dir(&dir).ctx(|| format!("cannot create cgroup {}", dir.display()))?;
        let Some(layout) = layout else { continue };
        if c.v2 {
            enable_all_v2_controllers(&c.dir);
        }
        match owner {
            Some(id) if managed_by_init(c.v2, &c.options, layout) => delegate(&dir, id)?,
            _ => {}
        }
    }
    Ok(())
}

/// cgroup2: every controller `dir` has, enabled for the cgroups below it (nspawn does the
/// same for its payload; what fails is left out, as there).
fn enable_all_v2_controllers(dir: &Path) {
    let have = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for ctl in have.split_whitespace() {
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{ctl}"));
    }
}

/// An OCI container's cgroups: `rel` (its cgroupsPath, from each hierarchy's root) in every
/// hierarchy that is cgroup2 (`v2`) or v1. Missing levels are made, and returned with the
/// cgroups (to remove when they are empty again); the last one is the container's own, and
/// must be new or empty.
pub fn create_at(hs: &[Hierarchy], rel: &Path, v2: bool) -> Result<(Vec<Cgroup>, Vec<PathBuf>)> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    if rel.as_os_str().is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(Error::invalid(
            "cgroupsPath",
            &rel.display().to_string(),
            "not a path below the hierarchy's root",
        ));
    }
    let mut made: Vec<Cgroup> = Vec::new();
    let mut levels: Vec<PathBuf> = Vec::new();
    for h in hs.iter().filter(|h| h.v2 == v2) {
        let dir = h.mountpoint.join(rel);
        let mut attempts = 0;
        let r = loop {
            let r = (|| -> Result<()> {
                let mut level = h.mountpoint.clone();
                for part in rel.iter() {
                    let parent = level.clone();
                    level.push(part);
                    match std::fs::create_dir(&level) {
                        // An existing level is shared; an existing leaf is taken over only
                        // when nothing is in it (left by a runtime killed before removing it).
                        Err(e)
                            if e.kind() == std::io::ErrorKind::AlreadyExists
                                && (level != dir || is_empty(&level)) =>
                        {
                            // Its maker may not have given it CPUs and memory nodes yet.
                            if !cpuset_ready(h, &level) {
                                inherit_cpuset(h.v2, &h.options, &parent, &level)?;
                            }
                            continue;
                        }
                        r => r.ctx(|| format!("cannot create cgroup {}", level.display()))?,
                    }
                    if level != dir {
                        levels.push(level.clone());
                    }
                    inherit_cpuset(h.v2, &h.options, &parent, &level)?;
                }
                Ok(())
            })();
            match r {
                // Another container's delete removed a shared level meanwhile: again.
                Err(e) if e.msg.ends_with("No such file or directory") && attempts < 3 => {
                    attempts += 1
                }
                r => break r,
            }
        };
        if let Err(e) = r {
            made.iter().for_each(|c| {
                remove(&c.dir);
            });
            remove_levels(&levels);
            return Err(e);
        }
        made.push(Cgroup {
            dir,
            options: h.options.clone(),
            v2: h.v2,
            nested: false,
        });
    }
    Ok((made, levels))
}

/// Remove the levels [`create_at`] made, deepest first, where they are empty.
pub fn remove_levels(levels: &[PathBuf]) {
    let mut v = levels.to_vec();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for l in v {
        let _ = std::fs::remove_dir(l);
    }
}

/// No process in cgroup `dir` (nor below it).
fn is_empty(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
        && std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .all(|e| !e.file_type().is_ok_and(|t| t.is_dir()) || is_empty(&e.path()))
}

/// In a systemd unit of ours (a delegated scope or service: registration with machined),
/// the monitor leaves the unit's own cgroup for a `supervisor` cgroup below it, in the
/// hierarchies systemd manages (cgroup2, name=systemd), as nspawn does: cgroup2 lets no
/// process sit beside cgroups that have controllers, and the container's cgroups go beside
/// it, in the unit. Returns the hierarchies, read again, with `own` the unit's cgroup (where
/// [`create`] puts the container's, without a slice).
pub fn supervise_in_unit() -> Result<Vec<Hierarchy>> {
    let hs = hierarchies();
    for h in hs.iter().filter(|h| h.v2 || h.options == "name=systemd") {
        let rel = h.own.strip_prefix("/").unwrap_or(&h.own);
        let dir = h.mountpoint.join(rel).join("supervisor");
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(e).ctx(|| format!("cannot create cgroup {}", dir.display()))
            }
            _ => {}
        }
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .ctx(|| format!("cannot move the monitor into {}", dir.display()))?;
    }
    Ok(hs)
}

/// Back to the cgroups of `before` (the monitor's, before it joined a scope of its own), once
/// the container's processes hold the scope, and the `supervisor` cgroups left empty go: the
/// scope holds the container alone, as nspawn's does, so that `machinectl kill` and a stop of
/// the scope reach only the container. False where such a cgroup is gone (a scope of the
/// caller's that held only ns-run, which systemd removed once the monitor left it): the
/// monitor stays in `supervisor` there.
pub fn leave_unit(before: &[Hierarchy]) -> Result<bool> {
    let now = hierarchies();
    let mut left = true;
    for b in before {
        let same = |n: &&Hierarchy| n.v2 == b.v2 && n.options == b.options;
        let Some(n) = now.iter().find(same).filter(|n| n.own != b.own) else {
            continue;
        };
        let dir = b.mountpoint.join(b.own.strip_prefix("/").unwrap_or(&b.own));
        match std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                left = false;
                continue;
            }
            r => r.ctx(|| format!("cannot move the monitor back to {}", dir.display()))?,
        }
        if n.own.ends_with("supervisor") {
            let _ =
                std::fs::remove_dir(n.mountpoint.join(n.own.strip_prefix("/").unwrap_or(&n.own)));
        }
    }
    Ok(left)
}

/// Where the container's cgroup goes in `h`: its parent and itself.
fn place(h: &Hierarchy, name: &str, slice: Option<&str>) -> (PathBuf, PathBuf) {
    let parent = match slice {
        Some(s) => h.mountpoint.join(s),
        None if h.v2 => ours_at_or_above(&h.mountpoint, &h.own),
        None => h.mountpoint.join(h.own.strip_prefix("/").unwrap_or(&h.own)),
    };
    let dir = parent.join(format!("ns-run-{name}"));
    (parent, dir)
}

/// cgroup2: the cgroup `own` (below the hierarchy's `mountpoint`) if no one else may change
/// what is below it, else its nearest ancestor that qualifies (`own` itself when none
/// does). cgroup2 lets whoever may write a common ancestor's cgroup.procs move any process
/// between the cgroups below it, and its cgroup.subtree_control decides their controllers:
/// in a subtree delegated to a user (`sudo ns-run` from a desktop's terminal runs in
/// user@UID.service's), that user could take the container out of the level holding its
/// device policy and limits. Qualifies: the directory, its cgroup.procs and
/// cgroup.subtree_control are ours (our effective uid), and writable by no group or other.
fn ours_at_or_above(mountpoint: &Path, own: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let uid = nix::unistd::geteuid().as_raw();
    let ours = |dir: &Path| {
        ["", "cgroup.procs", "cgroup.subtree_control"]
            .iter()
            .all(|f| {
                std::fs::symlink_metadata(dir.join(f))
                    .is_ok_and(|m| m.uid() == uid && m.mode() & 0o022 == 0)
            })
    };
    let start = mountpoint.join(own.strip_prefix("/").unwrap_or(own));
    start
        .ancestors()
        .take_while(|d| d.starts_with(mountpoint))
        .find(|d| ours(d))
        .unwrap_or(&start)
        .to_path_buf()
}

/// The cgroups the container's processes join in `hs` with `v2` (the [`PAYLOAD`] level of
/// what [`create`] makes), without making them.
pub fn planned(hs: &[Hierarchy], name: &str, slice: Option<&str>, v2: bool) -> Vec<PathBuf> {
    hs.iter()
        .filter(|h| h.v2 == v2)
        .map(|h| place(h, name, slice).1.join(PAYLOAD))
        .collect()
}

/// The missing levels of `slice` in hierarchy `h`, top first (another container may make or
/// remove them at the same time: EEXIST is fine).
fn make_slice(
    h: &Hierarchy,
    slice: Option<&str>,
    journal: &mut dyn FnMut(&Path, bool) -> Result<()>,
) -> Result<()> {
    let mut level = h.mountpoint.clone();
    for part in Path::new(slice.unwrap_or_default()).iter() {
        let parent = level.clone();
        level.push(part);
        if level.is_dir() {
            continue;
        }
        journal(&level, true)?;
        match std::fs::create_dir(&level) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(e).ctx(|| format!("cannot create slice cgroup {}", level.display()))
            }
            _ => inherit_cpuset(h.v2, &h.options, &parent, &level)?,
        }
    }
    Ok(())
}

/// A new v1 cpuset cgroup (in a hierarchy that is not cgroup2, `v2`, with `options`)
/// starts with no CPUs and no memory nodes (nothing could join it): give it its parent's.
fn inherit_cpuset(v2: bool, options: &str, parent: &Path, dir: &Path) -> Result<()> {
    if !v1_cpuset(v2, options) {
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

/// A v1 hierarchy (not cgroup2, `v2`) with the cpuset controller among its `options`.
fn v1_cpuset(v2: bool, options: &str) -> bool {
    !v2 && options.split(',').any(|o| o == "cpuset")
}

/// A v1 cpuset cgroup `dir` of a container gives the cgroups made below it (its
/// [`PAYLOAD`] level, a delegated guest's) its CPUs and memory nodes as they are made
/// (`cgroup.clone_children`, as systemd sets it on its hosts): one write instead of two
/// reads and two writes per level.
fn clone_cpuset(v2: bool, options: &str, dir: &Path) -> Result<()> {
    if !v1_cpuset(v2, options) {
        return Ok(());
    }
    let f = dir.join("cgroup.clone_children");
    std::fs::write(&f, "1").ctx(|| format!("cannot write {}", f.display()))
}

/// cgroup2: make controller `ctl` available in `dir` by enabling it down the path from the
/// hierarchy's root (as runc does for what a container's limits need). Returns whether `dir`
/// has it now. Only called for a limit that needs it, so the host's tree changes only then.
pub fn enable_v2_controller(dir: &Path, ctl: &str) -> bool {
    let has = |d: &Path, f: &str| {
        std::fs::read_to_string(d.join(f)).is_ok_and(|c| c.split_whitespace().any(|n| n == ctl))
    };
    let mut path: Vec<&Path> = dir
        .ancestors()
        .skip(1)
        .take_while(|d| d.join("cgroup.controllers").exists())
        .collect();
    path.reverse();
    for d in path {
        if has(d, "cgroup.controllers") && !has(d, "cgroup.subtree_control") {
            let _ = std::fs::write(d.join("cgroup.subtree_control"), format!("+{ctl}"));
        }
    }
    has(dir, "cgroup.controllers")
}

/// A v1 cpuset cgroup that has CPUs (or any other cgroup).
fn cpuset_ready(h: &Hierarchy, dir: &Path) -> bool {
    !v1_cpuset(h.v2, &h.options)
        || std::fs::read_to_string(dir.join("cpuset.cpus")).is_ok_and(|c| !c.trim().is_empty())
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

/// The cgroup2 directory to fork into with `sys::fork_into_cgroup` (O_PATH), if any: where
/// the container's processes live.
pub fn v2_dir(cgroups: &[Cgroup]) -> Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    cgroups
        .iter()
        .find(|c| c.v2)
        .map(|c| {
            let dir = c.procs_dir();
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(&dir)
                .ctx(|| format!("cannot open cgroup {}", dir.display()))
        })
        .transpose()
}

/// Every process in cgroup `dir` and the cgroups below it.
pub fn procs_below(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(procs_below(&e.path()));
        }
    }
    pids
}

/// Remove a cgroup and the ones the guest made below it, deepest first. Fd-relative, one
/// directory open at a time: a guest that owns a cgroup may nest them deeper than a path
/// can name (a `cd` into each new one). Returns whether it is gone. Processes of a dying PID
/// namespace may still be leaving it (EBUSY) after PID 1 was reaped: retried for up to a
/// second in all (not at every level: a guest's deep tree would make that hours).
pub fn remove(dir: &Path) -> bool {
    if remove_plain(dir) {
        return true;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return false;
    };
    match nix::fcntl::open(
        parent,
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(top) => remove_at(top, name, deadline).is_ok(),
        Err(nix::errno::Errno::ENOENT) => true,
        Err(_) => false,
    }
}

/// [`remove`]'s usual case, two `rmdir`s instead of a walk (~30 system calls per
/// hierarchy): a cgroup with no cgroup below it but its [`PAYLOAD`] level, which has none.
/// Anything else (a guest's cgroups below, a process still leaving: ENOTEMPTY, EBUSY) is
/// left to the walk. A path is safe here: cgroupfs has no symlinks to swap in, and `rmdir`
/// follows none at its last component.
fn remove_plain(dir: &Path) -> bool {
    let gone = |p: &Path| match std::fs::remove_dir(p) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    gone(&dir.join(PAYLOAD)) && gone(dir)
}

/// [`remove`] of the cgroup `name` of the directory `top` is open on. The levels being
/// removed are a stack of (name, inode, subdirectories left); going back up is `..`, checked
/// to be the level we came from.
fn remove_at(
    top: std::os::fd::OwnedFd,
    name: &std::ffi::OsStr,
    deadline: std::time::Instant,
) -> nix::Result<()> {
    use nix::errno::Errno;
    use std::os::fd::AsFd;
    let ino = |fd: &std::os::fd::OwnedFd| nix::sys::stat::fstat(fd.as_fd()).map(|s| s.st_ino);
    let mut stack = vec![(name.to_os_string(), ino(&top)?, vec![name.to_os_string()])];
    let mut cur = top;
    while let Some((_, _, left)) = stack.last_mut() {
        if let Some(n) = left.pop() {
            match ns_core::walk::open_dir_at(cur.as_fd(), &n) {
                Ok(fd) => {
                    stack.push((n, ino(&fd)?, subdirs(&fd)?));
                    cur = fd;
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let (n, _, _) = stack.pop().expect("not empty");
        let Some((_, above, _)) = stack.last() else {
            return Ok(());
        };
        let up = ns_core::walk::open_dir_at(cur.as_fd(), std::ffi::OsStr::new(".."))?;
        if ino(&up)? != *above {
            return Err(Errno::ESTALE);
        }
        cur = up;
        loop {
            match nix::unistd::unlinkat(
                cur.as_fd(),
                n.as_os_str(),
                nix::unistd::UnlinkatFlags::RemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => break,
                Err(Errno::EBUSY) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The cgroups directly below the one `dir` is open on (its subdirectories).
fn subdirs(dir: &std::os::fd::OwnedFd) -> nix::Result<Vec<std::ffi::OsString>> {
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;
    let mut d = nix::dir::Dir::from_fd(ns_core::walk::reopen_dir(dir.as_fd())?)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if e.file_type() == Some(nix::dir::Type::Directory) && n != b"." && n != b".." {
            out.push(std::ffi::OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(options: &str, writable: bool) -> Hierarchy {
        Hierarchy {
            mountpoint: PathBuf::from(format!("/sys/fs/cgroup/{options}")),
            options: options.trim_start_matches("v2").to_string(),
            v2: options == "v2",
            own: PathBuf::from("/"),
            writable,
        }
    }

    /// nspawn's choice of layout (with SYSTEMD_NSPAWN_UNIFIED_HIERARCHY unset, as the test
    /// environment has it), and what a booted container needs.
    #[test]
    fn layouts_as_nspawn_chooses_them() {
        if std::env::var_os("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY").is_some() {
            return;
        }
        let hybrid = [h("memory", false), h("name=systemd", true), h("v2", true)];
        let layout =
            |hs: &[Hierarchy], systemd| plan(hs, systemd, false, false).unwrap().map(|c| c.layout);
        assert_eq!(layout(&hybrid, Some(252)), Some(CgroupLayout::Hybrid));
        assert_eq!(layout(&hybrid, Some(232)), Some(CgroupLayout::Legacy));
        assert_eq!(layout(&hybrid, None), Some(CgroupLayout::Legacy));
        assert_eq!(layout(&hybrid[2..], None), Some(CgroupLayout::Unified));
        assert_eq!(layout(&hybrid[..2], Some(252)), Some(CgroupLayout::Legacy));
        // Nothing mounted: nothing to show a plain container, an error for -b.
        assert_eq!(layout(&[], None), None);
        assert!(plan(&[], None, false, true).is_err());
        // -U: the v1 controllers writable, as nspawn mounts them.
        let u = plan(&hybrid, None, true, false).unwrap().unwrap();
        assert_eq!(u.controllers, ["memory"]);
        assert!(u.controllers_writable);
        // -b needs its init's hierarchy writable: name=systemd (hybrid, legacy), cgroup2.
        assert!(plan(&hybrid, Some(252), false, true).is_ok());
        let ro = [h("name=systemd", false), h("v2", true)];
        let e = plan(&ro, None, false, true).unwrap_err();
        assert!(e.msg.contains("in the name=systemd hierarchy"), "{}", e.msg);
        assert!(plan(&ro[1..], None, false, true).is_ok());
        assert!(plan(&[h("v2", false)], None, false, true).is_err());
    }

    /// The container's cgroup2 level goes below the nearest of the monitor's cgroups no one
    /// else may change (a directory tree standing in for cgroupfs; run as root).
    #[test]
    fn the_policy_level_goes_where_no_one_else_may_write() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let base = std::env::temp_dir().join(format!("ns-host-ours-{}", std::process::id()));
        let own = Path::new("/user.slice/user@1000.service/app.slice/term.scope");
        for d in Path::new("/").join(own).ancestors() {
            let dir = base.join(d.strip_prefix("/").unwrap());
            std::fs::create_dir_all(&dir).unwrap();
            let mode = std::os::unix::fs::PermissionsExt::from_mode;
            std::fs::set_permissions(&dir, mode(0o755)).unwrap();
            for f in ["cgroup.procs", "cgroup.subtree_control"] {
                std::fs::write(dir.join(f), "").unwrap();
                std::fs::set_permissions(dir.join(f), mode(0o644)).unwrap();
            }
        }
        let at = |rel: &str| base.join(rel);
        assert_eq!(
            ours_at_or_above(&base, own),
            at(&own.display().to_string()[1..])
        );
        // user@1000.service and below delegated to the user: the slice above it.
        for d in [
            "user.slice/user@1000.service",
            "user.slice/user@1000.service/app.slice",
        ] {
            std::os::unix::fs::chown(at(d), Some(1000), None).unwrap();
        }
        std::os::unix::fs::chown(
            at(&own.display().to_string()[1..]).join("cgroup.procs"),
            Some(1000),
            None,
        )
        .unwrap();
        assert_eq!(ours_at_or_above(&base, own), at("user.slice"));
        // A group-writable cgroup.subtree_control is not ours either.
        let sc = at("user.slice/cgroup.subtree_control");
        std::fs::set_permissions(&sc, std::os::unix::fs::PermissionsExt::from_mode(0o664)).unwrap();
        assert_eq!(ours_at_or_above(&base, own), base);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
