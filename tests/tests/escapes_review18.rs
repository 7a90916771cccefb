//! Review of issue 18's host paths under `-U` (the monitor opens the tree, bind sources and
//! overlay layers on the host and hands them down as mounts): what a container root can do
//! with what it is handed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use ns_tests::{run_cmd, s, sh_in, HostTmpfs, Output, Tree};

/// The tests of this file check that the host's mounts of this process's trees are
/// unchanged by their containers; the one that mounts on the host on purpose (shared binds)
/// runs alone.
static HOST_MOUNTING: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn beside_others() -> std::sync::RwLockReadGuard<'static, ()> {
    HOST_MOUNTING.read().unwrap_or_else(|e| e.into_inner())
}

/// A tmpfs on the host at `at`, writable by anyone, then made read-only as a mount (the
/// file system itself stays writable): a host mount whose read-only flag is all that keeps
/// a container from writing there.
fn host_read_only_mount(at: &Path) -> HostTmpfs {
    let m = HostTmpfs::mount(at);
    fs::set_permissions(at, fs::Permissions::from_mode(0o1777)).unwrap();
    let st = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(at)
        .status()
        .unwrap();
    assert!(st.success(), "remount {} read-only", at.display());
    m
}

/// A fixed 64K-aligned id range for ownership `off` (the tree keeps its ids, so the root
/// is cloned with its submounts), apart from hostpaths.rs's and from this process's others
/// (ns-run refuses a range in use: a clash shows as a clear failure).
fn fixed_range() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 8;
    let base = 0x5000_0000 + ((std::process::id() % 0x200) * 8 + n) * 0x10000;
    format!("--private-users={base}:65536")
}

/// Tries, in a container, to undo what keeps it from host files: unmount a host submount
/// (to see what it covers), lift a host mount's read-only flag, lift the read-only flag of a
/// `--bind-ro`. Prints what worked.
const TRY_UNLOCK: &str = "\
    umount /b/sub 2>/dev/null && echo sub_unmounted; echo \"sub=$(ls /b/sub)\"\n\
    mount -o remount,bind,rw /b/ro 2>/dev/null && echo hostro_lifted\n\
    touch /b/ro/x 2>/dev/null && echo hostro_written\n\
    mount -o remount,bind,rw /r 2>/dev/null && echo bindro_lifted\n\
    touch /r/w/x 2>/dev/null && echo bindro_written\n\
    touch /r/sub/x 2>/dev/null && echo bindro_sub_written\n\
    mount -o remount,bind,rw /r/sub 2>/dev/null && echo bindro_sub_lifted\n\
    echo done";

fn assert_still_locked(what: &str, out: &Output) {
    assert_eq!(out.code, 0, "{what}: {out}");
    assert!(out.stdout.contains("done"), "{what}: {out}");
    for lifted in [
        "sub_unmounted",
        "hostro_lifted",
        "hostro_written",
        "bindro_lifted",
        "bindro_written",
        "bindro_sub_written",
        "bindro_sub_lifted",
    ] {
        assert!(!out.stdout.contains(lifted), "{what}: {lifted}\n{out}");
    }
    assert!(
        out.stdout.contains("sub=shown"),
        "{what}: the host's submount is not what /b/sub shows\n{out}"
    );
}

/// Finding 1: a bind source's clone, made by host root in the host's mount namespace and
/// attached in the container's, carried none of the kernel's locks: container root could
/// unmount the host's submounts below an rbind (and see what they cover), lift the
/// read-only flag of a host mount below it and write there, and lift a `--bind-ro`'s. Before
/// the change, ns-mount bound the source in its own mount namespace, a copy the kernel
/// locks for the user namespace (only `--bind-ro` could be lifted); nspawn's binds are made
/// before its user namespace's mount namespace is copied: all locked.
#[test]
fn binds_handed_down_under_userns_keep_the_kernel_s_locks() {
    let _others = beside_others();
    let t = Tree::rootfs("r18-lock-bind");
    let src = t.host_dir("src");
    fs::create_dir(src.join("sub")).unwrap();
    fs::write(src.join("sub/hidden"), "").unwrap();
    let w = src.join("w");
    fs::create_dir(&w).unwrap();
    fs::set_permissions(&w, fs::Permissions::from_mode(0o1777)).unwrap();
    let _sub = HostTmpfs::mount(&src.join("sub"));
    fs::write(src.join("sub/shown"), "").unwrap();
    fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o1777)).unwrap();
    let _ro = host_read_only_mount(&src.join("ro"));
    // Mount points made beforehand: with ownership off, container root may not create them
    // in a tree host root owns (nspawn's outer child does, as host root).
    for d in ["b", "r"] {
        fs::create_dir(t.path().join(d)).unwrap();
    }
    let b = format!("--bind={}:/b", src.display());
    let r = format!("--bind-ro={}:/r", src.display());
    for opts in [vec!["-U"], vec![fixed_range().leak() as &str]] {
        let mut all = opts.clone();
        all.extend([b.as_str(), r.as_str(), "-q"]);
        let out = sh_in(&t, &all, TRY_UNLOCK);
        assert_still_locked(&format!("{opts:?}"), &out);
        assert!(
            !src.join("ro/x").exists(),
            "{opts:?}: wrote below a host ro mount"
        );
        assert!(!w.join("x").exists(), "{opts:?}: wrote through --bind-ro");
        assert!(
            !src.join("sub/x").exists(),
            "{opts:?}: wrote below a --bind-ro"
        );
    }
    // nspawn: the same refusals.
    let mut c = Command::new("systemd-nspawn");
    c.args(["-q", "--register=no", "--keep-unit", "-D", t.arg()])
        .args([fixed_range().as_str(), b.as_str(), r.as_str()])
        .args(["/bin/sh", "-c", TRY_UNLOCK]);
    assert_still_locked("nspawn", &run_cmd(c, None));
}

