//! `.nspawn` settings files: each key gives the same state (`--print-state`) as its
//! command-line option; trust rules (next to the image: none of the keys nspawn ignores
//! there, each tested in escapes_trust.rs;
//! /run/systemd/nspawn and `--settings=trusted`: everything); the command line wins, except
//! with `--settings=override`; `--settings=no` ignores the file; and a real container sees
//! them.

use std::path::PathBuf;

use ns_tests::{ns_run, run_cmd, Output, Tree};

const UUID: &str = "--uuid=0123456789abcdef0123456789abcdef";

/// A settings file, removed on drop.
struct File(PathBuf);

impl File {
    fn next_to(t: &Tree, machine: &str, text: &str) -> File {
        let p = t.path().parent().unwrap().join(format!("{machine}.nspawn"));
        std::fs::write(&p, text).unwrap();
        File(p)
    }

    fn trusted(machine: &str, text: &str) -> File {
        std::fs::create_dir_all("/run/systemd/nspawn").unwrap();
        let p = PathBuf::from(format!("/run/systemd/nspawn/{machine}.nspawn"));
        std::fs::write(&p, text).unwrap();
        File(p)
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// ns-run on `t` as `machine` with a fixed uuid (random otherwise), unless a MachineID= or
/// --uuid is what is being tested.
fn ns(t: &Tree, machine: &str, opts: &[&str]) -> Output {
    let mut c = ns_run();
    t.tag(&mut c).args(["-D", t.arg(), "-M", machine]);
    if !machine.ends_with("-uuid") {
        c.arg(UUID);
    }
    c.args(opts);
    run_cmd(c, None)
}

/// The state ns-run would run with.
fn state(t: &Tree, machine: &str, opts: &[&str]) -> serde_json::Value {
    let mut o = vec!["--print-state"];
    o.extend_from_slice(opts);
    let out = ns(t, machine, &o);
    assert_eq!(out.code, 0, "{opts:?}: {out}");
    serde_json::from_str(&out.stdout).unwrap()
}

/// Each (file text, equivalent options): the file alone and the options alone give the
/// same state, and that state differs from the plain one (the key did something).
fn same_as_options(t: &Tree, trusted: bool, cases: &[(&str, &[&str])]) {
    same_with(t, trusted, &[], cases)
}

/// [`same_as_options`] with `common` options on every command line.
fn same_with(t: &Tree, trusted: bool, common: &[&str], cases: &[(&str, &[&str])]) {
    for (i, (text, opts)) in cases.iter().enumerate() {
        // Trusted files are host-wide (/run/systemd/nspawn): the name is this process's.
        let tree = t.path().file_name().unwrap().to_string_lossy();
        let mut machine = ns_tests::unique(&format!("st-{tree}-{i}"));
        if text.contains("MachineID=") {
            machine.push_str("-uuid");
        }
        let plain = state(t, &machine, &[&["--settings=no"][..], common].concat());
        let from_options = state(
            t,
            &machine,
            &[&["--settings=no"][..], common, opts].concat(),
        );
        let _f = if trusted {
            File::trusted(&machine, text)
        } else {
            File::next_to(t, &machine, text)
        };
        let from_file = state(t, &machine, common);
        assert_eq!(from_file, from_options, "{text:?} vs {opts:?}");
        assert_ne!(from_file, plain, "{text:?} changed nothing");
    }
}

#[test]
fn exec_keys_are_their_options() {
    let t = Tree::rootfs("set-exec");
    same_as_options(
        &t,
        false,
        &[
            (
                "[Exec]\nEnvironment=A=1 \"B=two words\"\n",
                &["-E", "A=1", "-E", "B=two words"],
            ),
            ("[Exec]\nHostname=elsewhere\n", &["--hostname=elsewhere"]),
            (
                "[Exec]\nUser=daemon\nWorkingDirectory=/tmp\n",
                &["-u", "daemon", "--chdir=/tmp"],
            ),
            ("[Exec]\nKillSignal=SIGUSR1\n", &["--kill-signal=SIGUSR1"]),
            ("[Exec]\nPersonality=x86\n", &["--personality=x86"]),
            (
                "[Exec]\nNoNewPrivileges=yes\n",
                &["--no-new-privileges=yes"],
            ),
            (
                "[Exec]\nDropCapability=CAP_NET_RAW CAP_CHOWN\n",
                &["--drop-capability=CAP_NET_RAW,CAP_CHOWN"],
            ),
            (
                "[Exec]\nResolvConf=off\nTimezone=off\n",
                &["--resolv-conf=off", "--timezone=off"],
            ),
            ("[Exec]\nNotifyReady=yes\n", &["--notify-ready=yes"]),
            (
                "[Exec]\nProcessTwo=yes\nParameters=sh -c 'echo hi'\n",
                &["-a", "--", "sh", "-c", "echo hi"],
            ),
            (
                "[Exec]\nBoot=yes\nParameters=--log-level=debug\n",
                &["-b", "--", "--log-level=debug"],
            ),
        ],
    );
}

#[test]
fn files_network_and_trusted_exec_keys_are_their_options_when_trusted() {
    let t = Tree::rootfs("set-files");
    let src = t.host_dir("src");
    let bind = format!(
        "[Files]\nBind={}:/mnt/a\nBindReadOnly={}:/mnt/b\n",
        src.display(),
        src.display()
    );
    let bind_opts = [
        format!("--bind={}:/mnt/a", src.display()),
        format!("--bind-ro={}:/mnt/b", src.display()),
    ];
    let bind_opts: Vec<&str> = bind_opts.iter().map(|s| s.as_str()).collect();
    same_as_options(
        &t,
        true,
        &[
            ("[Files]\nReadOnly=yes\n", &["--read-only"]),
            ("[Files]\nVolatile=state\n", &["--volatile=state"]),
            (&bind, &bind_opts),
            (
                "[Files]\nTemporaryFileSystem=/mnt/t:size=1M\nInaccessible=/etc/hostname\n",
                &["--tmpfs=/mnt/t:size=1M", "--inaccessible=/etc/hostname"],
            ),
            (
                "[Exec]\nPrivateUsers=pick\n[Files]\nPrivateUsersOwnership=chown\n",
                &["--private-users=pick", "--private-users-ownership=chown"],
            ),
            ("[Network]\nPrivate=yes\n", &["--private-network"]),
            ("[Network]\nVirtualEthernet=yes\n", &["-n"]),
            (
                "[Network]\nVirtualEthernetExtra=vx-a:va\nZone=stz\n",
                &["--network-veth-extra=vx-a:va", "--network-zone=stz"],
            ),
            (
                "[Exec]\nCapability=CAP_NET_ADMIN CAP_SYS_MODULE\n",
                &["--capability=CAP_NET_ADMIN,CAP_SYS_MODULE"],
            ),
            (
                "[Exec]\nLimitNOFILE=512\nLimitNPROC=100:200\n",
                &["--rlimit=NOFILE=512", "--rlimit=NPROC=100:200"],
            ),
            (
                "[Exec]\nOOMScoreAdjust=100\nCPUAffinity=0\n",
                &["--oom-score-adjust=100", "--cpu-affinity=0"],
            ),
            ("[Exec]\nPrivateUsers=pick\n", &["--private-users=pick"]),
            (
                "[Exec]\nMachineID=fedcba9876543210fedcba9876543210\n",
                &["--uuid=fedcba9876543210fedcba9876543210"],
            ),
        ],
    );
}

#[test]
fn port_is_its_option() {
    // -p forwards to the container's address, an ns-run option that files do not have.
    let t = Tree::rootfs("set-port");
    same_with(
        &t,
        true,
        &["-n", "--network-address=10.231.9.2/24"],
        &[(
            "[Network]\nPort=tcp:8080:80\nPort=udp:53\n",
            &["-p", "tcp:8080:80", "-p", "udp:53"],
        )],
    );
}

#[test]
fn untrusted_files_cannot_add_capabilities_mounts_or_network() {
    let t = Tree::rootfs("set-trust");
    let m = "st-trust";
    let plain = state(&t, m, &["--settings=no"]);
    let _f = File::next_to(
        &t,
        m,
        "[Exec]\nCapability=CAP_SYS_MODULE\nHostname=h\n[Files]\nBind=/etc:/mnt\n[Network]\nPrivate=yes\n",
    );
    let out = ns(&t, m, &["--print-state"]);
    assert_eq!(out.code, 0, "{out}");
    for w in [
        "Ignoring Capability= setting,",
        "Ignoring TemporaryFileSystem=, Bind= and BindReadOnly= settings",
        "Ignoring network settings",
    ] {
        assert!(out.stderr.contains(w), "{w}: {out}");
    }
    let s: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(s["exec"]["capabilities"], plain["exec"]["capabilities"]);
    assert_eq!(s["mount"]["ops"], plain["mount"]["ops"]);
    assert_eq!(s["enter"], plain["enter"].clone().tap_hostname("h"));
    // --settings=trusted trusts it.
    let s = state(&t, m, &["--settings=trusted"]);
    assert_ne!(s["exec"]["capabilities"], plain["exec"]["capabilities"]);
    assert_ne!(s["mount"]["ops"], plain["mount"]["ops"]);
}

trait TapHostname {
    fn tap_hostname(self, h: &str) -> Self;
}

impl TapHostname for serde_json::Value {
    fn tap_hostname(mut self, h: &str) -> Self {
        self["hostname"] = h.into();
        self
    }
}

#[test]
fn the_command_line_wins_unless_override_and_no_ignores_the_file() {
    let t = Tree::rootfs("set-merge");
    let m = "st-merge";
    let _f = File::next_to(&t, m, "[Exec]\nHostname=from-file\nEnvironment=F=1\n");
    let host = |opts: &[&str]| {
        state(&t, m, opts)["enter"]["hostname"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(host(&[]), "from-file");
    assert_eq!(host(&["--hostname=from-cli"]), "from-cli");
    assert_eq!(
        host(&["--settings=override", "--hostname=from-cli"]),
        "from-file"
    );
    assert_eq!(host(&["--settings=no"]), m);
    // Groups go whole: an -E on the command line drops the file's Environment= entirely.
    let env = |opts: &[&str]| state(&t, m, opts)["exec"]["setenv"].clone();
    assert_eq!(env(&["-E", "C=3"]), serde_json::json!(["C=3"]));
    assert_eq!(
        env(&["--settings=override", "-E", "C=3"]),
        serde_json::json!(["F=1"])
    );
}

#[test]
fn a_container_runs_with_its_settings() {
    let t = Tree::rootfs("set-run");
    let m = "st-run";
    let _f = File::next_to(
        &t,
        m,
        "[Exec]\nHostname=configured\nEnvironment=GREETING=hello\nProcessTwo=yes\n\
         Parameters=sh -c 'echo $GREETING from $(hostname) as pid $$'\n",
    );
    let out = ns(&t, m, &["-q"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout.trim(), "hello from configured as pid 2");
    // A command on the command line still wins over Parameters=.
    let out = ns(&t, m, &["-q", "echo", "mine"]);
    assert_eq!(out.stdout.trim(), "mine", "{out}");
    let _bad = File::next_to(&t, "st-bad", "[Exec]\nBoot=perhaps\n");
    let out = ns(&t, "st-bad", &["true"]);
    assert_eq!(out.code, 125, "{out}");
    assert!(
        out.stderr
            .ends_with("st-bad.nspawn: Boot=perhaps: not a boolean\n"),
        "{out}"
    );
}
