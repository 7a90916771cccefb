//! `--link-journal=` and `-j`: the guest's `/var/log/journal/ID` linked with the host's, as
//! nspawn 252 links them (compared with it on the same trees), and a booted Debian's journal
//! read from the host with `journalctl -D`. Every test uses machine ids of its own and
//! removes what it made under the host's /var/log/journal.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ns_tests::{nspawn_in, run, run_cmd, Defer, Tree};

/// A machine id of our own (32 hex digits).
fn new_id() -> String {
    let b: [u8; 16] = fs::read("/proc/sys/kernel/random/uuid")
        .map(|u| {
            let hex: String = String::from_utf8_lossy(&u)
                .replace('-', "")
                .trim()
                .to_string();
            let mut out = [0u8; 16];
            for (i, o) in out.iter_mut().enumerate() {
                *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            }
            out
        })
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn host_link(id: &str) -> PathBuf {
    PathBuf::from("/var/log/journal").join(id)
}

/// Remove the host's /var/log/journal/ID (a symlink or a directory) at the end.
fn cleanup(id: &str) -> Defer<impl FnOnce()> {
    let p = host_link(id);
    Defer::new(move || {
        let _ = fs::remove_file(&p);
        let _ = fs::remove_dir_all(&p);
    })
}

/// `sh -c script` in `t` with `args`, under nspawn or ns-run.
fn nspawn_or_ns_run(nspawn: bool, t: &Tree, args: &[&str], script: &str) -> ns_tests::Output {
    if nspawn {
        let mut c = nspawn_in(t);
        c.args(args).args(["sh", "-c", script]);
        run_cmd(c, None)
    } else {
        run(&[&["-D", t.arg()][..], args, &["sh", "-c", script]].concat())
    }
}

fn journal_mounts(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with("/var/log/journal"))
        .map(str::to_string)
        .collect()
}

#[test]
fn guest_mode_links_the_hosts_directory_to_the_trees_as_nspawn() {
    fs::create_dir_all("/var/log/journal").unwrap();
    for nspawn in [false, true] {
        let t = Tree::rootfs("lj-guest");
        let id = new_id();
        let _gone = cleanup(&id);
        let args = [&format!("--uuid={id}"), "--link-journal=guest"];
        let script = "grep ' /var/log/journal' /proc/self/mountinfo; ls -d /var/log/journal/*";
        let out = nspawn_or_ns_run(nspawn, &t, &args, script);
        assert_eq!(out.code, 0, "nspawn {nspawn}: {out}");
        assert_eq!(
            out.stdout,
            format!("/var/log/journal/{id}\n"),
            "nspawn {nspawn}"
        );
        let target = t.path().join("var/log/journal").join(&id);
        assert_eq!(
            fs::read_link(host_link(&id)).unwrap(),
            target,
            "nspawn {nspawn}"
        );
        assert!(target.is_dir());
        // auto (the default) finds the link to this tree: nothing else is made.
        let out = run(&["-D", t.arg(), &format!("--uuid={id}"), "sh", "-c", script]);
        assert_eq!(out.ok(), format!("/var/log/journal/{id}\n"));
        assert_eq!(fs::read_link(host_link(&id)).unwrap(), target);
    }
}

#[test]
fn host_mode_binds_the_hosts_directory_as_nspawn() {
    fs::create_dir_all("/var/log/journal").unwrap();
    for nspawn in [false, true] {
        let t = Tree::rootfs("lj-host");
        let id = new_id();
        let _gone = cleanup(&id);
        let args = [&format!("--uuid={id}"), "--link-journal=host"];
        // (busybox's sh expands no pattern in a redirection)
        let script = format!("cat /proc/self/mountinfo; echo x > /var/log/journal/{id}/written");
        let script = script.as_str();
        let out = nspawn_or_ns_run(nspawn, &t, &args, script);
        assert_eq!(out.code, 0, "nspawn {nspawn}: {out}");
        assert_eq!(
            journal_mounts(&out.stdout),
            [format!("/var/log/journal/{id}")],
            "nspawn {nspawn}"
        );
        assert_eq!(
            fs::read_to_string(host_link(&id).join("written")).unwrap(),
            "x\n"
        );
        // auto: the host has the directory now, so it is bound again.
        let out = run(&[
            "-D",
            t.arg(),
            &format!("--uuid={id}"),
            "cat",
            "/proc/self/mountinfo",
        ]);
        assert_eq!(journal_mounts(out.ok()), [format!("/var/log/journal/{id}")]);
    }
}

#[test]
fn nothing_is_linked_without_a_reason() {
    let t = Tree::rootfs("lj-none");
    let id = new_id();
    let _gone = cleanup(&id);
    let uuid = format!("--uuid={id}");
    // auto with nothing on the host, no, -x: no link, no directory, no mount.
    for opts in [
        &[][..],
        &["--link-journal=no"],
        &["-x", "--link-journal=guest"],
        &["-x", "-j"],
    ] {
        let out = run(&[
            &["-D", t.arg(), &uuid][..],
            opts,
            &["cat", "/proc/self/mountinfo"],
        ]
        .concat());
        assert_eq!(journal_mounts(out.ok()), Vec::<String>::new(), "{opts:?}");
        assert!(fs::symlink_metadata(host_link(&id)).is_err(), "{opts:?}");
        assert!(!t.path().join("var/log/journal").exists(), "{opts:?}");
    }
    // -j is try-guest: it links.
    assert_eq!(run(&["-D", t.arg(), &uuid, "-j", "true"]).ok(), "");
    assert!(fs::read_link(host_link(&id)).is_ok());
}

