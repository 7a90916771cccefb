//! User namespaces: nspawn's `--private-users` values, picking a free id range, and the maps.
//! ns-enter creates the namespace first and asks the monitor, still in the host's namespaces,
//! to write the maps (SYNC-1): only a process outside may map more than its own id.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::FileStat;
use ns_core::state::{IdBase, IdMaps, IdRange, Ownership, UserNs};
use ns_core::{Context, Error, Result};

/// nspawn's range for `pick`: 64K-aligned bases from 0x80000 to 0x6FFF0000.
pub const PICK_FIRST: u32 = 0x0008_0000;
pub const PICK_LAST: u32 = 0x6FFF_0000;
pub const RANGE: u32 = 0x10000;

/// `--private-users=VALUE` (`yes` needs the root directory, whose owner becomes the base) and
/// `--private-users-ownership=`; `-U` is `pick` with ownership `auto`.
pub fn parse(value: &str, ownership: Option<&str>, root: &Path) -> Result<Option<UserNs>> {
    let ownership_opt = ownership;
    const OPT: &str = "--private-users";
    // nspawn: a value made of digits is a UID, not a boolean (`0` is the identity base).
    let boolean = if value.starts_with(|c: char| c.is_ascii_digit()) {
        None
    } else {
        ns_core::parse_boolean(value)
    };
    let (base, count) = match (boolean, value) {
        (Some(false), _) => return Ok(None),
        (Some(true), _) => {
            use std::os::unix::fs::MetadataExt;
            let owner = std::fs::metadata(root)
                .ctx(|| format!("cannot stat {}", root.display()))?
                .uid();
            (IdBase::Fixed(owner), RANGE)
        }
        (None, "pick") => (IdBase::Pick, RANGE),
        (None, "identity") => (IdBase::Fixed(0), RANGE),
        (None, v) => {
            let (b, c) = v.split_once(':').unwrap_or((v, "65536"));
            let bad = |why: &str| Error::invalid(OPT, v, why);
            let b: u32 = b
                .parse()
                .map_err(|_| bad("not no, yes, pick, identity or UID[:COUNT]"))?;
            let c: u32 = c.parse().map_err(|_| bad("the count is not a number"))?;
            if c == 0 {
                return Err(bad("the count must not be 0"));
            }
            (IdBase::Fixed(b), c)
        }
    };
    // The last valid id is 4294967294: base + count may be 2^32 - 1 at most (also for `yes`,
    // whose base is the owner of the root directory).
    if matches!(base, IdBase::Fixed(b) if b.checked_add(count).is_none()) {
        return Err(Error::invalid(
            OPT,
            value,
            "the range goes past the largest id",
        ));
    }
    let ownership = match ownership.unwrap_or(if value == "pick" { "auto" } else { "off" }) {
        "off" => Ownership::Off,
        "map" => Ownership::Map,
        "auto" => Ownership::Auto,
        "chown" => Ownership::Chown,
        o => {
            return Err(Error::invalid(
                "--private-users-ownership",
                o,
                "not one of off, chown, map, auto",
            ))
        }
    };
    if ownership == Ownership::Chown
        && (count != RANGE || matches!(base, IdBase::Fixed(b) if b % RANGE != 0))
    {
        return Err(Error::invalid(
            "--private-users-ownership",
            "chown",
            "only for ranges starting at a multiple of 65536 with 65536 ids",
        ));
    }
    if ownership == Ownership::Chown && base == IdBase::Fixed(BUSY_BASE) {
        return Err(Error::invalid(
            "--private-users-ownership",
            "chown",
            &format!("the range at {BUSY_BASE} marks trees being shifted"),
        ));
    }
    if !ns_core::paths::host_root() {
        // Rootless: only our own ids (plus subordinate ranges) can be mapped, and only root
        // may idmap a file system: the tree we own is container root's as it is.
        if ownership_opt == Some("map") {
            return Err(Error::invalid(
                "--private-users-ownership",
                "map",
                "idmapped mounts need root",
            ));
        }
        return Ok(Some(UserNs {
            base: IdBase::Fixed(nix::unistd::geteuid().as_raw()),
            count: 1,
            ownership: Ownership::Off,
            rootless: true,
            maps: None,
        }));
    }
    Ok(Some(UserNs {
        base,
        count,
        ownership,
        rootless: false,
        maps: None,
    }))
}

