//! Black-box error handling of ns-run: every failure is exactly one line on stderr, prefixed
//! by the stage that failed and naming the option and value, with the documented exit code
//! (125 setup, 126 cannot execute, 127 not found), and leaves nothing behind: the host mount
//! table is unchanged and no process is left in the container's tree.

use ns_tests::{assert_no_leak, ns_run, our_mounts, run, run_cmd, Output, Tree};

/// Run `ns-run ARGS` (with `{D}` in an argument replaced by the tree's path) in a private
/// tree, check the failure shape and that nothing leaked; returns the output.
fn fails(tree: &Tree, args: &[&str], code: i32, prefix: &str, needles: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.replace("{D}", tree.arg())).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let before = our_mounts();
    let mut cmd = ns_run();
    tree.tag(&mut cmd).args(&argv);
    let out = run_cmd(cmd, None);
    assert_eq!(out.code, code, "ns-run {args:?}: wrong exit code\n{out}");
    assert_one_line(&out, prefix);
    for n in needles {
        let n = n.replace("{D}", tree.arg());
        assert!(
            out.stderr.contains(&n),
            "ns-run {args:?}: stderr does not mention {n:?}\n{out}"
        );
    }
    assert_eq!(out.stdout, "", "ns-run {args:?}: unexpected stdout\n{out}");
    assert_no_leak(tree.path(), &before);
    out
}

fn assert_one_line(out: &Output, prefix: &str) {
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "stderr is not exactly one line\n{out}");
    assert!(
        out.stderr.ends_with('\n'),
        "stderr line is not terminated\n{out}"
    );
    assert!(
        lines[0].starts_with(prefix),
        "stderr does not start with {prefix:?}\n{out}"
    );
}

#[test]
fn missing_directory() {
    let t = Tree::rootfs("missing");
    let before = our_mounts();
    let out = run(&["-D", "/nonexistent/dir", "true"]);
    assert_eq!(out.code, 125, "{out}");
    assert_one_line(&out, "ns-run: ");
    assert!(out.stderr.contains("--directory=/nonexistent/dir"), "{out}");
    assert!(out.stderr.contains("No such file"), "{out}");
    assert_no_leak(t.path(), &before);
    assert!(ns_tests::procs_in(std::path::Path::new("/nonexistent/dir")).is_empty());
}

#[test]
fn directory_is_a_regular_file() {
    let t = Tree::rootfs("file");
    let f = t.host_dir("host").join("plain");
    std::fs::write(&f, "not a tree\n").unwrap();
    let fs = f.to_str().unwrap();
    let out = fails(&t, &["-D", fs, "true"], 125, "ns-run: ", &[]);
    assert!(out.stderr.contains(&format!("--directory={fs}")), "{out}");
}

#[test]
fn tree_without_usr() {
    let t = Tree::empty("nousr");
    std::fs::create_dir_all(t.path().join("etc")).unwrap();
    fails(
        &t,
        &["-D", "{D}", "true"],
        125,
        "ns-run: ",
        &["--directory={D}", "/usr/ directory is missing"],
    );
}

#[test]
fn host_root_is_refused() {
    let before = our_mounts();
    let out = run(&["-D", "/", "true"]);
    assert_eq!(out.code, 125, "{out}");
    assert_one_line(&out, "ns-run: ");
    assert!(out.stderr.contains("--directory=/:"), "{out}");
    assert_eq!(out.stdout, "");
    ns_tests::assert_mounts_unchanged(&before);
}

#[test]
fn missing_option_value() {
    let t = Tree::rootfs("noval");
    fails(&t, &["-D"], 125, "ns-run: ", &["--directory"]);
}

#[test]
fn unknown_option_after_directory() {
    let t = Tree::rootfs("unknown1");
    fails(
        &t,
        &["-D", "{D}", "--frobnicate", "true"],
        125,
        "ns-run: ",
        &["--frobnicate"],
    );
}

#[test]
fn unknown_option_first() {
    let t = Tree::rootfs("unknown2");
    fails(
        &t,
        &["--frobnicate", "-D", "{D}", "true"],
        125,
        "ns-run: ",
        &["--frobnicate"],
    );
}

