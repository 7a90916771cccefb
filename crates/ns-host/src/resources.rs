//! `--property=NAME=VALUE`: resource limits with systemd's names, written by the monitor into
//! the container's own cgroups before its first process joins them. Each property goes to
//! cgroup2 when the container's cgroup2 directory has the controller, else to the v1
//! hierarchy that has it (hosts like these: v1 controllers plus an empty cgroup2); one that
//! neither offers is an error naming it, never dropped. Values are checked when the plan is
//! made, so bad input fails before anything is created.

use std::path::{Path, PathBuf};

use crate::cgroups::Cgroup;
use ns_core::state::{IoLimit, Property};
use ns_core::{Context, Error, Result};

/// The task limit of nspawn's unit (its `TasksMax=`), which every container of ns-run
/// gets unless told otherwise ([`Property::DefaultTasksMax`]): a fork bomb stops there, not
/// at the host's pid_max.
pub const NSPAWN_TASKS_MAX: u64 = 16384;

/// Parse `NAME=VALUE` as systemd does for these names.
pub fn parse(v: &str) -> Result<Property> {
    let bad = |why: &str| Error::invalid("--property", v, why);
    let (name, value) = v.split_once('=').ok_or_else(|| bad("not NAME=VALUE"))?;
    let value = value.trim();
    let ranged = |lo: u64, hi: u64| {
        value
            .parse::<u64>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| bad(&format!("not a number from {lo} to {hi}")))
    };
    Ok(match name {
        "MemoryMax" | "MemoryLimit" => Property::MemoryMax(bytes(value).map_err(|w| bad(&w))?),
        "MemoryHigh" => Property::MemoryHigh(bytes(value).map_err(|w| bad(&w))?),
        "MemoryLow" => Property::MemoryLow(bytes(value).map_err(|w| bad(&w))?),
        "MemorySwapMax" => Property::MemorySwapMax(bytes(value).map_err(|w| bad(&w))?),
        "TasksMax" => Property::TasksMax(match value {
            "infinity" => None,
            _ => Some(ranged(1, u64::from(u32::MAX))?),
        }),
        "CPUQuota" => {
            let p = value
                .strip_suffix('%')
                .and_then(|p| p.parse::<u64>().ok())
                .filter(|&p| p >= 1)
                .ok_or_else(|| bad("not a percentage of at least 1%"))?;
            Property::CpuQuota(p)
        }
        "CPUWeight" => Property::CpuWeight(ranged(1, 10000)?),
        "CPUShares" => Property::CpuShares(ranged(2, 262144)?),
        "AllowedCPUs" => Property::AllowedCpus(cpu_list(value).map_err(|w| bad(&w))?),
        "AllowedMemoryNodes" => Property::AllowedMemoryNodes(cpu_list(value).map_err(|w| bad(&w))?),
        "IOWeight" => Property::IoWeight(ranged(1, 10000)?),
        "BlockIOWeight" => Property::BlkioWeight(ranged(10, 1000)?),
        "IODeviceWeight" | "BlockIODeviceWeight" => {
            device_weight(name == "IODeviceWeight", value).map_err(|w| bad(&w))?
        }
        "IOReadBandwidthMax" | "IOWriteBandwidthMax" | "IOReadIOPSMax" | "IOWriteIOPSMax" => {
            let (dev, v) = device_and(value).map_err(|w| bad(&w))?;
            let (limit, n) = match name {
                "IOReadBandwidthMax" => (IoLimit::ReadBytes, bytes(v)),
                "IOWriteBandwidthMax" => (IoLimit::WriteBytes, bytes(v)),
                _ if v == "infinity" => (IoLimit::ReadIops, Ok(None)),
                _ => (
                    IoLimit::ReadIops,
                    v.parse::<u64>()
                        .map(Some)
                        .map_err(|_| "not a number or infinity".to_string()),
                ),
            };
            let limit = match name {
                "IOWriteIOPSMax" => IoLimit::WriteIops,
                _ => limit,
            };
            Property::IoMax(dev, limit, n.map_err(|w| bad(&w))?.filter(|n| *n > 0))
        }
        "DevicePolicy" => match value {
            "auto" | "closed" | "strict" => Property::DevicePolicy(value.into()),
            _ => return Err(bad("not one of auto, closed, strict")),
        },
        "DeviceAllow" => Property::DeviceAllow(device_rule(value).map_err(|w| bad(&w))?),
        _ => return Err(bad("unknown or unsupported property")),
    })
}

