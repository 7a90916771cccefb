//! Policy: turn nspawn's options into the state the stages execute. Every decision is made
//! here, before anything is created, so bad input fails with nothing to clean up.

use ns_core::state::{
    Console, EnterPlan, MonitorPlan, MountOp, Property, Source, State, STATE_VERSION,
};
use ns_core::{Error, Result};

use crate::cli::Cli;

/// Options recognised from nspawn 252 that later work will implement. Each one used fails
/// with "not supported yet" instead of being silently ignored.
fn unsupported(c: &Cli) -> Option<&'static str> {
    let checks = [
        ("--image", c.image.is_some()),
        ("--root-hash", c.root_hash.is_some()),
        ("--root-hash-sig", c.root_hash_sig.is_some()),
        ("--verity-data", c.verity_data.is_some()),
        (
            "--suppress-sync",
            c.suppress_sync.as_deref().is_some_and(|v| !is_false(v)),
        ),
        ("--selinux-context", c.selinux_context.is_some()),
        ("--selinux-apifs-context", c.selinux_apifs_context.is_some()),
        (
            "--link-journal",
            c.link_journal.as_deref().is_some_and(|v| v != "no") || c.link_journal_try_guest,
        ),
        ("--set-credential", !c.set_credential.is_empty()),
        ("--load-credential", !c.load_credential.is_empty()),
    ];
    checks.iter().find(|(_, used)| *used).map(|(name, _)| *name)
}

fn is_false(v: &str) -> bool {
    ns_caps::parse_boolean(v) == Some(false)
}

fn boolean(option: &str, v: &str) -> Result<bool> {
    ns_caps::parse_boolean(v).ok_or_else(|| Error::invalid(option, v, "not a boolean"))
}

/// `--console=`/`-P`, and the autopipe default: interactive when stdin and stdout are both
/// terminals, pipe otherwise.
pub fn console(c: &Cli) -> Result<Console> {
    let mode = if c.pipe {
        "pipe"
    } else {
        c.console.as_deref().unwrap_or("autopipe")
    };
    let on_tty = || {
        nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
            && nix::unistd::isatty(std::io::stdout()).unwrap_or(false)
    };
    match mode {
        "pipe" => Ok(Console::Pipe),
        "autopipe" if on_tty() => Ok(Console::Interactive),
        "autopipe" => Ok(Console::Pipe),
        "interactive" => Ok(Console::Interactive),
        "read-only" => Ok(Console::ReadOnly),
        "passive" => Ok(Console::Passive),
        _ => Err(Error::invalid(
            "--console",
            mode,
            "unknown console mode (autopipe, interactive, passive, pipe, read-only)",
        )),
    }
}

/// Device nodes bound in with `--bind`/`--bind-ro` and whether read-only: nspawn lets the
/// container use them (r or rw, no mknod).
fn bound_devices(ops: &[MountOp]) -> Vec<(std::path::PathBuf, bool)> {
    ops.iter()
        .filter_map(|op| match op {
            MountOp::Bind {
                source: Source::Host(p),
                read_only,
                ..
            } => Some((p.clone(), *read_only)),
            _ => None,
        })
        .collect()
}

/// systemd's hostname_is_valid(s, 0): letters, digits and `-`, dot-separated labels, no
/// leading or trailing dot or hyphen, at most 64 characters.
pub fn hostname_is_valid(s: &str) -> bool {
    if s.is_empty() || s.len() > 64 {
        return false;
    }
    let (mut dot, mut hyphen) = (true, true);
    for c in s.chars() {
        match c {
            '.' if dot || hyphen => return false,
            '.' => (dot, hyphen) = (true, false),
            '-' if dot => return false,
            '-' => (dot, hyphen) = (false, true),
            c if c.is_ascii_alphanumeric() => (dot, hyphen) = (false, false),
            _ => return false,
        }
    }
    !dot && !hyphen
}

