//! Host paths under a user namespace (issue 18, item 1): the tree, bind sources and overlay
//! layers below a directory only host root may enter (0700, as /var/lib/machines is on
//! systemd hosts), with `-U` and the other `--private-users=` forms. The monitor opens them
//! on the host and hands them down; a stage inside the user namespace never resolves them.
//!
//! Two places: a tree's own temporary directory made 0700 ([`Private::beside`]) and a 0700
//! stand-in for /var/lib/machines ([`Private::machines`]; the real one is never touched).
//! The bodies take a [`Private`], so that other places (a guest's /var/lib/machines) can
//! reuse them. Where it is cheap, systemd-nspawn runs the same command for comparison.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ns_tests::{
    assert_no_leak, build_merged_usr_rootfs, build_rootfs_linked, fixture, ns_run, our_mounts,
    run_cmd, s, Output, Tree,
};

/// Where a test's tree and host paths live: `dir` (mode 0700) holds the tree `root` and the
/// host directories made by [`Private::host`].
pub struct Private {
    _tree: Tree,
    dir: PathBuf,
    root: PathBuf,
}

impl Private {
    /// A busybox tree whose own temporary directory is 0700.
    fn beside(name: &str) -> Private {
        let t = Tree::rootfs(name);
        let (dir, root) = (t.base().to_path_buf(), t.path().to_path_buf());
        Private::close(t, dir, root)
    }

    /// A 0700 `machines` directory (a stand-in for /var/lib/machines) holding the tree NAME.
    fn machines(name: &str) -> Private {
        let t = Tree::empty("machines");
        let dir = t.path().to_path_buf();
        let root = dir.join(name);
        build_rootfs_linked(&root);
        Private::close(t, dir, root)
    }

    fn close(t: Tree, dir: PathBuf, root: PathBuf) -> Private {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        Private {
            _tree: t,
            dir,
            root,
        }
    }

    /// A new directory `name` in the 0700 directory, with `mode`.
    fn host(&self, name: &str, mode: u32) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        d
    }

    /// The tree's busybox as a file of its own (the tree's is a hard link to the fixture's,
    /// which a chown of this tree must not change for other tests).
    fn own_busybox(&self) {
        let bb = self.root.join("bin/busybox");
        std::fs::remove_file(&bb).unwrap();
        std::fs::copy(fixture().join("bin/busybox"), &bb).unwrap();
    }
}

/// `ns-run -D ROOT OPTS -- sh -c SCRIPT` to its end; nothing of it may be left.
fn sh(root: &Path, opts: &[&str], script: &str) -> Output {
    let before = our_mounts();
    let mut c = ns_run();
    c.env("NS_TESTS_TREE", root)
        .args(["-q", "-D", s(root)])
        .args(opts)
        .args(["--", "/bin/sh", "-c", script]);
    let out = run_cmd(c, None);
    assert_no_leak(root, &before);
    out
}

/// [`sh`] that must succeed quietly; returns stdout.
fn sh_ok(root: &Path, opts: &[&str], script: &str) -> String {
    let out = sh(root, opts, script);
    assert!(
        out.code == 0 && out.stderr.is_empty(),
        "ns-run {opts:?} sh -c {script:?} failed\n{out}"
    );
    out.stdout
}

/// The same under systemd-nspawn (not registered, in our scope), for comparison.
fn nspawn_sh(root: &Path, opts: &[&str], script: &str) -> Output {
    let mut c = Command::new("systemd-nspawn");
    c.args(["-q", "--register=no", "--keep-unit", "-D", s(root)])
        .args(opts)
        .args(["/bin/sh", "-c", script]);
    run_cmd(c, None)
}

/// `key=value` lines of a script's output, the value of `key`.
fn get<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {out:?}"))
}

/// The host uid container root maps to, printed by the scripts as `base=`.
const PRINT_BASE: &str = "echo \"base=$(awk 'NR == 1 {print $2}' /proc/self/uid_map)\"";

/// The payload (PID 1) holds no directory fd: none of the mounts and layers the monitor
/// handed down is left open where a container process could reach it through /proc.
/// Prints `fds=checked`, or `leak=FD` lines.
const CHECK_NO_DIR_FDS: &str =
    "for f in /proc/1/fd/*; do [ -d \"$f\" ] && echo \"leak=$f\"; done; echo fds=checked";

fn assert_no_dir_fds(out: &str) {
    assert_eq!(get(out, "fds"), "checked");
    assert!(
        !out.contains("leak="),
        "an fd of ours reached the payload: {out}"
    );
}

