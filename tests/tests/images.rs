//! `-i`/`--image`: disk images built here from the busybox fixture (mkfs.ext4 -d,
//! mksquashfs, mkfs.erofs, mkfs.vfat; GPT tables written by sfdisk, file systems copied in
//! at their partitions' offsets), run, and checked for what they leave: no loop device
//! serving the image, no mount, the image's bytes unchanged where nothing may write.
//! nspawn 252 refuses `-i` on these hosts (it needs udev), so the contract is its manual:
//! the Discoverable Partitions Specification's partitions and flags, `--read-only`, `-x`,
//! `-U`, `-b`, `-M NAME` finding NAME.raw.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ns_tests::{booting_tree, our_mounts, run, spawn_until, unique, Output, Stopping, Tree};

const ROOT: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
const USR: &str = "8484680c-9521-48c6-9c11-b0720656f69e";
const HOME: &str = "933ac7e1-2eb4-4f13-b844-0e14e2aef915";
const SRV: &str = "3b8f8425-20e0-4f3b-907f-1a25a76f98e8";
const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
const LINUX: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// A file system image of `kind` at `out`, holding the directory `src` (vfat: empty).
fn mkfs(kind: &str, src: &Path, out: &Path, mib: u64) {
    let _ = fs::remove_file(out);
    match kind {
        "ext4" => {
            fs::File::create(out).unwrap().set_len(mib << 20).unwrap();
            sh(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(src)
                .arg(out));
        }
        "squashfs" => sh(Command::new("mksquashfs").arg(src).arg(out).args([
            "-quiet",
            "-noappend",
            "-no-progress",
        ])),
        "erofs" => sh(Command::new("mkfs.erofs").arg("--quiet").arg(out).arg(src)),
        "vfat" => {
            fs::File::create(out).unwrap().set_len(mib << 20).unwrap();
            sh(Command::new("mkfs.vfat").arg(out));
        }
        _ => panic!("{kind}"),
    }
}

/// One partition of a GPT image: its type, label, sfdisk attributes and content (a file
/// system image, or None: zeros of `mib`).
struct P<'a> {
    ty: &'a str,
    name: &'a str,
    attrs: &'a str,
    fs: Option<&'a Path>,
    mib: u64,
}

fn p<'a>(ty: &'a str, name: &'a str, fs: &'a Path) -> P<'a> {
    P {
        ty,
        name,
        attrs: "",
        fs: Some(fs),
        mib: 0,
    }
}

/// A GPT image at `out` with `parts` (1 MiB aligned, in order), their file systems copied
/// in at their offsets.
fn gpt_image(out: &Path, parts: &[P]) {
    let mut script = String::from("label: gpt\n");
    let mut start = 2048u64; // sectors
    let mut placed = Vec::new();
    for part in parts {
        let len = part
            .fs
            .map_or(part.mib << 20, |f| fs::metadata(f).unwrap().len());
        let sectors = len.div_ceil(1 << 20) * 2048;
        let attrs = match part.attrs {
            "" => String::new(),
            a => format!(", attrs=\"{a}\""),
        };
        script += &format!(
            "start={start}, size={sectors}, type={}, name={}{attrs}\n",
            part.ty, part.name
        );
        placed.push((start * 512, part.fs));
        start += sectors;
    }
    let f = fs::File::create(out).unwrap();
    f.set_len((start + 2048) * 512).unwrap();
    drop(f);
    let mut c = Command::new("sfdisk");
    c.arg("-q").arg(out).stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk {script}");
    let img = fs::OpenOptions::new().write(true).open(out).unwrap();
    for (at, src) in placed {
        if let Some(src) = src {
            img.write_all_at(&fs::read(src).unwrap(), at).unwrap();
        }
    }
}

/// The loop devices whose backing file is `img`.
fn loops_of(img: &Path) -> Vec<String> {
    let img = fs::canonicalize(img).unwrap_or_else(|_| img.to_path_buf());
    let mut out = Vec::new();
    for e in fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let backing = fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
        if name.starts_with("loop") && Path::new(backing.trim()) == img {
            out.push(name);
        }
    }
    out
}

