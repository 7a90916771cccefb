//! `ns-run --help`: short, the options used most under systemd-nspawn(1)'s headings in its
//! order; `--help-all` every option; both on stdout with exit code 0, whatever else the
//! command line says.

use ns_tests::run;

const HEADINGS: [&str; 14] = [
    "Options:",
    "Image Options:",
    "Execution Options:",
    "System Identity Options:",
    "Property Options:",
    "User Namespacing Options:",
    "Networking Options:",
    "Security Options:",
    "Resource Options:",
    "Integration Options:",
    "Mount Options:",
    "Input/Output Options:",
    "Credentials:",
    "ns-run's own:",
];

/// The headings of `help` in the order it shows them.
fn headings(help: &str) -> Vec<&str> {
    help.lines()
        .filter(|l| !l.starts_with(' ') && l.ends_with(':') && *l != "Arguments:")
        .collect()
}

#[test]
fn help_is_short_and_help_all_has_every_option_in_nspawns_groups() {
    let short = run(&["--help"]);
    assert_eq!(short.code, 0, "{short}");
    assert!(short.stderr.is_empty(), "{short}");
    assert_eq!(run(&["-h"]).stdout, short.stdout);
    let lines = short.stdout.lines().count();
    assert!(lines <= 80, "--help has {lines} lines");
    for o in [
        "-D, --directory",
        "-b, --boot",
        "-U",
        "--bind <",
        "-n, --network-veth",
        "--help-all",
    ] {
        assert!(
            short.stdout.contains(o),
            "--help lacks {o}:\n{}",
            short.stdout
        );
    }
    for o in [
        "--rlimit",
        "--personality",
        "--link-journal",
        "--set-credential",
    ] {
        assert!(!short.stdout.contains(o), "--help shows {o}");
    }
    assert!(short.stdout.contains("more options: ns-run --help-all"));
    // Headings in nspawn's order (those with an option shown).
    let shown = headings(&short.stdout);
    let mut order = HEADINGS.iter().filter(|h| shown.contains(h));
    assert!(shown.iter().all(|h| order.next() == Some(h)), "{shown:?}");

    let all = run(&["--help-all"]);
    assert_eq!(all.code, 0, "{all}");
    assert_eq!(headings(&all.stdout), HEADINGS, "{}", all.stdout);
    for o in [
        "--rlimit",
        "--personality",
        "--link-journal",
        "--set-credential",
        "-Z, --selinux-context",
    ] {
        assert!(all.stdout.contains(o), "--help-all lacks {o}");
    }
    // Options that are not nspawn's and hidden stay hidden (--share-system: refused).
    assert!(!all.stdout.contains("--share-system"));
    // Help wins over the rest of the line, as nspawn's does.
    let with = run(&["-D", "/nonexistent", "--help", "/bin/true"]);
    assert_eq!((with.code, with.stdout), (0, short.stdout));
}