/// Bytes with an optional K, M, G, T suffix (base 1024), `infinity`, or a percentage of the
/// host's memory.
fn bytes(v: &str) -> std::result::Result<Option<u64>, String> {
    if v == "infinity" {
        return Ok(None);
    }
    if let Some(p) = v.strip_suffix('%') {
        let p: u64 = p
            .parse()
            .ok()
            .filter(|p| *p <= 100)
            .ok_or("not a percentage")?;
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|k| k.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .ok_or("cannot read MemTotal from /proc/meminfo")?;
        return Ok(Some(total * 1024 / 100 * p));
    }
    let (num, mult) = match v.chars().last() {
        Some('K') => (&v[..v.len() - 1], 1u64 << 10),
        Some('M') => (&v[..v.len() - 1], 1 << 20),
        Some('G') => (&v[..v.len() - 1], 1 << 30),
        Some('T') => (&v[..v.len() - 1], 1 << 40),
        _ => (v, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .map(Some)
        .ok_or_else(|| "not a size (bytes, K, M, G, T, a percentage or infinity)".into())
}

/// `PATH VALUE` of the IO properties: PATH is a block device node or a file on one (its
/// file system's device); limits apply to whole disks, so a partition means its disk.
fn device_and(v: &str) -> std::result::Result<(String, &str), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (path, value) = v.rsplit_once(char::is_whitespace).ok_or("not PATH VALUE")?;
    let md = std::fs::metadata(path.trim()).map_err(|e| format!("{}: {e}", path.trim()))?;
    let dev = if md.file_type().is_block_device() {
        md.rdev()
    } else {
        md.dev()
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.exists() {
        return Err(format!("{} is not on a block device", path.trim()));
    }
    let disk = if sys.join("partition").exists() {
        std::fs::read_to_string(sys.join("../dev"))
            .map_err(|e| format!("cannot find the disk of partition {major}:{minor}: {e}"))?
            .trim()
            .to_string()
    } else {
        format!("{major}:{minor}")
    };
    Ok((disk, value.trim()))
}

/// `IODeviceWeight=` (`io`: 1 to 10000) or `BlockIODeviceWeight=` (10 to 1000): `PATH
/// WEIGHT`.
fn device_weight(io: bool, v: &str) -> std::result::Result<Property, String> {
    let (dev, w) = device_and(v)?;
    let (lo, hi) = if io { (1, 10000) } else { (10, 1000) };
    let w = w
        .parse::<u64>()
        .ok()
        .filter(|w| (lo..=hi).contains(w))
        .ok_or_else(|| format!("not a weight from {lo} to {hi}"))?;
    Ok(if io {
        Property::IoDeviceWeight(dev, w)
    } else {
        Property::BlkioDeviceWeight(dev, w)
    })
}

/// `DeviceAllow=` as systemd takes it: a device node path on the host, `char-NAME` or
/// `block-NAME` (a driver of /proc/devices, all its minors; `*` for every driver), then
/// access `rwm` (default all).
fn device_rule(v: &str) -> std::result::Result<String, String> {
    let (spec, access) = v.split_once(char::is_whitespace).unwrap_or((v, "rwm"));
    let access = access.trim();
    if access.is_empty() || !access.chars().all(|c| "rwm".contains(c)) {
        return Err("access is some of r, w, m".into());
    }
    let node = if let Some(rest) = spec
        .strip_prefix("char-")
        .map(|n| ('c', n, "Character devices:"))
        .or_else(|| {
            spec.strip_prefix("block-")
                .map(|n| ('b', n, "Block devices:"))
        }) {
        let (kind, name, section) = rest;
        if name == "*" {
            return Ok(format!("{kind} *:* {access}"));
        }
        let devices = std::fs::read_to_string("/proc/devices").unwrap_or_default();
        let major = devices
            .split("\n\n")
            .filter(|s| s.starts_with(section))
            .flat_map(|s| s.lines().skip(1))
            .find_map(|l| {
                let (maj, n) = l.trim().split_once(' ')?;
                (n == name).then(|| maj.to_string())
            })
            .ok_or(format!("no {name} driver in /proc/devices"))?;
        format!("{kind} {major}:*")
    } else if spec.starts_with("/dev/") {
        std::fs::metadata(spec).map_err(|e| format!("{spec}: {e}"))?;
        crate::devices::node(std::path::Path::new(spec))
            .ok_or_else(|| format!("{spec} is not a device node"))?
    } else {
        return Err("not a /dev path, char-NAME or block-NAME".into());
    };
    Ok(format!("{node} {access}"))
}

/// A CPU or node list, written back as the kernel takes it (`0-3,6`).
fn cpu_list(v: &str) -> std::result::Result<String, String> {
    ns_core::cpus::parse(v).map(|ids| ns_core::cpus::format(&ids))
}

/// The property's name as the user wrote it (for errors).
fn name(p: &Property) -> &'static str {
    match p {
        Property::MemoryMax(_) => "MemoryMax",
        Property::MemoryHigh(_) => "MemoryHigh",
        Property::MemoryLow(_) => "MemoryLow",
        Property::MemorySwapMax(_) => "MemorySwapMax",
        Property::TasksMax(_) | Property::DefaultTasksMax(_) => "TasksMax",
        Property::CpuQuota(_) => "CPUQuota",
        Property::CpuWeight(_) => "CPUWeight",
        Property::CpuShares(_) => "CPUShares",
        Property::AllowedCpus(_) => "AllowedCPUs",
        Property::AllowedMemoryNodes(_) => "AllowedMemoryNodes",
        Property::IoWeight(_) => "IOWeight",
        Property::IoDeviceWeight(..) => "IODeviceWeight",
        Property::BlkioWeight(_) => "BlockIOWeight",
        Property::BlkioDeviceWeight(..) => "BlockIODeviceWeight",
        Property::IoMax(_, IoLimit::ReadBytes, _) => "IOReadBandwidthMax",
        Property::IoMax(_, IoLimit::WriteBytes, _) => "IOWriteBandwidthMax",
        Property::IoMax(_, IoLimit::ReadIops, _) => "IOReadIOPSMax",
        Property::IoMax(_, IoLimit::WriteIops, _) => "IOWriteIOPSMax",
        Property::DevicePolicy(_) | Property::DefaultDevices(_) => "DevicePolicy",
        Property::DeviceAllow(_) => "DeviceAllow",
        Property::CpuMax(..) => "cpu.quota",
        Property::HugetlbMax(..) => "hugepageLimits",
        Property::Unified(..) => "unified",
        Property::MemoryV1(..) => "memory",
        Property::NetClassId(_) => "network.classID",
        Property::NetPriority(..) => "network.priorities",
    }
}

/// The property as its user gave it: `--property=NAME`, or config.json's field for what
/// only an OCI bundle sets.
fn label(p: &Property) -> String {
    let n = name(p);
    if n.starts_with(char::is_lowercase) {
        format!(
            "config.json: linux.resources.{}",
            n.trim_start_matches("linux.resources.")
        )
    } else {
        format!("--property={n}")
    }
}

fn controller(p: &Property) -> &'static str {
    match p {
        Property::MemoryMax(_)
        | Property::MemoryV1(..)
        | Property::MemoryHigh(_)
        | Property::MemoryLow(_)
        | Property::MemorySwapMax(_) => "memory",
        Property::TasksMax(_) | Property::DefaultTasksMax(_) => "pids",
        Property::CpuQuota(_)
        | Property::CpuMax(..)
        | Property::CpuWeight(_)
        | Property::CpuShares(_) => "cpu",
        Property::AllowedCpus(_) | Property::AllowedMemoryNodes(_) => "cpuset",
        Property::IoWeight(_)
        | Property::IoDeviceWeight(..)
        | Property::BlkioWeight(_)
        | Property::BlkioDeviceWeight(..)
        | Property::IoMax(..) => "io",
        Property::DevicePolicy(_) | Property::DeviceAllow(_) | Property::DefaultDevices(_) => {
            "devices"
        }
        Property::HugetlbMax(..) => "hugetlb",
        Property::Unified(..) => "unified",
        Property::NetClassId(_) => "net_cls",
        Property::NetPriority(..) => "net_prio",
    }
}