/// Nothing of a run on `img` is left: no loop device serves it (a loop device detaches
/// itself with its last mount, which may take the kernel a moment after the exit), no
/// mount of ours.
fn assert_nothing_left(img: &Path, mounts_before: &[String]) {
    let end = Instant::now() + Duration::from_secs(5);
    while !loops_of(img).is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(loops_of(img), Vec::<String>::new(), "loop devices left");
    assert_eq!(our_mounts(), mounts_before, "mounts left");
}

/// The failure shape: exit 125, one line naming `needles`, nothing on stdout.
fn assert_fails(out: &Output, needles: &[&str]) {
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "not one line\n{out}");
    assert!(out.stderr.starts_with("ns-run: "), "{out}");
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "stderr does not mention {n:?}\n{out}"
        );
    }
    assert_eq!(out.stdout, "", "{out}");
}

/// An ext4 image `NAME.raw` of the busybox tree beside a tree of its own (returned: it
/// holds the image's directory).
fn ext4_image(name: &str) -> (Tree, PathBuf) {
    let t = Tree::rootfs(name);
    fs::write(t.path().join("etc/marker"), "from the image\n").unwrap();
    // --volatile=state mounts /var: the image is read-only then, its mount points must be
    // there.
    fs::create_dir_all(t.path().join("var")).unwrap();
    let img = t.host_dir("images").join(format!("{name}.raw"));
    mkfs("ext4", t.path(), &img, 32);
    (t, img)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_file_system_image_runs_and_keeps_what_it_writes() {
    let (_t, img) = ext4_image("disk");
    let before = our_mounts();
    let out = run(&[
        "-i",
        s(&img),
        "sh",
        "-c",
        "hostname; cat /etc/marker; echo kept > /written",
    ]);
    assert_eq!(out.ok(), "disk\nfrom the image\n");
    assert_nothing_left(&img, &before);
    let out = run(&["-i", s(&img), "cat", "/written"]);
    assert_eq!(out.ok(), "kept\n");
    // Nothing of it on the host: the tree is in ns-run's own mount namespace.
    let mut c = ns_tests::ns_run();
    c.args(["-i", s(&img), "sh", "-c", "echo ready; sleep 100"]);
    let r = Stopping::new(spawn_until(c, "ready"));
    assert!(fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .all(|l| !l.contains("/run/ns-run/images")));
    drop(r);
    assert_nothing_left(&img, &before);
}

#[test]
fn read_only_ephemeral_and_volatile_share_the_image_and_never_write_it() {
    let (_t, img) = ext4_image("shared-img");
    let before = our_mounts();
    let bytes = fs::read(&img).unwrap();
    let out = run(&[
        "-i",
        s(&img),
        "--read-only",
        "sh",
        "-c",
        "touch /x 2>&1; true",
    ]);
    assert!(out.ok().contains("Read-only file system"), "{out}");
    let out = run(&["-i", s(&img), "-x", "sh", "-c", "echo e > /eph; cat /eph"]);
    assert_eq!(out.ok(), "e\n");
    let out = run(&[
        "-i",
        s(&img),
        "--volatile=state",
        "sh",
        "-c",
        "echo v > /var/v; cat /var/v",
    ]);
    assert_eq!(out.ok(), "v\n");
    // While an ephemeral container runs, another shares the image; a writer is refused.
    let mut first = ns_tests::ns_run();
    first.args(["-i", s(&img), "-x", "sh", "-c", "echo ready; sleep 100"]);
    let r = Stopping::new(spawn_until(first, "ready"));
    let out = run(&["-i", s(&img), "--read-only", "cat", "/etc/marker"]);
    assert_eq!(out.ok(), "from the image\n");
    let out = run(&["-i", s(&img), "true"]);
    assert_fails(&out, &["--image=", "disk image is currently busy"]);
    drop(r);
    assert_nothing_left(&img, &before);
    assert!(fs::read(&img).unwrap() == bytes, "the image was written");
    assert_eq!(
        run(&[
            "-i",
            s(&img),
            "sh",
            "-c",
            "ls /eph /var/v 2>/dev/null; true"
        ])
        .ok(),
        ""
    );
}

#[test]
fn squashfs_and_erofs_images_run_read_only() {
    for kind in ["squashfs", "erofs"] {
        let t = Tree::rootfs(kind);
        fs::write(t.path().join("etc/marker"), format!("{kind}\n")).unwrap();
        let img = t.host_dir("images").join(format!("{kind}.raw"));
        mkfs(kind, t.path(), &img, 0);
        let before = our_mounts();
        let out = run(&[
            "-i",
            s(&img),
            "sh",
            "-c",
            "cat /etc/marker; touch /x 2>&1; true",
        ]);
        assert!(out.ok().starts_with(&format!("{kind}\n")), "{out}");
        assert!(out.stdout.contains("Read-only file system"), "{out}");
        // Never written: two at once, without asking for --read-only.
        let mut first = ns_tests::ns_run();
        first.args(["-i", s(&img), "sh", "-c", "echo ready; sleep 100"]);
        let r = Stopping::new(spawn_until(first, "ready"));
        assert_eq!(
            run(&["-i", s(&img), "cat", "/etc/marker"]).ok(),
            format!("{kind}\n")
        );
        drop(r);
        assert_nothing_left(&img, &before);
    }
}

/// The mount points of `/proc/self/mountinfo` text with their options (`/usr ro`).
fn mounts_in(mountinfo: &str, points: &[&str]) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let opts = f.get(5)?.split(',').next()?;
            points.contains(&f[4]).then(|| format!("{} {opts}", f[4]))
        })
        .collect()
}

