//! ns-ctl's image verbs on images in /var/lib/machines (unique names, removed at the end):
//! list-images (text and JSON), image-status, show-image, clone, rename, read-only, remove,
//! clean, set-limit, on a directory image and a raw (ext4) image, with containers running
//! on them: a clone runs beside its running original, remove/rename/read-only are refused
//! while a container runs (one line, image untouched), a read-only image runs read-only
//! and nothing of it changes, `.nspawn` files follow the image, and clean removes hidden
//! leftovers but not a running import's.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tests that run `ns-ctl clean` (which sweeps every leftover of the pool) one at a
/// time: one's sweep took the other's planted leftover first (failed once in CI).
static CLEAN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_clean_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    CLEAN.lock().unwrap_or_else(|e| e.into_inner())
}

use ns_tests::{bin, ns_run_registered, run_cmd, spawn_until, unique, Output, Running, Tree};

const POOL: &str = "/var/lib/machines";

fn ctl(args: &[&str]) -> Output {
    let mut c = Command::new(bin("ns-ctl"));
    c.args(args).env_remove("NS_DEBUG");
    run_cmd(c, None)
}

fn ok(args: &[&str]) -> String {
    let o = ctl(args);
    assert_eq!(o.code, 0, "ns-ctl {args:?}: {o}");
    o.stdout
}

/// One line on stderr, exit 125, containing `needle`.
fn refused(args: &[&str], needle: &str) {
    let o = ctl(args);
    assert_eq!(o.code, 125, "ns-ctl {args:?}: {o}");
    assert_eq!(o.stderr_lines().len(), 1, "{o}");
    assert!(o.stderr.contains(needle), "wanted {needle:?}: {o}");
}

/// Images (and settings files) of these names removed at the end, whatever happened.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for n in &self.0 {
            for p in [
                Path::new(POOL).join(n),
                Path::new(POOL).join(format!("{n}.raw")),
            ] {
                let _ = Command::new("chattr").arg("-i").arg(&p).output();
                let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
            }
            for d in [POOL, "/etc/systemd/nspawn", "/run/systemd/nspawn"] {
                let _ = fs::remove_file(Path::new(d).join(format!("{n}.nspawn")));
            }
        }
    }
}

/// A busybox directory image NAME.
fn dir_image(name: &str) {
    let t = Tree::rootfs("img-src");
    ok(&["import-fs", t.arg(), name]);
}

/// A raw image NAME.raw: an ext4 file system holding a busybox tree (mkfs.ext4 -d).
fn raw_image(name: &str) {
    let t = Tree::rootfs("img-src");
    let f = t.host_dir("out").join("fs.raw");
    fs::File::create(&f).unwrap().set_len(32 << 20).unwrap();
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(t.path())
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    ok(&["import-raw", f.to_str().unwrap(), name]);
}

/// `ns-run -M NAME` (no -D: the image by name) printing ready, then sleeping.
fn run_on(name: &str, opts: &[&str]) -> Running {
    let mut c = ns_run_registered();
    c.args(["-q", "-M", name])
        .args(opts)
        .args(["sh", "-c", "echo ready; exec sleep 100"]);
    spawn_until(c, "ready")
}

fn sh_on(name: &str, script: &str) -> Output {
    let mut c = ns_run_registered();
    c.args(["-q", "-M", name, "sh", "-c", script]);
    run_cmd(c, None)
}