#[test]
fn option_after_double_dash_is_the_command() {
    // The explicit form: after `--` everything is the command, so this one is 127.
    let t = Tree::rootfs("dashdash");
    fails(
        &t,
        &["-D", "{D}", "--", "--frobnicate"],
        127,
        "ns-caps: ",
        &["cannot execute --frobnicate"],
    );
}

#[test]
fn unknown_capability() {
    let t = Tree::rootfs("cap");
    fails(
        &t,
        &["-D", "{D}", "--capability=CAP_FOO", "true"],
        125,
        "ns-run: ",
        &["--capability=CAP_FOO"],
    );
    fails(
        &t,
        &["-D", "{D}", "--drop-capability=CAP_BAR", "true"],
        125,
        "ns-run: ",
        &["--drop-capability=CAP_BAR"],
    );
}

#[test]
fn ambient_capability_outside_the_retained_set() {
    let t = Tree::rootfs("ambient");
    fails(
        &t,
        &[
            "-D",
            "{D}",
            "-u",
            "daemon",
            "--ambient-capability=CAP_SYS_TIME",
            "true",
        ],
        125,
        "ns-run: ",
        &["--ambient-capability=", "CAP_SYS_TIME"],
    );
}

#[test]
fn bad_machine_name() {
    let t = Tree::rootfs("machine");
    fails(
        &t,
        &["-D", "{D}", "-M", "bad_name!", "true"],
        125,
        "ns-run: ",
        &["--machine=bad_name!"],
    );
}

#[test]
fn bad_hostname() {
    let t = Tree::rootfs("hostname");
    fails(
        &t,
        &["-D", "{D}", "--hostname=-bad", "true"],
        125,
        "ns-run: ",
        &["--hostname=-bad"],
    );
}

#[test]
fn directory_name_without_a_machine_name() {
    let t = Tree::bare("___");
    fails(
        &t,
        &["-D", "{D}", "true"],
        125,
        "ns-run: ",
        &["--directory={D}", "-M"],
    );
}

#[test]
fn bad_kill_signal() {
    let t = Tree::rootfs("sig");
    fails(
        &t,
        &["-D", "{D}", "--kill-signal=SIGFOO", "true"],
        125,
        "ns-run: ",
        &["--kill-signal=SIGFOO"],
    );
}

#[test]
fn bad_environment_name() {
    let t = Tree::rootfs("env");
    fails(
        &t,
        &["-D", "{D}", "-E", "1BAD=x", "true"],
        125,
        "ns-run: ",
        &["--setenv=1BAD=x"],
    );
}

#[test]
fn bad_boolean() {
    let t = Tree::rootfs("bool");
    fails(
        &t,
        &["-D", "{D}", "--no-new-privileges=maybe", "true"],
        125,
        "ns-run: ",
        &["--no-new-privileges=maybe"],
    );
}

#[test]
fn bad_uuid() {
    let t = Tree::rootfs("uuid");
    fails(
        &t,
        &["-D", "{D}", "--uuid=xyz", "true"],
        125,
        "ns-run: ",
        &["--uuid=xyz"],
    );
}

#[test]
fn relative_chdir() {
    let t = Tree::rootfs("chdir1");
    fails(
        &t,
        &["-D", "{D}", "--chdir=etc", "true"],
        125,
        "ns-run: ",
        &["--chdir=etc"],
    );
}

#[test]
fn missing_chdir_fails_in_ns_caps() {
    let t = Tree::rootfs("chdir2");
    fails(
        &t,
        &["-D", "{D}", "--chdir=/nonexistent", "true"],
        125,
        "ns-caps: ",
        &["--chdir=/nonexistent", "No such file"],
    );
}

#[test]
fn unknown_user_fails_in_ns_caps() {
    let t = Tree::rootfs("user");
    fails(
        &t,
        &["-D", "{D}", "-u", "nosuchuser", "true"],
        125,
        "ns-caps: ",
        &["--user=nosuchuser"],
    );
}

#[test]
fn payload_not_found() {
    let t = Tree::rootfs("notfound");
    let out = fails(
        &t,
        &["-D", "{D}", "/bin/nonexistent"],
        127,
        "ns-caps: ",
        &[],
    );
    assert_eq!(
        out.stderr,
        "ns-caps: cannot execute /bin/nonexistent: No such file or directory\n"
    );
    // A bare name is searched in the container's PATH, not the host's.
    fails(
        &t,
        &["-D", "{D}", "-E", "PATH=/nonexistent", "sh"],
        127,
        "ns-caps: ",
        &["cannot execute sh"],
    );
}