/// nspawn's `pick` on a tree chowned into a range already (the owner of its top, 64K-aligned
/// and the same for its group): that range, whose ids its files have, so that a tree is
/// shifted once, not at every start. Only a range `pick` could have given (unlike nspawn,
/// which takes any: a tree owned by a host user whose uid is above 65535 would otherwise
/// map container root next to that user's id). Ownership `auto` is `off` there (nspawn
/// says `chown`, which finds nothing to shift); `map` is refused (an idmapped mount would
/// show the files as nobody's).
pub fn pick_shifted(u: UserNs, root: &Path) -> Result<UserNs> {
    use std::os::unix::fs::MetadataExt;
    if u.base != IdBase::Pick || u.rootless {
        return Ok(u);
    }
    let Ok(md) = std::fs::metadata(root) else {
        return Ok(u); // made later (--template): not shifted
    };
    let (uid_base, gid_base) = (md.uid() & !(RANGE - 1), md.gid() & !(RANGE - 1));
    let pickable = (PICK_FIRST..=PICK_LAST).contains(&uid_base) && !ids_in_use(uid_base, RANGE);
    if uid_base != gid_base || !pickable {
        return Ok(u);
    }
    let ownership = match u.ownership {
        Ownership::Map => {
            return Err(Error::invalid(
                "--private-users-ownership",
                "map",
                &format!(
                    "{} is chowned into the range at {uid_base}: an idmapped mount needs a tree owned by 0",
                    root.display()
                ),
            ))
        }
        Ownership::Auto => Ownership::Off,
        o => o,
    };
    Ok(UserNs {
        base: IdBase::Fixed(uid_base),
        ownership,
        ..u
    })
}

/// A held id range: one lock per 64K slot it touches (so that overlapping ranges exclude
/// each other, fixed or picked). Lock files are removed, while still held, when the range is
/// given back; a taker re-checks that it locked the file that is still there.
pub struct RangeLock {
    slots: Vec<(Flock<File>, PathBuf)>,
    pub base: u32,
}