/// The files to write for `p` in cgroup2 (`v2`) or v1, in order. `all` gives the context
/// (v1 swap is memory+swap, so it needs MemoryMax).
fn writes(p: &Property, v2: bool, all: &[&Property]) -> Result<Vec<(String, String)>> {
    Ok(match (p, v2) {
        (Property::HugetlbMax(size, n), true) => {
            vec![(format!("hugetlb.{size}.max"), n.to_string())]
        }
        (Property::HugetlbMax(size, n), false) => {
            vec![(format!("hugetlb.{size}.limit_in_bytes"), n.to_string())]
        }
        (Property::Unified(file, value), true) => vec![(file.clone(), value.clone())],
        (Property::MemoryV1(file, value), false) => vec![(file.clone(), value.clone())],
        (Property::MemoryV1(file, _), true) => {
            return Err(Error::setup(format!(
                "linux.resources.memory: {file} needs the v1 memory controller, which this host's cgroup2 has no equivalent of"
            )))
        }
        (Property::Unified(file, _), false) => {
            return Err(Error::setup(format!(
                "linux.resources.unified: {file} needs a cgroup2 hierarchy"
            )))
        }
        _ => fixed_writes(p, v2, all)?
            .into_iter()
            .map(|(f, v)| (f.to_string(), v))
            .collect(),
    })
}