#[test]
fn bad_modes_and_the_hosts_own_id_fail_with_one_line() {
    let t = Tree::rootfs("lj-bad");
    let host_id = fs::read_to_string("/etc/machine-id")
        .unwrap()
        .trim()
        .to_string();
    let own = format!("--uuid={host_id}");
    let before = fs::symlink_metadata(host_link(&host_id))
        .ok()
        .map(|m| m.file_type());
    let cases: [(&[&str], &str); 3] = [
        (
            &["--link-journal=bogus"],
            "--link-journal=bogus: not one of no, auto",
        ),
        (
            &["--link-journal=guest", &own],
            "host and machine ids are equal",
        ),
        (
            &["--link-journal=host", &own],
            "host and machine ids are equal",
        ),
    ];
    for (opts, needle) in cases {
        let out = run(&[&["-D", t.arg()][..], opts, &["true"]].concat());
        assert_eq!(out.code, 125, "{out}");
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert!(out.stderr.contains(needle), "{out}");
    }
    // try-…: skipped, the container runs.
    for mode in ["try-guest", "try-host"] {
        let out = run(&[
            "-D",
            t.arg(),
            &own,
            &format!("--link-journal={mode}"),
            "true",
        ]);
        assert_eq!(out.ok(), "", "{mode}");
    }
    assert_eq!(
        fs::symlink_metadata(host_link(&host_id))
            .ok()
            .map(|m| m.file_type()),
        before
    );
    assert!(!t.path().join("var/log/journal").exists());
}

/// A copy of the cached Debian tree (systemd, dbus) with machine id `id`.
fn debian_copy(t: &Tree, id: &str) -> PathBuf {
    let src = ns_tests::debian_cache("debian-systemd", "systemd,dbus");
    let dst = t.path().join("debian");
    let st = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(st.success());
    fs::write(dst.join("etc/machine-id"), format!("{id}\n")).unwrap();
    dst
}

/// Boot `tree` with `mode`, wait (bounded) until journald wrote a journal file into `dir`,
/// power it off (SIGTERM to ns-run), and return what `journalctl -D dir` reads.
fn boot_and_read(tree: &Path, mode: &str, dir: &Path) -> String {
    let mut c = ns_tests::ns_run();
    c.args(["-q", "-b", &format!("--link-journal={mode}"), "-D"])
        .arg(tree);
    let r = ns_tests::spawn(c, None);
    let end = Instant::now() + Duration::from_secs(60);
    let has_journal = || {
        fs::read_dir(dir).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".journal"))
        })
    };
    while !has_journal() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the boot go on a little, then power off (journald flushes).
    std::thread::sleep(Duration::from_secs(2));
    r.signal(libc::SIGTERM);
    let out = r
        .wait_for(Duration::from_secs(30))
        .expect("no orderly poweroff");
    assert_eq!(out.code, 0, "{out}");
    let j = std::process::Command::new("journalctl")
        .args(["--no-pager", "-q", "-o", "cat", "-D"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&j.stdout).into_owned()
}

#[test]
fn a_booted_debians_journal_is_read_on_the_host() {
    fs::create_dir_all("/var/log/journal").unwrap();
    for mode in ["guest", "host"] {
        let t = Tree::empty("lj-debian");
        let id = new_id();
        let _gone = cleanup(&id);
        let tree = debian_copy(&t, &id);
        let dir = host_link(&id);
        let text = boot_and_read(&tree, mode, &dir);
        assert!(text.contains("Journal started"), "{mode}: {text}");
        assert!(
            text.contains(&format!("/var/log/journal/{id}")),
            "{mode}: {text}"
        );
        assert!(
            text.lines().any(|l| l.contains("Reached target")),
            "{mode}: {text}"
        );
        match mode {
            "guest" => {
                assert_eq!(
                    fs::read_link(&dir).unwrap(),
                    tree.join("var/log/journal").join(&id)
                );
            }
            _ => assert!(fs::symlink_metadata(&dir).unwrap().is_dir()),
        }
    }
}

/// The container put a symlink where its journal directory was: a try mode (`-j`, `auto`)
/// runs without linking (as nspawn warns and goes on), `guest` fails with one line, and
/// nothing on the host follows the symlink.
#[test]
fn a_symlink_in_the_trees_journal_path_is_skipped_or_refused() {
    fs::create_dir_all("/var/log/journal").unwrap();
    let t = Tree::rootfs("lj-swapped");
    let id = new_id();
    let _gone = cleanup(&id);
    let victim = t.host_dir("victim");
    fs::create_dir_all(t.path().join("var/log/journal")).unwrap();
    std::os::unix::fs::symlink(&victim, t.path().join("var/log/journal").join(&id)).unwrap();
    let uuid = format!("--uuid={id}");
    assert_eq!(run(&["-D", t.arg(), &uuid, "-j", "true"]).ok(), "");
    let out = run(&["-D", t.arg(), &uuid, "--link-journal=guest", "true"]);
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(
        out.stderr.contains("--link-journal: cannot create"),
        "{out}"
    );
    assert!(fs::symlink_metadata(host_link(&id)).is_err());
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 0);
}