#[test]
fn gpt_partitions_are_mounted_where_the_specification_puts_them() {
    let t = Tree::rootfs("gpt-src");
    let dir = t.host_dir("parts");
    // The root without /usr's content, /usr apart (flagged read-only), /home, /srv
    // (flagged no-auto: left alone), an ESP (mounted at /efi, which the root has).
    let usr = dir.join("usr");
    fs::rename(t.path().join("usr"), &usr).unwrap();
    fs::create_dir_all(t.path().join("usr")).unwrap();
    fs::create_dir_all(t.path().join("efi")).unwrap();
    fs::create_dir_all(t.path().join("srv")).unwrap();
    let home = dir.join("home");
    fs::create_dir_all(home.join("user")).unwrap();
    fs::write(home.join("user/file"), "home\n").unwrap();
    let (root_fs, usr_fs, home_fs, srv_fs, esp_fs) = (
        dir.join("root.fs"),
        dir.join("usr.fs"),
        dir.join("home.fs"),
        dir.join("srv.fs"),
        dir.join("esp.fs"),
    );
    mkfs("ext4", t.path(), &root_fs, 16);
    mkfs("ext4", &usr, &usr_fs, 16);
    mkfs("ext4", &home, &home_fs, 8);
    mkfs("ext4", &home, &srv_fs, 8);
    // vfat as the specification has it where the kernel has vfat (this one may not).
    let esp_kind = match fs::read_to_string("/proc/filesystems")
        .unwrap()
        .contains("\tvfat")
    {
        true => "vfat",
        false => "ext4",
    };
    mkfs(esp_kind, &home, &esp_fs, 8);
    let img = dir.join("gpt.raw");
    gpt_image(
        &img,
        &[
            p(ROOT, "root-x86-64", &root_fs),
            P {
                attrs: "GUID:60",
                ..p(USR, "usr-x86-64", &usr_fs)
            },
            p(HOME, "home", &home_fs),
            P {
                attrs: "GUID:63",
                ..p(SRV, "srv", &srv_fs)
            },
            p(ESP, "esp", &esp_fs),
        ],
    );
    let before = our_mounts();
    let out = run(&[
        "-i",
        s(&img),
        "sh",
        "-c",
        "cat /proc/self/mountinfo; cat /home/user/file; touch /usr/x 2>&1; true",
    ]);
    let text = out.ok();
    assert_eq!(
        mounts_in(text, &["/", "/usr", "/home", "/srv", "/efi"]),
        ["/ rw", "/usr ro", "/home rw", "/efi rw"],
        "{out}"
    );
    assert!(
        text.contains("home\n") && text.contains("Read-only file system"),
        "{out}"
    );
    assert_nothing_left(&img, &before);
}

