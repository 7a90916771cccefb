//! Issue 19's memory goal under `-a`: every container runs ns-init as its PID 1 from a sealed
//! memfd copy (design constraint 9), and containers of one build share ONE copy, so that its
//! ~1.4 MB are counted once per host, not per container. A monitor keeps its copy open and
//! records it in its registry entry (`init_copy`); a later start takes it from that monitor
//! (pidfd_getfd) when the entry names its own ns-init build, and only after checking what it
//! got (the recorded inode, a memfd, sealed, its mode and owner untouched). Anything else (no
//! entry, a forged or outdated record, a copy a container tampered with, another build) gives
//! a fresh copy, silently. A container cannot change the shared copy for the others: not its
//! content, not its mode, times or attributes. Only containers with a user namespace of their
//! own (-U) share: without one, container root could set the copy's attributes (a channel
//! between containers), so they each get a copy of their own, as before, and record none.
//!
//! Each test runs a build of its own (ns-init copied, the other binaries linked beside it):
//! the tests run at once, and a container of one would otherwise share another's copy.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ns_tests::{bin, spawn, spawn_until, unique, Running, Stopping, Tree};
use serde_json::Value;

/// A container's script: say so once running, then sleep.
const READY: &str = "echo ready; exec sleep 100";

fn entry_path(name: &str) -> PathBuf {
    Path::new("/run/ns-run/machines").join(format!("{name}.json"))
}

fn entry(name: &str) -> Value {
    let text = std::fs::read(entry_path(name)).expect("registry entry");
    serde_json::from_slice(&text).expect("entry is JSON")
}

/// A build of its own in `t`'s directory `dir`: ns-init a copy (a file of its own, as a
/// rebuilt or reinstalled ns-init is), ns-run and the other stages linked.
struct Build(PathBuf);

impl Build {
    fn new(t: &Tree, dir: &str) -> Build {
        let d = t.host_dir(dir);
        for n in ["ns-run", "ns-enter", "ns-mount", "ns-caps"] {
            if std::fs::hard_link(bin(n), d.join(n)).is_err() {
                std::fs::copy(bin(n), d.join(n)).unwrap();
            }
        }
        std::fs::copy(bin("ns-init"), d.join("ns-init")).unwrap();
        Build(d)
    }
}

/// A registered `-a` container of `t` (read-only: several share the tree) run by `build`,
/// that prints `ready` and sleeps.
struct Sleeper {
    name: String,
    run: Stopping,
}

impl Sleeper {
    fn start(t: &Tree, build: &Build, tag: &str) -> Sleeper {
        Sleeper::start_with(t, build, tag, READY)
    }

    fn start_with(t: &Tree, build: &Build, tag: &str, script: &str) -> Sleeper {
        Sleeper::start_opts(t, build, tag, &["-U"], script)
    }

    /// With `opts` in place of `-U`.
    fn start_opts(t: &Tree, build: &Build, tag: &str, opts: &[&str], script: &str) -> Sleeper {
        let name = unique(tag);
        let c = Sleeper::command_with(t, build, &name, opts, script);
        Sleeper::started(name, spawn_until(c, "ready"))
    }

    fn command(t: &Tree, build: &Build, name: &str, script: &str) -> Command {
        Sleeper::command_with(t, build, name, &["-U"], script)
    }

    fn command_with(t: &Tree, build: &Build, name: &str, opts: &[&str], script: &str) -> Command {
        let mut c = Command::new(build.0.join("ns-run"));
        c.env_remove("NS_DEBUG").env_remove("NS_STAGE_FDS");
        t.tag(&mut c)
            .args(["-q", "-M", name, "-D", t.arg(), "-a", "--read-only"])
            .args(opts)
            .args(["sh", "-c", script]);
        c
    }

    /// Once `run` printed `ready`.
    fn started(name: String, run: Running) -> Sleeper {
        let s = Sleeper {
            name,
            run: Stopping::new(run),
        };
        s.wait_started();
        s
    }

