//! nspawn behaviours users notice (issue 18, item 5): a booted container's console without a
//! terminal, `NAME.nspawn` with `-x -M NAME`, port forwards on every local address, and which
//! process the OOM killer took.

use ns_tests::{booting_tree, our_mounts, run, wait_no_procs_in, Tree};

fn assert_clean(t: &Tree, before: &[String]) {
    let left = wait_no_procs_in(t.path(), std::time::Duration::from_secs(3));
    assert!(left.is_empty(), "processes left: {left:?}");
    assert_eq!(our_mounts(), before, "host mount table changed");
}

// ---------------------------------------------------------------------------------------
// 1. `-b` without a terminal: nspawn's read-only console (a pty copied to stdout)

/// What an init does at boot: write to /dev/console (systemd's status lines go there).
const BOOT: &str = "[ -c /dev/console ] && echo on-console > /dev/console\n\
                    echo to-stderr >&2\n\
                    poweroff -f\n";

#[test]
fn boot_without_a_terminal_shows_the_boot_on_stdout() {
    let t = booting_tree("beh-boot-ro", BOOT);
    let before = our_mounts();
    // stdin /dev/null, stdout and stderr pipes: no terminal.
    let out = run(&["-q", "-D", t.arg(), "-b"]);
    assert_eq!(out.code, 0, "{out}");
    // As nspawn's read-only mode: the console pty, stdout and stderr merged, CRLF.
    assert!(out.stdout.contains("on-console\r\n"), "{out}");
    assert!(out.stdout.contains("to-stderr\r\n"), "{out}");
    assert!(!out.stderr.contains("to-stderr"), "{out}");
    assert_clean(&t, &before);
}

#[test]
fn boot_with_console_pipe_keeps_the_pipes() {
    let t = booting_tree("beh-boot-pipe", BOOT);
    let before = our_mounts();
    for pipe in ["--console=pipe", "-P"] {
        let out = run(&["-q", "-D", t.arg(), "-b", pipe]);
        assert_eq!(out.code, 0, "{pipe}: {out}");
        // No /dev/console, the payload's own stdout and stderr, no CR.
        assert!(!out.stdout.contains("on-console"), "{pipe}: {out}");
        assert!(out.stderr.contains("to-stderr\n"), "{pipe}: {out}");
        assert!(!out.stderr.contains('\r'), "{pipe}: {out}");
    }
    // A plain payload keeps our autopipe default: pipes without a terminal.
    let out = run(&["-q", "-D", t.arg(), "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("out\n", "err\n")
    );
    assert_clean(&t, &before);
}