/// systemd's hostname_cleanup: drop what is not allowed, then one trailing `.` or `-`.
pub fn hostname_cleanup(s: &str) -> String {
    let mut out = String::new();
    let (mut dot, mut hyphen) = (true, true);
    for c in s.chars() {
        if out.len() >= 64 {
            break;
        }
        match c {
            '.' if dot || hyphen => continue,
            '.' => (dot, hyphen) = (true, false),
            '-' if dot => continue,
            '-' => (dot, hyphen) = (false, true),
            c if c.is_ascii_alphanumeric() => (dot, hyphen) = (false, false),
            _ => continue,
        }
        out.push(c);
    }
    if out.ends_with(['.', '-']) {
        out.pop();
    }
    out
}

/// Build the state from the command line, checking everything that can be checked here.
pub fn build(c: &Cli, matches: &clap::ArgMatches) -> Result<State> {
    if c.share_system {
        return Err(Error::setup("--share-system is no longer supported".into()));
    }
    if c.boot && c.as_pid2 {
        return Err(Error::setup(
            "--boot and --as-pid2 may not be combined".into(),
        ));
    }
    if let Some(opt) = unsupported(c) {
        return Err(Error::setup(format!("{opt}: not supported yet")));
    }
    if let Some(s) = &c.settings {
        if !is_false(s)
            && !matches!(s.as_str(), "trusted" | "override")
            && ns_caps::parse_boolean(s).is_none()
        {
            return Err(Error::invalid(
                "--settings",
                s,
                "not a boolean, 'trusted' or 'override'",
            ));
        }
    }
    let register = match &c.register {
        Some(r) => boolean("--register", r)?,
        None => true,
    };
    let console = console(c)?;

    let dir = match (&c.directory, &c.machine) {
        (Some(d), _) => d.clone(),
        (None, Some(m)) => ns_core::paths::find_image(m)
            .ok_or_else(|| {
                Error::setup(format!(
                    "-M {m} without -D: no image {m} in {}",
                    ns_core::paths::IMAGE_DIRS.join(", ")
                ))
            })?
            .to_string_lossy()
            .into_owned(),
        (None, None) => std::env::current_dir()
            .map_err(|e| Error::setup(format!("cannot determine the current directory: {e}")))?
            .to_string_lossy()
            .into_owned(),
    };
    let net_opts = c.net.options("");
    if c.network_namespace_path.is_some() && net_opts.private() {
        return Err(Error::setup(
            "--network-namespace-path= cannot be combined with other network options".into(),
        ));
    }
    // nspawn: every veth/bridge/zone/interface option implies --private-network.
    // A joined namespace (--network-namespace-path) exists already and may be shared: it
    // gets none of what an own one does (CAP_NET_ADMIN, a writable /proc/sys/net).
    let private_network = c.private_network || net_opts.private();
    if c.ephemeral && c.template.is_some() {
        return Err(Error::setup(
            "--ephemeral and --template= may not be combined".into(),
        ));
    }
    // With --template and a missing directory, everything is checked against the template,
    // which ns-run copies only once the whole command line has proven good.
    let from_template = c
        .template
        .as_ref()
        .filter(|_| std::fs::symlink_metadata(&dir).is_err());
    // -U is --private-users=pick with ownership auto; an explicit --private-users wins.
    let users_value = match (&c.private_users, c.userns_pick) {
        (Some(v), _) => Some(v.as_str()),
        (None, true) => Some("pick"),
        (None, false) => None,
    };
    let users_root =
        std::fs::canonicalize(from_template_dir(c, &dir)).unwrap_or_else(|_| dir.clone().into());
    let userns = match users_value {
        Some(v) => {
            // --private-users-chown is nspawn's obsolete spelling of ownership chown.
            let ownership = c
                .private_users_ownership
                .as_deref()
                .or(c.private_users_chown.as_ref().map(|_| "chown"));
            ns_host::userns::parse(v, ownership, &users_root)?
        }
        None => None,
    };
    if !ns_core::paths::host_root() {
        // Without root only a user namespace gives the privileges a container needs, and
        // host-side networking stays out of reach.
        if userns.is_none() {
            return Err(Error::setup(format!(
                "running as uid {} without root needs a user namespace: add -U",
                nix::unistd::geteuid()
            )));
        }
        if net_opts.private() || !c.net.port.is_empty() {
            return Err(Error::setup(
                "veths, bridges, zones, moved links and --port need root (--private-network works)"
                    .into(),
            ));
        }
    }
    if userns
        .as_ref()
        .is_some_and(|u| u.ownership == ns_core::state::Ownership::Chown)
        && (c.ephemeral || c.read_only || c.volatile.as_deref().is_some_and(|v| !is_false(v)))
    {
        return Err(Error::invalid(
            "--private-users-ownership",
            "chown",
            "rewrites the tree, so not with -x, --read-only or --volatile (use map)",
        ));
    }
    let idmapped_root = userns
        .as_ref()
        .is_some_and(|u| u.ownership == ns_core::state::Ownership::Map);
    let mut mount = ns_mount::mount_plan(&ns_mount::MountOptions {
        directory: from_template.map_or(&dir, |t| t),
        read_only: c.read_only,
        private_network,
        ephemeral: c.ephemeral,
        volatile: c.volatile.as_deref(),
        pivot_root: c.pivot_root.as_deref(),
        resolv_conf: c.resolv_conf.as_deref(),
        timezone: c.timezone.as_deref(),
        console: console != Console::Pipe,
        idmapped_root,
        userns: userns.is_some(),
        // An OCI bundle's root need not be an OS tree (a pod's pause image is one binary).
        any_tree: c.oci_bundle.is_some(),
        matches,
    })
    .map_err(|e| match from_template {
        Some(_) => Error::setup(e.msg.replacen("--directory=", "--template=", 1)),
        None => e,
    })?;
    if from_template.is_some() {
        mount.root = std::path::absolute(&dir)
            .map_err(|e| Error::invalid("--directory", &dir, &e.to_string()))?;
    }
    mount.bind_users = ns_host::userns::bind_users(&c.bind_user, userns.is_some())?;
    if !mount.bind_users.is_empty() && !ns_core::paths::host_root() {
        return Err(Error::invalid("--bind-user", &c.bind_user[0], "needs root"));
    }
    let root = mount.root.clone();

    let mut machine = match &c.machine {
        Some(m) if !hostname_is_valid(m) => {
            return Err(Error::invalid("--machine", m, "invalid machine name"))
        }
        Some(m) => m.clone(),
        None => {
            // nspawn: the host's hostname for `/`, else the directory's name.
            let base = match root.file_name() {
                Some(b) => b.to_string_lossy().into_owned(),
                None => nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            };
            let m = hostname_cleanup(&base);
            if !hostname_is_valid(&m) {
                return Err(Error::invalid(
                    "--directory",
                    &dir,
                    "cannot derive a machine name from the directory name, use -M",
                ));
            }
            m
        }
    };
    if c.ephemeral && c.machine.is_none() {
        // nspawn names an ephemeral container NAME-<16 hex> (unless -M names it).
        let hex: String = ns_core::random_bytes::<8>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        machine.truncate(64 - 17);
        machine = format!("{}-{hex}", machine.trim_end_matches(['-', '.']));
    }
    let hostname = match &c.hostname {
        Some(h) if !hostname_is_valid(h) => {
            return Err(Error::invalid("--hostname", h, "invalid hostname"))
        }
        Some(h) => h.clone(),
        None => machine.clone(),
    };

    let user_properties = c
        .property
        .iter()
        .map(|p| ns_host::resources::parse(p))
        .collect::<Result<Vec<_>>>()?;
    let slice = c
        .slice
        .as_deref()
        .map(ns_host::cgroups::slice_path)
        .transpose()?;
    if slice.is_some() && !ns_core::paths::host_root() {
        return Err(Error::setup(
            "--slice= needs root: a user without it has no cgroups of its own".into(),
        ));
    }
    let properties = if ns_core::paths::host_root() {
        // nspawn's unit properties first (its device policy, its task limit), then the
        // user's, as nspawn sends them.
        let mut p = ns_host::devices::nspawn_policy(&bound_devices(&mount.ops));
        p.push(Property::DefaultTasksMax(
            ns_host::resources::NSPAWN_TASKS_MAX,
        ));
        p.extend(user_properties);
        p
    } else if !user_properties.is_empty() {
        return Err(Error::setup(
            "--property= needs root: a user without it has no cgroups of its own".into(),
        ));
    } else {
        // Nor can it create device nodes that would need a policy (no CAP_MKNOD on the host).
        Vec::new()
    };
    let no_new_privileges = match &c.no_new_privileges {
        Some(v) => boolean("--no-new-privileges", v)?,
        None => false,
    };
    let exec = ns_caps::exec_plan(&ns_caps::ExecOptions {
        argv: &c.command,
        user: c.user.as_deref(),
        chdir: c.chdir.as_deref(),
        setenv: &c.setenv,
        uuid: c.uuid.as_deref(),
        root: &root,
        capability: &c.capability,
        drop_capability: &c.drop_capability,
        ambient_capability: &c.ambient_capability,
        private_network,
        userns: userns.is_some(),
        boot: c.boot,
        no_new_privileges,
        as_pid2: c.as_pid2,
        console: console != Console::Pipe,
        rlimit: &c.rlimit,
        oom_score_adjust: c.oom_score_adjust.as_deref(),
        cpu_affinity: c.cpu_affinity.as_deref(),
        personality: c.personality.as_deref(),
        system_call_filter: &c.system_call_filter,
        // nspawn's knob: SYSTEMD_SECCOMP=0 turns the filter off.
        seccomp: std::env::var("SYSTEMD_SECCOMP")
            .ok()
            .and_then(|v| ns_core::parse_boolean(&v))
            .unwrap_or(true),
    })?;
    // nspawn: a booted container is asked to power off (SIGRTMIN+3) unless told otherwise.
    let kill_signal = match c.kill_signal.as_deref() {
        Some(s) => Some(ns_core::parse_signal("--kill-signal", s)?),
        None if c.boot => Some(libc::SIGRTMIN() + 3),
        None => None,
    };
    mount.run_host = ns_core::state::RunHost {
        manager: exec.container.clone(),
        uuid: exec.uuid.clone(),
    };
    if c.boot {
        mount.machine_id = Some(exec.uuid.replace('-', ""));
        mount.cgroups = Some(ns_host::cgroups::plan(&ns_host::cgroups::hierarchies())?);
    }
    let net = ns_net::net_plan(&ns_net::NetOptions {
        machine: &machine,
        ..net_opts
    })?;
    let netns_path = match &c.network_namespace_path {
        // Absolute, not resolved: /proc/PID/ns/net is a magic link to no path.
        Some(p) => Some(
            std::fs::metadata(p)
                .and_then(|_| std::path::absolute(p))
                .map_err(|e| {
                    Error::invalid("--network-namespace-path", p, &ns_core::error::io_desc(&e))
                })?,
        ),
        None => None,
    };
    let mut namespaces = ns_enter::default_namespaces(private_network);
    if netns_path.is_some() {
        namespaces.retain(|n| *n != ns_core::state::Namespace::Net);
    }
    if userns.is_some() {
        namespaces.insert(0, ns_core::state::Namespace::User);
    }

    Ok(State {
        version: STATE_VERSION,
        machine,
        enter: EnterPlan {
            namespaces,
            hostname: Some(hostname),
            netns_path,
            userns,
            cgroups: None, // named by the monitor
            join: Vec::new(),
        },
        net,
        mount,
        exec,
        monitor: MonitorPlan {
            kill_signal,
            quiet: c.quiet || c.pipe,
            console,
            boot: c.boot,
            notify_ready: match &c.notify_ready {
                Some(v) => boolean("--notify-ready", v)?,
                None => false,
            },
            properties,
            slice,
            register,
        },
    })
}