impl Drop for RangeLock {
    fn drop(&mut self) {
        for (_, path) in &self.slots {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Whether a host user or group has an id in [base, base+count), or a subordinate range
/// (/etc/subuid, /etc/subgid: the ids of users' own user namespaces, rootless containers')
/// overlaps it: `pick` never gives container root a host user's ids, nor takes a tree's
/// range that whoever owns such ids could have chowned it into.
fn ids_in_use(base: u32, count: u32) -> bool {
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let (passwd, group) = (read("/etc/passwd"), read("/etc/group"));
    let (subuid, subgid) = (read("/etc/subuid"), read("/etc/subgid"));
    ids_in_use_in([&passwd, &group], [&subuid, &subgid], base, count)
}

/// [`ids_in_use`] of these files' texts: `users` as /etc/passwd and /etc/group (the id is
/// the third field), `subordinate` as /etc/subuid and /etc/subgid (NAME:START:COUNT).
fn ids_in_use_in(users: [&str; 2], subordinate: [&str; 2], base: u32, count: u32) -> bool {
    let (base, end) = (base as u64, base as u64 + count as u64);
    let field = |l: &str, n: usize| l.split(':').nth(n).and_then(|v| v.parse::<u64>().ok());
    let user = users
        .iter()
        .flat_map(|t| t.lines())
        .any(|l| field(l, 2).is_some_and(|id| id >= base && id < end));
    user || subordinate.iter().flat_map(|t| t.lines()).any(
        |l| matches!((field(l, 1), field(l, 2)), (Some(s), Some(c)) if s < end && base < s + c),
    )
}

/// Lock slot `slot` (a 64K-aligned base): None when someone holds it.
fn lock_slot(dir: &Path, slot: u32) -> Result<Option<(Flock<File>, PathBuf)>> {
    let path = dir.join(slot.to_string());
    Ok(ns_core::paths::lock_current(&path, FlockArg::LockExclusiveNonblock)?.map(|l| (l, path)))
}

/// Lock every slot of [base, base+count), all or none: None when one is held by another
/// container. On the way out (either), the lock files made so far are removed.
fn lock_range(dir: &Path, base: u32, count: u32) -> Result<Option<RangeLock>> {
    let first = base / RANGE;
    let last = ((base as u64 + count as u64 - 1) / RANGE as u64) as u32;
    let mut held = RangeLock {
        slots: Vec::new(),
        base,
    };
    for s in first..=last {
        // On every way out, `held` removes the files it made.
        match lock_slot(dir, s * RANGE).map_err(|e| {
            Error::setup(format!(
                "cannot lock the {} slots of {RANGE} ids this range spans ({})",
                last - first + 1,
                e.msg
            ))
        })? {
            Some(slot) => held.slots.push(slot),
            None => return Ok(None),
        }
    }
    Ok(Some(held))
}

/// Reserve a range: for `pick`, the first free 64K slot from a start derived from the machine
/// name; a fixed range is locked too, so that two containers never share ids by accident.
pub fn reserve(base: IdBase, count: u32, machine: &str) -> Result<RangeLock> {
    let lock_dir = ns_core::paths::runtime_subdir("uid")?;
    match base {
        IdBase::Fixed(b) => lock_range(&lock_dir, b, count)
            .map_err(|e| Error::invalid("--private-users", &format!("{b}:{count}"), &e.msg))?
            .ok_or_else(|| {
                Error::invalid(
                    "--private-users",
                    &format!("{b}:{count}"),
                    "this id range is used by another container",
                )
            }),
        IdBase::Pick => {
            let slots = (PICK_LAST - PICK_FIRST) / RANGE + 1;
            let h = machine.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
            let start = (h % slots as u64) as u32;
            for b in (0..slots)
                .map(|i| PICK_FIRST + ((start + i) % slots) * RANGE)
                .filter(|b| !ids_in_use(*b, count))
            {
                if let Some(r) = lock_range(&lock_dir, b, count)? {
                    return Ok(r);
                }
            }
            Err(Error::setup(
                "--private-users=pick: no free id range".into(),
            ))
        }
    }
}

/// The lines of an id map: container 0..count = host base..base+count, except the ids in
/// `extra` (container id, host id), which map one to one to their host ids.
pub fn map_lines(base: u32, count: u32, extra: &[(u32, u32)]) -> String {
    let mut extra = extra.to_vec();
    extra.sort();
    let mut out = String::new();
    let mut next = 0u32;
    for (cid, hid) in extra.iter().filter(|(c, _)| *c < count) {
        if *cid > next {
            out.push_str(&format!("{next} {} {}\n", base + next, cid - next));
        }
        out.push_str(&format!("{cid} {hid} 1\n"));
        next = cid + 1;
    }
    if next < count {
        out.push_str(&format!("{next} {} {}\n", base + next, count - next));
    }
    out
}

/// Write `pid`'s uid and gid maps: container 0..count = host base..base+count, with the
/// `--bind-user` ids mapped to their host users.
pub fn write_maps(
    pid: i32,
    base: u32,
    count: u32,
    users: &[ns_core::state::BoundUser],
) -> Result<()> {
    let uids: Vec<(u32, u32)> = users.iter().map(|u| (u.uid, u.host_uid)).collect();
    let gids: Vec<(u32, u32)> = users.iter().map(|u| (u.gid, u.host_gid)).collect();
    for (f, extra) in [("uid_map", uids), ("gid_map", gids)] {
        let p = format!("/proc/{pid}/{f}");
        std::fs::write(&p, map_lines(base, count, &extra)).ctx(|| format!("cannot write {p}"))?;
    }
    Ok(())
}

/// nspawn's first container id for bound users.
pub const BIND_USER_FIRST: u32 = 60514;

/// `--bind-user=NAME`: the host user's record, with container ids from 60514 up.
pub fn bind_users(names: &[String], userns: bool) -> Result<Vec<ns_core::state::BoundUser>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    if !userns {
        return Err(Error::invalid(
            "--bind-user",
            &names[0],
            "needs --private-users (or -U)",
        ));
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ctx(|| "cannot read /etc/passwd".into())?;
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let f: Vec<&str> = passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 7 && f[0] == name)
                .ok_or_else(|| Error::invalid("--bind-user", name, "no such user on the host"))?;
            let host_uid: u32 = f[2]
                .parse()
                .map_err(|_| Error::invalid("--bind-user", name, "bad uid in /etc/passwd"))?;
            let host_gid: u32 = f[3]
                .parse()
                .map_err(|_| Error::invalid("--bind-user", name, "bad gid in /etc/passwd"))?;
            if host_uid == 0 {
                return Err(Error::invalid("--bind-user", name, "root cannot be bound"));
            }
            let id = BIND_USER_FIRST + i as u32;
            Ok(ns_core::state::BoundUser {
                name: name.clone(),
                host_uid,
                host_gid,
                uid: id,
                gid: id,
                home: PathBuf::from(f[5]),
                shell: f[6].to_string(),
                real_name: f[4].split(',').next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// A subordinate range of `name` (or `uid`) in /etc/subuid or /etc/subgid: (start, count).
fn subordinate(file: &str, name: &str, id: u32) -> Option<(u32, u32)> {
    std::fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() == 3 && (f[0] == name || f[0] == id.to_string()) {
            Some((f[1].parse().ok()?, f[2].parse().ok()?))
        } else {
            None
        }
    })
}

/// Rootless maps for `pid`: container 0 is us; with newuidmap/newgidmap and subordinate
/// ranges, container 1..=65535 come from those ranges; otherwise only 0 is mapped (and
/// setgroups is denied, as the kernel requires).
pub fn write_rootless_maps(pid: i32) -> Result<()> {
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let name = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
        })
        .unwrap_or_default();
    let tools = (
        ns_core::exec::locate_in_path("newuidmap"),
        ns_core::exec::locate_in_path("newgidmap"),
    );
    let subs = (
        subordinate("/etc/subuid", &name, uid),
        // newgidmap looks the caller up by user name or uid in /etc/subgid, too.
        subordinate("/etc/subgid", &name, uid),
    );
    if let ((Some(nu), Some(ng)), (Some((us, uc)), Some((gs, gc)))) = (tools, subs) {
        let n = uc.min(gc).min(65535);
        let range = |own: u32, start: u32| {
            [
                IdRange {
                    container: 0,
                    host: own,
                    size: 1,
                },
                IdRange {
                    container: 1,
                    host: start,
                    size: n,
                },
            ]
        };
        run_map_tool(&nu, pid, &range(uid, us))?;
        return run_map_tool(&ng, pid, &range(gid, gs));
    }
    write_own_maps(pid, uid, gid)
}

/// newuidmap or newgidmap (set-id tools that check /etc/subuid, /etc/subgid): `pid`'s map.
/// A refusal is one line: the tool, the ranges asked for and the tool's own reason.
fn run_map_tool(tool: &Path, pid: i32, ranges: &[IdRange]) -> Result<()> {
    let mut args = vec![pid.to_string()];
    for r in ranges {
        args.extend([r.container, r.host, r.size].map(|n| n.to_string()));
    }
    let out = std::process::Command::new(tool)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .ctx(|| format!("cannot run {}", tool.display()))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let why = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(Error::setup(format!(
            "{} {} failed ({}): {}",
            tool.display(),
            args[1..].join(" "),
            out.status,
            why.trim()
        )));
    }
    Ok(())
}