#[test]
fn payload_not_found_under_as_pid2() {
    let t = Tree::rootfs("notfound2");
    fails(
        &t,
        &["-D", "{D}", "-a", "/bin/nonexistent"],
        127,
        "ns-init: ",
        &["cannot execute /bin/nonexistent: No such file or directory"],
    );
}

#[test]
fn payload_not_executable() {
    let t = Tree::rootfs("noexec");
    let out = fails(&t, &["-D", "{D}", "/etc/passwd"], 126, "ns-caps: ", &[]);
    assert_eq!(
        out.stderr,
        "ns-caps: cannot execute /etc/passwd: Permission denied\n"
    );
}

/// The options that were "not supported yet" until issue 20 now run (`-x`: nothing is linked
/// for an ephemeral container) or say what is wrong with their value.
#[test]
fn formerly_unsupported_options_run_or_name_the_problem() {
    let t = Tree::rootfs("unsupported");
    fails(
        &t,
        &["-D", "{D}", "--root-hash=00", "true"],
        125,
        "ns-run: ",
        &["--root-hash=00: not a root hash"],
    );
    let out = run(&["-D", t.arg(), "-x", "--link-journal=try-guest", "true"]);
    assert_eq!(out.ok(), "");
}

#[test]
fn boot_and_as_pid2() {
    let t = Tree::rootfs("boot");
    fails(
        &t,
        &["-D", "{D}", "-b", "-a", "true"],
        125,
        "ns-run: ",
        &["--boot", "--as-pid2"],
    );
}

#[test]
fn machine_without_directory() {
    let t = Tree::rootfs("nodir");
    fails(&t, &["-M", "box", "true"], 125, "ns-run: ", &["-M"]);
}

#[test]
fn bind_source_missing_fails_in_ns_mount() {
    let t = Tree::rootfs("bind");
    fails(
        &t,
        &["-D", "{D}", "--bind=/nonexistent/src:/mnt/x", "true"],
        125,
        "ns-mount: ",
        &["/nonexistent/src", "No such file"],
    );
}

#[test]
fn bind_destination_relative() {
    let t = Tree::rootfs("bindrel");
    fails(
        &t,
        &["-D", "{D}", "--bind=/tmp:mnt/x", "true"],
        125,
        "ns-run: ",
        &["--bind=/tmp:mnt/x"],
    );
}

#[test]
fn bind_destination_with_dotdot() {
    // A destination may not climb: `..` is refused before anything is mounted.
    let t = Tree::rootfs("binddotdot");
    fails(
        &t,
        &["-D", "{D}", "--bind=/tmp:/mnt/../../etc", "true"],
        125,
        "ns-run: ",
        &["--bind=/tmp:/mnt/../../etc", ".."],
    );
}

#[test]
fn chown_ownership_with_read_only() {
    // chown rewrites the tree on disk: not with a tree that must stay untouched.
    let t = Tree::rootfs("chownro");
    fails(
        &t,
        &[
            "-D",
            "{D}",
            "-U",
            "--private-users-ownership=chown",
            "--read-only",
            "true",
        ],
        125,
        "ns-run: ",
        &["--private-users-ownership=chown"],
    );
}

#[test]
fn tmpfs_bad_options_fail_in_ns_mount() {
    let t = Tree::rootfs("tmpfs");
    fails(
        &t,
        &["-D", "{D}", "--tmpfs=/mnt/t:bogus=1", "true"],
        125,
        "ns-mount: ",
        &["/mnt/t", "bogus=1"],
    );
}

#[test]
fn ns_caps_fork_misuse_is_refused() {
    // --fork is for a process that joined a running container from outside its PID
    // namespace: a start fifo, --as-pid2 or an OOM score (whose /proc/self is not there) is
    // refused before anything is done.
    for extra in [&["-a"][..], &["--oom-score-adjust=5"]] {
        let mut c = ns_tests::stage("ns-caps");
        c.arg("--fork").args(extra).args(["--", "/bin/true"]);
        let out = run_cmd(c, None);
        assert_eq!(out.code, 125, "{extra:?}\n{out}");
        assert_one_line(&out, "ns-caps: ");
        assert!(out.stderr.contains("--fork"), "{extra:?}\n{out}");
    }
}
