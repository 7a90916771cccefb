//! The cost of the execs (issue 19's start-up goal): every start execs ns-run, ns-enter,
//! ns-mount and ns-caps. Figures for release builds are in the commits and the README; these
//! tests check the mechanisms that keep each exec cheap, on the build under test.

use ns_tests::bin;

/// The ELF type of a file: 2 (ET_EXEC, linked at a fixed address) or 3 (ET_DYN, PIE).
fn elf_type(name: &str) -> u16 {
    let bytes = std::fs::read(bin(name)).expect("read the binary");
    assert_eq!(&bytes[..4], b"\x7fELF", "{name} is not an ELF file");
    u16::from_le_bytes([bytes[16], bytes[17]])
}

#[test]
fn the_chains_stages_are_linked_at_a_fixed_address() {
    // A static-pie relocates itself at every exec: thousands of relocations written into
    // its read-only data, whose pages are copied (ns-caps: 68 page faults per exec against
    // 45 at a fixed address). The stages run once per start, before the payload exists.
    // (A build with RUSTFLAGS="-C relocation-model=pie" is a static-pie on purpose and
    // fails this.)
    for name in ["ns-run", "ns-enter", "ns-mount", "ns-caps"] {
        assert_eq!(elf_type(name), 2, "{name} is not linked at a fixed address");
    }
}

#[test]
fn the_chains_binaries_do_not_carry_glibcs_start_up() {
    // A static glibc program runs glibc's CPU and cache detection at every start: dozens of
    // CPUID instructions, each a trap to the hypervisor on a virtual machine (0.42 ms per
    // exec measured here, bench/exec.sh). The toolkit is built against musl, whose start-up
    // has none; glibc's detection is configured by its `glibc.cpu.x86_*` tunables, whose
    // names every static glibc program carries.
    for name in ["ns-run", "ns-enter", "ns-mount", "ns-caps", "ns-init"] {
        let bytes = std::fs::read(bin(name)).expect("read the binary");
        let tunable = b"glibc.cpu.x86_";
        assert!(
            !bytes.windows(tunable.len()).any(|w| w == tunable),
            "{name} is linked against glibc"
        );
    }
}

/// Page faults (minor) of one run of `bin args`, and its stderr (GNU time's -o keeps them
/// apart).
fn faults(name: &str, args: &[&str]) -> (u64, String) {
    let out_file = std::env::temp_dir().join(ns_tests::unique("exec-cost-faults"));
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%R", "-o"])
        .arg(&out_file)
        .arg(bin(name))
        .args(args)
        .output()
        .expect("/usr/bin/time (GNU time) runs");
    let text = std::fs::read_to_string(&out_file).expect("time's output");
    let _ = std::fs::remove_file(&out_file);
    let n = text.lines().last().and_then(|l| l.trim().parse().ok());
    let n = n.unwrap_or_else(|| panic!("time printed {text:?}"));
    (n, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_chains_command_line_does_not_build_claps_parser() {
    // The chain gives each stage exactly `--state-fd N --sync-fd M`; read directly, clap's
    // Command for the stage's whole standalone CLI is never built (half of a stage's
    // instructions in user space before, 5-13 page faults per release stage). The same flags
    // in another order still go through clap, and fail alike: fd 98 is not open here.
    for name in ["ns-enter", "ns-mount", "ns-caps"] {
        let min = |args: &[&str]| {
            let runs: Vec<(u64, String)> = (0..5).map(|_| faults(name, args)).collect();
            let n = runs.iter().map(|(n, _)| *n).min().expect("runs");
            (n, runs[0].1.clone())
        };
        let (fast, fast_err) = min(&["--state-fd", "99", "--sync-fd", "98"]);
        let (clap, clap_err) = min(&["--sync-fd", "98", "--state-fd", "99"]);
        let want = format!("{name}: --sync-fd=98: not an open file descriptor\n");
        assert_eq!((&fast_err, &clap_err), (&want, &want));
        assert!(
            fast + 3 <= clap,
            "{name}: {fast} page faults with the chain's command line, {clap} through clap"
        );
    }
}

/// The system calls `strace` saw of `sh -c SCRIPT name` (the script execs the stage).
fn strace(name: &str, script: &str) -> String {
    let out_file = std::env::temp_dir().join(ns_tests::unique("exec-cost-strace"));
    let out = std::process::Command::new("strace")
        .args(["-qq", "-f", "-o"])
        .arg(&out_file)
        .args(["sh", "-c", script])
        .arg(bin(name))
        .output()
        .expect("strace runs");
    let text = std::fs::read_to_string(&out_file).expect("strace's output");
    let _ = std::fs::remove_file(&out_file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{name}: {err}\n{text}");
    text
}

#[test]
fn ns_run_and_the_stages_start_without_the_rust_runtimes_stack_overflow_handler() {
    // The Rust runtime's start-up reads and parses /proc/self/maps and maps a signal stack
    // (~17 system calls, half of a stage's instructions in user space once clap is skipped).
    // What the stages need of it stays: fds 0-2 open (a closed stderr becomes /dev/null
    // before anything else is opened) and SIGPIPE ignored.
    let missing = format!("/{}", ns_tests::unique("exec-cost-no-such-tree"));
    for (name, args) in [
        ("ns-run", format!("-D {missing} /bin/true")),
        ("ns-enter", "--state-fd 99 --sync-fd 98".into()),
        ("ns-mount", "--state-fd 99 --sync-fd 98".into()),
        ("ns-caps", "--state-fd 99 --sync-fd 98".into()),
    ] {
        let text = strace(name, &format!(r#"exec "$0" {args}"#));
        for absent in ["/proc/self/maps", "sigaltstack(", "SIGSEGV"] {
            assert!(!text.contains(absent), "{name} calls {absent}:\n{text}");
        }
        assert!(
            text.contains("SIGPIPE, {sa_handler=SIG_IGN"),
            "{name}:\n{text}"
        );
        let text = strace(name, &format!(r#"exec "$0" {args} 2>&-"#));
        // open or openat, flags as the C library adds them (musl: O_LARGEFILE).
        let null_is_2 = text
            .lines()
            .any(|l| l.contains(r#""/dev/null", O_RDWR"#) && l.ends_with(" = 2"));
        assert!(null_is_2, "{name} with stderr closed:\n{text}");
    }
}