/// Without root or the tools: `pid`'s container root is our own uid and gid, nothing else
/// (setgroups denied first, as the kernel requires of an unprivileged gid map).
fn write_own_maps(pid: i32, uid: u32, gid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/setgroups"), "deny")
        .ctx(|| "cannot write setgroups".into())?;
    std::fs::write(format!("/proc/{pid}/uid_map"), format!("0 {uid} 1\n"))
        .ctx(|| "cannot write uid_map".into())?;
    std::fs::write(format!("/proc/{pid}/gid_map"), format!("0 {gid} 1\n"))
        .ctx(|| "cannot write gid_map".into())
}

/// `pid`'s maps exactly as given (ns-oci: config.json's, checked when planned). Root writes
/// them; another user maps only its own ids by itself, anything more through newuidmap and
/// newgidmap (which check /etc/subuid and /etc/subgid), as runc does.
pub fn write_id_maps(pid: i32, maps: &IdMaps) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        for (f, ranges) in [("uid_map", &maps.uid), ("gid_map", &maps.gid)] {
            let p = format!("/proc/{pid}/{f}");
            let lines: String = ranges.iter().map(IdRange::line).collect();
            std::fs::write(&p, lines).ctx(|| format!("cannot write {p}"))?;
        }
        return Ok(());
    }
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let own = |v: &[IdRange], id: u32| matches!(v, [r] if r.size == 1 && r.host == id);
    if own(&maps.uid, uid) && own(&maps.gid, gid) {
        return write_own_maps(pid, uid, gid);
    }
    match (
        ns_core::exec::locate_in_path("newuidmap"),
        ns_core::exec::locate_in_path("newgidmap"),
    ) {
        (Some(nu), Some(ng)) => {
            run_map_tool(&nu, pid, &maps.uid)?;
            run_map_tool(&ng, pid, &maps.gid)
        }
        _ => Err(Error::setup(
            "linux.uidMappings/gidMappings: without root, ids other than our own are mapped by newuidmap and newgidmap, which are not installed (package uidmap)".into(),
        )),
    }
}

/// What the top directory of a tree being shifted is owned by while the walk runs
/// (nspawn's UID_BUSY_BASE, plus the low 16 bits): a shift cut short, even by SIGKILL, is
/// recognised and done again by the next start. No range may start there.
pub const BUSY_BASE: u32 = 0xFFFE_0000;

/// `chown` ownership: shift the tree's ids on disk into the range at `to_base`, files,
/// directories and links alike, as nspawn does: every id keeps its low 16 bits and takes
/// the range's high ones, without crossing into other file systems. The tree is opened
/// without following a symlink on the way, and the walk is fd-relative (openat O_NOFOLLOW
/// from directory fds we hold, chown through O_PATH fds of the very inodes looked at), so
/// a directory swapped for a symlink mid-walk can only make it fail. The top is marked first and shifted last; a shift that fails half-way gives the
/// top its owner back (as nspawn: the tree stays half shifted until a chown start finishes
/// it), and one cut short (SIGKILL) stays marked and is redone by the next start.
pub fn shift_tree(root: &Path, to_base: u32) -> Result<()> {
    // No symlink followed on the way either (the plan named the tree resolved): one swapped
    // in since would shift the tree of that name elsewhere.
    let way = crate::hostpaths::open_host(root, "shift")?;
    let top =
        ns_core::walk::reopen_dir(way.as_fd()).ctx(|| format!("cannot open {}", root.display()))?;
    let st = nix::sys::stat::fstat(&top).ctx(|| format!("cannot stat {}", root.display()))?;
    let from_base = st.st_uid & !(RANGE - 1);
    if from_base == to_base {
        return Ok(());
    }
    if to_base == BUSY_BASE || to_base & (RANGE - 1) != 0 {
        return Err(Error::invalid(
            "--private-users",
            &to_base.to_string(),
            "cannot be the base of a chown shift",
        ));
    }
    let _headroom = ns_core::walk::FdHeadroom::raise();
    if from_base != BUSY_BASE {
        let busy = |id: u32| BUSY_BASE | (id & (RANGE - 1));
        nix::unistd::fchown(
            &top,
            Some(nix::unistd::Uid::from_raw(busy(st.st_uid))),
            Some(nix::unistd::Gid::from_raw(busy(st.st_gid))),
        )
        .ctx(|| format!("cannot chown {}", root.display()))?;
    }
    let r = shift_walk(top.as_fd(), root, to_base);
    if r.is_err() && from_base != BUSY_BASE {
        // As nspawn: the top gets its owner back and nothing is walked back. A walk back
        // would give every id, of whatever range, the low 16 bits in `from_base`'s range: on
        // a tree of range 0, a set-uid file of another range (an earlier -U container's
        // root wrote it) would become a set-uid root file. The next chown start finishes
        // the shift (every id is mapped, those shifted already too).
        let _ = nix::unistd::fchown(
            &top,
            Some(nix::unistd::Uid::from_raw(st.st_uid)),
            Some(nix::unistd::Gid::from_raw(st.st_gid)),
        );
    }
    r
}