/// Finding 1 for the tree: cloned with its submounts by host root (ownership off), a host
/// read-only mount inside the tree could be made writable, or unmounted.
#[test]
fn the_tree_handed_down_under_userns_keeps_the_kernel_s_locks() {
    let _others = beside_others();
    let t = Tree::rootfs("r18-lock-tree");
    let ro = t.path().join("srv/ro");
    let _ro = host_read_only_mount(&ro);
    fs::write(t.path().join("srv/marker"), "").unwrap();
    let script = "\
        mount -o remount,bind,rw /srv/ro 2>/dev/null && echo hostro_lifted\n\
        touch /srv/ro/x 2>/dev/null && echo hostro_written\n\
        umount /srv/ro 2>/dev/null && echo unmounted\n\
        echo done";
    let out = sh_in(&t, &[&fixed_range(), "-q"], script);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("done"), "{out}");
    for lifted in ["hostro_lifted", "hostro_written", "unmounted"] {
        assert!(!out.stdout.contains(lifted), "{lifted}\n{out}");
    }
    assert!(
        !ro.join("x").exists(),
        "wrote below a host ro mount: {}",
        s(&ro)
    );
}

/// The paths a monitor journals for removal after its container (not cgroups).
fn journaled_paths(monitor: i32) -> Vec<std::path::PathBuf> {
    fs::read_to_string(ns_tests::cleanup_journal(monitor))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["cgroup"] != true)
        .filter_map(|v| v["path"].as_str().map(std::path::PathBuf::from))
        .collect()
}

/// Runs containers on `root` until the dead `monitor`'s journal is gone (collected by one of
/// ours, or by any other ns-run starting meanwhile: the tree is busy while it collects, and
/// removing a temporary upper may take a while). Fails after 20 s.
fn collected(root: &Path, monitor: i32) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ns_tests::cleanup_journal(monitor).exists() {
        let out = ns_tests::run(&["-D", s(root), "true"]);
        let busy = out.code == 125 && out.stderr.contains("currently busy");
        assert!(out.code == 0 || busy, "{out}");
        assert!(
            std::time::Instant::now() < end,
            "journal not collected: {out}"
        );
    }
}

/// Pinned: a monitor killed (SIGKILL) while its container runs with a temporary overlay
/// upper (in /var/tmp) and a host upper (its work directory beside it) leaves both
/// journaled, and the next ns-run removes them.
#[test]
fn a_killed_monitor_s_overlay_dirs_are_collected_by_the_next_run() {
    let _others = beside_others();
    let t = Tree::rootfs("r18-ovl-kill");
    let low = t.host_dir("low");
    fs::write(low.join("f"), "low\n").unwrap();
    let up = t.host_dir("up");
    let (l, u) = (low.display(), up.display());
    let mut c = ns_tests::ns_run();
    t.tag(&mut c)
        .args(["-q", "-U", "-D", t.arg()])
        .arg(format!("--overlay={l}::/t"))
        .arg(format!("--overlay={l}:{u}:/o"))
        .args(["sh", "-c", "cat /t/f /o/f; echo ready; sleep 100"]);
    let r = ns_tests::spawn_until(c, "ready");
    let monitor = r.pid();
    let _journal = ns_tests::ForgetJournal(monitor);
    let made = journaled_paths(monitor);
    let temp: Vec<_> = made
        .iter()
        .filter(|p| p.starts_with("/var/tmp"))
        .cloned()
        .collect();
    let work: Vec<_> = made
        .iter()
        .filter(|p| p.parent() == up.parent())
        .cloned()
        .collect();
    assert_eq!((temp.len(), work.len()), (1, 1), "journaled: {made:?}");
    assert!(temp[0].is_dir() && work[0].is_dir(), "{made:?}");
    r.signal(libc::SIGKILL);
    let out = r.wait();
    assert_eq!(out.signal, Some(libc::SIGKILL), "{out}");
    let left = ns_tests::wait_no_procs_in(t.path(), std::time::Duration::from_secs(5));
    assert!(left.is_empty(), "processes left: {left:#?}");
    collected(t.path(), monitor);
    let left: Vec<_> = made.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "left after the next run: {left:?}");
}

