//! `--set-credential=ID:VALUE` and `--load-credential=ID:PATH`: the payload finds them in a
//! read-only ramfs at /run/host/credentials named by `$CREDENTIALS_DIRECTORY`, as under
//! nspawn (compared here); bad input is one line before anything is set up. (A booted
//! systemd importing them: boot.rs.)

use ns_tests::{ns_run, run_cmd, Tree};

const LOOK: &str = "echo $CREDENTIALS_DIRECTORY; cd /run/host/credentials && \
    for f in *; do echo \"$f $(stat -c '%a %u' $f) $(od -An -c $f | tr -s ' ')\"; done; \
    stat -c '%a' .; grep -q ' /run/host/credentials ro,nosuid,nodev,noexec' /proc/self/mountinfo && \
    echo mounted; \
    echo x > new 2>/dev/null || echo read-only";

fn creds_file(t: &Tree) -> std::path::PathBuf {
    let p = t.host_dir("creds").join("loaded");
    std::fs::write(&p, b"from a file\n").unwrap();
    p
}

fn options(file: &std::path::Path) -> Vec<String> {
    vec![
        "--set-credential=plain:bar".into(),
        r"--set-credential=escaped:a\nb\x41".into(),
        format!("--load-credential=loaded:{}", file.display()),
    ]
}

#[test]
fn the_payload_finds_them_as_under_nspawn() {
    let t = Tree::rootfs("creds");
    let file = creds_file(&t);
    let opts = options(&file);
    let mut c = ns_run();
    t.tag(&mut c)
        .args(["-q", "-D", t.arg()])
        .args(&opts)
        .args(["/bin/sh", "-c", LOOK]);
    let ours = run_cmd(c, None);
    assert_eq!(ours.code, 0, "{ours}");
    let nspawn = ns_tests::nspawn_in(&t)
        .args(&opts)
        .args(["/bin/sh", "-c", LOOK])
        .output()
        .expect("systemd-nspawn runs");
    assert!(nspawn.status.success(), "{nspawn:?}");
    assert_eq!(ours.stdout, String::from_utf8_lossy(&nspawn.stdout));
    assert!(
        ours.stdout.contains("plain 400 0  b a r"),
        "{}",
        ours.stdout
    );
    assert!(
        ours.stdout.ends_with("500\nmounted\nread-only\n"),
        "{}",
        ours.stdout
    );
}

#[test]
fn under_userns_they_belong_to_container_root() {
    let t = Tree::rootfs("creds-u");
    let file = creds_file(&t);
    let mut c = ns_run();
    t.tag(&mut c)
        .args(["-q", "-U", "-D", t.arg()])
        .args(options(&file))
        .args(["/bin/sh", "-c", LOOK]);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("loaded 400 0  f r o m"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.ends_with("read-only\n"), "{}", out.stdout);
}

#[test]
fn bad_credentials_are_one_line_each() {
    let t = Tree::rootfs("creds-bad");
    for (opts, line) in [
        (
            &["--set-credential=a:1", "--set-credential=a:2"][..],
            "ns-run: --set-credential: duplicate credential 'a'",
        ),
        (
            &["--set-credential=a/b:1"][..],
            "ns-run: --set-credential: not a valid credential name: \"a/b\"",
        ),
        (
            &["--set-credential=novalue"][..],
            "ns-run: --set-credential=novalue: missing value (ID:VALUE)",
        ),
        (
            &[r"--set-credential=x:\q"][..],
            "ns-run: --set-credential: bad escape in the value of 'x'",
        ),
        (
            &["--load-credential=x:/nonexistent/file"][..],
            "ns-run: --load-credential=x:/nonexistent/file: cannot read /nonexistent/file: \
             No such file or directory (os error 2)",
        ),
        (
            &["--load-credential=x:relative"][..],
            "ns-run: --load-credential=x:relative: no credentials were passed to ns-run to \
             take it from",
        ),
    ] {
        let mut c = ns_run();
        t.tag(&mut c)
            .env_remove("CREDENTIALS_DIRECTORY")
            .args(["-q", "-D", t.arg()])
            .args(opts)
            .arg("/bin/true");
        let out = run_cmd(c, None);
        assert_eq!(out.code, 125, "{opts:?}: {out}");
        assert_eq!(out.stderr_lines(), [line], "{opts:?}");
    }
}

/// `SYSTEMD_NSPAWN_CONTAINER_SERVICE=` (empty): nspawn still makes /run/host, with an empty
/// container-manager, and the credentials in it; so does ns-run.
#[test]
fn an_empty_manager_name_still_gets_run_host_and_the_credentials() {
    let t = Tree::rootfs("creds-nomanager");
    let look =
        "echo \"[$container]\"; ls /run/host/credentials; od -An -c /run/host/container-manager";
    let mut c = ns_run();
    t.tag(&mut c)
        .env("SYSTEMD_NSPAWN_CONTAINER_SERVICE", "")
        .args([
            "-q",
            "-D",
            t.arg(),
            "--set-credential=a:1",
            "/bin/sh",
            "-c",
            look,
        ]);
    let ours = run_cmd(c, None);
    assert_eq!(ours.code, 0, "{ours}");
    let nspawn = ns_tests::nspawn_in(&t)
        .env("SYSTEMD_NSPAWN_CONTAINER_SERVICE", "")
        .args(["--set-credential=a:1", "/bin/sh", "-c", look])
        .output()
        .expect("systemd-nspawn runs");
    assert_eq!(ours.stdout, String::from_utf8_lossy(&nspawn.stdout));
    assert!(ours.stdout.starts_with("[]\na\n"), "{}", ours.stdout);
}
