//! Issue 15, a second review of its fixes: ns-caps `--fork` and the processes that enter a
//! running container (`ns-ctl shell`, `ns-oci exec`).
//!
//! The entering process stays outside the container's PID namespace but is inside its
//! mount namespace: the /proc it sees there is the container's, one the container's root can
//! replace (a tmpfs over /proc). Nothing it reads through that /proc may weaken what it
//! drops.

use std::process::Command;

use ns_tests::{bin, ns_run_registered, run_cmd, spawn_until, Tree};

/// Container root puts a tmpfs over its /proc with `self/setgroups` saying `deny`, then the
/// host's root runs `ns-ctl shell` with supplementary groups of its own (here 4242; a
/// login's are usually 0): the command must not keep them (`id -G` shows them as 4242, or
/// as the overflow gid 65534 under -U, where they are host groups the container does not
/// have: files of a bound host directory, readable by that group, would open).
#[test]
fn a_fake_proc_self_setgroups_does_not_keep_the_callers_groups() {
    for (opts, tag) in [(&["-U"][..], "u"), (&[][..], "d")] {
        let t = Tree::rootfs(&format!("rv2-groups-{tag}"));
        let name = format!("rv2-groups-{tag}-{}", std::process::id());
        let mut c = ns_run_registered();
        t.tag(&mut c)
            .args(["-q", "-M", &name, "-D", t.arg()])
            .args(opts)
            .args([
                "sh",
                "-c",
                "mount -t tmpfs none /proc && mkdir /proc/self && \
                 echo deny > /proc/self/setgroups && echo ready; exec sleep 100",
            ]);
        let mut running = spawn_until(c, "ready");
        let mut shell = Command::new("setpriv");
        shell
            .args(["--groups=4242", "--"])
            .arg(bin("ns-ctl"))
            .args(["shell", &name, "--", "id", "-G"])
            .env_remove("NS_DEBUG");
        let out = run_cmd(shell, None);
        running.signal(libc::SIGKILL);
        let _ = running.wait();
        assert_eq!(out.code, 0, "{opts:?}: {out}");
        let groups: Vec<&str> = out.stdout.split_whitespace().collect();
        assert!(!groups.is_empty(), "{opts:?}: {out}");
        assert!(
            !groups.iter().any(|g| *g == "4242" || *g == "65534"),
            "{opts:?}: the shell kept the caller's groups: {out}"
        );
    }
}