#[test]
fn the_root_is_the_newest_root_partition_or_a_single_linux_partition() {
    let t = Tree::rootfs("gpt-roots");
    let dir = t.host_dir("parts");
    let (a, b) = (dir.join("a.fs"), dir.join("b.fs"));
    fs::write(t.path().join("etc/marker"), "root-2\n").unwrap();
    mkfs("ext4", t.path(), &a, 16);
    fs::write(t.path().join("etc/marker"), "root-10\n").unwrap();
    mkfs("ext4", t.path(), &b, 16);
    let img = dir.join("two.raw");
    gpt_image(&img, &[p(ROOT, "root-10", &b), p(ROOT, "root-2", &a)]);
    assert_eq!(
        run(&["-i", s(&img), "cat", "/etc/marker"]).ok(),
        "root-10\n"
    );
    let img = dir.join("linux.raw");
    gpt_image(&img, &[p(LINUX, "data", &a)]);
    assert_eq!(run(&["-i", s(&img), "cat", "/etc/marker"]).ok(), "root-2\n");
    // Two Linux data partitions and no root: which one is not said, so none.
    let img = dir.join("linux2.raw");
    gpt_image(&img, &[p(LINUX, "a", &a), p(LINUX, "b", &b)]);
    assert_fails(&run(&["-i", s(&img), "true"]), &["no root partition"]);
}

#[test]
fn a_corrupt_primary_table_is_read_from_the_backup() {
    let t = Tree::rootfs("gpt-backup");
    let dir = t.host_dir("parts");
    let root_fs = dir.join("root.fs");
    mkfs("ext4", t.path(), &root_fs, 16);
    let img = dir.join("backup.raw");
    gpt_image(&img, &[p(ROOT, "root-x86-64", &root_fs)]);
    let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(b"XX", 512 + 24).unwrap(); // the primary header's current LBA
    assert_eq!(run(&["-i", s(&img), "true"]).ok(), "");
    // Both corrupt: refused.
    let len = fs::metadata(&img).unwrap().len();
    f.write_all_at(b"XX", len - 512 + 24).unwrap();
    assert_fails(
        &run(&["-i", s(&img), "true"]),
        &["GPT partition table is corrupt"],
    );
    assert_nothing_left(&img, &our_mounts());
}

