//! Progress of what can take more than a second (issue 22): a `--template` copy and a `-U`
//! ownership shift (`--private-users-ownership=chown`) show one line on a terminal,
//! rewritten in place and erased; nothing when stderr is not a terminal. The tests set
//! `NS_PROGRESS_AFTER=0` (the line shows from the start, not after a second), so that a
//! busybox tree serves.

use std::process::Command;

use ns_tests::{bin, run_cmd, Tree};

/// `ns-run ARGS` under script(1) (stderr a terminal): what the terminal got.
fn on_a_terminal(args: &[&str]) -> String {
    let cmd = std::iter::once(bin("ns-run").display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("NS_PROGRESS_AFTER", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One line, rewritten (`\r`), counting entries, then erased; no newline.
fn one_line_rewritten(out: &str, start: &str) {
    let line = out
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?}: {out:?}"));
    assert!(out[line..].contains(" entries"), "{out:?}");
    assert!(out.contains("\r\x1b[K"), "not erased: {out:?}");
    assert!(!out.contains('\n'), "more than one line: {out:?}");
}

/// `ns-run ARGS` with stderr a pipe: its output.
fn not_on_a_terminal(args: &[&str]) -> ns_tests::Output {
    let mut c = Command::new(bin("ns-run"));
    c.args(args).env("NS_PROGRESS_AFTER", "0");
    run_cmd(c, None)
}

#[test]
fn a_template_copy_and_an_ownership_shift_show_one_line_on_a_terminal_only() {
    let template = Tree::rootfs("progress-template");
    let dir = template.host_dir("copy").join("root");
    let d = dir.to_str().unwrap();
    let t = format!("--template={}", template.arg());
    let out = on_a_terminal(&["-q", "--register=no", &t, "-D", d, "true"]);
    one_line_rewritten(&out, &format!("\r--template: copying {}: ", template.arg()));
    assert!(dir.join("bin/busybox").exists());

    let own = "--private-users-ownership=chown";
    let out = on_a_terminal(&[
        "-q",
        "--register=no",
        "--private-users=1048576:65536",
        own,
        "-D",
        d,
        "true",
    ]);
    one_line_rewritten(&out, &format!("\r-U: shifting the ownership of {d}: "));

    // Neither without a terminal: stderr stays empty.
    let dir2 = template.host_dir("copy2").join("root");
    let o = not_on_a_terminal(&[
        "-q",
        "--register=no",
        &t,
        "-D",
        dir2.to_str().unwrap(),
        "true",
    ]);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""), "{o}");
    let o = not_on_a_terminal(&[
        "-q",
        "--register=no",
        "--private-users=2097152:65536",
        own,
        "-D",
        d,
        "true",
    ]);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""), "{o}");
    assert!(std::fs::metadata(dir.join("bin")).is_ok());
}

#[test]
fn any_progress_delay_from_the_environment_is_taken_or_ignored_never_a_crash() {
    // 1e30 seconds is finite and not negative, but no Duration: the default second, as for
    // any value that is not a delay.
    let template = Tree::rootfs("progress-env");
    let t = format!("--template={}", template.arg());
    for (i, after) in ["1e30", "-1", "inf", "NaN", "x"].into_iter().enumerate() {
        let dir = template.host_dir(&format!("copy{i}")).join("root");
        let d = dir.to_str().unwrap();
        let mut c = Command::new(bin("ns-run"));
        c.args(["-q", "--register=no", &t, "-D", d])
            .args([
                "--private-users=3145728:65536",
                "--private-users-ownership=chown",
            ])
            .arg("true")
            .env("NS_PROGRESS_AFTER", after);
        let o = run_cmd(c, None);
        assert_eq!((o.code, o.stderr.as_str()), (0, ""), "{after}: {o}");
    }
}
