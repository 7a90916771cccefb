//! User namespaces end to end: `-U` and `--private-users=` (pick, identity, yes, fixed
//! ranges), `--private-users-ownership=`, the id-range lock files in /run/ns-run/uid, the
//! idmapped root and the `idmap`/`rootidmap` bind options, capabilities, `-x`, `-a`, `-u`,
//! bad input, a killed monitor, and a fresh sysfs with a veth in a throwaway network namespace.
//!
//! Lock files: other containers (of parallel tests, or anyone's on this host) come and go in
//! /run/ns-run/uid meanwhile, so a lock file counts as left behind only if it is new and held
//! by nobody ([`leaked_locks`], from /proc/locks). Tests using the same fixed base are
//! serialised by [`FIXED`]: a base is locked by one container at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ns_tests::{
    assert_snapshot_unchanged, bin, fixture, ns_run, our_mounts, procs_in, run, run_cmd, sh_ok,
    snapshot, spawn, status_hex, wait_no_procs_in, ForgetJournal, HostUser, Output, Running,
    TestNetns, Tree,
};

/// nspawn's range for `pick`: 64K-aligned bases from 0x80000 to 0x6FFF0000.
const PICK_FIRST: u64 = 0x0008_0000;
const PICK_LAST: u64 = 0x6FFF_0000;
const RANGE: u64 = 0x10000;
/// Where ns-run keeps one lock file per id range in use.
const UID_LOCK_DIR: &str = "/run/ns-run/uid";
/// nspawn's capabilities with -U: NET_BIND_SERVICE dropped without a private network...
const CAPS_USERNS: u64 = 0xfdec_abff;
/// ... and NET_ADMIN added (NET_BIND_SERVICE kept) with one.
const CAPS_USERNS_NET: u64 = 0xfdec_bfff;
/// How long a container may take to print `ready`.
const READY: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Helpers

/// Held by tests that use the fixed bases 0 or 1048576 (a base is locked by one container).
static FIXED: Mutex<()> = Mutex::new(());

fn fixed_range() -> MutexGuard<'static, ()> {
    FIXED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The lock files in /run/ns-run/uid (their names: the bases in use).