#[test]
fn bad_images_fail_with_one_line_and_leave_nothing() {
    let t = Tree::rootfs("bad-images");
    let dir = t.host_dir("bad");
    let before = our_mounts();
    let root_fs = dir.join("root.fs");
    mkfs("ext4", t.path(), &root_fs, 16);
    let zeros = dir.join("zeros.raw");
    fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    let no_root = dir.join("noroot.raw");
    gpt_image(&no_root, &[p(HOME, "home", &root_fs)]);
    let empty_part = dir.join("emptypart.raw");
    gpt_image(
        &empty_part,
        &[P {
            fs: None,
            mib: 4,
            ..p(ROOT, "root", &root_fs)
        }],
    );
    let mbr = dir.join("mbr.raw");
    fs::File::create(&mbr).unwrap().set_len(8 << 20).unwrap();
    let mut c = Command::new("sfdisk");
    c.arg("-q").arg(&mbr).stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, type=83\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let sidecar = dir.join("side.raw");
    fs::copy(&root_fs, &sidecar).unwrap();
    fs::write(dir.join("side.roothash"), "00".repeat(32)).unwrap();
    let missing = dir.join("missing.raw");
    let cases: Vec<(Vec<&str>, Vec<&str>, Option<&Path>)> = vec![
        (
            vec!["-i", s(&missing)],
            vec!["--image=", "No such file or directory"],
            None,
        ),
        (
            vec!["-i", s(&dir)],
            vec!["not a regular file or a block device"],
            None,
        ),
        (
            vec!["-i", s(&zeros)],
            vec!["neither a GPT partition table nor a known file system"],
            Some(&zeros),
        ),
        (
            vec!["-i", s(&no_root)],
            vec!["no root partition for x86-64"],
            Some(&no_root),
        ),
        (
            vec!["-i", s(&empty_part)],
            vec!["partition 1 (root) holds no known file system"],
            Some(&empty_part),
        ),
        (
            vec!["-i", s(&mbr)],
            vec!["MBR partition table is not supported"],
            Some(&mbr),
        ),
        (
            vec!["-i", s(&sidecar)],
            vec!["side.roothash", "device-mapper"],
            Some(&sidecar),
        ),
        (
            vec![
                "-i",
                s(&root_fs),
                &"--root-hash=00112233445566778899aabbccddeeff",
            ],
            vec!["--root-hash", "device-mapper"],
            Some(&root_fs),
        ),
        (
            vec!["-i", s(&root_fs), "--root-hash=xyz"],
            vec!["--root-hash=xyz: not a root hash"],
            Some(&root_fs),
        ),
        (
            vec!["-i", s(&root_fs), "-D", t.arg()],
            vec!["--directory= and --image= may not be combined"],
            Some(&root_fs),
        ),
        (
            vec!["-i", s(&root_fs), "--template", t.arg()],
            vec!["--template= and --image= may not be combined"],
            Some(&root_fs),
        ),
    ];
    for (args, needles, img) in cases {
        let mut a = args.clone();
        a.push("true");
        let out = run(&a);
        assert_fails(&out, &needles);
        if let Some(img) = img {
            assert_nothing_left(img, &before);
        }
    }
}

#[test]
fn a_machine_name_finds_its_raw_image() {
    let (_t, img) = ext4_image("byname");
    let name = unique("img").replace('_', "-");
    let raw = PathBuf::from(format!("/var/lib/machines/{name}.raw"));
    fs::create_dir_all("/var/lib/machines").unwrap();
    fs::copy(&img, &raw).unwrap();
    let _gone = ns_tests::Defer::new(|| {
        let _ = fs::remove_file(&raw);
    });
    let out = run(&["-M", &name, "sh", "-c", "hostname; cat /etc/marker"]);
    assert_eq!(out.ok(), format!("{name}\nfrom the image\n"));
}

#[test]
fn user_namespace_sees_the_image_idmapped() {
    let (_t, img) = ext4_image("idmapped");
    let before = our_mounts();
    let out = run(&[
        "-U",
        "-i",
        s(&img),
        "sh",
        "-c",
        "stat -c %u /bin/busybox; touch /new; stat -c %u /new; cat /proc/self/uid_map",
    ]);
    let text = out.ok();
    assert!(text.starts_with("0\n0\n"), "{out}");
    assert!(
        !text.contains(" 0 0 "),
        "not in a user namespace of its own: {out}"
    );
    assert_nothing_left(&img, &before);
    // Written as container root, stored as root: the idmapped mount shifted it.
    assert_eq!(
        run(&["-i", s(&img), "stat", "-c", "%u", "/new"]).ok(),
        "0\n"
    );
}

#[test]
fn an_image_boots() {
    let t = booting_tree("bootimg", "echo booted=$(hostname)\npoweroff -f\n");
    let img = t.host_dir("images").join("bootimg.raw");
    mkfs("ext4", t.path(), &img, 32);
    let before = our_mounts();
    let out = run(&["-b", "-i", s(&img)]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("booted=bootimg"), "{out}");
    assert_nothing_left(&img, &before);
}