/// Pinned: a host upper's work directory (`.#…`, made by the monitor beside the upper, and
/// removed with its content after exit) in a directory container root owns and sees (bound
/// in): container root renames it away and puts a symlink to a host directory in its place.
/// The removal after exit never follows it (design constraint 11).
#[test]
fn an_overlay_workdir_swapped_for_a_symlink_is_not_followed_at_removal() {
    let _others = beside_others();
    let t = Tree::rootfs("r18-ovl-swap");
    let range = fixed_range();
    let base: u32 = range["--private-users=".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let shared = t.host_dir("shared");
    let up = shared.join("up");
    fs::create_dir(&up).unwrap();
    for d in [&shared, &up] {
        std::os::unix::fs::chown(d, Some(base), Some(base)).unwrap();
    }
    let low = t.host_dir("low");
    let victim = t.host_dir("victim");
    fs::write(victim.join("file"), "host file\n").unwrap();
    for d in ["d", "o"] {
        fs::create_dir(t.path().join(d)).unwrap();
    }
    let script = format!(
        "cd /d && w=$(ls -a | grep '^\\.#up') && mv \"$w\" moved && ln -s {} \"$w\" && \
         echo swapped",
        victim.display()
    );
    let out = sh_in(
        &t,
        &[
            "-q",
            &range,
            &format!("--bind={}:/d", shared.display()),
            &format!("--overlay={}:{}:/o", low.display(), up.display()),
        ],
        &script,
    );
    assert_eq!((out.code, out.stdout.as_str()), (0, "swapped\n"), "{out}");
    assert!(
        victim.join("file").exists(),
        "the removal of the work directory followed the container's symlink"
    );
}

/// Finding 2 (bad input): an overlay the kernel refuses once the monitor assembles it (here
/// the same directory as lower and upper) failed with "cannot create the overlay file
/// system: Too many symbolic links encountered", naming neither the option's paths nor its
/// destination (nspawn names both). One line naming them, 125, nothing left.
#[test]
fn an_overlay_the_kernel_refuses_is_named() {
    let _others = beside_others();
    let t = Tree::rootfs("r18-ovl-bad");
    let low = t.host_dir("low");
    let opt = format!("--overlay={0}:{0}:/o", low.display());
    let out = sh_in(&t, &["-q", "-U", &opt], "true");
    assert_eq!(out.code, 125, "{out}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains(s(&low)) && lines[0].contains("/o"),
        "names neither the layers nor the destination: {out}"
    );
    let left: Vec<_> = fs::read_dir(t.base())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".#"))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "work dirs left: {left:?}");
}

/// Finding 3: with `-U`, ns-run resolves bind sources by name at start (the monitor then
/// opens them without following any link): a source through a process's root
/// (`/proc/PID/root/…`, another mount namespace's file) resolved to the *host's* path of
/// that name, silently binding the host's file instead (here: what a tmpfs covers in the
/// other namespace). Without `-U` ns-run, and nspawn, refuse such a source (EINVAL: a bind
/// across mount namespaces); so must `-U`: one line naming it, 125.
#[test]
fn a_bind_source_through_another_namespace_s_root_is_never_the_host_s() {
    let _others = beside_others();
    let t = Tree::rootfs("r18-procroot");
    let dir = t.host_dir("other");
    fs::write(dir.join("which"), "host\n").unwrap();
    let script = format!(
        "mount -t tmpfs ns-tests {0} && echo ns > {0}/which && echo ready && exec sleep 100",
        dir.display()
    );
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let other = ns_tests::spawn_until(c, "ready");
    let src = format!("/proc/{}/root{}", other.pid(), dir.display());
    assert_eq!(fs::read_to_string(format!("{src}/which")).unwrap(), "ns\n");
    let opt = format!("--bind-ro={src}:/b");
    let out = sh_in(&t, &["-q", "-U", &opt], "cat /b/which");
    assert!(
        !out.stdout.contains("host"),
        "the host's file was bound for {src}: {out}"
    );
    assert_eq!(out.code, 125, "{out}");
    let lines = out.stderr_lines();
    assert!(lines.len() == 1 && lines[0].contains(&src), "{out}");
}

