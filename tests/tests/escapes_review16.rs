//! Issue 16 ("Give the host half one room"), reviewed: behaviour the refactor changed.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use ns_tests::{fixture, run_cmd, s, stage};

/// A connected SOCK_SEQPACKET pair, inheritable (no CLOEXEC): the first end stays with us,
/// the second is handed to a stage by number.
fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds socketpair writes.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just made by socketpair and are ours alone.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// ns-mount alone, given the sync socket's number as `--root-fd` too (a mistake, not a
/// directory): it refuses it as before the refactor, without closing the number it does not
/// own (the sync socket). Before the fix it closed it, its `Failed` report never reached the
/// monitor, and the socket's owner then closed a closed fd (a debug build aborts: "IO Safety
/// violation: owned file descriptor already closed").
#[test]
fn root_fd_that_is_the_sync_socket_is_refused_and_left_open() {
    let (ours, theirs) = seqpacket_pair();
    let n = std::os::fd::AsRawFd::as_raw_fd(&theirs).to_string();
    let mut c = stage("ns-enter");
    c.args([
        "--mount",
        "--pid",
        "--",
        s(&ns_tests::bin("ns-mount")),
        "-D",
    ])
    .arg(fixture())
    .args(["--sync-fd", &n, "--root-fd", &n, "--", "true"]);
    let out = run_cmd(c, None);
    drop(theirs);
    assert_eq!(out.code, 125, "{out}");
    assert!(
        out.stderr.contains(&format!(
            "--root-fd={n}: not an open directory above stderr"
        )),
        "{out}"
    );
    assert!(!out.stderr.contains("IO Safety"), "{out}");
    // The stage's report came through (then EOF).
    let mut sock = UnixStream::from(ours);
    sock.set_read_timeout(Some(ns_tests::TIMEOUT)).unwrap();
    let mut buf = vec![0u8; 4096];
    let len = sock.read(&mut buf).expect("the stage's Failed report");
    let msg = String::from_utf8_lossy(&buf[..len]);
    assert!(
        msg.contains("\"failed\"") && msg.contains("--root-fd"),
        "{msg}"
    );
}

/// ns-run where no cgroup hierarchy is mounted (a mount namespace without /sys/fs/cgroup, as
/// in a minimal container): root's container wants cgroups of its own (its device policy),
/// none can be made. After the refactor, the monitor planned the cgroups (ns-enter waited
/// for SYNC-0) but sent SYNC-0 only when it found a hierarchy: ns-enter and the monitor
/// waited for each other for ever (and SIGTERM did not end it: no PID 1 yet). Since issue
/// 18 the container runs there, under the device policy ns-run runs under, and says so.
#[test]
fn without_cgroup_hierarchies_it_runs_instead_of_hanging() {
    let t = ns_tests::Tree::rootfs("rv16-nocg");
    let mut c = std::process::Command::new("unshare");
    let script = format!(
        "umount -R /sys/fs/cgroup 2>/dev/null; \
         grep -q ' - cgroup' /proc/self/mountinfo && echo STILL-MOUNTED; \
         exec {} --register=no -D {} -- /bin/echo RAN",
        s(&ns_tests::bin("ns-run")),
        t.arg()
    );
    c.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    t.tag(&mut c);
    let out = match ns_tests::spawn(c, None).wait_for(std::time::Duration::from_secs(15)) {
        Ok(o) => o,
        Err(o) => panic!("ns-run hung without cgroup hierarchies (killed):\n{o}"),
    };
    assert!(!out.stdout.contains("STILL-MOUNTED"), "{out}");
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stderr.contains(
            "no device policy of its own for the container (neither a writable v1 devices controller nor cgroup2 here)"
        ),
        "{out}"
    );
    assert!(out.stdout.contains("RAN"), "{out}");
}