#[test]
fn a_killed_monitor_leaves_no_loop_device() {
    let (_t, img) = ext4_image("killed");
    let before = our_mounts();
    let mut c = ns_tests::ns_run();
    c.args(["-i", s(&img), "sh", "-c", "echo ready; sleep 100"]);
    let r = spawn_until(c, "ready");
    assert_eq!(loops_of(&img).len(), 1);
    r.signal(libc::SIGKILL);
    let _ = r.wait();
    assert_nothing_left(&img, &before);
}

// ---- found by the attack review ----------------------------------------------------------

/// A squashfs root with an ext4 /var: the root is never written, /var is, so the image is
/// not shared: a second container that would write /var is refused.
#[test]
fn an_image_is_shared_only_where_nothing_of_it_is_written() {
    let t = Tree::rootfs("sq-var");
    fs::create_dir_all(t.path().join("var")).unwrap();
    let dir = t.host_dir("parts");
    let var = dir.join("var");
    fs::create_dir_all(&var).unwrap();
    let (root_fs, var_fs) = (dir.join("root.fs"), dir.join("var.fs"));
    mkfs("squashfs", t.path(), &root_fs, 0);
    mkfs("ext4", &var, &var_fs, 8);
    const VAR: &str = "4d21b016-b534-45c2-a9fb-5c16e091fd2d";
    let img = dir.join("sqvar.raw");
    gpt_image(&img, &[p(ROOT, "root", &root_fs), p(VAR, "var", &var_fs)]);
    let before = our_mounts();
    let mut first = ns_tests::ns_run();
    first.args([
        "-i",
        s(&img),
        "sh",
        "-c",
        "echo w > /var/w; echo ready; sleep 100",
    ]);
    let r = Stopping::new(spawn_until(first, "ready"));
    let out = run(&["-i", s(&img), "-M", "second", "sh", "-c", "echo x > /var/x"]);
    assert_fails(&out, &["disk image is currently busy"]);
    // Not even read-only: the first writes.
    let out = run(&["-i", s(&img), "--read-only", "-M", "third", "true"]);
    assert_fails(&out, &["disk image is currently busy"]);
    drop(r);
    assert_nothing_left(&img, &before);
}

/// A monitor killed with mount points it made in its image: another image of the same name
/// started next (whose start collects the dead monitor's journal) loses nothing.
#[test]
fn a_dead_monitors_journal_never_touches_another_image() {
    let (ta, a) = ext4_image("same");
    let (_tb, b) = ext4_image("same");
    let src = ta.host_dir("src");
    let before = our_mounts();
    let mut c = ns_tests::ns_run();
    c.args([
        "-i",
        s(&a),
        "-M",
        "conta",
        &format!("--bind={}:/newdir/sub", s(&src)),
    ])
    .args(["sh", "-c", "echo ready; sleep 100"]);
    let r = spawn_until(c, "ready");
    r.signal(libc::SIGKILL);
    let _ = r.wait();
    assert_nothing_left(&a, &before);
    // B has its own /newdir/sub (empty, as a mount point would be).
    assert_eq!(run(&["-i", s(&b), "mkdir", "-p", "/newdir/sub"]).ok(), "");
    assert_eq!(
        run(&["-i", s(&b), "-M", "contb", "ls", "-d", "/newdir/sub"]).ok(),
        "/newdir/sub\n"
    );
    assert_eq!(
        run(&["-i", s(&b), "ls", "-d", "/newdir/sub"]).ok(),
        "/newdir/sub\n"
    );
    assert_nothing_left(&b, &before);
}