fn owner(p: &Path) -> (u32, u32) {
    let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (md.uid(), md.gid())
}

/// A fixed 64K-aligned range for ownership `off`, unlikely to be another test's: from this
/// process's pid and a count (ns-run refuses a range in use, so a clash shows as a clear
/// failure).
fn fixed_base() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 8;
    0x4000_0000 + ((std::process::id() % 0x200) * 8 + n) * 0x10000
}

/// Nothing named `.#…` (an overlay workdir) left in `dir`.
fn assert_no_workdir(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".#"))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "workdirs left: {left:?}");
}

// ---------------------------------------------------------------------------------------
// Bodies

/// The tree itself, under every form that does not rewrite it: `-U` (ownership auto: map),
/// `map`, a fixed range with ownership off, `-x`, `--volatile=state` and `=yes`, and a new
/// tree copied from it by `--template`.
pub fn tree_under_every_form(p: &Private) {
    let off = format!("--private-users={}:65536", fixed_base());
    let script = format!("{PRINT_BASE}\necho \"root=$(stat -c %u /)\"\necho ok");
    for (opts, root_owner) in [
        (vec!["-U"], "0"),
        (vec!["-U", "--private-users-ownership=map"], "0"),
        (vec![off.as_str()], "65534"),
        (vec!["-U", "-x"], "0"),
        (vec!["-U", "--volatile=state"], "0"),
    ] {
        let out = sh_ok(&p.root, &opts, &script);
        assert_ne!(get(&out, "base"), "0", "{opts:?}: not in a user namespace");
        assert_eq!(get(&out, "root"), root_owner, "{opts:?}: owner of /");
    }
    // --template: copied on the host into a new tree in the 0700 directory.
    let copy = p.dir.join("copy");
    let template = format!("--template={}", p.root.display());
    let out = sh_ok(&copy, &[off.as_str(), &template], &script);
    assert_eq!(get(&out, "root"), "65534", "--template: owner of /");
    // --volatile=yes takes a merged-/usr tree: one beside the first.
    let merged = p.dir.join("merged");
    build_merged_usr_rootfs(&merged);
    let out = sh_ok(&merged, &["-U", "--volatile=yes"], &script);
    assert_eq!(get(&out, "root"), "0", "--volatile=yes: owner of /");
    // nspawn agrees on what ownership off shows: a root-owned tree is nobody's.
    let n = nspawn_sh(&p.root, &[&off], "stat -c %u /");
    assert_eq!(n.code, 0, "{n}");
    assert_eq!(n.stdout.trim(), "65534", "{n}");
}

/// `--private-users-ownership=chown`: the tree is shifted into the range on the host.
pub fn tree_chowned(p: &Private) {
    p.own_busybox();
    let script = format!("{PRINT_BASE}\necho \"root=$(stat -c %u /)\"\ntouch /made");
    let out = sh_ok(&p.root, &["-U", "--private-users-ownership=chown"], &script);
    let base: u32 = get(&out, "base").parse().unwrap();
    assert_eq!(get(&out, "root"), "0");
    assert_eq!(owner(&p.root), (base, base), "the tree on the host");
    assert_eq!(owner(&p.root.join("made")), (base, base));
}

/// `--bind`, `--bind-ro` and `--bind=…:idmap` of directories in the 0700 directory, and a
/// source named through a symlink: each mounted, writes landing with the owner the mapping
/// gives (container root: the range's base; through idmap: host root).
pub fn binds(p: &Private) {
    let shared = p.host("shared", 0o1777);
    let src = p.host("src", 0o755);
    std::fs::write(src.join("f"), "hi\n").unwrap();
    let link = p.dir.join("link");
    std::os::unix::fs::symlink(&src, &link).unwrap();
    let opts = [
        format!("--bind={}:/rw", shared.display()),
        format!("--bind-ro={}:/ro", src.display()),
        format!("--bind={}:/id:idmap", src.display()),
        format!("--bind-ro={}:/ln", link.display()),
    ];
    let mut args: Vec<&str> = vec!["-U"];
    args.extend(opts.iter().map(String::as_str));
    let script = format!(
        "{PRINT_BASE}\ntouch /rw/made\necho \"ro=$(cat /ro/f)\"\n\
         touch /ro/x 2>/dev/null || echo ro_write=refused\n\
         touch /id/made && echo \"id=$(stat -c %u /id/made)\"\necho \"ln=$(cat /ln/f)\"\n\
         {CHECK_NO_DIR_FDS}"
    );
    let out = sh_ok(&p.root, &args, &script);
    let base: u32 = get(&out, "base").parse().unwrap();
    assert_eq!(owner(&shared.join("made")), (base, base), "plain bind");
    assert_eq!(get(&out, "ro"), "hi");
    assert_eq!(get(&out, "ro_write"), "refused");
    assert!(!src.join("x").exists());
    assert_eq!(get(&out, "id"), "0");
    assert_eq!(
        owner(&src.join("made")),
        (0, 0),
        "idmap: container root is host root"
    );
    assert_eq!(get(&out, "ln"), "hi");
    assert_no_dir_fds(&out);
    // nspawn gives an idmapped source's writes to host root too (a range of our own: its
    // pick does not know ns-run's locks, and tests beside us pick ranges).
    std::fs::remove_file(src.join("made")).unwrap();
    let range = format!("--private-users={}:65536", fixed_base());
    let n = nspawn_sh(&p.root, &[&range, &opts[2]], "touch /id/made");
    assert_eq!(n.code, 0, "{n}");
    assert_eq!(owner(&src.join("made")), (0, 0), "nspawn");
}