/// `dir` bound on itself and made a shared mount, as every mount is on a systemd host
/// (this host's are private); unmounted (lazily, with anything below it) on drop.
struct SharedBind(std::path::PathBuf);

impl SharedBind {
    fn new(dir: &Path) -> SharedBind {
        let guard = SharedBind(dir.to_path_buf());
        for args in [["--bind", s(dir), s(dir)], ["--make-shared", s(dir), ""]] {
            let st = Command::new("mount")
                .args(args.iter().filter(|a| !a.is_empty()))
                .status()
                .unwrap();
            assert!(st.success(), "mount {args:?}");
        }
        guard
    }

    /// Mount points below it on the host (with `at`: and at it).
    fn mounts(&self, at: bool) -> Vec<String> {
        let (top, prefix) = (
            self.0.display().to_string(),
            format!("{}/", self.0.display()),
        );
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix) || (at && *m == top))
            .collect()
    }

    /// Mount points strictly below it on the host.
    fn below(&self) -> Vec<String> {
        self.mounts(false)
    }
}

impl Drop for SharedBind {
    /// Also what propagated below it (a failed test's): deepest first, a few rounds, as
    /// stacked mounts on one path come off one at a time.
    fn drop(&mut self) {
        for _ in 0..32 {
            let mut left = self.mounts(true);
            if left.is_empty() {
                break;
            }
            left.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in left {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}

/// Finding 1b: on a host whose mounts are shared (systemd's default), the tree and a bind
/// source handed down under `-U` were peers of the host's mounts: the root failed to pivot
/// (pivot_root refuses a shared root) after every mount ns-mount made below it had
/// propagated to the host (and stayed there), and a container root's mount below a bind
/// appeared on the host, over the host's files. As nspawn's, they must be the host's
/// slaves: the host's mounts reach the container, nothing of the container's reaches the
/// host.
#[test]
fn on_shared_host_mounts_nothing_of_the_container_propagates_to_the_host() {
    let _alone = HOST_MOUNTING.write().unwrap_or_else(|e| e.into_inner());
    let t = Tree::rootfs("r18-shared");
    let src = t.host_dir("src");
    fs::create_dir(src.join("m")).unwrap();
    fs::create_dir(t.path().join("b")).unwrap();
    let (tree, source) = (SharedBind::new(t.path()), SharedBind::new(&src));
    let bind = format!("--bind={}:/b", src.display());
    let script = "mount -t tmpfs ns-tests /b/m && mount -t tmpfs ns-tests /mnt && echo mounted";
    for range in ["-U".to_string(), fixed_range()] {
        let out = sh_in(&t, &["-q", &range, &bind], script);
        let leaked = [tree.below(), source.below()].concat();
        assert!(leaked.is_empty(), "{range}: on the host: {leaked:?}\n{out}");
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, "mounted\n"),
            "{range}: {out}"
        );
    }
}

/// Finding 1b on a whole host as systemd sets it up (every mount shared, "/" included),
/// in a mount namespace of its own (`unshare --propagation shared`: nothing reaches this
/// host): `-U` with a bind and an overlay runs, and leaves that namespace's mount table as
/// it was (before the lock commit: pivot_root failed, after ns-mount's mounts had
/// propagated there). The other user namespace forms, and none, likewise.
#[test]
fn on_a_host_whose_mounts_are_all_shared_userns_containers_run_and_leave_no_mount() {
    let _others = beside_others();
    let t = Tree::rootfs("r18-allshared");
    let src = t.host_dir("src");
    let low = t.host_dir("low");
    for d in ["b", "o"] {
        fs::create_dir(t.path().join(d)).unwrap(); // ownership off: container root may not
    }
    for opts in [
        "-U".to_string(),
        "-U --private-users-ownership=off".to_string(),
        fixed_range(),
        String::new(),
    ] {
        // Mounts on "/" or below the test's directory (others come and go meanwhile).
        let ours = format!(
            "awk '$5 == \"/\" || index($5, \"{}/\") == 1' /proc/self/mountinfo | wc -l",
            t.base().display()
        );
        let script = format!(
            "b=$({ours})\n\
             {ns_run} --register=no -q {opts} -D {tree} --bind={src}:/b --overlay={low}::/o \
             /bin/sh -c 'mount -t tmpfs ns-tests /mnt && echo ran'\n\
             echo rc=$? mounts=$(( $({ours}) - b ))",
            ns_run = ns_tests::bin("ns-run").display(),
            tree = t.arg(),
            src = src.display(),
            low = low.display(),
        );
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "shared", "sh", "-c", &script]);
        let out = run_cmd(c, None);
        assert_eq!(out.stdout, "ran\nrc=0 mounts=0\n", "{opts}: {out}");
    }
}
