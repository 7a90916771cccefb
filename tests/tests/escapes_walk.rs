//! Walks over trees another user or a container can change while we walk them (issue 15,
//! design rule 11): the `--template` copy and the `--private-users-ownership=chown` shift,
//! attacked by a racer that swaps a directory for a symlink to a victim directory mid-walk;
//! deep trees; Ctrl-C during a copy; and the signals and timeouts of OCI hooks.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ns_tests::{bin, cgroup_dirs, fixture, ns_run, s, snapshot, spawn, Tree};
use serde_json::json;

/// `n` files in `dir` (hard links of one file: quick to make, each copied on its own).
fn many_files(dir: &Path, n: usize) {
    fs::create_dir_all(dir).unwrap();
    let first = dir.join("f0");
    fs::write(&first, "x").unwrap();
    for i in 1..n {
        fs::hard_link(&first, dir.join(format!("f{i}"))).unwrap();
    }
}

/// A directory the test owns, with `n` files named f0.. owned by 0:0.
fn victim(t: &Tree, n: usize) -> PathBuf {
    let v = t.host_dir("victim");
    for i in 0..n {
        fs::write(v.join(format!("f{i}")), "victim\n").unwrap();
    }
    v
}

/// A busybox tree whose busybox is a copy (a shift must not chown the fixture's inode,
/// which every tree links).
fn own_rootfs(name: &str) -> Tree {
    let t = Tree::rootfs(name);
    let bb = t.path().join("bin/busybox");
    fs::remove_file(&bb).unwrap();
    fs::copy(fixture().join("bin/busybox"), &bb).unwrap();
    t
}

/// A thread that runs `step` until stopped; returns how many times `step` said it acted.
struct Racer {
    stop: Arc<AtomicBool>,
    acted: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Racer {
    fn start(step: impl Fn() -> bool + Send + 'static) -> Racer {
        let stop = Arc::new(AtomicBool::new(false));
        let acted = Arc::new(AtomicUsize::new(0));
        let (s2, a2) = (stop.clone(), acted.clone());
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                if step() {
                    a2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Racer {
            stop,
            acted,
            thread: Some(thread),
        }
    }

    /// Stop the thread; how many times it acted.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.acted.load(Ordering::Relaxed)
    }
}

impl Drop for Racer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// renameat2(RENAME_EXCHANGE): swap two names atomically.
fn exchange(a: &Path, b: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: both are valid C strings for the call.
    let r = unsafe {
        // The system call: the musl the toolchain bundles has no renameat2 wrapper.
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    r == 0
}

/// Like assert_snapshot_unchanged, with counts rather than thousands of names.
fn assert_unchanged(dir: &Path, before: &BTreeMap<String, String>, out: &ns_tests::Output) {
    let after = snapshot(dir);
    let changed = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .count();
    let added = after.keys().filter(|k| !before.contains_key(*k)).count();
    let example = after.iter().find(|(k, v)| before.get(*k) != Some(v));
    assert_eq!(
        (changed, added),
        (0, 0),
        "{}: entries changed, added (e.g. {example:?}): {out}",
        dir.display()
    );
}

fn hidden_copies(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".#"))
        .collect()
}

#[test]
fn template_copy_swapped_for_a_symlink_writes_nothing_elsewhere() {
    // The copy is made in `.#ct.ns-run-PID` beside the new directory, whose parent another
    // user may own: a racer renames it away and puts a symlink to its victim in its place
    // as soon as it appears. Root must not copy into, chmod or run a container on the
    // victim: the swap can only make the copy fail.
    let tmpl = Tree::rootfs("walk-tmpl-race");
    many_files(&tmpl.path().join("usr/share/many"), 4000);
    let t = Tree::empty("walk-race-parent");
    // The racer swaps once the copy is inside usr/share/many; the victim has that
    // directory too (as a host's / has /usr/share), so a copy that goes on by path
    // writes the rest of it into the victim.
    // Its files have the names of the copy's (a swap between two steps of one file's
    // copy then finds the file it expects).
    let victim = victim(&t, 20);
    let vmany = victim.join("usr/share/many");
    fs::create_dir_all(&vmany).unwrap();
    for i in 0..4000 {
        fs::write(vmany.join(format!("f{i}")), "victim\n").unwrap();
    }
    let before = snapshot(&victim);
    let parent = t.base().to_path_buf();
    let dir = parent.join("ct");
    let mut cmd = ns_run();
    cmd.args(["-q", "--template", tmpl.arg(), "-D", s(&dir), "/bin/true"]);
    let r = spawn(cmd, None);
    let tmp = parent.join(format!(".#ct.ns-run-{}", r.pid()));
    // Swapped atomically (RENAME_EXCHANGE): the copy's name is never missing.
    let lnk = parent.join("moved");
    std::os::unix::fs::symlink(&victim, &lnk).unwrap();
    let l2 = lnk.clone();
    let racer = Racer::start(move || {
        let started = fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_dir())
            && fs::read_dir(tmp.join("usr/share/many")).is_ok_and(|mut d| d.next().is_some());
        if !started {
            std::hint::spin_loop();
            return false;
        }
        exchange(&tmp, &l2)
    });
    let out = r.wait();
    let swaps = racer.stop();
    assert!(swaps > 0, "the racer never saw the copy: {out}");
    assert_unchanged(&victim, &before, &out);
    let md = fs::symlink_metadata(&dir);
    assert!(
        !md.as_ref().is_ok_and(|m| m.file_type().is_symlink()),
        "{} is a symlink: the container ran on the victim ({out})",
        dir.display()
    );
    // The swap makes the copy fail, with one line, and leaves nothing of ours behind.
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(out.stderr.contains("--template"), "{out}");
    assert!(md.is_err(), "{} exists", dir.display());
    // The copy, moved by the racer: emptied through the fd we held.
    let left = fs::read_dir(&lnk).unwrap().count();
    assert_eq!(left, 0, "the moved copy still holds {left} entries");
}