/// `--overlay` (a host upper, and a temporary one) and `--overlay-ro` of layers in the 0700
/// directory: the lower shows through, writes land in the upper owned by container root's
/// host uid, no work directory is left, the lower is unchanged.
pub fn overlays(p: &Private) {
    let low = p.host("low", 0o755);
    std::fs::write(low.join("f"), "low\n").unwrap();
    let up = p.host("up", 0o1777);
    let (l, u) = (low.display(), up.display());
    let opts = [
        format!("--overlay={l}:{u}:/o"),
        format!("--overlay-ro={l}:{u}:/r"),
        format!("--overlay={l}::/t"),
    ];
    let mut args: Vec<&str> = vec!["-U"];
    args.extend(opts.iter().map(String::as_str));
    let script = format!(
        "{PRINT_BASE}\necho \"o=$(cat /o/f)\"\ntouch /o/made\n\
         touch /r/x 2>/dev/null || echo ro_write=refused\necho \"r=$(cat /r/f)\"\n\
         echo \"t=$(cat /t/f)\"\ntouch /t/made && echo t_write=ok\n{CHECK_NO_DIR_FDS}"
    );
    // Only ours make temporary uppers there: one overlay test at a time.
    let _one = OVERLAYS.lock().unwrap_or_else(|e| e.into_inner());
    let vartmp_before = temp_uppers();
    let out = sh_ok(&p.root, &args, &script);
    let base: u32 = get(&out, "base").parse().unwrap();
    assert_eq!(get(&out, "o"), "low");
    assert_eq!(
        owner(&up.join("made")),
        (base, base),
        "the upper on the host"
    );
    assert_eq!(get(&out, "ro_write"), "refused");
    assert_eq!(get(&out, "r"), "low");
    assert_eq!(get(&out, "t"), "low");
    assert_eq!(get(&out, "t_write"), "ok");
    assert_no_dir_fds(&out);
    let names: Vec<_> = std::fs::read_dir(&low).unwrap().flatten().collect();
    assert_eq!(names.len(), 1, "the lower changed: {names:?}");
    assert_no_workdir(&p.dir);
    assert_eq!(
        temp_uppers(),
        vartmp_before,
        "a temporary upper left in /var/tmp"
    );
}

static OVERLAYS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Temporary uppers (`.#ns-run-overlay-…`) in /var/tmp.
fn temp_uppers() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/var/tmp")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".#ns-run-overlay-")
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A missing source in the 0700 directory: one line naming it and why, 125, nothing left.
pub fn missing_sources(p: &Private) {
    let missing = p.dir.join("missing");
    let up = p.host("up", 0o755);
    let (m, u) = (missing.display(), up.display());
    for opt in [
        format!("--bind={m}:/mnt"),
        format!("--bind-ro={m}:/mnt:idmap"),
        format!("--overlay={m}:{u}:/o"),
        format!("--overlay={u}:{m}:/o"),
        format!("--overlay-ro={u}:{m}:/o"),
    ] {
        let out = sh(&p.root, &["-U", &opt], "true");
        assert_eq!(out.code, 125, "{opt}: {out}");
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{opt}: one line: {out}");
        assert!(
            lines[0].contains(s(&missing)) && lines[0].ends_with("No such file or directory"),
            "{opt}: {out}"
        );
        assert!(out.stdout.is_empty(), "{opt}: {out}");
        assert_no_workdir(&p.dir);
    }
}