/// [`writes`] for the properties whose file names are fixed.
fn fixed_writes(p: &Property, v2: bool, all: &[&Property]) -> Result<Vec<(&'static str, String)>> {
    let lim = |l: &Option<u64>, inf: &str| l.map_or(inf.to_string(), |n| n.to_string());
    let v1_only_v2 = || {
        Error::setup(format!(
            "{}: needs the cgroup2 {} controller, which this host does not offer",
            label(p),
            controller(p)
        ))
    };
    Ok(match (p, v2) {
        (Property::MemoryMax(l), true) => vec![("memory.max", lim(l, "max"))],
        (Property::MemoryMax(l), false) => vec![("memory.limit_in_bytes", lim(l, "-1"))],
        (Property::MemoryHigh(l), true) => vec![("memory.high", lim(l, "max"))],
        (Property::MemoryHigh(_), false) => return Err(v1_only_v2()),
        (Property::MemoryLow(l), true) => vec![("memory.low", lim(l, "max"))],
        (Property::MemoryLow(l), false) => vec![("memory.soft_limit_in_bytes", lim(l, "-1"))],
        (Property::MemorySwapMax(l), true) => vec![("memory.swap.max", lim(l, "max"))],
        (Property::MemorySwapMax(l), false) => {
            let mem = all.iter().rev().find_map(|p| match p {
                Property::MemoryMax(m) => Some(*m),
                _ => None,
            });
            let total = match (mem.flatten(), l) {
                (Some(m), Some(s)) => Some(m.saturating_add(*s)),
                _ => None,
            };
            vec![("memory.memsw.limit_in_bytes", lim(&total, "-1"))]
        }
        (Property::TasksMax(l), _) => vec![("pids.max", lim(l, "max"))],
        (Property::DefaultTasksMax(n), _) => vec![("pids.max", n.to_string())],
        (Property::CpuQuota(pc), true) => vec![("cpu.max", format!("{} 100000", pc * 1000))],
        (Property::CpuQuota(pc), false) => vec![
            ("cpu.cfs_period_us", "100000".into()),
            ("cpu.cfs_quota_us", (pc * 1000).to_string()),
        ],
        (Property::CpuMax(q, p), true) => vec![("cpu.max", format!("{q} {p}"))],
        (Property::CpuMax(q, p), false) => vec![
            ("cpu.cfs_period_us", p.to_string()),
            ("cpu.cfs_quota_us", q.to_string()),
        ],
        // systemd's conversions between weights (default 100) and shares (default 1024).
        (Property::CpuWeight(w), true) => vec![("cpu.weight", w.to_string())],
        (Property::CpuWeight(w), false) => {
            vec![("cpu.shares", (w * 1024 / 100).clamp(2, 262144).to_string())]
        }
        (Property::CpuShares(s), true) => {
            vec![("cpu.weight", (s * 100 / 1024).clamp(1, 10000).to_string())]
        }
        (Property::CpuShares(s), false) => vec![("cpu.shares", s.to_string())],
        // v1 only: cgroup2 has neither controller, so no cgroup2 directory is chosen.
        (Property::NetClassId(id), _) => vec![("net_cls.classid", id.to_string())],
        (Property::NetPriority(dev, prio), _) => {
            vec![("net_prio.ifpriomap", format!("{dev} {prio}"))]
        }
        (Property::AllowedCpus(l), _) => vec![("cpuset.cpus", l.clone())],
        (Property::AllowedMemoryNodes(l), _) => vec![("cpuset.mems", l.clone())],
        (
            Property::IoWeight(_)
            | Property::IoDeviceWeight(..)
            | Property::BlkioWeight(_)
            | Property::BlkioDeviceWeight(..)
            | Property::IoMax(..),
            _,
        ) => io_writes(p, v2),
        // Enforced as a whole by `devices::apply`; the others by `writes`.
        (
            Property::DevicePolicy(_)
            | Property::DeviceAllow(_)
            | Property::DefaultDevices(_)
            | Property::HugetlbMax(..)
            | Property::MemoryV1(..)
            | Property::Unified(..),
            _,
        ) => vec![],
    })
}