/// Give the inode `fd` is open on (stat `st`) the ids of the range at `to`; chown clears
/// set-id bits, which are given back.
fn shift_one(fd: BorrowedFd<'_>, st: &FileStat, to: u32, what: &dyn Fn() -> String) -> Result<()> {
    use nix::sys::stat::SFlag;
    let map = |id: u32| to | (id & (RANGE - 1));
    let (uid, gid) = (map(st.st_uid), map(st.st_gid));
    if (uid, gid) == (st.st_uid, st.st_gid) {
        return Ok(());
    }
    // An O_PATH fd of a file or link, or a directory's fd: either way that inode.
    nix::unistd::fchownat(
        fd,
        "",
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_EMPTY_PATH | nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ctx(|| format!("cannot chown {}", what()))?;
    if ns_core::walk::kind(st) != SFlag::S_IFLNK && st.st_mode & 0o6000 != 0 {
        // fchmod does not take O_PATH fds; its /proc/self/fd link is that inode.
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            format!("/proc/self/fd/{}", fd.as_raw_fd()),
            std::fs::Permissions::from_mode(st.st_mode & 0o7777),
        )
        .ctx(|| format!("cannot chmod {}", what()))?;
    }
    Ok(())
}

/// A directory being shifted: its fd and stat (it is shifted once its entries are), the
/// names left, its path for messages.
struct ShiftLevel {
    fd: OwnedFd,
    st: FileStat,
    left: Vec<OsString>,
    path: PathBuf,
}

/// A path for an error message, made only when one is.
fn at(p: &Path) -> impl Fn() -> String + '_ {
    move || p.display().to_string()
}

/// Files with more than one link met by a shift, by inode: the links met, the link count
/// last seen, the first link's path. One is shifted when its last link is met; one left at
/// the end has links outside the tree, whose owner a shift would change too (nspawn's
/// shift does): an error. Not on an overlayfs (a guest's root): its chown copies a lower
/// file up, whose links elsewhere in the lower layer it shows but never changes.
struct HardLinks {
    seen: std::collections::HashMap<u64, (u64, u64, PathBuf)>,
    overlay: bool,
}

impl HardLinks {
    /// For the tree whose top `top` is open on.
    fn of(top: BorrowedFd<'_>) -> HardLinks {
        use nix::sys::statfs::{fstatfs, OVERLAYFS_SUPER_MAGIC};
        HardLinks {
            seen: Default::default(),
            overlay: fstatfs(top).is_ok_and(|f| f.filesystem_type() == OVERLAYFS_SUPER_MAGIC),
        }
    }

    /// Whether the inode of `st` (met at `path`) is to be shifted now: a single link, or
    /// the last of its links to be met.
    fn last(&mut self, st: &FileStat, path: &Path) -> bool {
        if st.st_nlink <= 1 || self.overlay {
            return true;
        }
        let e = self
            .seen
            .entry(st.st_ino)
            .or_insert((0, 0, path.to_path_buf()));
        e.0 += 1;
        e.1 = st.st_nlink;
        if e.0 < e.1 {
            return false;
        }
        self.seen.remove(&st.st_ino);
        true
    }

    /// The error for a file of the tree `root` whose links were not all met in it (the
    /// first by path, when there are several).
    fn check(&self, root: &Path) -> Result<()> {
        let Some((seen, nlink, path)) = self.seen.values().min_by(|a, b| a.2.cmp(&b.2)) else {
            return Ok(());
        };
        Err(Error::setup(format!(
            "cannot shift {}: {} has hard links outside the tree ({seen} of {nlink} inside): \
             shifting it would change the owner of those too",
            root.display(),
            path.display()
        )))
    }
}