// ---------------------------------------------------------------------------------------
// On this host: the tree's own 0700 directory, and a 0700 stand-in for /var/lib/machines

#[test]
fn tree_in_a_0700_dir_runs_under_every_user_namespace_form() {
    tree_under_every_form(&Private::beside("ns-hp-forms"));
}

#[test]
fn tree_in_a_0700_machines_dir_runs_under_every_user_namespace_form() {
    tree_under_every_form(&Private::machines("ns-hp-forms-m"));
}

#[test]
fn tree_in_a_0700_dir_is_chowned_into_the_range() {
    tree_chowned(&Private::beside("ns-hp-chown"));
}

#[test]
fn tree_in_a_0700_machines_dir_is_chowned_into_the_range() {
    tree_chowned(&Private::machines("ns-hp-chown-m"));
}

#[test]
fn binds_from_a_0700_dir() {
    binds(&Private::beside("ns-hp-binds"));
}

#[test]
fn binds_from_a_0700_machines_dir() {
    binds(&Private::machines("ns-hp-binds-m"));
}

#[test]
fn overlays_from_a_0700_dir() {
    overlays(&Private::beside("ns-hp-ovl"));
}

#[test]
fn overlays_from_a_0700_machines_dir() {
    overlays(&Private::machines("ns-hp-ovl-m"));
}

#[test]
fn missing_sources_in_a_0700_dir_are_named() {
    missing_sources(&Private::beside("ns-hp-missing"));
}

// ---------------------------------------------------------------------------------------
// -U where a guest runs it (issue 18, item 1 in a guest; see nested.rs): a tree whose file
// system takes no idmapped mount (a guest's root is an overlayfs), and a /proc that is not
// fully visible (a guest's has masked files), made here with an overlayfs and a mount
// namespace of the test's own.

/// `ns-run OPTS -D ROOT -- sh -c SCRIPT` in a mount namespace of its own, after `setup`
/// (shell) there: what it mounts is gone with it. With `trace`, the monitor (only: not the
/// chain) is traced for fsopen(2) into that file. Nothing of it may be left.
fn in_own_ns(
    root: &Path,
    setup: &str,
    opts: &[&str],
    script: &str,
    trace: Option<&Path>,
) -> Output {
    let before = our_mounts();
    let mut c = Command::new("unshare");
    c.env("NS_TESTS_TREE", root)
        .args(["-m", "--propagation", "slave", "sh", "-c"])
        .arg(format!("{setup} && exec \"$@\""))
        .arg("sh");
    if let Some(t) = trace {
        c.args(["strace", "-qq", "-e", "trace=fsopen", "-o", s(t)]);
    }
    c.arg(ns_tests::bin("ns-run"))
        .args(["--register=no", "-D", s(root)])
        .args(opts)
        .args(["--", "/bin/sh", "-c", script]);
    let out = run_cmd(c, None);
    assert_no_leak(root, &before);
    out
}

#[test]
fn auto_ownership_chowns_a_tree_that_takes_no_idmapped_mount() {
    // The tree: an overlayfs (of a busybox tree `l`, writes in `u`) at `m`.
    let t = Tree::empty("ns-hp-noidmap");
    let d = t.path();
    build_rootfs_linked(&d.join("l"));
    for sub in ["u", "w", "m"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let (m, u) = (d.join("m"), d.join("u"));
    let mount = format!(
        "mount -t overlay overlay -o lowerdir={0}/l,upperdir={0}/u,workdir={0}/w {0}/m",
        d.display()
    );
    let run = |opts: &[&str], script: &str| in_own_ns(&m, &mount, opts, script, None);
    // An explicit map is refused in one line (nspawn: "ID mapped mounts are apparently not
    // available, sorry."), with nothing left.
    let out = run(&["-q", "-U", "--private-users-ownership=map"], "true");
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(
        out.stderr_lines(),
        [format!(
            "ns-run: cannot idmap {} (does its file system support idmapped mounts?): Invalid argument",
            m.display()
        )],
        "{out}"
    );
    // -x leaves the tree as it is: its ids as they are (host root's files are nobody's),
    // said in one line (without -q).
    let out = run(&["-U", "-x"], "echo \"bb=$(stat -c %u /bin/busybox)\"");
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.stderr_lines(),
        [format!(
            "ns-run: {} takes no idmapped mount here, and -x, --read-only and --volatile do not chown it: its files keep their ids (host root's are nobody's inside)",
            m.display()
        )],
        "{out}"
    );
    assert_eq!(get(&out.stdout, "bb"), "65534", "{out}");
    assert_eq!(owner(&u), (0, 0), "-x chowned the tree");
    // -U (ownership auto): the idmap is refused, so the tree is chowned, as nspawn does.
    let script = format!("{PRINT_BASE}\necho \"root=$(stat -c %u /)\"\ntouch /made");
    let out = run(&["-q", "-U"], &script);
    assert!(out.code == 0 && out.stderr.is_empty(), "{out}");
    let base: u32 = get(&out.stdout, "base").parse().unwrap();
    assert_eq!(get(&out.stdout, "root"), "0");
    // On disk (the overlay's writes): its root, its files, the file made.
    assert_eq!(owner(&u), (base, base), "the tree on disk");
    assert_eq!(owner(&u.join("bin/busybox")), (base, base));
    assert_eq!(owner(&u.join("made")), (base, base));
}