fn sha256(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

fn listed(json: &serde_json::Value, name: &str) -> serde_json::Value {
    json.as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {json}"))
        .clone()
}

#[test]
fn list_status_and_show_describe_directory_and_raw_images() {
    let (d, r) = (unique("iv-list-d"), unique("iv-list-r"));
    let _gone = Images(vec![d.clone(), r.clone()]);
    dir_image(&d);
    raw_image(&r);
    let text = ok(&["list-images"]);
    let line = |n: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{n} ")))
            .unwrap_or_else(|| panic!("{text}"))
            .to_string()
    };
    assert!(text.starts_with("NAME"), "{text}");
    assert!(line(&d).contains(" directory no "), "{text}");
    assert!(line(&r).contains(" raw "), "{text}");
    assert!(text.contains("images listed."), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["list-images", "-o", "json"])).unwrap();
    let (jd, jr) = (listed(&json, &d), listed(&json, &r));
    assert_eq!(jd["type"], "directory");
    assert_eq!(jd["ro"], false);
    assert!(jd["usage"].is_null(), "{jd}");
    assert_eq!(jr["type"], "raw");
    assert!(jr["usage"].as_u64().unwrap() > 0, "{jr}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let m = jr["modified"].as_u64().unwrap();
    assert!(m <= now && now - m < 600_000_000, "{jr}");
    let st = ok(&["image-status", &d]);
    assert!(st.contains("Type: directory"), "{st}");
    assert!(st.contains(&format!("Path: {POOL}/{d}")), "{st}");
    assert!(st.contains("RO: writable"), "{st}");
    assert!(!st.contains("Usage: -"), "a tree's usage is counted: {st}");
    let sj: serde_json::Value =
        serde_json::from_str(&ok(&["image-status", &r, "-o", "json"])).unwrap();
    assert_eq!(sj["path"], format!("{POOL}/{r}.raw"));
    let show = ok(&["show-image", &r]);
    for want in [
        format!("Name={r}"),
        "Type=raw".into(),
        "ReadOnly=no".into(),
        format!("Path={POOL}/{r}.raw"),
    ] {
        assert!(show.lines().any(|l| l == want), "{want}: {show}");
    }
    assert!(
        show.lines().any(|l| l.starts_with("Limit=3355443")),
        "{show}"
    );
    refused(
        &["image-status", "nosuch-image"],
        "no image called nosuch-image",
    );
}

#[test]
fn a_clone_runs_beside_its_running_original_and_remove_waits_for_both() {
    let (a, b) = (unique("iv-orig"), unique("iv-clone"));
    let _gone = Images(vec![a.clone(), b.clone()]);
    dir_image(&a);
    fs::write(Path::new(POOL).join(&a).join("etc/marker"), "original\n").unwrap();
    let ra = run_on(&a, &[]);
    ok(&["clone", &a, &b]);
    let rb = run_on(&b, &[]);
    assert!(Path::new(POOL).join(&b).join("etc/marker").exists());
    // The clone is a copy, not the same tree: a write inside it stays there.
    let mut c = Command::new(bin("ns-ctl"));
    c.args([
        "shell",
        &b,
        "--",
        "/bin/sh",
        "-c",
        "echo clone > /etc/marker",
    ]);
    let o = run_cmd(c, None);
    assert_eq!(o.code, 0, "{o}");
    assert_eq!(
        fs::read_to_string(Path::new(POOL).join(&a).join("etc/marker")).unwrap(),
        "original\n"
    );
    // Refused while running: one line, the image as it was.
    let before = fs::read_dir(Path::new(POOL).join(&a)).unwrap().count();
    refused(&["remove", &a], "in use by a running container");
    refused(
        &["rename", &a, &unique("iv-other")],
        "in use by a running container",
    );
    refused(&["read-only", &a], "in use by a running container");
    assert_eq!(
        fs::read_dir(Path::new(POOL).join(&a)).unwrap().count(),
        before
    );
    drop(ra);
    drop(rb);
    wait_unlocked(&a);
    ok(&["remove", &a, &b]);
    assert!(!Path::new(POOL).join(&a).exists() && !Path::new(POOL).join(&b).exists());
    let left: Vec<_> = fs::read_dir(POOL)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&a) || n.contains(&b))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A killed ns-run's lock goes with it; its monitor may take a moment to exit.
fn wait_unlocked(name: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let o = ctl(&["read-only", name, "no"]);
        if o.code == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{name} still locked");
}

#[test]
fn raw_images_clone_run_rename_and_go() {
    let (a, b, c) = (unique("iv-raw-a"), unique("iv-raw-b"), unique("iv-raw-c"));
    let _gone = Images(vec![a.clone(), b.clone(), c.clone()]);
    raw_image(&a);
    let ra = run_on(&a, &[]);
    ok(&["clone", &a, &b]);
    let rb = run_on(&b, &[]);
    refused(&["remove", &a], "in use by a running container");
    assert!(Path::new(POOL).join(format!("{a}.raw")).exists());
    drop(ra);
    drop(rb);
    wait_unlocked(&a);
    ok(&["rename", &b, &c]);
    assert!(Path::new(POOL).join(format!("{c}.raw")).exists());
    assert!(!Path::new(POOL).join(format!("{b}.raw")).exists());
    let o = sh_on(&c, "echo ran");
    assert_eq!(o.stdout, "ran\n", "{o}");
    ok(&["remove", &a, &c]);
    assert!(!Path::new(POOL).join(format!("{a}.raw")).exists());
    assert!(!Path::new(POOL).join(format!("{c}.raw")).exists());
}