/// [`fixed_writes`] for the io (v1 blkio) properties.
fn io_writes(p: &Property, v2: bool) -> Vec<(&'static str, String)> {
    let lim = |l: &Option<u64>, inf: &str| l.map_or(inf.to_string(), |n| n.to_string());
    match (p, v2) {
        (Property::IoWeight(w), true) => vec![("io.weight", format!("default {w}"))],
        (Property::IoWeight(w), false) => {
            vec![("blkio.weight", (w * 500 / 100).clamp(10, 1000).to_string())]
        }
        (Property::IoDeviceWeight(d, w), true) => vec![("io.weight", format!("{d} {w}"))],
        (Property::IoDeviceWeight(d, w), false) => vec![(
            "blkio.weight_device",
            format!("{d} {}", (w * 500 / 100).clamp(10, 1000)),
        )],
        (Property::BlkioWeight(w), true) => {
            vec![("io.weight", format!("default {}", blkio_to_io(*w)))]
        }
        (Property::BlkioWeight(w), false) => vec![("blkio.weight", w.to_string())],
        (Property::BlkioDeviceWeight(d, w), true) => {
            vec![("io.weight", format!("{d} {}", blkio_to_io(*w)))]
        }
        (Property::BlkioDeviceWeight(d, w), false) => {
            vec![("blkio.weight_device", format!("{d} {w}"))]
        }
        (Property::IoMax(d, l, n), true) => {
            let key = match l {
                IoLimit::ReadBytes => "rbps",
                IoLimit::WriteBytes => "wbps",
                IoLimit::ReadIops => "riops",
                IoLimit::WriteIops => "wiops",
            };
            vec![("io.max", format!("{d} {key}={}", lim(n, "max")))]
        }
        (Property::IoMax(d, l, n), false) => {
            let file = match l {
                IoLimit::ReadBytes => "blkio.throttle.read_bps_device",
                IoLimit::WriteBytes => "blkio.throttle.write_bps_device",
                IoLimit::ReadIops => "blkio.throttle.read_iops_device",
                IoLimit::WriteIops => "blkio.throttle.write_iops_device",
            };
            // v1 takes 0 for no limit.
            vec![(file, format!("{d} {}", lim(n, "0")))]
        }
        _ => vec![],
    }
}

/// A blkio weight (10 to 1000) on cgroup2's io.weight scale (1 to 10000), as runc maps it.
fn blkio_to_io(w: u64) -> u64 {
    1 + (w.clamp(10, 1000) - 10) * 9999 / 990
}

