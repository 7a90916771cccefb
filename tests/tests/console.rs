//! The interactive console, driven as a person would: ns-run in a tmux pane, keys sent with
//! `send-keys`, the screen read with `capture-pane`. Each test has its own tmux server
//! (`-L`) and tree, and kills the server at the end, also on failure.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ns_tests::{bin, Tree};

/// A private tmux server running one pane.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(tag: &str, cmd: &str) -> Tmux {
        let socket = format!("ns-tests-{}-{tag}", std::process::id());
        let t = Tmux { socket };
        let st = t.tmux(&["new-session", "-d", "-s", "t", "-x", "100", "-y", "30", cmd]);
        assert!(st, "tmux new-session failed (is tmux installed?)");
        t
    }

    fn tmux(&self, args: &[&str]) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", "t"];
        a.extend_from_slice(keys);
        assert!(self.tmux(&a), "send-keys {keys:?}");
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "t"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait (bounded) until the screen shows `needle`.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return s;
            }
            assert!(Instant::now() < deadline, "never saw {needle:?} on:\n{s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// Registered, under a name of this test process (the tree's, with our pid).
fn shell_line(tree: &Path, opts: &str) -> String {
    format!(
        "stty -g > {0}/stty.before; {1} -D {2} -M {3} {opts}; echo EXIT=$?; stty -g > {0}/stty.after; sleep 60",
        tree.parent().unwrap().display(),
        bin("ns-run").display(),
        tree.display(),
        ns_tests::unique(&tree.file_name().unwrap().to_string_lossy()),
    )
}

#[test]
fn interactive_shell_on_a_real_terminal() {
    let t = Tree::rootfs("console");
    let tm = Tmux::start("shell", &shell_line(t.path(), ""));
    tm.wait_for("~ #");
    tm.keys(&["echo hello $((6*7)); tty; stty size", "Enter"]);
    // The window size is printed last: once it shows, the lines before it are there.
    let s = tm.wait_for("30 100");
    assert!(s.contains("hello 42"), "{s}");
    assert!(
        s.contains("/dev/console"),
        "the shell's terminal is the console:\n{s}"
    );
    assert!(s.contains("30 100"), "the window size is passed on:\n{s}");
    // A resize reaches the container's terminal.
    assert!(tm.tmux(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]));
    tm.keys(&["stty size", "Enter"]);
    tm.wait_for("40 120");
    // Ctrl-C goes to the container's foreground job, not to ns-run.
    tm.keys(&[
        "sh -c 'echo job-$((6*7)); exec sleep 100'; echo sleep-ended-$?",
        "Enter",
    ]);
    tm.wait_for("job-42");
    tm.keys(&["C-c"]);
    tm.keys(&["echo after-ctrl-c", "Enter"]);
    tm.wait_for("after-ctrl-c\n");
    tm.keys(&["exit 4", "Enter"]);
    tm.wait_for("EXIT=4");
    let dir = t.path().parent().unwrap();
    let before = std::fs::read_to_string(dir.join("stty.before")).unwrap();
    let wait_after = Instant::now() + Duration::from_secs(5);
    let written = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
    while !written(&dir.join("stty.after")) && Instant::now() < wait_after {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = std::fs::read_to_string(dir.join("stty.after")).unwrap();
    assert_eq!(before, after, "the terminal was not restored");
}

#[test]
fn ctrl_bracket_three_times_kills_the_container() {
    let t = Tree::rootfs("console-kill");
    let tm = Tmux::start("kill", &shell_line(t.path(), "-a"));
    tm.wait_for("~ #");
    // The job prints once it runs as the terminal's foreground job (the shell made it so
    // before it ran): ^Z then stops it, never the shell, which ignores it (a builtin echo
    // followed by `sleep` raced: ^Z could come between them).
    tm.keys(&[
        "echo pid=$$; sh -c 'echo job-$((6*7)); exec sleep 100'",
        "Enter",
    ]);
    tm.wait_for("pid=2");
    tm.wait_for("job-42");
    tm.keys(&["C-z"]);
    tm.wait_for("Stopped");
    tm.keys(&["C-]", "C-]", "C-]"]);
    tm.wait_for("EXIT=137");
}

#[test]
fn read_only_console_shows_output_but_takes_no_input() {
    let t = Tree::rootfs("console-ro");
    let tm = Tmux::start(
        "ro",
        &shell_line(
            t.path(),
            "--console=read-only -- sh -c 'tty; read x; echo got-$x'",
        ),
    );
    tm.wait_for("/dev/console");
    tm.keys(&["typed", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !tm.screen().contains("got-typed"),
        "input reached the container"
    );
    tm.keys(&["C-]", "C-]", "C-]"]);
    // Read-only does not relay keys, so the escape does not work either: stop it from outside.
    std::thread::sleep(Duration::from_millis(300));
    for pid in monitors_of(t.path()) {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    tm.wait_for("EXIT=137");
}

/// The ns-run processes working on `tree`.
fn monitors_of(tree: &Path) -> Vec<u32> {
    let want = tree.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            comm.trim() == "ns-run" && String::from_utf8_lossy(&cmd).split('\0').any(|a| a == want)
        })
        .collect()
}

/// A registered container (tree and name from `tag`) waiting in `sleep`, and `ns-ctl shell`
/// into it running in tmux session `tmux` (its exit code printed as `EXIT=N`).
fn ns_ctl_shell_in_tmux(tag: &str, tmux: &str) -> (Tree, ns_tests::Running, Tmux) {
    let t = Tree::rootfs(tag);
    let name = ns_tests::unique(tag);
    let container = ns_tests::spawn_until(ns_tests::registered_sleeper(&t, &name, &[]), "ready");
    let line = format!(
        "{} shell {name}; echo EXIT=$?; sleep 60",
        ns_tests::bin("ns-ctl").display()
    );
    (t, container, Tmux::start(tmux, &line))
}

#[test]
fn ns_ctl_shell_gets_its_own_pty_in_the_container() {
    let (_t, container, tm) = ns_ctl_shell_in_tmux("console-ctl", "ctl");
    tm.wait_for("~ #");
    tm.keys(&["tty; echo pid=$$; stty size", "Enter"]);
    let s = tm.wait_for("30 100");
    // A pty of the container's own devpts, not our terminal; in its PID namespace.
    assert!(s.contains("/dev/pts/0"), "{s}");
    assert!(s.contains("pid=2") || s.contains("pid=3"), "{s}");
    tm.keys(&["exit 5", "Enter"]);
    tm.wait_for("EXIT=5");
    container.signal(libc::SIGTERM);
    assert_eq!(container.wait().code, 137);
}

/// Job control in `ns-ctl shell`'s shell: the command's process leads a session of its own
/// in the container (ns-caps --setsid, after --fork), with its pty as controlling terminal,
/// so the shell puts jobs in the foreground and back: ^C ends the foreground job only, ^Z
/// stops it, `fg` brings it back.
#[test]
fn ns_ctl_shell_has_job_control() {
    let (_t, container, tm) = ns_ctl_shell_in_tmux("console-jobs", "jobs");
    tm.wait_for("~ #");
    // The shell leads its session; the terminal's foreground group is its own.
    // The command as typed reads `sid''=`: only its output has `sid=` (no race with the echo).
    tm.keys(&["echo sid''=$(cut -d' ' -f6 /proc/$$/stat) pid=$$", "Enter"]);
    let s = tm.wait_for("\nsid=");
    let ids: Vec<&str> = s
        .lines()
        .filter_map(|l| l.strip_prefix("sid="))
        .flat_map(|l| l.split(" pid="))
        .collect();
    assert_eq!(ids.len(), 2, "{s}");
    assert_eq!(ids[0], ids[1], "the shell does not lead its session: {s}");
    tm.keys(&["sleep 50", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    tm.keys(&["C-c"]);
    tm.keys(&["echo after-int=$?", "Enter"]);
    tm.wait_for("after-int=130");
    tm.keys(&["sleep 51", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    tm.keys(&["C-z"]);
    tm.wait_for("Stopped");
    tm.keys(&["jobs; fg", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    tm.keys(&["C-c"]);
    tm.keys(&["echo after-fg=$?", "Enter"]);
    tm.wait_for("after-fg=130");
    tm.keys(&["exit 7", "Enter"]);
    tm.wait_for("EXIT=7");
    container.signal(libc::SIGTERM);
    assert_eq!(container.wait().code, 137);
}