/// Shift everything below the directory `top` is open on, then `top` itself.
fn shift_walk(top: BorrowedFd<'_>, root: &Path, to: u32) -> Result<()> {
    use ns_core::walk;
    let st = nix::sys::stat::fstat(top).ctx(|| format!("cannot stat {}", root.display()))?;
    let dev = st.st_dev;
    let read = || format!("cannot read {}", root.display());
    let mut stack = vec![ShiftLevel {
        fd: walk::reopen_dir(top).ctx(read)?,
        st,
        left: walk::names(top).ctx(read)?,
        path: root.to_path_buf(),
    }];
    let mut links = HardLinks::of(top);
    let progress = ns_core::progress::Progress::new(
        format!("-U: shifting the ownership of {}", root.display()),
        None,
    );
    let mut entries = 0u64;
    loop {
        let depth = stack.len();
        let Some(level) = stack.last_mut() else {
            return links.check(root);
        };
        progress.update_entries(entries, None);
        let Some(name) = level.left.pop() else {
            // Its entries are done: the directory itself (the top comes last).
            let done = stack.pop().expect("not empty");
            shift_one(done.fd.as_fd(), &done.st, to, &at(&done.path))?;
            continue;
        };
        let path = level.path.join(&name);
        entries += 1;
        let what = at(&path);
        let st = nix::sys::stat::fstatat(
            level.fd.as_fd(),
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ctx(|| format!("cannot stat {}", what()))?;
        if st.st_dev != dev {
            continue; // a mount point: another file system
        }
        if walk::is_dir(&st) {
            if depth >= walk::MAX_DEPTH {
                return Err(Error::setup(format!(
                    "cannot shift {}: more than {} directories deep",
                    root.display(),
                    walk::MAX_DEPTH
                )));
            }
            let fd = walk::open_dir_at(level.fd.as_fd(), &name)
                .ctx(|| format!("cannot open {}", what()))?;
            let st = nix::sys::stat::fstat(&fd).ctx(|| format!("cannot stat {}", what()))?;
            let left = walk::names(fd.as_fd()).ctx(|| format!("cannot read {}", what()))?;
            if st.st_dev == dev {
                let path = path.clone();
                stack.push(ShiftLevel { fd, st, left, path });
            }
        } else {
            let fd = walk::open_entry_at(level.fd.as_fd(), &name)
                .ctx(|| format!("cannot open {}", what()))?;
            let st = nix::sys::stat::fstat(&fd).ctx(|| format!("cannot stat {}", what()))?;
            if links.last(&st, &path) {
                shift_one(fd.as_fd(), &st, to, &what)?;
            }
        }
    }
}

/// A user namespace that maps only `uid`/`gid` (as ids inside it) to host id `base`: the id
/// mapping of a `rootidmap` bind, where the source's owner is container root and every other
/// id is nobody. A short-lived child creates it; we keep an fd and let the child go.
pub fn mapping_userns(uid: u32, gid: u32, base: u32) -> Result<File> {
    use ns_core::sys::{fork, Forked};
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(|| "cannot create a pipe".into())?;
    // The child's end: EOF once we are done with it, or gone (SIGKILL: a child that only
    // paused outlived a killed monitor, forever).
    let (done_r, done_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(|| "cannot create a pipe".into())?;
    match fork().ctx(|| "cannot fork".into())? {
        Forked::Child => {
            drop(ready_r);
            drop(done_w);
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = nix::unistd::write(&ready_w, if ok { b"1" } else { b"0" });
            // Wait until the parent holds the namespace, or is gone.
            let mut b = [0u8; 1];
            while let Err(nix::errno::Errno::EINTR) = nix::unistd::read(&done_r, &mut b) {}
            std::process::exit(0)
        }
        Forked::Parent(child) => {
            drop(ready_w);
            drop(done_r);
            let mut b = [0u8; 1];
            let r = nix::unistd::read(&ready_r, &mut b);
            let result = if r == Ok(1) && b[0] == b'1' {
                std::fs::write(
                    format!("/proc/{child}/uid_map"),
                    format!("{uid} {base} 1\n"),
                )
                .and_then(|_| {
                    std::fs::write(
                        format!("/proc/{child}/gid_map"),
                        format!("{gid} {base} 1\n"),
                    )
                })
                .and_then(|_| File::open(format!("/proc/{child}/ns/user")))
                .ctx(|| "cannot set up the rootidmap mapping".into())
            } else {
                Err(Error::setup(
                    "cannot create the rootidmap user namespace".into(),
                ))
            };
            drop(done_w);
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_like_nspawn() {
        let r = Path::new("/");
        assert_eq!(parse("no", None, r).unwrap(), None);
        assert_eq!(parse("0", None, r).unwrap().unwrap().base, IdBase::Fixed(0));
        let u = parse("pick", None, r).unwrap().unwrap();
        assert_eq!(
            (u.base, u.count, u.ownership),
            (IdBase::Pick, 65536, Ownership::Auto)
        );
        let u = parse("pick", Some("map"), r).unwrap().unwrap();
        assert_eq!(u.ownership, Ownership::Map);
        let u = parse("identity", None, r).unwrap().unwrap();
        assert_eq!((u.base, u.ownership), (IdBase::Fixed(0), Ownership::Off));
        let u = parse("1048576:1000", Some("map"), r).unwrap().unwrap();
        assert_eq!((u.base, u.count), (IdBase::Fixed(1048576), 1000));
        assert_eq!(
            parse("yes", None, r).unwrap().unwrap().base,
            IdBase::Fixed(0)
        );
        for bad in ["bogus", "1:0", "4294967295:2", "x:1"] {
            assert!(
                parse(bad, None, r)
                    .unwrap_err()
                    .msg
                    .starts_with("--private-users="),
                "{bad}"
            );
        }
        assert_eq!(
            parse("pick", Some("chown"), r).unwrap().unwrap().ownership,
            Ownership::Chown
        );
        assert!(parse("1048577", Some("chown"), r).is_err());
        assert!(parse(&BUSY_BASE.to_string(), Some("chown"), r).is_err());
        assert!(parse("1048576:1000", Some("chown"), r).is_err());
        assert!(parse("pick", Some("bogus"), r).is_err());
    }

    #[test]
    fn pick_takes_a_shifted_trees_range_only_where_pick_could_have_given_it() {
        let d = std::env::temp_dir().join(format!("ns-pick-shifted-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let u = |o: &str| parse("pick", Some(o), &d).unwrap().unwrap();
        let at = |uid: u32, gid: u32, o: &str| {
            std::os::unix::fs::chown(&d, Some(uid), Some(gid)).unwrap();
            pick_shifted(u(o), &d).map(|u| (u.base, u.ownership))
        };
        let shifted = PICK_FIRST + 7 * RANGE;
        let fixed = Ok((IdBase::Fixed(shifted), Ownership::Off));
        assert_eq!(at(shifted + 5, shifted + 9, "auto"), fixed);
        let chown = Ok((IdBase::Fixed(shifted), Ownership::Chown));
        assert_eq!(at(shifted, shifted, "chown"), chown);
        assert!(at(shifted, shifted, "map").is_err());
        // Not shifted by us: owned by 0, below the pick range, or its group elsewhere.
        let pick = Ok((IdBase::Pick, Ownership::Auto));
        for (uid, gid) in [
            (0, 0),
            (100000, 100000),
            (shifted, 0),
            (BUSY_BASE, BUSY_BASE),
        ] {
            assert_eq!(at(uid, gid, "auto"), pick, "{uid}:{gid}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn ranges_of_host_users_and_their_subordinate_ids_are_in_use() {
        let passwd = "root:x:0:0::/root:/bin/sh\nbig:x:720901:100::/:/bin/sh\n";
        let group = "root:x:0:\n";
        let subuid = "alice:589824:65536\nbob:100000:65536\n";
        let subgid = "carol:720000:10\n";
        let in_use = |base| ids_in_use_in([passwd, group], [subuid, subgid], base, RANGE);
        assert!(
            !in_use(0x80000),
            "alice's subordinate ids start in the next slot"
        );
        assert!(in_use(0x90000), "alice's subordinate uids");
        assert!(in_use(0xA0000), "carol's subordinate gids");
        assert!(in_use(0xB0000), "a user's id");
        assert!(!in_use(0xC0000));
        // One past the end of a range is free; its last id is not.
        assert!(!ids_in_use_in(["", ""], ["a:10:10\n", ""], 20, 5));
        assert!(ids_in_use_in(["", ""], ["a:10:10\n", ""], 19, 5));
    }

    #[test]
    fn picked_ranges_are_aligned_and_disjoint() {
        let a = reserve(IdBase::Pick, RANGE, "same-name").unwrap();
        let b = reserve(IdBase::Pick, RANGE, "same-name").unwrap();
        assert_ne!(a.base, b.base);
        for r in [&a, &b] {
            assert_eq!(r.base % RANGE, 0);
            assert!((PICK_FIRST..=PICK_LAST).contains(&r.base));
        }
        assert!(reserve(IdBase::Fixed(a.base), RANGE, "x").is_err());
    }

    #[test]
    fn maps_with_bound_users() {
        assert_eq!(map_lines(100000, 65536, &[]), "0 100000 65536\n");
        assert_eq!(
            map_lines(100000, 65536, &[(60514, 1000)]),
            "0 100000 60514\n60514 1000 1\n60515 160515 5021\n"
        );
        assert_eq!(map_lines(0, 3, &[(1, 7), (0, 5)]), "0 5 1\n1 7 1\n2 2 1\n");
    }
}

#[cfg(test)]
mod shift_tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn owner(p: &Path) -> (u32, u32) {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid())
    }

    fn lchown(p: &Path, id: u32) {
        std::os::unix::fs::lchown(p, Some(id), Some(id)).unwrap();
    }

    #[test]
    fn shift_and_back() {
        let d = std::env::temp_dir().join(format!("ns-shift-{}", std::process::id()));
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("a", d.join("l")).unwrap();
        lchown(&d.join("a/b/f"), 1000);
        std::fs::write(d.join("suid"), "x").unwrap();
        std::fs::set_permissions(
            d.join("suid"),
            std::os::unix::fs::PermissionsExt::from_mode(0o4755),
        )
        .unwrap();
        shift_tree(&d, 0x100000).unwrap();
        assert_eq!(owner(&d), (0x100000, 0x100000));
        assert_eq!(owner(&d.join("a/b/f")), (0x100000 + 1000, 0x100000 + 1000));
        assert_eq!(owner(&d.join("l")), (0x100000, 0x100000));
        let mode = std::fs::metadata(d.join("suid")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o4755, "set-uid bit lost");
        shift_tree(&d, 0).unwrap();
        assert_eq!(owner(&d.join("a/b/f")), (1000, 1000));
        assert_eq!(owner(&d), (0, 0));
        // A shift cut short leaves the top marked busy: the next one is done in full.
        lchown(&d, BUSY_BASE);
        lchown(&d.join("a/b/f"), 0x100000 + 1000);
        shift_tree(&d, 0).unwrap();
        assert_eq!(owner(&d), (0, 0));
        assert_eq!(owner(&d.join("a/b/f")), (1000, 1000));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_with_hard_links_outside_the_tree_is_not_shifted() {
        let base = std::env::temp_dir().join(format!("ns-shift-links-{}", std::process::id()));
        let d = base.join("t");
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(base.join("host-file"), "x").unwrap();
        std::fs::hard_link(base.join("host-file"), d.join("etc/linked")).unwrap();
        // Hard links inside the tree only: shifted.
        std::fs::write(d.join("etc/a"), "x").unwrap();
        std::fs::hard_link(d.join("etc/a"), d.join("b")).unwrap();
        let e = shift_tree(&d, 0x100000).unwrap_err();
        assert_eq!(
            e.msg,
            format!(
                "cannot shift {}: {} has hard links outside the tree (1 of 2 inside): shifting it would change the owner of those too",
                d.display(),
                d.join("etc/linked").display()
            )
        );
        assert_eq!(owner(&base.join("host-file")), (0, 0));
        assert_eq!(owner(&d), (0, 0), "the top gets its owner back");
        assert_eq!(owner(&d.join("b")), (0x100000, 0x100000));
        // With the outside link gone, the next shift finishes.
        std::fs::remove_file(base.join("host-file")).unwrap();
        shift_tree(&d, 0x100000).unwrap();
        assert_eq!(owner(&d.join("etc/linked")), (0x100000, 0x100000));
        assert_eq!(owner(&d), (0x100000, 0x100000));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_symlink_on_the_way_to_the_tree_is_not_followed() {
        // The plan names the tree resolved; a directory on the way swapped for a symlink
        // since (by whoever owns it) would make the shift chown the tree of that name
        // elsewhere: the victim below.
        let base = std::env::temp_dir().join(format!("ns-shift-way-{}", std::process::id()));
        let victim = base.join("elsewhere/t");
        std::fs::create_dir_all(victim.join("etc")).unwrap();
        std::fs::write(victim.join("etc/f"), "x").unwrap();
        std::os::unix::fs::symlink(base.join("elsewhere"), base.join("way")).unwrap();
        let e = shift_tree(&base.join("way/t"), 0x100000).unwrap_err();
        assert_eq!(
            e.msg,
            format!(
                "cannot shift {}: a symlink is on the way (not followed)",
                base.join("way/t").display()
            )
        );
        assert_eq!(owner(&victim), (0, 0));
        assert_eq!(owner(&victim.join("etc/f")), (0, 0));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_swapped_directory_is_never_followed_and_a_failed_shift_keeps_its_top() {
        // A thread swaps a directory of the tree with a symlink to a victim directory
        // whose files have the same names, as fast as it can.
        let base = std::env::temp_dir().join(format!("ns-shift-race-{}", std::process::id()));
        let (d, victim) = (base.join("t"), base.join("victim"));
        std::fs::create_dir_all(d.join("data")).unwrap();
        std::fs::create_dir_all(&victim).unwrap();
        for i in 0..500 {
            std::fs::write(d.join(format!("data/f{i}")), "").unwrap();
            std::fs::write(victim.join(format!("f{i}")), "").unwrap();
        }
        std::os::unix::fs::symlink(&victim, d.join("other")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s2, a, b) = (stop.clone(), d.join("data"), d.join("other"));
        let racer = std::thread::spawn(move || {
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                let cwd = nix::fcntl::AT_FDCWD;
                let _ = ns_core::sys::renameat2(cwd, &a, cwd, &b, libc::RENAME_EXCHANGE);
            }
        });
        let mut failed = 0;
        for _ in 0..20 {
            match shift_tree(&d, 0x100000) {
                Ok(()) => shift_tree(&d, 0).unwrap_or_else(|_| failed += 1),
                Err(_) => failed += 1,
            }
            // Shifted back, or failed: a failed shift gives only the top its owner back (the
            // base it had before that shift), never a busy mark or anything else.
            let top = owner(&d);
            assert!(top == (0, 0) || top == (0x100000, 0x100000), "top {top:?}");
            if top != (0, 0) {
                shift_tree(&d, 0).unwrap_or_else(|_| failed += 1);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        racer.join().unwrap();
        for e in std::fs::read_dir(&victim).unwrap().flatten() {
            assert_eq!(owner(&e.path()), (0, 0), "{}", e.path().display());
        }
        eprintln!("{failed} of 20 shifts failed under the racer");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