/// Write `props` into the container's cgroups: the level above its processes, before they
/// run anything of their own. `cgroups` are those we could make (writable hierarchies): a
/// property whose controller none of them has is an error naming both, but for the
/// defaults (the task limit, skipped; nspawn's device policy: returns the notice to give).
pub fn apply(props: &[Property], cgroups: &[Cgroup]) -> Result<Option<String>> {
    let v2 = cgroups.iter().find(|c| c.v2);
    let v2_controllers = v2
        .and_then(|c| std::fs::read_to_string(c.dir.join("cgroup.controllers")).ok())
        .unwrap_or_default();
    // v1 takes memory+swap only above the memory limit: the memory limit goes first. The
    // device properties act together, as one policy.
    let (devices, mut ordered): (Vec<&Property>, Vec<&Property>) = props.iter().partition(|p| {
        matches!(
            p,
            Property::DevicePolicy(_) | Property::DeviceAllow(_) | Property::DefaultDevices(_)
        )
    });
    ordered.sort_by_key(|p| !matches!(p, Property::MemoryMax(_)));
    // The default task limit yields to one given.
    if ordered.iter().any(|p| matches!(p, Property::TasksMax(_))) {
        ordered.retain(|p| !matches!(p, Property::DefaultTasksMax(_)));
    }
    // v1 refuses a memory limit above memory+swap's: lift that first when both change (an
    // update that raises them both), the final value follows.
    if ordered
        .iter()
        .any(|p| matches!(p, Property::MemorySwapMax(_)))
    {
        if let Some(cg) = cgroups
            .iter()
            .find(|c| !c.v2 && c.options.split(',').any(|o| o == "memory"))
        {
            let _ = std::fs::write(cg.dir.join("memory.memsw.limit_in_bytes"), "-1");
        }
    }
    for &p in &ordered {
        let Some(cg) = target(p, cgroups, &v2_controllers) else {
            if matches!(p, Property::DefaultTasksMax(_)) {
                // A default, not asked for: where no pids controller reaches the container
                // (cgroup2 below a cgroup with processes, a read-only cgroupfs), it goes
                // without.
                continue;
            }
            return Err(Error::setup(format!(
                "{}: no {} controller is writable here",
                label(p),
                controller(p)
            )));
        };
        write_files(p, cg, &ordered)?;
    }
    let required = (devices.iter()).any(|p| !matches!(p, Property::DefaultDevices(_)));
    match crate::devices::rules(&devices) {
        Some(rules) => crate::devices::apply(&rules, cgroups, required),
        None => Ok(None),
    }
}

/// The container's cgroup that takes `p`: cgroup2's where it has the controller (with
/// `v2_controllers`, or once enabled down to it), else the v1 hierarchy's that has it.
fn target<'a>(p: &Property, cgroups: &'a [Cgroup], v2_controllers: &str) -> Option<&'a Cgroup> {
    let ctl = controller(p);
    let v1_name = if ctl == "io" { "blkio" } else { ctl };
    let v2 = cgroups.iter().find(|c| c.v2);
    // A controller an ancestor has but does not pass down (hugetlb here, on a hybrid
    // host; any of them below a level ns-oci made for a cgroupsPath on a pure cgroup2
    // host, whose subtree_control starts empty): made available down to the container,
    // as runc does. Not where v1 has it: then no cgroup2 level has it to pass on.
    let v2_has = |ctl: &str| {
        v2_controllers.split_whitespace().any(|n| n == ctl)
            || v2.is_some_and(|c| crate::cgroups::enable_v2_controller(&c.dir, ctl))
    };
    match v2 {
        Some(c) if matches!(p, Property::Unified(..)) => Some(c),
        Some(c) if v2_has(ctl) => Some(c),
        _ => cgroups
            .iter()
            .find(|c| !c.v2 && c.options.split(',').any(|o| o == v1_name)),
    }
}

/// Write `p`'s files into `cg` (`all`: every property, for those that depend on others).
fn write_files(p: &Property, cg: &Cgroup, all: &[&Property]) -> Result<()> {
    for (file, value) in writes(p, cg.v2, all)? {
        let path = cg.dir.join(&file);
        if !path.exists() {
            // E.g. blkio.weight without the BFQ/CFQ scheduler, memsw without swap accounting.
            let ctl = controller(p);
            return Err(Error::setup(format!(
                "{}: this host's {} controller has no {file}",
                label(p),
                if cg.v2 || ctl != "io" { ctl } else { "blkio" }
            )));
        }
        std::fs::write(&path, &value)
            .ctx(|| format!("{}: cannot write {value} to {}", label(p), path.display()))?;
    }
    Ok(())
}