/// A block device is locked as the device (not the node naming it), and one mounted
/// elsewhere is refused (opened O_EXCL for writing).
#[test]
fn block_devices_are_locked_as_devices_and_refused_while_mounted() {
    let (t, img) = ext4_image("blockdev");
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success());
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let _detach = ns_tests::Defer::new(|| {
        let _ = Command::new("losetup").args(["-d", &dev]).status();
    });
    let link = t.host_dir("links").join("disk");
    std::os::unix::fs::symlink(&dev, &link).unwrap();
    let mut first = ns_tests::ns_run();
    first.args(["-i", &dev, "sh", "-c", "echo ready; sleep 100"]);
    let r = Stopping::new(spawn_until(first, "ready"));
    let out = run(&["-i", s(&link), "-M", "other", "true"]);
    assert_eq!(out.code, 125, "{out}");
    assert!(out.stderr.contains("busy"), "{out}");
    drop(r);
    // Mounted on the host: refused.
    let mounted = ns_tests::HostTmpfs::mount_device(&dev, &t.host_dir("mnt"));
    let out = run(&["-i", &dev, "true"]);
    drop(mounted);
    assert_fails(&out, &["Device or resource busy"]);
}

/// The image's settings file is found beside it by the image's name, not by the working
/// directory's.
#[test]
fn settings_are_found_beside_the_image() {
    let (t, img) = ext4_image("withsettings");
    let images = img.parent().unwrap();
    fs::write(
        images.join("withsettings.nspawn"),
        "[Exec]\nEnvironment=FROM_IMAGE=1\n",
    )
    .unwrap();
    let work = t.host_dir("work");
    fs::write(
        t.base().join("work.nspawn"),
        "[Exec]\nEnvironment=FROM_CWD=1\n",
    )
    .unwrap();
    let mut c = ns_tests::ns_run();
    c.current_dir(&work).args([
        "-i",
        s(&img),
        "sh",
        "-c",
        "echo ${FROM_IMAGE:-no} ${FROM_CWD:-no}",
    ]);
    let out = ns_tests::run_cmd(c, None);
    assert_eq!(out.stdout, "1 no\n", "{out}");
}

/// CRC-32 (IEEE), as GPT checksums.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Change the GPT entries of `img` (512-byte sectors) with `edit`, in the primary and the
/// backup table, and write their checksums again.
fn patch_gpt(img: &Path, edit: impl Fn(&mut Vec<u8>)) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let len = f.metadata().unwrap().len();
    for hdr_at in [512, len - 512] {
        let mut hdr = vec![0u8; 512];
        f.read_exact_at(&mut hdr, hdr_at).unwrap();
        let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let entries_at = u64::from_le_bytes(hdr[72..80].try_into().unwrap()) * 512;
        let n = (le32(&hdr, 80) * le32(&hdr, 84)) as usize;
        let mut entries = vec![0u8; n];
        f.read_exact_at(&mut entries, entries_at).unwrap();
        edit(&mut entries);
        f.write_all_at(&entries, entries_at).unwrap();
        hdr[88..92].copy_from_slice(&crc32(&entries).to_le_bytes());
        let hsize = le32(&hdr, 12) as usize;
        hdr[16..20].fill(0);
        let c = crc32(&hdr[..hsize]);
        hdr[16..20].copy_from_slice(&c.to_le_bytes());
        f.write_all_at(&hdr, hdr_at).unwrap();
    }
}