    /// The payload runs (the monitor dropped its entry's `starting` lock): the entry is
    /// published once, before, and never rewritten, so an edit of it stays.
    fn wait_started(&self) {
        let end = Instant::now() + Duration::from_secs(10);
        while ns_tests::machine_starting(&self.name) || !entry_path(&self.name).exists() {
            assert!(
                Instant::now() < end,
                "entry of {} still starting",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The container's PID 1 (ns-init), host pid.
    fn init_pid(&self) -> i32 {
        entry(&self.name)["leader"].as_i64().expect("leader") as i32
    }

    fn monitor_pid(&self) -> i32 {
        self.run.pid()
    }

    /// (dev, ino) of ns-init's exe, as `stat -L /proc/PID/exe` shows it.
    fn init_exe(&self) -> (u64, u64) {
        let link = format!("/proc/{}/exe", self.init_pid());
        let name = std::fs::read_link(&link).expect("readlink exe");
        assert_eq!(
            name.to_string_lossy(),
            "/memfd:ns-init (deleted)",
            "PID 1 of {} does not run a sealed copy",
            self.name
        );
        let m = std::fs::metadata(&link).expect("stat exe");
        (m.dev(), m.ino())
    }

    /// (dev, ino) of every ns-init memfd the monitor holds.
    fn monitor_copies(&self) -> Vec<(u64, u64)> {
        let dir = format!("/proc/{}/fd", self.monitor_pid());
        std::fs::read_dir(&dir)
            .expect("monitor fds")
            .flatten()
            .filter(|f| {
                std::fs::read_link(f.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:ns-init"))
            })
            .filter_map(|f| std::fs::metadata(f.path()).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect()
    }

    fn stop(self) {
        let out = self.run.stop();
        assert_eq!((out.code, out.signal), (137, None), "{out}");
        assert!(out.stderr_lines().is_empty(), "{out}");
    }
}

#[test]
fn containers_of_one_build_run_one_shared_copy_of_ns_init() {
    let t = Tree::rootfs("share");
    let build = Build::new(&t, "bin");
    let a = Sleeper::start(&t, &build, "sh-a");
    let b = Sleeper::start(&t, &build, "sh-b");
    let copy = a.init_exe();
    assert_eq!(b.init_exe(), copy, "b's PID 1 runs a copy of its own");
    // b's start made no copy of its own: its monitor holds a's.
    assert_eq!(a.monitor_copies(), vec![copy]);
    assert_eq!(b.monitor_copies(), vec![copy], "b's monitor made a copy");
    // a ends; b goes on, and its monitor hands the copy to the next start.
    a.stop();
    assert!(
        Path::new(&format!("/proc/{}/exe", b.init_pid())).exists(),
        "b ended with a"
    );
    assert_eq!(b.init_exe(), copy);
    let c = Sleeper::start(&t, &build, "sh-c");
    assert_eq!(c.init_exe(), copy, "c did not take b's copy");
    assert_eq!(c.monitor_copies(), vec![copy]);
    c.stop();
    b.stop();
}

#[test]
fn without_a_user_namespace_no_copy_is_shared_or_offered() {
    // Container root without -U is host root with CAP_FOWNER: it could set the copy's
    // attributes and times for the other containers to read. So no sharing there.
    let t = Tree::rootfs("nouserns");
    let build = Build::new(&t, "bin");
    let start = |tag: &str| Sleeper::start_opts(&t, &build, tag, &[], READY);
    let a = start("nu-a");
    let b = start("nu-b");
    assert_ne!(
        a.init_exe(),
        b.init_exe(),
        "containers without -U share a copy"
    );
    assert!(entry(&a.name).get("init_copy").is_none_or(Value::is_null));
    // Nor does a -U container take theirs.
    let c = Sleeper::start(&t, &build, "nu-c");
    assert_ne!(c.init_exe(), a.init_exe());
    assert_ne!(c.init_exe(), b.init_exe());
    c.stop();
    b.stop();
    a.stop();
}

#[test]
fn a_user_namespace_that_maps_host_root_shares_nothing() {
    // --private-users=identity (or a range from 0) maps host root: container root owns the
    // copy there, and could set its times and attributes for the others to read.
    let t = Tree::rootfs("identity");
    let build = Build::new(&t, "bin");
    let a = Sleeper::start(&t, &build, "id-a");
    let b = Sleeper::start_opts(&t, &build, "id-b", &["--private-users=identity"], READY);
    assert_ne!(
        b.init_exe(),
        a.init_exe(),
        "an identity-mapped container took the copy"
    );
    assert!(entry(&b.name).get("init_copy").is_none_or(Value::is_null));
    b.stop();
    a.stop();
}

#[test]
fn a_burst_of_starts_makes_one_copy() {
    // Started at once, before any of them shows its copy in the registry: one makes the
    // copy, the others wait for its entry and take it.
    const N: usize = 6;
    let t = Tree::rootfs("burst");
    let build = Build::new(&t, "bin");
    let runs: Vec<(String, Running)> = (0..N)
        .map(|i| {
            let name = unique(&format!("bu{i}"));
            let c = Sleeper::command(&t, &build, &name, READY);
            (name, spawn(c, None))
        })
        .collect();
    let all: Vec<Sleeper> = runs
        .into_iter()
        .map(|(name, mut r)| {
            let up = r.wait_stdout("ready", Duration::from_secs(10));
            assert!(up, "{name} did not start: {}", r.stdout_so_far());
            Sleeper::started(name, r)
        })
        .collect();
    let copies: std::collections::BTreeSet<(u64, u64)> =
        all.iter().map(Sleeper::init_exe).collect();
    for s in all {
        s.stop();
    }
    assert_eq!(copies.len(), 1, "{N} starts at once made copies {copies:?}");
    // The lock the maker held is gone with it.
    let ns_init = std::fs::metadata(build.0.join("ns-init")).unwrap();
    let left: Vec<String> = std::fs::read_dir("/run/ns-run/init")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&format!("-{:x}-", ns_init.ino())))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Point the live entry of `s` somewhere else: `edit` changes its `init_copy` record.
fn forge(s: &Sleeper, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut e = entry(&s.name);
    let rec = e
        .get_mut("init_copy")
        .and_then(Value::as_object_mut)
        .expect("the entry records its ns-init copy");
    edit(rec);
    // Written in place: the file stays ours, 0644, as the registry requires.
    std::fs::write(entry_path(&s.name), serde_json::to_vec(&e).unwrap()).unwrap();
}

#[test]
fn a_forged_or_outdated_record_or_a_tampered_copy_is_not_taken() {
    let t = Tree::rootfs("forge");
    let build = Build::new(&t, "bin");
    let a = Sleeper::start(&t, &build, "fg-a");
    let copy = a.init_exe();
    let fresh = |tag: &str| {
        let s = Sleeper::start(&t, &build, tag);
        let got = s.init_exe();
        s.stop();
        got
    };
    let original = entry(&a.name)["init_copy"].clone();
    let restore = || forge(&a, |r| *r = original.as_object().unwrap().clone());

    // The recorded inode is not the copy's.
    forge(&a, |r| {
        let ino = r["ino"].as_u64().unwrap();
        r.insert("ino".into(), (ino + 1).into());
    });
    assert_ne!(
        fresh("fg-ino"),
        copy,
        "took a copy of another inode than recorded"
    );
    restore();

    // The recorded fd is another file of the monitor (its registry lock: not a memfd),
    // recorded with that file's own inode.
    let lock = Path::new("/run/ns-run/machines").join(format!("{}.lock", a.name));
    let fds = format!("/proc/{}/fd", a.monitor_pid());
    let (fd, md) = std::fs::read_dir(&fds)
        .unwrap()
        .flatten()
        .find(|f| std::fs::read_link(f.path()).is_ok_and(|l| l == lock))
        .map(|f| {
            let fd: u64 = f.file_name().to_string_lossy().parse().unwrap();
            (fd, std::fs::metadata(f.path()).unwrap())
        })
        .expect("the monitor holds its lock file");
    forge(&a, |r| {
        r.insert("fd".into(), fd.into());
        r.insert("dev".into(), md.dev().into());
        r.insert("ino".into(), md.ino().into());
    });
    assert_ne!(fresh("fg-fd"), copy);
    restore();

    // The record names another ns-init build (the binary was replaced since).
    forge(&a, |r| {
        let src = r["source"].as_object_mut().unwrap();
        let m = src["mtime_sec"].as_i64().unwrap();
        src.insert("mtime_sec".into(), (m - 1).into());
    });
    assert_ne!(fresh("fg-src"), copy);
    restore();

    // Sanity: restored, the record is taken again.
    assert_eq!(fresh("fg-ok"), copy, "the restored record was not taken");

    // Another build (its ns-init another file): its own copy.
    let s = Sleeper::start(&t, &Build::new(&t, "other"), "fg-bld");
    assert_ne!(s.init_exe(), copy, "another build took this build's copy");
    s.stop();

    // The copy itself changed: an ACL that strips its exec bits (the one way past
    // F_SEAL_EXEC; set here by host root, as container root without -U could). The
    // running container goes on; a new start does not take it.
    let exe = format!("/proc/{}/exe", a.init_pid());
    set_acl_read_only(&exe);
    let mode = std::fs::metadata(&exe).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o444, "the ACL did not strip the exec bits");
    assert_ne!(fresh("fg-acl"), copy, "took a copy that cannot be executed");
    a.stop();
}

/// An access ACL u::r--,g::r--,o::r-- (equivalent to mode 0444) on `path`.
fn set_acl_read_only(path: &str) {
    let entry = |tag: u16, perm: u16| {
        let mut e = Vec::new();
        e.extend(tag.to_le_bytes());
        e.extend(perm.to_le_bytes());
        e.extend(u32::MAX.to_le_bytes());
        e
    };
    let mut acl = 2u32.to_le_bytes().to_vec();
    for tag in [0x01, 0x04, 0x20] {
        acl.extend(entry(tag, 4));
    }
    let p = std::ffi::CString::new(path).unwrap();
    // SAFETY: NUL-terminated path and name; `acl` outlives the call, which only reads it.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            acl.as_ptr().cast(),
            acl.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

#[test]
fn a_container_cannot_change_the_shared_copy() {
    // Container root (-U: no power over host root's files) attacks its PID 1's exe, which is
    // the copy the other containers run: write it, reopen it for writing through an fd,
    // truncate it, take its exec bits, set its times, give it an attribute.
    let t = Tree::rootfs("attack");
    let build = Build::new(&t, "bin");
    let a = Sleeper::start(&t, &build, "at-a");
    let script = "
        try() { if \"$@\" 2>/dev/null; then echo \"DONE $*\"; else echo \"refused $*\"; fi; }
        try sh -c 'echo x >> /proc/1/exe'
        try sh -c 'printf x 1<>/proc/1/exe'
        try sh -c 'exec 3</proc/1/exe; echo x >> /proc/self/fd/3'
        try truncate -s 0 /proc/1/exe
        try chmod 0444 /proc/1/exe
        try chmod 0 /proc/1/exe
        try touch -d 2001-01-01 /proc/1/exe
        try touch /proc/1/exe
        try cat /proc/1/exe
        try stat -L /proc/1/exe
        try readlink /proc/1/exe
        echo ready; exec sleep 100";
    let b = Sleeper::start_with(&t, &build, "at-b", script);
    let out = b.run.stdout_so_far();
    let copy = a.init_exe();
    assert_eq!(b.init_exe(), copy, "b does not run the shared copy: {out}");
    let done: Vec<&str> = out.lines().filter(|l| l.starts_with("DONE")).collect();
    assert!(
        done.is_empty(),
        "the container changed the shared copy: {out}"
    );
    // Not even opened, read or looked at (exec-only, mode 0111): no lock, inotify watch or
    // access time on the shared file is within reach.
    assert_eq!(out.lines().filter(|l| l.starts_with("refused")).count(), 11);
    let exe = std::fs::metadata(format!("/proc/{}/exe", a.init_pid())).unwrap();
    assert_eq!(exe.mode() & 0o7777, 0o111);
    // Byte for byte what was built, as a's PID 1 sees it.
    let content = std::fs::read(format!("/proc/{}/exe", a.init_pid())).unwrap();
    assert!(
        content == std::fs::read(bin("ns-init")).unwrap(),
        "copy changed"
    );
    // And still taken by the next start.
    let c = Sleeper::start(&t, &build, "at-c");
    assert_eq!(c.init_exe(), copy);
    c.stop();
    b.stop();
    a.stop();
}

/// KiB of `field` summed over /proc/PID/smaps_rollup.
fn rollup(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn five_containers_keep_ns_init_resident_once() {
    // Each ns-init alone keeps its whole copy private (~1.4 MB of shmem, debug build);
    // shared, its pages count once, split between the containers (Pss).
    const N: usize = 5;
    const LIMIT_KIB: u64 = 400;
    let t = Tree::rootfs("density-a");
    let build = Build::new(&t, "bin");
    let all: Vec<Sleeper> = (0..N)
        .map(|i| Sleeper::start(&t, &build, &format!("dn{i}")))
        .collect();
    let figures: Vec<(u64, u64)> = all
        .iter()
        .map(|s| {
            let pid = s.init_pid();
            (
                rollup(pid, "Private_Dirty") + rollup(pid, "Private_Clean"),
                rollup(pid, "Pss"),
            )
        })
        .collect();
    let private: u64 = figures.iter().map(|f| f.0).sum();
    let pss: u64 = figures.iter().map(|f| f.1).sum();
    println!(
        "ns-init of {N} -a containers: private {private} KiB in all ({} per container), \
         Pss {pss} KiB ({} per container); each {figures:?}",
        private / N as u64,
        pss / N as u64
    );
    for s in all {
        s.stop();
    }
    for (i, (p, _)) in figures.iter().enumerate() {
        assert!(
            *p < LIMIT_KIB,
            "ns-init {i} keeps {p} KiB private: {figures:?}"
        );
    }
}