#[test]
fn ctrl_c_or_sigterm_during_a_template_copy_leaves_nothing() {
    let tmpl = Tree::rootfs("walk-tmpl-sig");
    many_files(&tmpl.path().join("usr/share/many"), 20000);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let t = Tree::empty("walk-sig-parent");
        let parent = t.base();
        let dir = parent.join("ct");
        let mut cmd = ns_run();
        cmd.args(["-q", "--template", tmpl.arg(), "-D", s(&dir), "/bin/true"]);
        let mut r = spawn(cmd, None);
        let tmp = parent.join(format!(".#ct.ns-run-{}", r.pid()));
        // Signal once the copy has started (entries in the hidden directory).
        let t0 = Instant::now();
        while !fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some()) {
            assert!(
                r.is_running() && t0.elapsed() < Duration::from_secs(10),
                "the copy did not start"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        r.signal(sig);
        let out = r.wait();
        assert_eq!(out.code, 128 + sig, "signal {sig}: {out}");
        assert!(!dir.exists(), "signal {sig}: {} was made", dir.display());
        assert_eq!(hidden_copies(parent), Vec::<String>::new(), "signal {sig}");
    }
}

#[test]
fn chown_shift_with_a_directory_swapped_mid_walk_changes_nothing_outside() {
    // A racer flips a directory of the tree between itself and a symlink to a victim
    // directory whose files have the same names: a walk by path chowns victim files.
    let t = own_rootfs("walk-chown-race");
    let data = t.path().join("data");
    let other = t.path().join("data.other");
    fs::create_dir(&data).unwrap();
    for i in 0..3000 {
        fs::write(data.join(format!("f{i}")), "tree\n").unwrap();
    }
    let victim = victim(&t, 3000);
    let before = snapshot(&victim);
    std::os::unix::fs::symlink(&victim, &other).unwrap();
    let (d2, o2) = (data.clone(), other.clone());
    let racer = Racer::start(move || {
        // Both names always exist: one is the directory, the other the symlink.
        let swapped = exchange(&d2, &o2);
        std::thread::sleep(Duration::from_micros(100));
        swapped
    });
    let mut cmd = ns_run();
    cmd.args([
        "-q",
        "-D",
        t.arg(),
        "--private-users=pick",
        "--private-users-ownership=chown",
        "/bin/true",
    ]);
    let out = spawn(cmd, None).wait();
    let swaps = racer.stop();
    assert!(swaps > 0, "the racer never swapped: {out}");
    assert_unchanged(&victim, &before, &out);
    // Either the walk went through the directory it opened (success) or the swap made
    // it fail; never anything else.
    assert!(out.code == 0 || out.code == 125, "{out}");
    if out.code == 125 {
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
    }
}

/// `ns-run ARGS` with its soft fd limit at 64 (the hard one unchanged).
fn ns_run_with_few_fds(args: &[&str]) -> ns_tests::Output {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "ulimit -S -n 64 && exec \"$@\"", "sh"])
        .arg(bin("ns-run"))
        .arg("--register=no")
        .args(args)
        .env_remove("NS_DEBUG")
        .env_remove("NS_STAGE_FDS");
    spawn(cmd, None).wait()
}

#[test]
fn deep_trees_are_copied_and_shifted_without_running_out_of_fds() {
    // 1000 levels: a walk that holds an fd per level needs more than the soft limit of 64
    // the test starts ns-run with.
    const DEPTH: usize = 1000;
    let tmpl = Tree::rootfs("walk-tmpl-deep");
    let rel: PathBuf = std::iter::repeat_n("d", DEPTH).collect();
    fs::create_dir_all(tmpl.path().join(&rel)).unwrap();
    fs::write(tmpl.path().join(&rel).join("leaf"), "deep\n").unwrap();
    let t = Tree::empty("walk-deep-parent");
    let dir = t.base().join("ct");
    let out = ns_run_with_few_fds(&[
        "-q",
        "--template",
        tmpl.arg(),
        "-D",
        s(&dir),
        "/bin/cat",
        &format!("/{}/leaf", rel.display()),
    ]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "deep\n"), "{out}");
    // The copy's busybox is a copy, not the fixture's inode: the shift may chown it.
    let out = ns_run_with_few_fds(&[
        "-q",
        "-D",
        s(&dir),
        "--private-users=pick",
        "--private-users-ownership=chown",
        "/bin/true",
    ]);
    assert_eq!(out.code, 0, "{out}");
    let top = fs::metadata(&dir).unwrap().uid();
    assert!(top >= 0x80000, "not shifted: {top}");
    let leaf = fs::symlink_metadata(dir.join(&rel).join("leaf")).unwrap();
    assert_eq!(leaf.uid(), top, "the deepest file was not shifted");
}