#[test]
fn a_read_only_image_runs_read_only_and_nothing_of_it_changes() {
    use std::os::unix::fs::PermissionsExt;
    let (d, r) = (unique("iv-ro-d"), unique("iv-ro-r"));
    let _gone = Images(vec![d.clone(), r.clone()]);
    dir_image(&d);
    raw_image(&r);
    ok(&["read-only", &d]);
    ok(&["read-only", &r, "yes"]);
    let lsattr = Command::new("lsattr")
        .args(["-d"])
        .arg(Path::new(POOL).join(&d))
        .output()
        .unwrap();
    let flags = String::from_utf8_lossy(&lsattr.stdout).to_string();
    assert!(flags.split(' ').next().unwrap().contains('i'), "{flags}");
    let raw = Path::new(POOL).join(format!("{r}.raw"));
    assert_eq!(fs::metadata(&raw).unwrap().permissions().mode() & 0o222, 0);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["list-images", "-o", "json"])).unwrap();
    assert_eq!(listed(&json, &d)["ro"], true);
    assert_eq!(listed(&json, &r)["ro"], true);
    // ns-run -M runs it read-only: nothing written, in the tree or the file.
    let sum = sha256(&raw);
    for n in [&d, &r] {
        let o = sh_on(
            n,
            "echo x > /etc/written && echo wrote; echo y > /written2 && echo wrote2; echo end",
        );
        assert_eq!(o.stdout, "end\n", "{n}: {o}");
    }
    assert!(!Path::new(POOL).join(&d).join("etc/written").exists());
    assert!(!Path::new(POOL).join(&d).join("written2").exists());
    assert_eq!(sha256(&raw), sum);
    // Writable again.
    ok(&["read-only", &d, "no"]);
    ok(&["read-only", &r, "false"]);
    let o = sh_on(&d, "echo x > /etc/written && echo wrote");
    assert_eq!(o.stdout, "wrote\n", "{o}");
    assert!(fs::metadata(&raw).unwrap().permissions().mode() & 0o200 != 0);
    refused(&["read-only", &d, "maybe"], "not a boolean");
}

#[test]
fn settings_files_follow_the_image() {
    let (a, b, c) = (unique("iv-set-a"), unique("iv-set-b"), unique("iv-set-c"));
    let _gone = Images(vec![a.clone(), b.clone(), c.clone()]);
    dir_image(&a);
    fs::create_dir_all("/etc/systemd/nspawn").unwrap();
    let beside = |n: &str| Path::new(POOL).join(format!("{n}.nspawn"));
    let etc = |n: &str| Path::new("/etc/systemd/nspawn").join(format!("{n}.nspawn"));
    fs::write(beside(&a), "[Exec]\nHostname=beside\n").unwrap();
    fs::write(etc(&a), "[Exec]\nHostname=etc\n").unwrap();
    ok(&["rename", &a, &b]);
    assert!(!beside(&a).exists() && !etc(&a).exists());
    assert_eq!(
        fs::read_to_string(beside(&b)).unwrap(),
        "[Exec]\nHostname=beside\n"
    );
    assert_eq!(
        fs::read_to_string(etc(&b)).unwrap(),
        "[Exec]\nHostname=etc\n"
    );
    // The trusted file in /etc names the renamed machine's host name.
    let o = sh_on(&b, "hostname");
    assert_eq!(o.stdout, "etc\n", "{o}");
    ok(&["clone", &b, &c]);
    assert!(beside(&b).exists() && etc(&b).exists());
    assert_eq!(
        fs::read_to_string(beside(&c)).unwrap(),
        "[Exec]\nHostname=beside\n"
    );
    assert_eq!(
        fs::read_to_string(etc(&c)).unwrap(),
        "[Exec]\nHostname=etc\n"
    );
    ok(&["remove", &b, &c]);
    for p in [beside(&b), etc(&b), beside(&c), etc(&c)] {
        assert!(!p.exists(), "{} left", p.display());
    }
}