#[test]
fn proc_is_made_by_the_monitor_only_where_the_kernel_refuses_one() {
    let t = Tree::rootfs("ns-hp-proc");
    let trace = t.base().join("trace");
    let script = format!(
        "{PRINT_BASE}\necho \"pid1=$(cat /proc/1/comm)\"\n\
         echo 1 2>/dev/null >/proc/sys/kernel/ns_last_pid || echo sys=ro\n\
         echo \"net=$(ls /sys/class/net | tr '\\n' ' ')\"\n{CHECK_NO_DIR_FDS}"
    );
    // As a container's /proc: a file covered (the kernel then refuses a new procfs in a
    // user namespace), or not.
    for setup in ["true", "mount --bind /dev/null /proc/uptime"] {
        for opts in [vec!["-q", "-U"], vec!["-q", "-U", "--private-network"]] {
            let out = in_own_ns(t.path(), setup, &opts, &script, Some(&trace));
            let what = format!("{setup}, {opts:?}");
            assert!(out.code == 0 && out.stderr.is_empty(), "{what}: {out}");
            assert_ne!(get(&out.stdout, "base"), "0", "{what}");
            // The container's own PID namespace: PID 1 is the payload.
            assert_eq!(get(&out.stdout, "pid1"), "sh", "{what}");
            assert_eq!(get(&out.stdout, "sys"), "ro", "{what}");
            if opts.len() > 2 {
                assert_eq!(get(&out.stdout, "net"), "lo ", "{what}");
            }
            assert_no_dir_fds(&out.stdout);
            // The monitor makes a procfs only where ns-mount could not.
            let t = std::fs::read_to_string(&trace).unwrap();
            let want = usize::from(setup != "true");
            assert_eq!(t.matches("fsopen(\"proc\"").count(), want, "{what}: {t}");
        }
    }
}

#[test]
fn pick_takes_the_range_a_tree_was_chowned_into() {
    let p = Private::beside("ns-hp-shifted");
    p.own_busybox();
    let script = format!("{PRINT_BASE}\necho \"root=$(stat -c %u /)\"");
    let out = sh_ok(&p.root, &["-U", "--private-users-ownership=chown"], &script);
    let base = get(&out, "base").to_string();
    let b: u32 = base.parse().unwrap();
    // Started again (auto, off, chown): that range, the tree as it is (not shifted again),
    // as nspawn's pick does.
    for own in ["auto", "off", "chown"] {
        let opt = format!("--private-users-ownership={own}");
        let out = sh_ok(&p.root, &["-U", &opt], &script);
        assert_eq!(get(&out, "base"), base, "{own}");
        assert_eq!(get(&out, "root"), "0", "{own}");
        assert_eq!(owner(&p.root), (b, b), "{own}");
    }
    // An idmapped mount of it would show its files as nobody's: refused in one line (nspawn:
    // "UID base of … is not zero, UID mapping not supported.").
    let out = sh(&p.root, &["-U", "--private-users-ownership=map"], "true");
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(
        out.stderr_lines(),
        [format!(
            "ns-run: --private-users-ownership=map: {} is chowned into the range at {base}: an idmapped mount needs a tree owned by 0",
            p.root.display()
        )],
        "{out}"
    );
    // Given back to 0: -U maps it again.
    sh_ok(
        &p.root,
        &["--private-users=0", "--private-users-ownership=chown"],
        "true",
    );
    let out = sh_ok(&p.root, &["-U"], &script);
    assert_eq!(get(&out, "root"), "0");
    assert_eq!(owner(&p.root), (0, 0));
}