#[test]
fn a_template_deeper_than_2048_levels_fails_and_leaves_nothing() {
    // Walks are bounded (nspawn's copy stops at 2048 levels too): one line, 125, and the
    // partial copy removed. The levels are made fd-relative (their path is past PATH_MAX).
    let tmpl = Tree::rootfs("walk-tmpl-deeper");
    let top = fs::File::open(tmpl.path()).unwrap();
    let mut fds = vec![top];
    for _ in 0..2049 {
        use std::os::fd::{AsRawFd, FromRawFd};
        let at = fds.last().unwrap().as_raw_fd();
        // SAFETY: mkdirat and openat with a valid dir fd and a C string literal; the new
        // fd is ours.
        let fd = unsafe {
            assert_eq!(libc::mkdirat(at, c"d".as_ptr(), 0o755), 0);
            libc::openat(
                at,
                c"d".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        assert!(fd >= 0);
        // SAFETY: a new fd nothing else owns.
        fds.push(unsafe { fs::File::from_raw_fd(fd) });
        if fds.len() > 8 {
            fds.remove(0);
        }
    }
    drop(fds);
    let t = Tree::empty("walk-deeper-parent");
    let dir = t.base().join("ct");
    let mut cmd = ns_run();
    cmd.args(["-q", "--template", tmpl.arg(), "-D", s(&dir), "/bin/true"]);
    let out = spawn(cmd, None).wait();
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(
        out.stderr.contains("more than 2048 directories deep"),
        "{out}"
    );
    assert!(!dir.exists());
    assert_eq!(hidden_copies(t.base()), Vec::<String>::new());
}

fn oci(root: &Path, args: &[&str]) -> ns_tests::Output {
    let mut c = Command::new(bin("ns-oci"));
    c.arg("--root").arg(root).args(args).stdin(Stdio::null());
    spawn(c, None).wait()
}

#[test]
fn oci_hooks_start_with_clean_signals() {
    // `ns-oci run` blocks SIGTERM, SIGINT, SIGHUP and SIGCHLD to relay them; a hook must
    // not inherit that (a blocked SIGTERM makes it unstoppable by the usual means), nor
    // ignored signals. grep runs as the hook itself (a shell would reset its mask) and
    // prints to ns-oci's stdout, which hooks share.
    let t = Tree::empty("walk-hook-sig");
    ns_tests::spec_bundle(&t, &["true"], |v| {
        v["hooks"] = json!({"prestart": [{"path": "/usr/bin/grep",
            "args": ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]}]});
    });
    let root = t.host_dir("oci-root");
    let out = oci(
        &root,
        &[
            "run",
            "--bundle",
            t.arg(),
            &ns_tests::unique("walk-hook-sig"),
        ],
    );
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.stdout,
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
}

#[test]
fn oci_hook_timeouts_must_be_positive() {
    // The OCI spec: "If set, timeout MUST be greater than zero". runc turns 0 or less
    // into a timer that fires at once (the hook is killed, the verb fails); we refuse the
    // config up front, before anything is made. A negative timeout used to mean none.
    for timeout in [-1i64, 0] {
        let t = Tree::empty("walk-hook-timeout");
        ns_tests::spec_bundle(&t, &["true"], |v| {
            v["hooks"] = json!({"prestart": [
                {"path": "/bin/true"},
                {"path": "/bin/sh", "args": ["sh", "-c", "sleep 3"], "timeout": timeout}]});
        });
        let root = t.host_dir("oci-root");
        let id = ns_tests::unique(&format!("walk-hook-t{}", timeout + 1));
        let t0 = Instant::now();
        let out = oci(&root, &["create", "--bundle", t.arg(), &id]);
        if out.code == 0 {
            // Created (the hook's timeout ignored): remove it before failing.
            oci(&root, &["delete", "--force", &id]);
        }
        assert_eq!(
            (out.code, out.stderr.as_str()),
            (
                1,
                format!(
                    "ns-oci: config.json: hooks.prestart[1].timeout={timeout}: must be greater than zero\n"
                )
                .as_str()
            ),
            "{out}"
        );
        assert!(t0.elapsed() < Duration::from_secs(3), "the hook ran");
        assert!(!root.join(&id).exists(), "a record was left");
        assert!(
            !cgroup_dirs()
                .iter()
                .any(|d| d.to_string_lossy().ends_with(&format!("ns-oci/{id}"))),
            "cgroups left"
        );
    }
}