#[test]
fn names_are_checked_and_taken_names_refused() {
    let (a, b) = (unique("iv-name-a"), unique("iv-name-b"));
    let _gone = Images(vec![a.clone(), b.clone()]);
    dir_image(&a);
    dir_image(&b);
    refused(&["clone", &a, ".hidden"], "starts with '.'");
    refused(&["clone", &a, "a/b"], "contains '/'");
    refused(&["rename", &a, &b], "already exists");
    refused(&["clone", &a, &b], "already exists");
    refused(&["remove", "nosuch-image"], "no image called nosuch-image");
    // remove checks every name before it removes any.
    refused(
        &["remove", &a, "nosuch-image"],
        "no image called nosuch-image",
    );
    assert!(Path::new(POOL).join(&a).exists());
    refused(&["set-limit", &a, "1G"], "btrfs quota");
    refused(&["set-limit", "1G"], "btrfs quota");
}

#[test]
fn clean_removes_leftovers_but_not_a_running_import() {
    let _one = one_clean_at_a_time();
    let (dead, live) = (unique("iv-clean-d"), unique("iv-clean-l"));
    let _gone = Images(vec![dead.clone(), live.clone()]);
    // A killed import's leftover: nobody holds it.
    let left = Path::new(POOL).join(format!(".#{dead}.0badf00d"));
    fs::create_dir_all(left.join("etc")).unwrap();
    fs::write(left.join("etc/f"), "x").unwrap();
    // A running import: reading a tar from a pipe we keep open.
    let t = Tree::rootfs("clean-src");
    let tar = t.host_dir("out").join("a.tar");
    let o = Command::new("tar")
        .arg("-C")
        .arg(t.path())
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let bytes = fs::read(&tar).unwrap();
    let mut child = Command::new(bin("ns-ctl"))
        .args(["import-tar", "-", &live])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Mid-block: not at an entry's boundary.
    stdin.write_all(&bytes[..bytes.len() / 2 + 100]).unwrap();
    let hidden = |n: &str| -> Vec<PathBuf> {
        fs::read_dir(POOL)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!(".#{n}."))
            })
            .collect()
    };
    let end = Instant::now() + Duration::from_secs(10);
    while hidden(&live).is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(hidden(&live).len(), 1);
    let out = ok(&["clean"]);
    assert!(out.contains(&format!(".#{dead}.0badf00d")), "{out}");
    assert!(!left.exists());
    assert_eq!(hidden(&live).len(), 1, "the running import's was removed");
    // Cut short (the pipe closes mid-file): one line, nothing under the name, no leftover.
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!Path::new(POOL).join(&live).exists());
    assert!(hidden(&live).is_empty());
}