fn lock_files() -> BTreeSet<String> {
    std::fs::read_dir(UID_LOCK_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn lock_file(base: u64) -> PathBuf {
    Path::new(UID_LOCK_DIR).join(base.to_string())
}

/// The files some process holds a lock on, as (major, minor, inode) from /proc/locks.
fn locked_files() -> BTreeSet<(u64, u64, u64)> {
    let text = std::fs::read_to_string("/proc/locks").expect("read /proc/locks");
    text.split_whitespace()
        .filter_map(|w| {
            let mut f = w.split(':');
            let (maj, min, ino) = (f.next()?, f.next()?, f.next()?);
            if f.next().is_some() {
                return None;
            }
            Some((
                u64::from_str_radix(maj, 16).ok()?,
                u64::from_str_radix(min, 16).ok()?,
                ino.parse().ok()?,
            ))
        })
        .collect()
}

/// Is this file locked by anybody (false when it is gone)?
fn held(p: &Path) -> bool {
    let Ok(md) = std::fs::metadata(p) else {
        return true; // gone: not left behind
    };
    let dev = md.dev();
    let id = (libc::major(dev) as u64, libc::minor(dev) as u64, md.ino());
    locked_files().contains(&id)
}

/// Lock files that are not in `before` and that nobody holds (allowing a container that is
/// just starting a moment to lock the file it created).
fn leaked_locks(before: &BTreeSet<String>) -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(1);
    loop {
        let leaked: Vec<String> = lock_files()
            .difference(before)
            .filter(|f| !held(&Path::new(UID_LOCK_DIR).join(f)))
            .cloned()
            .collect();
        if leaked.is_empty() || Instant::now() >= end {
            return leaked;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ns-run -D TREE OPTS -- sh -c SCRIPT`, tagged with the tree.
fn cmd(tree: &Tree, opts: &[&str], script: &str) -> Command {
    let mut c = ns_run();
    tree.tag(&mut c)
        .args(["-D", tree.arg()])
        .args(opts)
        .args(["--", "sh", "-c", script]);
    c
}

/// Run `ns-run -D TREE OPTS -- sh -c SCRIPT` to its end.
fn sh(tree: &Tree, opts: &[&str], script: &str) -> Output {
    run_cmd(cmd(tree, opts, script), None)
}

/// Start `ns-run -D TREE OPTS -- sh -c 'SCRIPT; echo ready; exec sleep 1000'` and wait until
/// it is ready.
fn start(tree: &Tree, opts: &[&str], script: &str) -> Running {
    let full = format!("{script}\necho ready\nexec sleep 1000");
    let mut r = spawn(cmd(tree, opts, &full), None);
    if !r.wait_stdout("ready", READY) {
        let out = r.wait_for(Duration::from_secs(2));
        panic!("container did not get ready: {out:?}");
    }
    r
}

/// Stop a started container with SIGTERM (killed at once: ns-run exits 137).
fn stop(r: Running) -> Output {
    r.signal(libc::SIGTERM);
    let out = r.wait();
    assert_eq!((out.code, out.signal), (137, None), "{out}");
    out
}

/// What a payload script printed: `key=value` lines, and the container's /proc/mounts as
/// `mnt ...` lines (see [`PRINT_MOUNTS`]).
#[derive(Debug)]
struct Report {
    text: String,
    keys: BTreeMap<String, String>,
    /// (mount point, file system type, options), in /proc/mounts order.
    mounts: Vec<(String, String, String)>,
}

/// Script lines printing the container's mount table for [`Report`].
const PRINT_MOUNTS: &str = "sed 's/^/mnt /' /proc/mounts";

/// Script lines printing the ids, maps and capabilities for [`Report`].
const PRINT_IDS: &str = "echo \"uid=$(id -u)\"\n\
     echo \"gid=$(id -g)\"\n\
     echo \"uid_map=$(cat /proc/self/uid_map)\"\n\
     echo \"gid_map=$(cat /proc/self/gid_map)\"\n\
     echo \"CapEff=$(grep ^CapEff: /proc/self/status | cut -f2)\"\n\
     echo \"CapBnd=$(grep ^CapBnd: /proc/self/status | cut -f2)\"";

impl Report {
    fn new(text: &str) -> Report {
        let mut keys = BTreeMap::new();
        let mut mounts = Vec::new();
        for l in text.lines() {
            if let Some(m) = l.strip_prefix("mnt ") {
                let f: Vec<&str> = m.split(' ').collect();
                if f.len() >= 4 {
                    mounts.push((f[1].to_string(), f[2].to_string(), f[3].to_string()));
                }
            } else if let Some((k, v)) = l.split_once('=') {
                keys.insert(k.to_string(), v.to_string());
            }
        }
        Report {
            text: text.to_string(),
            keys,
            mounts,
        }
    }

    fn get(&self, key: &str) -> &str {
        self.keys
            .get(key)
            .unwrap_or_else(|| panic!("the payload printed no {key}=: {}", self.text))
    }

    /// A uid_map/gid_map line the payload printed: (inside, outside, count) per line.
    fn map(&self, key: &str) -> Vec<(u64, u64, u64)> {
        parse_map(self.get(key))
    }

    fn hex(&self, key: &str) -> u64 {
        let line = format!("{key}:\t{}", self.get(key));
        status_hex(&line, key).unwrap_or_else(|| panic!("{key} is not hex: {}", self.text))
    }

    /// The (type, options) of what is mounted on `path` (the top mount).
    fn mount(&self, path: &str) -> (&str, Vec<&str>) {
        self.mounts
            .iter()
            .rev()
            .find(|(p, _, _)| p == path)
            .map(|(_, t, o)| (t.as_str(), o.split(',').collect()))
            .unwrap_or_else(|| panic!("nothing mounted on {path}: {}", self.text))
    }
}

/// A uid_map's lines, e.g. `         0    1048576      65536`.
fn parse_map(text: &str) -> Vec<(u64, u64, u64)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let n: Vec<u64> = l
                .split_whitespace()
                .map(|x| x.parse().unwrap_or_else(|_| panic!("bad map line {l:?}")))
                .collect();
            assert_eq!(n.len(), 3, "bad map line {l:?}");
            (n[0], n[1], n[2])
        })
        .collect()
}

/// The base of a `0 BASE 65536` map; fails unless it is a picked one: 64K-aligned, in
/// nspawn's range.
fn picked_base(map: &[(u64, u64, u64)]) -> u64 {
    assert_eq!(map.len(), 1, "not one map line: {map:?}");
    let (inside, base, count) = map[0];
    assert_eq!((inside, count), (0, RANGE), "map {map:?}");
    assert_eq!(base % RANGE, 0, "base {base:#x} is not 64K-aligned");
    assert!(
        (PICK_FIRST..=PICK_LAST).contains(&base),
        "base {base:#x} is outside {PICK_FIRST:#x}..={PICK_LAST:#x}"
    );
    base
}

/// The base a started container printed (`uid_map=` before `ready`).
fn base_of(r: &Running) -> u64 {
    picked_base(&Report::new(&r.stdout_so_far()).map("uid_map"))
}

/// Nothing of a container is left: no process in its tree, the host mount table unchanged.
fn assert_nothing_left(tree: &Tree, mounts_before: &[String]) {
    let left = wait_no_procs_in(tree.path(), Duration::from_secs(3));
    assert!(left.is_empty(), "processes left: {left:#?}");
    assert_eq!(our_mounts(), mounts_before, "host mount table changed");
}

fn owner(p: &Path) -> (u32, u32) {
    let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (md.uid(), md.gid())
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

/// A host directory owned by 1000:1000 holding `rootfile`, owned by 0:0 (bind sources).
fn bind_source(t: &Tree) -> PathBuf {
    let d = t.host_dir("src");
    std::fs::write(d.join("rootfile"), "host root's\n").unwrap();
    chown(&d.join("rootfile"), 0, 0);
    chown(&d, 1000, 1000);
    d
}

/// Exactly one line on stderr, from ns-run, naming every needle; exit 125; no stdout.
fn assert_refused(out: &Output, needles: &[&str]) {
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(out.stderr_lines().len(), 1, "not one line on stderr: {out}");
    assert!(out.stderr.ends_with('\n'), "{out}");
    assert!(out.stderr.starts_with("ns-run: "), "{out}");
    for n in needles {
        assert!(out.stderr.contains(n), "stderr does not name {n:?}: {out}");
    }
    assert_eq!(out.stdout, "", "{out}");
}

/// `ns-run OPTS` on a tree of its own must be refused (see [`assert_refused`]) and leave
/// nothing: no lock file, no mount, no process, the tree as it was.
fn refused(name: &str, opts: &[&str], needles: &[&str]) {
    let t = Tree::rootfs(name);
    let snap = snapshot(t.path());
    let locks = lock_files();
    let before = our_mounts();
    let out = sh(&t, opts, "echo payload ran");
    assert_refused(&out, needles);
    assert_nothing_left(&t, &before);
    let leaked = leaked_locks(&locks);
    assert!(
        leaked.is_empty(),
        "lock files left in {UID_LOCK_DIR}: {leaked:?}"
    );
    assert_snapshot_unchanged(t.path(), &snap);
}

// ---------------------------------------------------------------------------------------
// -U: a picked range, the idmapped root, capabilities, API file systems

#[test]
fn pick_maps_root_to_a_private_range_over_an_idmapped_root() {
    let t = Tree::rootfs("ns-u-pick");
    let before = our_mounts();
    let script = format!(
        "{PRINT_IDS}\n\
         {PRINT_MOUNTS}\n\
         echo \"passwd=$(stat -c %u:%g /etc/passwd)\"\n\
         echo \"rootdir=$(stat -c %u:%g /)\"\n\
         touch /made-inside && echo made=ok\n\
         echo \"made_owner=$(stat -c %u:%g /made-inside)\"\n\
         echo \"pid1=$(cat /proc/1/comm)\"\n\
         touch /sys/ns-test-x 2>/dev/null && echo sys_write=ok || echo sys_write=refused\n\
         echo \"ptmx=$(stat -c %F /dev/pts/ptmx)\"\n\
         echo hello > /tmp/f && echo \"tmp=$(cat /tmp/f)\"\n\
         echo \"tmp_owner=$(stat -c %u:%g /tmp/f)\"\n\
         ls -a /dev/mqueue >/dev/null && echo mqueue=ok"
    );
    let r = Report::new(&sh_ok(&t, &["-U"], &script));

    assert_eq!((r.get("uid"), r.get("gid")), ("0", "0"));
    let base = picked_base(&r.map("uid_map"));
    assert_eq!(r.map("gid_map"), vec![(0, base, RANGE)], "gid_map");
    // Relative to the container's user namespace, where the bounding set starts full:
    // exactly nspawn's set, whatever the host's bounding set.
    assert_eq!(r.hex("CapEff"), CAPS_USERNS, "CapEff");
    assert_eq!(r.hex("CapBnd"), CAPS_USERNS, "CapBnd");

    // The image through an idmapped mount: owned by container root inside, by 0 on disk.
    let (_, root_opts) = r.mount("/");
    assert!(root_opts.contains(&"idmapped"), "/ is not idmapped: {r:?}");
    assert_eq!(r.get("passwd"), "0:0");
    assert_eq!(r.get("rootdir"), "0:0");
    assert_eq!(r.get("made"), "ok");
    assert_eq!(r.get("made_owner"), "0:0");
    assert_eq!(owner(&t.path().join("made-inside")), (0, 0), "on the host");
    assert_eq!(owner(&t.path().join("etc/passwd")), (0, 0), "on the host");
    assert_eq!(owner(t.path()), (0, 0), "the tree's root on the host");

    // API file systems.
    assert_eq!(r.mount("/proc").0, "proc");
    assert_eq!(r.get("pid1"), "sh");
    let (sys, sys_opts) = r.mount("/sys");
    assert_eq!(sys, "sysfs");
    assert!(
        sys_opts.contains(&"ro"),
        "/sys is not read-only: {sys_opts:?}"
    );
    assert_eq!(r.get("sys_write"), "refused");
    assert_eq!(r.mount("/dev/pts").0, "devpts");
    assert_eq!(r.get("ptmx"), "character special file");
    assert_eq!(r.mount("/dev/mqueue").0, "mqueue");
    assert_eq!(r.get("mqueue"), "ok");
    assert_eq!(r.mount("/tmp").0, "tmpfs");
    assert_eq!(r.get("tmp"), "hello");
    assert_eq!(r.get("tmp_owner"), "0:0");

    assert_nothing_left(&t, &before);
    assert!(
        !lock_file(base).exists(),
        "{} left after the exit",
        lock_file(base).display()
    );
}

#[test]
fn pick_with_private_network_keeps_net_bind_service_and_gets_a_fresh_sysfs() {
    let t = Tree::rootfs("ns-u-privnet");
    let before = our_mounts();
    let script = format!("{PRINT_IDS}\n{PRINT_MOUNTS}\necho \"net=$(ls /sys/class/net)\"");
    let r = Report::new(&sh_ok(&t, &["-U", "--private-network"], &script));
    picked_base(&r.map("uid_map"));
    assert_eq!(r.hex("CapEff"), CAPS_USERNS_NET, "CapEff");
    assert_eq!(r.hex("CapBnd"), CAPS_USERNS_NET, "CapBnd");
    assert_eq!(r.mount("/sys").0, "sysfs");
    // A sysfs of the container's network namespace: only its lo.
    assert_eq!(r.get("net"), "lo", "/sys/class/net is not the container's");
    assert_nothing_left(&t, &before);
}

// ---------------------------------------------------------------------------------------
// Ranges and their lock files

#[test]
fn concurrent_containers_get_disjoint_ranges_and_lock_files() {
    let (t1, t2) = (Tree::rootfs("ns-u-twin1"), Tree::rootfs("ns-u-twin2"));
    let before = our_mounts();
    // The same machine name: both start looking at the same slot.
    // A name of this test process: another suite's containers do not take its slot.
    let name = ns_tests::unique("ns-u-twin");
    let opts = ["-U", "-M", &name];
    let print = "echo \"uid_map=$(cat /proc/self/uid_map)\"";
    let first = start(&t1, &opts, print);
    let b1 = base_of(&first);
    assert!(
        lock_file(b1).is_file(),
        "no lock file for {b1} while running"
    );
    let second = start(&t2, &opts, print);
    let b2 = base_of(&second);
    assert!(
        b1.abs_diff(b2) >= RANGE,
        "ranges overlap: {b1:#x} and {b2:#x}"
    );
    assert!(
        lock_file(b1).is_file(),
        "no lock file for {b1} while running"
    );
    assert!(
        lock_file(b2).is_file(),
        "no lock file for {b2} while running"
    );
    stop(second);
    assert!(!lock_file(b2).exists(), "lock file of {b2} left after exit");
    assert!(
        lock_file(b1).is_file(),
        "lock file of the running {b1} gone"
    );
    stop(first);
    assert!(!lock_file(b1).exists(), "lock file of {b1} left after exit");
    assert_nothing_left(&t1, &before);
    assert_nothing_left(&t2, &before);
}

#[test]
fn overlay_inside_the_idmapped_root_leaves_no_workdir() {
    // The upper is reached through the idmapped root's alias: its work directory must be
    // named to the monitor as the host sees it, or it stays behind in the tree.
    let t = Tree::rootfs("ns-u-ovl");
    for d in ["lo", "up"] {
        std::fs::create_dir(t.path().join(d)).unwrap();
    }
    let all = snapshot(t.path());
    let before = our_mounts();
    let out = sh(
        &t,
        &["-U", "--overlay=+/lo:+/up:/mnt"],
        "echo hi > /mnt/f && cat /mnt/f",
    );
    assert_eq!((out.code, out.stdout.as_str()), (0, "hi\n"), "{out}");
    assert_eq!(
        std::fs::read_to_string(t.path().join("up/f")).unwrap(),
        "hi\n"
    );
    std::fs::remove_file(t.path().join("up/f")).unwrap();
    assert_snapshot_unchanged(t.path(), &all);
    assert_nothing_left(&t, &before);
}

#[test]
fn identity_maps_ids_one_to_one() {
    let _f = fixed_range();
    let t = Tree::rootfs("ns-u-identity");
    let before = our_mounts();
    let script = format!("{PRINT_IDS}\necho \"passwd=$(stat -c %u:%g /etc/passwd)\"");
    let r = Report::new(&sh_ok(&t, &["--private-users=identity"], &script));
    assert_eq!(r.map("uid_map"), vec![(0, 0, RANGE)], "uid_map");
    assert_eq!(r.map("gid_map"), vec![(0, 0, RANGE)], "gid_map");
    assert_eq!(r.get("uid"), "0");
    assert_eq!(r.get("passwd"), "0:0");
    assert_nothing_left(&t, &before);
}

#[test]
fn fixed_range_without_ownership_leaves_the_image_to_nobody() {
    let _f = fixed_range();
    let t = Tree::rootfs("ns-u-fixedoff");
    let before = our_mounts();
    let script = format!(
        "{PRINT_IDS}\n{PRINT_MOUNTS}\n\
         echo \"passwd=$(stat -c %u:%g /etc/passwd)\"\n\
         touch /etc/new 2>/dev/null && echo etc_write=ok || echo etc_write=refused\n\
         echo \"err=$(touch /etc/new 2>&1)\""
    );
    let r = Report::new(&sh_ok(&t, &["--private-users=1048576:65536"], &script));
    assert_eq!(r.map("uid_map"), vec![(0, 1048576, RANGE)], "uid_map");
    assert_eq!(r.map("gid_map"), vec![(0, 1048576, RANGE)], "gid_map");
    assert_eq!(r.get("uid"), "0");
    let (_, root_opts) = r.mount("/");
    assert!(!root_opts.contains(&"idmapped"), "/ is idmapped: {r:?}");
    assert_eq!(r.get("passwd"), "65534:65534");
    assert_eq!(r.get("etc_write"), "refused");
    assert!(r.get("err").contains("Permission denied"), "{r:?}");
    assert!(
        !t.path().join("etc/new").exists(),
        "/etc/new reached the tree"
    );
    assert_nothing_left(&t, &before);
    assert!(!lock_file(1048576).exists(), "lock file left after exit");
}

#[test]
fn fixed_range_with_map_ownership_gives_the_image_to_container_root() {
    let _f = fixed_range();
    let t = Tree::rootfs("ns-u-fixedmap");
    let before = our_mounts();
    let script = format!(
        "{PRINT_IDS}\n{PRINT_MOUNTS}\n\
         echo \"passwd=$(stat -c %u:%g /etc/passwd)\"\n\
         touch /etc/new && echo etc_write=ok\n\
         echo \"new_owner=$(stat -c %u:%g /etc/new)\""
    );
    let r = Report::new(&sh_ok(
        &t,
        &[
            "--private-users=1048576:65536",
            "--private-users-ownership=map",
        ],
        &script,
    ));
    assert_eq!(r.map("uid_map"), vec![(0, 1048576, RANGE)], "uid_map");
    let (_, root_opts) = r.mount("/");
    assert!(root_opts.contains(&"idmapped"), "/ is not idmapped: {r:?}");
    assert_eq!(r.get("passwd"), "0:0");
    assert_eq!(r.get("etc_write"), "ok");
    assert_eq!(r.get("new_owner"), "0:0");
    assert_eq!(owner(&t.path().join("etc/new")), (0, 0), "on the host");
    assert_nothing_left(&t, &before);
}

#[test]
fn yes_uses_the_owner_of_the_tree_as_base() {
    let t = Tree::rootfs("ns-u-yes");
    chown(t.path(), 2097152, 2097152);
    let before = our_mounts();
    let script = format!("{PRINT_IDS}\necho \"rootdir=$(stat -c %u:%g /)\"");
    let r = Report::new(&sh_ok(&t, &["--private-users=yes"], &script));
    assert_eq!(r.map("uid_map"), vec![(0, 2097152, RANGE)], "uid_map");
    assert_eq!(r.map("gid_map"), vec![(0, 2097152, RANGE)], "gid_map");
    assert_eq!(r.get("uid"), "0");
    // Ownership off: the tree's root, owned by the base, is container root's.
    assert_eq!(r.get("rootdir"), "0:0");
    assert_nothing_left(&t, &before);
}

#[test]
fn largest_valid_fixed_range_is_accepted() {
    // nspawn (userns_shift_range_valid): a range may end at the last valid id, 4294967294
    // (base + count == 4294967295 == UID_INVALID, which is not part of it).
    let t = Tree::rootfs("ns-u-toprange");
    let before = our_mounts();
    let out = sh(
        &t,
        &["--private-users=4294901759:65536"],
        "echo \"uid_map=$(cat /proc/self/uid_map)\"",
    );
    assert!(out.code == 0 && out.stderr.is_empty(), "{out}");
    let r = Report::new(&out.stdout);
    assert_eq!(r.map("uid_map"), vec![(0, 4294901759, RANGE)], "uid_map");
    assert_nothing_left(&t, &before);
}

#[test]
fn chown_shifts_the_tree_into_the_range_and_back() {
    let _f = fixed_range();
    let t = Tree::rootfs("ns-u-chown");
    let root = t.path();
    // A busybox of its own: the tree's is a hard link to the fixture's, which a shift of
    // this tree must not change for the other tests.
    let bb = root.join("bin/busybox");
    std::fs::remove_file(&bb).unwrap();
    std::fs::copy(fixture().join("bin/busybox"), &bb).unwrap();
    // A user's file and a set-uid file.
    std::fs::create_dir_all(root.join("home/u")).unwrap();
    std::fs::write(root.join("home/u/file"), "mine\n").unwrap();
    chown(&root.join("home/u/file"), 1000, 1000);
    std::fs::write(root.join("usr/bin/suid"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        root.join("usr/bin/suid"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    let snap = snapshot(root);
    let before = our_mounts();

    const BASE: u32 = 4194304;
    let base = format!("--private-users={BASE}");
    let script = format!(
        "{PRINT_IDS}\n{PRINT_MOUNTS}\n\
         echo \"passwd=$(stat -c %u:%g /etc/passwd)\"\n\
         echo \"user=$(stat -c %u:%g /home/u/file)\"\n\
         echo \"suid=$(stat -c %a /usr/bin/suid)\"\n\
         touch /etc/new && echo etc_write=ok"
    );
    let r = Report::new(&sh_ok(
        &t,
        &[&base, "--private-users-ownership=chown"],
        &script,
    ));
    assert_eq!(r.map("uid_map"), vec![(0, BASE as u64, RANGE)], "uid_map");
    let (_, root_opts) = r.mount("/");
    assert!(!root_opts.contains(&"idmapped"), "/ is idmapped: {r:?}");
    assert_eq!(r.get("passwd"), "0:0");
    assert_eq!(r.get("user"), "1000:1000");
    assert_eq!(r.get("suid"), "4755");
    assert_eq!(r.get("etc_write"), "ok");
    // On disk, everything moved into the range.
    assert_eq!(owner(root), (BASE, BASE));
    assert_eq!(owner(&root.join("etc/passwd")), (BASE, BASE));
    assert_eq!(owner(&root.join("bin/sh")), (BASE, BASE), "a symlink");
    assert_eq!(owner(&root.join("home/u/file")), (BASE + 1000, BASE + 1000));
    assert_eq!(owner(&root.join("etc/new")), (BASE, BASE));
    let mode = std::fs::metadata(root.join("usr/bin/suid")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o4755, "set-uid bit lost");
    assert_nothing_left(&t, &before);

    // Base 0 with chown shifts it back: as it was, but for the new file.
    let r = Report::new(&sh_ok(
        &t,
        &["--private-users=0", "--private-users-ownership=chown"],
        PRINT_IDS,
    ));
    assert_eq!(r.map("uid_map"), vec![(0, 0, RANGE)], "uid_map");
    assert_eq!(owner(&root.join("etc/new")), (0, 0));
    std::fs::remove_file(root.join("etc/new")).unwrap();
    assert_snapshot_unchanged(root, &snap);
    assert_nothing_left(&t, &before);
}

#[test]
fn no_disables_and_digits_are_a_base() {
    let _f = fixed_range();
    let t = Tree::rootfs("ns-u-digits");
    let before = our_mounts();
    let r = Report::new(&sh_ok(&t, &["--private-users=no"], PRINT_IDS));
    assert_eq!(
        r.map("uid_map"),
        vec![(0, 0, 4294967295)],
        "no user namespace"
    );
    // nspawn: a value of digits is a UID, not a boolean.
    let r = Report::new(&sh_ok(&t, &["--private-users=0"], PRINT_IDS));
    assert_eq!(r.map("uid_map"), vec![(0, 0, RANGE)], "--private-users=0");
    assert_nothing_left(&t, &before);
}

/// (base, count) of the ranges of running containers must not overlap.
fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

#[test]
fn overlapping_fixed_range_is_refused() {
    let (t1, t2) = (Tree::rootfs("ns-u-over1"), Tree::rootfs("ns-u-over2"));
    let before = our_mounts();
    let first = start(&t1, &["--private-users=5242880:65536"], "true");
    // Container ids 0-32767 of the second would be ids 32768-65535 of the first.
    let out = sh(
        &t2,
        &["--private-users=5275648:65536"],
        "echo \"uid_map=$(cat /proc/self/uid_map)\"",
    );
    stop(first);
    assert_refused(
        &out,
        &["--private-users=5275648", "used by another container"],
    );
    assert_nothing_left(&t1, &before);
    assert_nothing_left(&t2, &before);
}

#[test]
fn pick_skips_a_slot_overlapping_a_fixed_range() {
    let (t1, t2) = (Tree::rootfs("ns-u-slot1"), Tree::rootfs("ns-u-slot2"));
    let before = our_mounts();
    let name = ns_tests::unique("ns-u-slot");
    let opts = ["-U", "-M", &name];
    let print = "echo \"uid_map=$(cat /proc/self/uid_map)\"";
    // Where this machine name's pick lands while that slot is free.
    let slot = picked_base(&Report::new(&sh_ok(&t2, &opts, print)).map("uid_map"));
    let fixed = (slot + 4096, RANGE);
    let first = start(
        &t1,
        &[&format!("--private-users={}:65536", fixed.0)],
        "true",
    );
    let out = sh(&t2, &opts, print);
    stop(first);
    assert!(out.code == 0 && out.stderr.is_empty(), "{out}");
    let picked = picked_base(&Report::new(&out.stdout).map("uid_map"));
    assert!(
        !overlap((picked, RANGE), fixed),
        "picked {picked:#x}+65536 overlaps the running {:#x}+65536",
        fixed.0
    );
    assert_nothing_left(&t1, &before);
    assert_nothing_left(&t2, &before);
}

// ---------------------------------------------------------------------------------------
// Bad input

#[test]
fn bogus_private_users_is_refused() {
    refused(
        "ns-u-bad1",
        &["--private-users=bogus"],
        &["--private-users=bogus"],
    );
}

#[test]
fn empty_range_is_refused() {
    refused(
        "ns-u-bad2",
        &["--private-users=1:0"],
        &["--private-users=1:0"],
    );
}

#[test]
fn range_past_the_largest_id_is_refused() {
    refused(
        "ns-u-bad3",
        &["--private-users=4294967295:2"],
        &["--private-users=4294967295:2"],
    );
}

#[test]
fn bogus_ownership_is_refused() {
    refused(
        "ns-u-bad4",
        &["-U", "--private-users-ownership=bogus"],
        &["--private-users-ownership=bogus"],
    );
}

#[test]
fn chown_ownership_needs_an_aligned_64k_range() {
    // (--private-users-ownership=chown was refused as "not supported yet" until it was
    // implemented: now only ranges it cannot shift into are.)
    refused(
        "ns-u-bad5",
        &["--private-users=1048577", "--private-users-ownership=chown"],
        &["--private-users-ownership=chown", "65536"],
    );
    refused(
        "ns-u-bad5b",
        &[
            "--private-users=1048576:1000",
            "--private-users-ownership=chown",
        ],
        &["--private-users-ownership=chown", "65536"],
    );
}

#[test]
fn idmap_bind_without_user_namespace_is_refused() {
    refused(
        "ns-u-bad6",
        &["--bind=/tmp/x:/x:idmap"],
        &["--bind=/tmp/x:/x:idmap"],
    );
}

#[test]
fn fixed_range_in_use_is_refused() {
    let (t1, t2) = (Tree::rootfs("ns-u-inuse1"), Tree::rootfs("ns-u-inuse2"));
    let before = our_mounts();
    let opt = "--private-users=3145728:65536";
    let first = start(&t1, &[opt], "true");
    assert!(lock_file(3145728).is_file(), "no lock file while running");
    let locks = lock_files();
    let out = sh(&t2, &[opt], "echo payload ran");
    assert_refused(
        &out,
        &["--private-users=3145728", "used by another container"],
    );
    assert_nothing_left(&t2, &before);
    let leaked = leaked_locks(&locks);
    assert!(
        leaked.is_empty(),
        "lock files left in {UID_LOCK_DIR}: {leaked:?}"
    );
    let lock = lock_file(3145728);
    assert!(
        lock.is_file() && held(&lock),
        "the running container's lock is gone"
    );
    assert!(procs_in(t2.path()).is_empty());
    stop(first);
    assert!(!lock_file(3145728).exists(), "lock file left after exit");
    assert_nothing_left(&t1, &before);
}

// ---------------------------------------------------------------------------------------
// Bind mounts

#[test]
fn plain_bind_of_a_host_directory_is_not_container_roots() {
    let t = Tree::rootfs("ns-u-bindplain");
    let src = bind_source(&t);
    let before = our_mounts();
    let bind = format!("--bind={}:/b", src.display());
    let r = Report::new(&sh_ok(
        &t,
        &["-U", &bind],
        "echo \"dir=$(stat -c %u:%g /b)\"\n\
         echo \"file=$(stat -c %u:%g /b/rootfile)\"\n\
         echo \"err=$(touch /b/new 2>&1 && echo created)\"",
    ));
    assert_eq!(r.get("dir"), "65534:65534");
    assert_eq!(r.get("file"), "65534:65534");
    assert!(r.get("err").contains("Permission denied"), "{r:?}");
    assert!(!src.join("new").exists(), "container root created a file");
    assert_nothing_left(&t, &before);
}

#[test]
fn file_created_in_a_plain_bind_is_owned_by_the_shifted_uid() {
    let t = Tree::rootfs("ns-u-bindshift");
    let src = t.host_dir("shared");
    std::fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let before = our_mounts();
    let bind = format!("--bind={}:/s", src.display());
    let r = Report::new(&sh_ok(
        &t,
        &["-U", &bind],
        "echo \"base=$(awk 'NR == 1 {print $2}' /proc/self/uid_map)\"\n\
         touch /s/made && echo \"inside=$(stat -c %u /s/made)\"",
    ));
    let base: u32 = r.get("base").parse().expect("base");
    assert_eq!(r.get("inside"), "0");
    assert_eq!(
        owner(&src.join("made")),
        (base, base),
        "on the host: container root is BASE"
    );
    assert_nothing_left(&t, &before);
}

#[test]
fn idmap_bind_shows_the_source_through_the_container_mapping() {
    let t = Tree::rootfs("ns-u-bindidmap");
    let src = bind_source(&t);
    let before = our_mounts();
    let bind = format!("--bind={}:/b:idmap", src.display());
    let r = Report::new(&sh_ok(
        &t,
        &["-U", &bind],
        "echo \"dir=$(stat -c %u:%g /b)\"\n\
         echo \"file=$(stat -c %u:%g /b/rootfile)\"\n\
         touch /b/new && echo created=ok\n\
         echo \"new=$(stat -c %u:%g /b/new)\"",
    ));
    assert_eq!(r.get("dir"), "1000:1000");
    assert_eq!(r.get("file"), "0:0");
    assert_eq!(r.get("created"), "ok");
    assert_eq!(r.get("new"), "0:0");
    assert_eq!(owner(&src.join("new")), (0, 0), "on the host");
    assert_eq!(owner(&src), (1000, 1000), "source changed owner");
    assert_nothing_left(&t, &before);
}

#[test]
fn rootidmap_bind_makes_the_source_owner_container_root() {
    let t = Tree::rootfs("ns-u-bindroot");
    let src = bind_source(&t);
    let before = our_mounts();
    let bind = format!("--bind={}:/r:rootidmap", src.display());
    let r = Report::new(&sh_ok(
        &t,
        &["-U", &bind],
        "echo \"dir=$(stat -c %u:%g /r)\"\n\
         echo \"file=$(stat -c %u:%g /r/rootfile)\"\n\
         touch /r/new && echo created=ok\n\
         echo \"new=$(stat -c %u:%g /r/new)\"",
    ));
    assert_eq!(r.get("dir"), "0:0");
    assert_eq!(r.get("file"), "65534:65534");
    assert_eq!(r.get("created"), "ok");
    assert_eq!(r.get("new"), "0:0");
    assert_eq!(owner(&src.join("new")), (1000, 1000), "on the host");
    assert_eq!(owner(&src.join("rootfile")), (0, 0), "on the host");
    assert_nothing_left(&t, &before);
}

#[test]
fn container_root_cannot_write_a_host_root_file() {
    let t = Tree::rootfs("ns-u-hostfile");
    let f = t.host_dir("host").join("secret");
    std::fs::write(&f, "host root only\n").unwrap();
    chown(&f, 0, 0);
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let before = our_mounts();
    let bind = format!("--bind={}:/f", f.display());
    let r = Report::new(&sh_ok(
        &t,
        &["-U", &bind],
        "echo \"read=$(cat /f)\"\n\
         (echo pwned >> /f) 2>/dev/null && echo write=ok || echo write=refused\n\
         chmod 666 /f 2>/dev/null && echo chmod=ok || echo chmod=refused\n\
         echo \"err=$( (echo pwned > /f) 2>&1)\"",
    ));
    assert_eq!(r.get("read"), "host root only");
    assert_eq!(r.get("write"), "refused");
    assert_eq!(r.get("chmod"), "refused");
    assert!(r.get("err").contains("Permission denied"), "{r:?}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "host root only\n");
    assert_eq!(
        std::fs::metadata(&f).unwrap().mode() & 0o7777,
        0o644,
        "mode changed"
    );
    assert_nothing_left(&t, &before);
}

// ---------------------------------------------------------------------------------------
// With -x, -a, -u

#[test]
fn ephemeral_writes_do_not_reach_the_tree() {
    let t = Tree::rootfs("ns-u-ephemeral");
    let snap = snapshot(t.path());
    let before = our_mounts();
    let script = format!(
        "{PRINT_IDS}\n\
         touch /eph && echo touched=ok\n\
         echo x >> /etc/passwd && echo appended=ok\n\
         rm /bin/cat && echo removed=ok\n\
         echo \"eph=$(stat -c %u:%g /eph)\""
    );
    let r = Report::new(&sh_ok(&t, &["-U", "-x"], &script));
    picked_base(&r.map("uid_map"));
    assert_eq!(r.get("touched"), "ok");
    assert_eq!(r.get("appended"), "ok");
    assert_eq!(r.get("removed"), "ok");
    assert_eq!(r.get("eph"), "0:0");
    assert_snapshot_unchanged(t.path(), &snap);
    assert_nothing_left(&t, &before);
}

#[test]
fn as_pid2_runs_under_ns_init_and_relays_the_exit_code() {
    let t = Tree::rootfs("ns-u-pid2");
    let before = our_mounts();
    let out = sh(
        &t,
        &["-U", "-a"],
        "echo \"uid_map=$(cat /proc/self/uid_map)\"\n\
         echo \"pid1=$(cat /proc/1/comm)\"\n\
         echo \"me=$$\"\n\
         exit 7",
    );
    assert_eq!(out.code, 7, "{out}");
    assert_eq!(out.stderr, "", "{out}");
    let r = Report::new(&out.stdout);
    picked_base(&r.map("uid_map"));
    assert_eq!(r.get("pid1"), "ns-init");
    assert_eq!(r.get("me"), "2");
    assert_nothing_left(&t, &before);
}

#[test]
fn user_daemon_has_uid_1_and_no_capabilities() {
    let t = Tree::rootfs("ns-u-daemon");
    let before = our_mounts();
    let r = Report::new(&sh_ok(&t, &["-U", "-u", "daemon"], PRINT_IDS));
    picked_base(&r.map("uid_map"));
    assert_eq!((r.get("uid"), r.get("gid")), ("1", "1"));
    assert_eq!(r.hex("CapEff"), 0, "CapEff");
    assert_nothing_left(&t, &before);
}

// ---------------------------------------------------------------------------------------
// A killed monitor

#[test]
fn after_the_monitor_is_killed_a_new_container_still_starts() {
    let t = Tree::rootfs("ns-u-killed");
    let before = our_mounts();
    let print = "echo \"uid_map=$(cat /proc/self/uid_map)\"";
    let r = start(&t, &["-U"], print);
    let b1 = base_of(&r);
    let _journal = ForgetJournal(r.pid());
    r.signal(libc::SIGKILL);
    let out = r.wait();
    assert_eq!(out.signal, Some(libc::SIGKILL), "{out}");
    let left = wait_no_procs_in(t.path(), Duration::from_secs(5));
    assert!(left.is_empty(), "processes left after SIGKILL: {left:#?}");

    // The range's lock file may remain (nobody holds it): a new container must start.
    let out = sh(&t, &["-U"], print);
    assert!(out.code == 0 && out.stderr.is_empty(), "{out}");
    let b2 = picked_base(&Report::new(&out.stdout).map("uid_map"));
    assert!(
        !lock_file(b2).exists(),
        "lock file of {b2} left after a clean exit"
    );
    eprintln!("killed monitor's base {b1:#x}, next container's {b2:#x}");
    assert_nothing_left(&t, &before);
}

// ---------------------------------------------------------------------------------------
// With a veth

#[test]
fn pick_with_veth_gets_host0_and_a_fresh_sysfs() {
    let ns = TestNetns::new("u");
    let t = Tree::rootfs("ns-u-veth");
    let before = our_mounts();
    let script = format!(
        "{PRINT_IDS}\n{PRINT_MOUNTS}\n\
         echo \"net=$(ls /sys/class/net | tr '\\n' ' ')\"\n\
         ip link show host0 >/dev/null && echo host0=ok"
    );
    let out = run_cmd(
        ns.ns_run(&t, &["--private-users=pick", "-n"], &["sh", "-c", &script]),
        None,
    );
    assert!(out.code == 0 && out.stderr.is_empty(), "{out}");
    let r = Report::new(&out.stdout);
    picked_base(&r.map("uid_map"));
    assert_eq!(r.get("host0"), "ok");
    let (sys, opts) = r.mount("/sys");
    assert_eq!(sys, "sysfs");
    assert!(opts.contains(&"ro"), "/sys is not read-only: {opts:?}");
    // A new sysfs shows the container's own network namespace, not the one ns-run ran in.
    assert_eq!(r.get("net").trim(), "host0 lo", "/sys/class/net");
    assert_eq!(r.hex("CapEff"), CAPS_USERNS_NET, "CapEff");
    assert_nothing_left(&t, &before);
}

#[test]
fn bind_user_maps_the_host_user_and_binds_its_home() {
    let t = Tree::rootfs("ns-u-binduser");
    let home = t.host_dir("home");
    let user = HostUser::new("bu", &home);
    chown(&home, user.uid, user.uid);
    std::fs::write(home.join("mine"), "x").unwrap();
    chown(&home.join("mine"), user.uid, user.uid);
    let before = our_mounts();
    let opt = format!("--bind-user={}", user.name);
    let n = &user.name;
    let r = Report::new(&sh_ok(
        &t,
        &["-U", &opt],
        &format!(
            "echo \"lines=$(grep -c . /proc/self/uid_map)\"\n\
             echo \"hole=$(awk '$1 == 60514 {{print $2, $3}}' /proc/self/uid_map)\"\n\
             echo \"home=$(stat -c %u:%g /run/host/home/{n})\"\n\
             echo \"file=$(stat -c %u /run/host/home/{n}/mine)\"\n\
             echo \"record=$(grep -o '\"uid\":60514' /run/host/userdb/{n}.user)\"\n\
             echo \"link=$(readlink /run/host/userdb/60514.user)\""
        ),
    ));
    assert_eq!(r.get("lines"), "3");
    assert_eq!(r.get("hole"), format!("{} 1", user.uid));
    assert_eq!(r.get("home"), "60514:60514");
    assert_eq!(r.get("file"), "60514");
    assert_eq!(r.get("record"), "\"uid\":60514");
    assert_eq!(r.get("link"), format!("{n}.user"));
    assert!(
        !t.path().join("run/host").exists(),
        "written into the image"
    );
    assert_nothing_left(&t, &before);
}

#[test]
fn bind_user_errors() {
    let t = Tree::rootfs("ns-u-binduser-bad");
    let out = run(&["-D", t.arg(), "--bind-user=root", "true"]);
    assert_refused(&out, &["--bind-user=root", "--private-users"]);
    let out = run(&["-D", t.arg(), "-U", "--bind-user=ns-no-such-user", "true"]);
    assert_refused(&out, &["--bind-user=ns-no-such-user", "no such user"]);
}

#[test]
fn rootless_user_runs_a_container_on_its_own_tree() {
    let t = Tree::rootfs("ns-u-rootless");
    // The binaries, where the unprivileged user can surely reach them.
    let bins = t.host_dir("bins");
    for b in ["ns-run", "ns-enter", "ns-mount", "ns-caps", "ns-init"] {
        std::fs::copy(bin(b), bins.join(b)).unwrap();
    }
    for d in [t.path().parent().unwrap(), &bins] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let user = HostUser::new("rl", &t.host_dir("rlhome"));
    let st = Command::new("chown")
        .args(["-R", &format!("{0}:{0}", user.uid)])
        .arg(t.path())
        .status()
        .unwrap();
    assert!(st.success());
    let before = our_mounts();
    let run_as = |args: &[&str]| {
        let mut c = Command::new("runuser");
        c.args(["-u", &user.name, "--"])
            .arg(bins.join("ns-run"))
            .args(args);
        c.env("XDG_RUNTIME_DIR", "/nonexistent").current_dir("/");
        run_cmd(c, None)
    };
    let out = run_as(&[
        "-D",
        t.arg(),
        "-U",
        "--private-network",
        "-a",
        "sh",
        "-c",
        "id -u; head -1 /proc/self/uid_map; echo $$; ip link | grep -c LOOPBACK; touch /root/made",
    ]);
    assert_eq!(out.code, 0, "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "0", "{out}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["0", &user.uid.to_string(), "1"],
        "{out}"
    );
    assert_eq!(lines[2], "2", "payload is PID 2 under -a: {out}");
    assert_eq!(lines[3], "1", "only lo: {out}");
    assert_eq!(
        owner(&t.path().join("root/made")).0,
        user.uid,
        "container root is the user"
    );
    // Without -U, and with host-side networking, one line and 125.
    assert_refused(&run_as(&["-D", t.arg(), "true"]), &["-U"]);
    assert_refused(
        &run_as(&["-D", t.arg(), "-U", "-n", "true"]),
        &["need root"],
    );
    assert_nothing_left(&t, &before);
    let _ = std::fs::remove_dir_all(format!("/tmp/ns-run-{}", user.uid));
}