/// --print-state takes no lock and writes nothing; overlapping partitions, -M finding an
/// image with --template, and a partition whose file system lies past its end are refused.
#[test]
fn printing_locks_nothing_and_odd_layouts_are_refused() {
    let (t, img) = ext4_image("printed");
    let mut first = ns_tests::ns_run();
    first.args(["-i", s(&img), "sh", "-c", "echo ready; sleep 100"]);
    let r = Stopping::new(spawn_until(first, "ready"));
    let out = run(&["-i", s(&img), "--print-state", "true"]);
    assert_eq!(out.code, 0, "{out}");
    drop(r);
    let bytes = fs::read(&img).unwrap();
    let out = run(&["-i", s(&img), "--print-state", "true"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(fs::read(&img).unwrap() == bytes, "printing wrote the image");
    // Overlapping partitions.
    let dir = t.host_dir("odd");
    let root_fs = dir.join("root.fs");
    mkfs("ext4", t.path(), &root_fs, 8);
    let ov = dir.join("overlap.raw");
    gpt_image(&ov, &[p(ROOT, "root", &root_fs), p(HOME, "home", &root_fs)]);
    // Partition 2 moved to start inside partition 1 (sfdisk refuses to write that).
    patch_gpt(&ov, |entries| {
        entries[128 + 32..128 + 40].copy_from_slice(&4096u64.to_le_bytes())
    });
    assert_fails(
        &run(&["-i", s(&ov), "true"]),
        &["partitions 1 and 2 overlap"],
    );
    // Partition 1 over the table itself (before the first usable LBA).
    gpt_image(&ov, &[p(ROOT, "root", &root_fs)]);
    patch_gpt(&ov, |entries| {
        entries[32..40].copy_from_slice(&1u64.to_le_bytes())
    });
    assert_fails(
        &run(&["-i", s(&ov), "true"]),
        &["partition 1 outside the image"],
    );
    // -M NAME finding NAME.raw, with --template: refused as -i with --template is.
    let name = unique("tpl").replace('_', "-");
    let raw = PathBuf::from(format!("/var/lib/machines/{name}.raw"));
    fs::create_dir_all("/var/lib/machines").unwrap();
    fs::copy(&img, &raw).unwrap();
    let _gone = ns_tests::Defer::new(|| {
        let _ = fs::remove_file(&raw);
    });
    let out = run(&["-M", &name, "--template", t.arg(), "true"]);
    assert_fails(&out, &["--template= and --image= may not be combined"]);
}

/// The grow-fs flag: a root file system made smaller than its partition is grown to it
/// when mounted writable (as nspawn grows it), never when read-only. btrfs (which grows to
/// no less than 256 MiB) and ext4; ext4's online resize needs CAP_SYS_RESOURCE, which a
/// host may withhold even from root (this VM's sandbox does): there it runs ungrown, as
/// nspawn's would.
#[test]
fn grow_fs_grows_a_writable_file_system_to_its_partition() {
    let t = Tree::rootfs("growfs");
    let dir = t.host_dir("parts");
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let bnd = ns_tests::status_hex(&status, "CapBnd").unwrap();
    let ext4_grows = bnd & (1 << 24) != 0; // CAP_SYS_RESOURCE
    for (kind, mib, part_mib, grows) in [("btrfs", 32, 300, true), ("ext4", 16, 48, ext4_grows)] {
        let root_fs = dir.join(format!("{kind}.fs"));
        let _ = fs::remove_file(&root_fs);
        fs::File::create(&root_fs)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        match kind {
            "btrfs" => sh(Command::new("mkfs.btrfs")
                .args(["-q", "--mixed", "-r"])
                .arg(t.path())
                .arg(&root_fs)),
            _ => sh(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(t.path())
                .arg(&root_fs)),
        }
        let img = dir.join(format!("grow-{kind}.raw"));
        gpt_image(
            &img,
            &[P {
                attrs: "GUID:59",
                fs: None,
                mib: part_mib,
                ..p(ROOT, "root", &root_fs)
            }],
        );
        // The small file system at the large partition's start.
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&fs::read(&root_fs).unwrap(), 2048 * 512)
            .unwrap();
        drop(f);
        let size = |opts: &[&str]| -> u64 {
            let args = [
                &["-i", s(&img)][..],
                opts,
                &["stat", "-f", "-c", "%b %S", "/"],
            ]
            .concat();
            let out = run(&args);
            let v: Vec<u64> = out
                .ok()
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            (v[0] * v[1]) >> 20
        };
        assert!(
            size(&["--read-only"]) <= mib,
            "{kind} grown while read-only"
        );
        let after = size(&[]);
        match grows {
            true => assert!(
                after > part_mib * 8 / 10 && after <= part_mib,
                "{kind}: {after} MiB"
            ),
            false => assert!(after <= mib, "{kind}: {after} MiB"),
        }
    }
}
