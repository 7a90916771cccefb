//! User namespaces: nspawn's `--private-users` values, picking a free id range, and the maps.
//! ns-enter creates the namespace first and asks the monitor, still in the host's namespaces,
//! to write the maps (SYNC-0): only a process outside may map more than its own id.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use ns_core::state::{IdBase, Ownership, UserNs};
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
            // The last valid id is 4294967294: base + count may be 2^32 - 1 at most.
            if b.checked_add(c).is_none() {
                return Err(bad("the range goes past the largest id"));
            }
            (IdBase::Fixed(b), c)
        }
    };
    let ownership = match ownership.unwrap_or(if value == "pick" { "auto" } else { "off" }) {
        "off" => Ownership::Off,
        "map" | "auto" => Ownership::Map,
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
        }));
    }
    Ok(Some(UserNs {
        base,
        count,
        ownership,
        rootless: false,
    }))
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

fn ids_in_use(base: u32, count: u32) -> bool {
    let end = base as u64 + count as u64;
    ["/etc/passwd", "/etc/group"].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.split(':')
                    .nth(2)
                    .and_then(|id| id.parse::<u64>().ok())
                    .is_some_and(|id| id >= base as u64 && id < end)
            })
    })
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
/// setgroups is denied, as the kernel requires). Returns how many ids are mapped.
pub fn write_rootless_maps(pid: i32) -> Result<u32> {
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
        for (tool, own, start) in [(nu, uid, us), (ng, gid, gs)] {
            let st = std::process::Command::new(&tool)
                .args([
                    pid.to_string(),
                    "0".into(),
                    own.to_string(),
                    "1".into(),
                    "1".into(),
                    start.to_string(),
                    n.to_string(),
                ])
                .status()
                .ctx(|| format!("cannot run {}", tool.display()))?;
            if !st.success() {
                return Err(Error::setup(format!("{} failed ({st})", tool.display())));
            }
        }
        return Ok(n + 1);
    }
    std::fs::write(format!("/proc/{pid}/setgroups"), "deny")
        .ctx(|| "cannot write setgroups".into())?;
    std::fs::write(format!("/proc/{pid}/uid_map"), format!("0 {uid} 1\n"))
        .ctx(|| "cannot write uid_map".into())?;
    std::fs::write(format!("/proc/{pid}/gid_map"), format!("0 {gid} 1\n"))
        .ctx(|| "cannot write gid_map".into())?;
    Ok(1)
}

/// `chown` ownership: shift the tree's ids on disk from the range it is in now (its root
/// directory's owner, rounded down to 64K) to `to_base`, files, directories and links alike,
/// without crossing into other file systems. A shift that fails half-way is undone.
pub fn shift_tree(root: &Path, to_base: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(root).ctx(|| format!("cannot stat {}", root.display()))?;
    let from_base = md.uid() & !(RANGE - 1);
    if from_base == to_base {
        return Ok(());
    }
    let dev = md.dev();
    let mut done: Vec<PathBuf> = Vec::new();
    let r = shift_walk(root, dev, from_base, to_base, &mut done);
    if r.is_err() {
        for p in &done {
            let _ = shift_one(p, to_base, from_base);
        }
    }
    r
}

fn shift_one(p: &Path, from: u32, to: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(p).ctx(|| format!("cannot stat {}", p.display()))?;
    let map = |id: u32| {
        if id >= from && id - from < RANGE {
            to + (id - from)
        } else {
            id
        }
    };
    let (uid, gid) = (map(md.uid()), map(md.gid()));
    if (uid, gid) != (md.uid(), md.gid()) {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            p,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ctx(|| format!("cannot chown {}", p.display()))?;
        // chown clears set-id bits; give them back.
        if !md.file_type().is_symlink() && md.mode() & 0o6000 != 0 {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(md.mode() & 0o7777))
                .ctx(|| format!("cannot chmod {}", p.display()))?;
        }
    }
    Ok(())
}

fn shift_walk(p: &Path, dev: u64, from: u32, to: u32, done: &mut Vec<PathBuf>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(p).ctx(|| format!("cannot stat {}", p.display()))?;
    if md.dev() != dev {
        return Ok(());
    }
    if md.is_dir() {
        for e in std::fs::read_dir(p).ctx(|| format!("cannot read {}", p.display()))? {
            let e = e.ctx(|| format!("cannot read {}", p.display()))?;
            shift_walk(&e.path(), dev, from, to, done)?;
        }
    }
    shift_one(p, from, to)?;
    done.push(p.to_path_buf());
    Ok(())
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
            (IdBase::Pick, 65536, Ownership::Map)
        );
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
        assert!(parse("1048576:1000", Some("chown"), r).is_err());
        assert!(parse("pick", Some("bogus"), r).is_err());
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

    #[test]
    fn shift_and_undo() {
        let d = std::env::temp_dir().join(format!("ns-shift-{}", std::process::id()));
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("a", d.join("l")).unwrap();
        nix::unistd::chown(
            &d.join("a/b/f"),
            Some(nix::unistd::Uid::from_raw(1000)),
            None,
        )
        .unwrap();
        shift_tree(&d, 0x100000).unwrap();
        assert_eq!(std::fs::symlink_metadata(&d).unwrap().uid(), 0x100000);
        assert_eq!(
            std::fs::symlink_metadata(d.join("a/b/f")).unwrap().uid(),
            0x100000 + 1000
        );
        assert_eq!(
            std::fs::symlink_metadata(d.join("l")).unwrap().uid(),
            0x100000
        );
        shift_tree(&d, 0).unwrap();
        assert_eq!(
            std::fs::symlink_metadata(d.join("a/b/f")).unwrap().uid(),
            1000
        );
        assert_eq!(std::fs::symlink_metadata(&d).unwrap().uid(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