/// How many processes the OOM killer killed in the container's memory cgroup: cgroup2's
/// memory.events counts its whole subtree; v1's memory.oom_control counts the cgroup of the
/// process killed only, so every cgroup below the container's level is read too.
pub fn oom_kills(cgroups: &[Cgroup]) -> u64 {
    let count = |file: PathBuf| {
        std::fs::read_to_string(file).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
    };
    fn below(dir: &Path, each: &dyn Fn(&Path) -> u64) -> u64 {
        let subdirs = std::fs::read_dir(dir).into_iter().flatten().flatten();
        each(dir)
            + subdirs
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| below(&e.path(), each))
                .sum::<u64>()
    }
    cgroups
        .iter()
        .map(|c| {
            if c.v2 {
                count(c.dir.join("memory.events")).unwrap_or(0)
            } else if c.options.split(',').any(|o| o == "memory") {
                below(&c.dir, &|d| {
                    count(d.join("memory.oom_control")).unwrap_or(0)
                })
            } else {
                0
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemd_values() {
        assert_eq!(
            parse("MemoryMax=64M").unwrap(),
            Property::MemoryMax(Some(64 << 20))
        );
        assert_eq!(
            parse("MemoryMax=infinity").unwrap(),
            Property::MemoryMax(None)
        );
        assert_eq!(parse("TasksMax=20").unwrap(), Property::TasksMax(Some(20)));
        assert_eq!(
            parse("DeviceAllow=/dev/null r").unwrap(),
            Property::DeviceAllow("c 1:3 r".into())
        );
        assert_eq!(parse("CPUQuota=50%").unwrap(), Property::CpuQuota(50));
        assert_eq!(
            parse("AllowedCPUs=0-1 3").unwrap(),
            Property::AllowedCpus("0-1,3".into())
        );
        for bad in [
            "MemoryMax=lots",
            "CPUQuota=50",
            "CPUWeight=0",
            "CPUShares=1",
            "AllowedCPUs=3-1",
            "Bogus=1",
            "MemoryMax",
            "DevicePolicy=open",
            "DeviceAllow=/etc/passwd",
            "DeviceAllow=/dev/null x",
            "DeviceAllow=char-nosuchdriver",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(
                e.msg.starts_with(&format!("--property={bad}: ")),
                "{}",
                e.msg
            );
        }
    }

    #[test]
    fn v1_and_v2_files() {
        let all = [
            Property::MemoryMax(Some(100)),
            Property::MemorySwapMax(Some(50)),
        ];
        assert_eq!(
            fixed_writes(&all[1], false, &[&all[0], &all[1]]).unwrap(),
            vec![("memory.memsw.limit_in_bytes", "150".to_string())]
        );
        assert_eq!(
            fixed_writes(&Property::CpuWeight(100), false, &[]).unwrap(),
            vec![("cpu.shares", "1024".to_string())]
        );
        assert_eq!(
            fixed_writes(&Property::CpuQuota(50), true, &[]).unwrap(),
            vec![("cpu.max", "50000 100000".to_string())]
        );
        assert!(writes(&Property::MemoryHigh(None), false, &[]).is_err());
        assert_eq!(
            writes(&Property::HugetlbMax("2MB".into(), 0), true, &[]).unwrap(),
            vec![("hugetlb.2MB.max".to_string(), "0".to_string())]
        );
        assert_eq!(
            fixed_writes(&parse("MemoryLow=32M").unwrap(), false, &[]).unwrap(),
            vec![("memory.soft_limit_in_bytes", "33554432".to_string())]
        );
        assert_eq!(
            fixed_writes(&Property::MemoryLow(None), true, &[]).unwrap(),
            vec![("memory.low", "max".to_string())]
        );
        assert_eq!(
            fixed_writes(&parse("BlockIOWeight=500").unwrap(), false, &[]).unwrap(),
            vec![("blkio.weight", "500".to_string())]
        );
        let dev = Property::BlkioDeviceWeight("8:0".into(), 1000);
        assert_eq!(
            fixed_writes(&dev, true, &[]).unwrap(),
            vec![("io.weight", "8:0 10000".to_string())]
        );
        assert_eq!(blkio_to_io(10), 1);
        assert!(parse("BlockIOWeight=5").is_err());
        let oom_group = Property::Unified("memory.oom.group".into(), "1".into());
        assert!(writes(&oom_group, false, &[]).is_err());
    }
}