/// The directory the checks run against: the template when -D is still to be created.
fn from_template_dir<'a>(c: &'a Cli, dir: &'a str) -> &'a str {
    match &c.template {
        Some(t) if std::fs::symlink_metadata(dir).is_err() => t,
        _ => dir,
    }
}

/// Quote for a POSIX shell only where needed.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The shell chain of stages equivalent to `state` (`--print-chain`). Alone, ns-enter also
/// plays the monitor; container_host_* come as -E because ns-caps alone runs after
/// pivot_root, where the host's os-release is out of reach.
pub fn chain(state: &State) -> String {
    let mut argv: Vec<String> = vec!["ns-enter".into()];
    argv.extend(ns_enter::plan_to_flags(&state.enter));
    argv.extend(["--".into(), "ns-mount".into()]);
    argv.extend(ns_mount::plan_to_flags(&state.mount));
    argv.extend(["--".into(), "ns-caps".into()]);
    let mut exec = state.exec.clone();
    let mut host = Vec::new();
    if let Some(v) = exec.host_version_id.take() {
        host.push(format!("container_host_version_id={v}"));
    }
    if let Some(v) = exec.host_id.take() {
        host.push(format!("container_host_id={v}"));
    }
    exec.setenv.splice(0..0, host);
    argv.extend(ns_caps::plan_to_flags(&exec));
    if !state.exec.argv.is_empty() {
        argv.push("--".into());
        argv.extend(state.exec.argv.iter().cloned());
    }
    let quoted: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    let mut out = quoted.join(" ");
    if !state.net.is_empty() {
        // The host side runs in parallel, not in the chain: ns-run's monitor holds PID 1
        // until it is done; by hand, run it from another shell.
        let mut net = vec!["ns-net".to_string(), "--pid".into(), "PID1".into()];
        net.extend(ns_net::plan_to_flags(&state.machine, &state.net));
        let q: Vec<String> = net.iter().map(|a| shell_quote(a)).collect();
        out.push_str(&format!(
            "\n# and from the host, against the container's PID 1: {}",
            q.join(" ")
        ));
    }
    // What only the monitor does has no stage flag: say so rather than print a chain that
    // silently does less.
    if let Some(u) = state.enter.userns.as_ref().filter(|u| !u.rootless) {
        out.push_str(&format!(
            "\n# not in this chain: ns-run reserves and maps the -U id range ({} ids, {}); \
             alone, ns-enter --user maps only your own uid to root",
            u.count,
            match u.base {
                ns_core::state::IdBase::Fixed(b) => format!("base {b}"),
                _ => "base picked at start".into(),
            }
        ));
    }
    if state.mount.cgroups.is_some() {
        out.push_str(
            "\n# not in this chain: ns-run creates the container's own cgroups (-b) and its \
             /run/host/notify socket",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_like_systemd() {
        assert_eq!(hostname_cleanup("My_Root.v2"), "MyRoot.v2");
        assert_eq!(hostname_cleanup("..a..b-"), "a.b");
        assert_eq!(hostname_cleanup("a--"), "a-");
        assert!(hostname_is_valid("a-b.c"));
        assert!(hostname_is_valid("a--b"));
        for bad in [
            "bad_name!",
            "",
            ".a",
            "a.",
            "-a",
            "a-",
            "a..b",
            "a-.b",
            &"x".repeat(65),
        ] {
            assert!(!hostname_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn signals_like_systemd() {
        assert_eq!(
            ns_core::parse_signal("--kill-signal", "SIGTERM").unwrap(),
            15
        );
        assert_eq!(ns_core::parse_signal("--kill-signal", "TERM").unwrap(), 15);
        assert_eq!(ns_core::parse_signal("--kill-signal", "9").unwrap(), 9);
        assert_eq!(
            ns_core::parse_signal("--kill-signal", "SIGRTMIN+3").unwrap(),
            libc::SIGRTMIN() + 3
        );
        assert_eq!(
            ns_core::parse_signal("--kill-signal", "RTMAX-1").unwrap(),
            libc::SIGRTMAX() - 1
        );
        assert_eq!(
            ns_core::parse_signal("--kill-signal", "RTMIN").unwrap(),
            libc::SIGRTMIN()
        );
        for bad in ["SIGFOO", "sigterm", "0", "65", "RTMIN3", "RTMIN+99"] {
            assert!(
                ns_core::parse_signal("--kill-signal", bad).is_err(),
                "{bad}"
            );
        }
    }

    fn cli(a: &[&str]) -> (Cli, clap::ArgMatches) {
        use clap::{CommandFactory, FromArgMatches};
        let argv: Vec<String> = std::iter::once("ns-run")
            .chain(a.iter().copied())
            .map(String::from)
            .collect();
        let m = Cli::command().try_get_matches_from(&argv).unwrap();
        (Cli::from_arg_matches(&m).unwrap(), m)
    }

    fn usr_tree(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ns-run-plan-{}-{name}", std::process::id()));
        std::fs::create_dir_all(d.join("usr")).unwrap();
        d
    }

    #[test]
    fn state_from_a_typical_command_line() {
        let d = usr_tree("My_Root.v2");
        let ds = d.to_str().unwrap();
        let (c, argv) = cli(&[
            "-D",
            ds,
            "--private-network",
            "-E",
            "A=1",
            "--bind-ro=/etc:/x",
            "ls",
            "-la",
            "--bind=/y",
        ]);
        let s = build(&c, &argv).unwrap();
        assert_eq!(
            s.machine,
            format!("ns-run-plan-{}-MyRoot.v2", std::process::id())
        );
        assert_eq!(s.enter.hostname.as_deref(), Some(s.machine.as_str()));
        assert!(s.enter.namespaces.contains(&ns_core::state::Namespace::Net));
        assert!(s.exec.capabilities.contains(&"net_admin".to_string()));
        assert_eq!(s.exec.argv, vec!["ls", "-la", "--bind=/y"]);
        assert_eq!(s.exec.setenv, vec!["A=1"]);
        assert_eq!(s.mount.ops.len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_input_is_refused_with_the_option_named() {
        let d = usr_tree("bad");
        let ds = d.to_str().unwrap();
        let cases: [(&[&str], &str); 10] = [
            (
                &["-M", "bad_name!"],
                "--machine=bad_name!: invalid machine name",
            ),
            (
                &["--kill-signal=SIGFOO"],
                "--kill-signal=SIGFOO: cannot parse signal",
            ),
            (
                &["--capability=CAP_FOO"],
                "--capability=CAP_FOO: unknown capability CAP_FOO",
            ),
            (&["--chdir=etc"], "--chdir=etc: not an absolute path"),
            (
                &["-E", "1BAD=x"],
                "--setenv=1BAD=x: invalid environment variable name",
            ),
            (
                &["--no-new-privileges=maybe"],
                "--no-new-privileges=maybe: not a boolean",
            ),
            (
                &["--personality=arm"],
                "--personality=arm: unknown or unsupported personality",
            ),
            (
                &["--rlimit=NOFILE=9:8"],
                "--rlimit=NOFILE=9:8: the soft limit",
            ),
            (&["-b", "-a"], "--boot and --as-pid2 may not be combined"),
            (
                &["--console=bogus"],
                "--console=bogus: unknown console mode",
            ),
        ];
        for (args, want) in cases {
            let mut a = vec!["-D", ds];
            a.extend_from_slice(args);
            let (c, argv) = cli(&a);
            let e = build(&c, &argv).unwrap_err();
            assert!(e.msg.starts_with(want), "{args:?}: {}", e.msg);
            assert_eq!(e.code, ns_core::error::EXIT_SETUP);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn chain_quotes_and_carries_the_command() {
        let d = usr_tree("chain");
        let (c, argv) = cli(&[
            "-D",
            d.to_str().unwrap(),
            "-u",
            "daemon",
            "sh",
            "-c",
            "echo 'hi there'",
        ]);
        let s = build(&c, &argv).unwrap();
        let ch = chain(&s);
        assert!(
            ch.starts_with("ns-enter --mount --uts --ipc --cgroup --pid --hostname="),
            "{ch}"
        );
        assert!(ch.contains(" -- ns-caps --user=daemon "), "{ch}");
        assert!(ch.ends_with(" -- sh -c 'echo '\\''hi there'\\'''"), "{ch}");
        assert!(!ch.contains('#'), "{ch}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn chain_names_what_only_the_monitor_does() {
        let d = usr_tree("chainu");
        let (c, argv) = cli(&["-D", d.to_str().unwrap(), "-U", "true"]);
        let ch = chain(&build(&c, &argv).unwrap());
        let note = ch.lines().nth(1).unwrap_or_default();
        assert!(
            note.starts_with("# not in this chain: ns-run reserves"),
            "{ch}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