/// A container that swaps a regular file of its image for a device node while the image
/// is cloned or exported (RENAME_EXCHANGE in a loop, here from the host): ns-ctl opens
/// what it found a regular file, and never copies a device's content (a loop device's,
/// the host's disk for a container with CAP_MKNOD) into the clone or the archive.
#[test]
fn a_device_swapped_in_for_a_file_is_never_read_by_clone_or_export() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    let t = Tree::empty("swap");
    let lo = ns_tests::LoopDevice::new(&t);
    fs::OpenOptions::new()
        .write(true)
        .open(&lo.0)
        .unwrap()
        .write_all(b"HOST-DISK-CONTENT")
        .unwrap();
    let rdev = std::os::unix::fs::MetadataExt::rdev(&fs::metadata(&lo.0).unwrap());
    let name = unique("iv-swap");
    let copy = format!("{name}-c");
    let _gone = Images(vec![name.clone(), copy.clone()]);
    let src = t.host_dir("src");
    for i in 0..64 {
        fs::write(src.join(format!("f{i}")), "plain").unwrap();
        let g = std::ffi::CString::new(src.join(format!("g{i}")).as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; mknod reads nothing else.
        assert_eq!(
            unsafe { libc::mknod(g.as_ptr(), libc::S_IFBLK | 0o600, rdev) },
            0
        );
    }
    ok(&["import-fs", src.to_str().unwrap(), &name]);
    let img = Path::new(POOL).join(&name);
    let stop = AtomicBool::new(false);
    let leaked = std::thread::scope(|scope| {
        scope.spawn(|| {
            let c = |p: PathBuf| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
            let pairs: Vec<_> = (0..64)
                .map(|i| (c(img.join(format!("f{i}"))), c(img.join(format!("g{i}")))))
                .collect();
            while !stop.load(Ordering::Relaxed) {
                for (f, g) in &pairs {
                    // SAFETY: NUL-terminated paths.
                    unsafe {
                        libc::syscall(
                            libc::SYS_renameat2,
                            libc::AT_FDCWD,
                            f.as_ptr(),
                            libc::AT_FDCWD,
                            g.as_ptr(),
                            libc::RENAME_EXCHANGE,
                        )
                    };
                }
            }
        });
        let out = t.host_dir("out").join("x.tar");
        let mut leaked = Vec::new();
        for _ in 0..40 {
            if ctl(&["clone", &name, &copy]).code == 0 {
                for e in fs::read_dir(Path::new(POOL).join(&copy)).unwrap().flatten() {
                    if e.file_type().unwrap().is_file()
                        && fs::read(e.path()).unwrap().starts_with(b"HOST-DISK")
                    {
                        leaked.push(format!("clone: {:?}", e.file_name()));
                    }
                }
                let _ = fs::remove_dir_all(Path::new(POOL).join(&copy));
            }
            if ctl(&["export-tar", &name, out.to_str().unwrap()]).code == 0 {
                let data = fs::read(&out).unwrap();
                if data.windows(9).any(|w| w == b"HOST-DISK") {
                    leaked.push("export-tar".into());
                }
                let _ = fs::remove_file(&out);
            }
            if !leaked.is_empty() {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        leaked
    });
    assert!(leaked.is_empty(), "a device's content was read: {leaked:?}");
    assert!(fs::symlink_metadata(img.join("g0"))
        .is_ok_and(|m| m.file_type().is_block_device() || m.file_type().is_file()));
}

/// Imports of one name at once, with `clean` running all the while: each round exactly one
/// import makes the image, the others fail with one line naming the name.
#[test]
fn imports_of_one_name_at_once_and_clean_meanwhile() {
    let _one = one_clean_at_a_time();
    use std::sync::atomic::{AtomicBool, Ordering};
    let name = unique("iv-race");
    let _gone = Images(vec![name.clone()]);
    let t = Tree::empty("race-src");
    fs::write(t.path().join("f"), "x").unwrap();
    let tar = t.host_dir("out").join("a.tar");
    let o = Command::new("tar")
        .arg("-C")
        .arg(t.path())
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                ctl(&["clean"]);
            }
        });
        for round in 0..15 {
            let kids: Vec<_> = (0..3)
                .map(|_| {
                    Command::new(bin("ns-ctl"))
                        .args(["import-tar", tar.to_str().unwrap(), &name])
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap()
                })
                .collect();
            let outs: Vec<_> = kids
                .into_iter()
                .map(|k| k.wait_with_output().unwrap())
                .collect();
            let made = outs.iter().filter(|o| o.status.success()).count();
            for o in outs.iter().filter(|o| !o.status.success()) {
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(
                    err.lines().count() == 1
                        && (err.contains("already exists") || err.contains("appeared meanwhile")),
                    "round {round}: {err}"
                );
            }
            assert_eq!(made, 1, "round {round}");
            ok(&["remove", &name]);
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// `clean` in the moment between an import's mkdir of its hidden directory and its flock on
/// it (made a second long by strace delaying every flock call): the directory is not taken
/// for a leftover, the import completes.
#[test]
fn clean_between_an_imports_mkdir_and_its_flock_leaves_it() {
    let _one = one_clean_at_a_time();
    let name = unique("iv-gap");
    let _gone = Images(vec![name.clone()]);
    let t = Tree::empty("gap-src");
    fs::write(t.path().join("f"), "x").unwrap();
    let tar = t.host_dir("out").join("a.tar");
    let o = Command::new("tar")
        .arg("-C")
        .arg(t.path())
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let child = Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "-e", "trace=flock"])
        .args(["-e", "inject=flock:delay_enter=1000000"])
        .arg(bin("ns-ctl"))
        .args(["import-tar", tar.to_str().unwrap(), &name])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hidden = || {
        fs::read_dir(POOL).unwrap().flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!(".#{name}."))
        })
    };
    let end = Instant::now() + Duration::from_secs(10);
    while !hidden() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(hidden(), "no hidden directory appeared");
    let cleaned = ok(&["clean"]);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(!cleaned.contains(&format!(".#{name}.")), "{cleaned}");
    assert!(Path::new(POOL).join(&name).join("f").exists());
}
