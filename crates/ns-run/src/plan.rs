//! Policy: turn nspawn's options into the state the stages execute. Every decision is made
//! here, before anything is created, so bad input fails with nothing to clean up.
//!
//! Two steps: [`HostFacts::gather`] reads what the options need to know of the host (and
//! nothing else), then [`build`] decides from options and facts alone, one section builder
//! per part of the state, each stage's own options planned by the stage's `plan()` (ns-caps'
//! `ExecArgs`, ns-mount's `MountArgs`, ns-enter's `EnterArgs`, ns-net's `NetArgs`). What only
//! the monitor can decide when it starts (id base, cgroup paths, notify socket) is not here.

use std::path::PathBuf;

use ns_core::state::{
    Console, EnterPlan, ExecPlan, MonitorPlan, MountOp, MountPlan, Ownership, Property, Source,
    State, UserNs, STATE_VERSION,
};
use ns_core::{Error, Result};

use crate::cli::Cli;
use crate::oci::OciInput;

/// `--root-hash=`: hexadecimal, at least 128 bits (as nspawn parses it).
fn root_hash(c: &Cli) -> Result<()> {
    let Some(h) = &c.root_hash else {
        return Ok(());
    };
    if h.len() < 32 || h.len() % 2 != 0 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid(
            "--root-hash",
            h,
            "not a root hash (hexadecimal, at least 128 bits)",
        ));
    }
    Ok(())
}

/// `-Z`/`--selinux-context=` and `-L`/`--selinux-apifs-context=`: labels only SELinux can
/// apply. Where it is not enabled (no selinuxfs, as on these hosts) nspawn fails at the
/// first label it applies (`setexeccon(...) failed: Invalid argument`, or the tmpfs mount
/// refusing `context=`); ns-run says why before it starts anything. Where it is, the labels
/// go into the plan (`exec.selinux_context`, `mount.selinux_apifs_context`) and the kernel
/// judges them when they are applied: ns-caps's exec label, ns-mount's `context=` options.
fn selinux(c: &Cli) -> Result<()> {
    let given = [
        ("--selinux-context", &c.selinux_context),
        ("--selinux-apifs-context", &c.selinux_apifs_context),
    ];
    let Some((option, Some(label))) = given.iter().find(|(_, v)| v.is_some()) else {
        return Ok(());
    };
    // A label goes into mount options (`context="…"`, quoted: MLS ranges hold commas) and
    // /proc/…/attr/exec: nothing in it may end the quote or the line.
    if let Some((o, Some(l))) = given.iter().find(|(_, v)| {
        v.as_deref()
            .is_some_and(|l| l.is_empty() || l.contains('"') || l.chars().any(char::is_control))
    }) {
        return Err(Error::invalid(o, l, "not an SELinux label"));
    }
    if !std::path::Path::new("/sys/fs/selinux/enforce").exists() {
        return Err(Error::invalid(
            option,
            label,
            "SELinux is not enabled on this host (no /sys/fs/selinux)",
        ));
    }
    Ok(())
}

pub fn is_false(v: &str) -> bool {
    ns_caps::parse_boolean(v) == Some(false)
}

fn boolean(option: &str, v: &str) -> Result<bool> {
    ns_caps::parse_boolean(v).ok_or_else(|| Error::invalid(option, v, "not a boolean"))
}

/// `--console=`/`-P`, and the defaults: interactive when stdin and stdout are both terminals
/// (`on_tty`); otherwise pipe for a payload (our autopipe default) but, as nspawn does, a
/// read-only console for a booted container, so its boot shows on stdout.
pub fn console(c: &Cli, on_tty: bool) -> Result<Console> {
    match console_mode(c) {
        None | Some("autopipe") if on_tty && c.log_file.is_none() => Ok(Console::Interactive),
        // A log file: the console relayed (so that the monitor bounds the log), never
        // interactive (stdout is the file), nor a pipe (autopipe's without a terminal).
        None | Some("autopipe") if c.log_file.is_some() => Ok(Console::ReadOnly),
        // A pipe would give the payload the log itself as stdout: written past the
        // monitor's rotation, unbounded, and reopened through /proc/self/fd.
        Some("pipe") if c.log_file.is_some() => Err(Error::invalid(
            "--console",
            "pipe",
            "not with --log-file (the payload would write the log itself, unbounded): \
             read-only, interactive or passive",
        )),
        None if c.exec.boot => Ok(Console::ReadOnly),
        None | Some("autopipe") | Some("pipe") => Ok(Console::Pipe),
        Some("interactive") => Ok(Console::Interactive),
        Some("read-only") => Ok(Console::ReadOnly),
        Some("passive") => Ok(Console::Passive),
        Some(mode) => Err(Error::invalid(
            "--console",
            mode,
            "unknown console mode (autopipe, interactive, passive, pipe, read-only)",
        )),
    }
}

/// The console mode asked for (`-P` is `pipe`); None: the default.
fn console_mode(c: &Cli) -> Option<&str> {
    if c.pipe {
        Some("pipe")
    } else {
        c.console.as_deref()
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

/// What the plan needs to know about the host, read in one place before planning
/// ([`HostFacts::gather`]), so that [`build`] decides from options and facts alone. Each
/// fact is read only when the options need it, as before: plain `ns-run` reads no more.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Root on the host: uid 0 outside any user namespace.
    pub host_root: bool,
    pub euid: u32,
    /// stdin and stdout are terminals (asked for by default or `--console=autopipe`).
    pub on_tty: bool,
    /// nspawn's knob: SYSTEMD_SECCOMP=0 turns the filter off.
    pub seccomp: bool,
    /// The container's directory: `-D`, else `-M`'s image, else the working directory.
    pub directory: Result<String>,
    /// `--template` names the tree to check, `-D` being still to be made from it.
    pub from_template: bool,
    /// The tree the checks run against (the template's, with `from_template`).
    pub tree: ns_mount::RootFacts,
    /// Where the container's tree will be (`-D` made absolute, with `from_template`).
    pub new_root: Result<Option<PathBuf>>,
    /// Where ns-mount's scratch tmpfs goes.
    pub scratch: Result<PathBuf>,
    /// The host's name (a container of `/` is named after it).
    pub hostname: String,
    /// -x without -M: the random part of the machine name.
    pub random: [u8; 8],
    /// `--network-namespace-path`, absolute (not resolved: /proc/PID/ns/net is a magic link
    /// to no path), once known to exist.
    pub netns_path: Option<Result<PathBuf>>,
    /// The host's cgroup hierarchies (every container gets /sys/fs/cgroup; `None`: not
    /// read, the monitor reads them if it makes cgroups).
    pub cgroups: Option<Vec<ns_host::cgroups::Hierarchy>>,
    /// The version of systemd in the tree, where the cgroup layout depends on it (a hybrid
    /// host, no SYSTEMD_NSPAWN_UNIFIED_HIERARCHY): not probed otherwise.
    pub systemd: Option<u32>,
    /// What ns-caps' plan reads of the host and the image (machine id, os-release).
    pub exec: ns_caps::ExecContext,
    /// With a user namespace: the host paths of user mounts as they resolve now (symlinks
    /// the user gave followed), for the monitor, which opens them without following any.
    pub resolved: std::collections::BTreeMap<PathBuf, PathBuf>,
}

impl HostFacts {
    /// The cgroup hierarchies read (none if not read).
    fn hierarchies(&self) -> &[ns_host::cgroups::Hierarchy] {
        self.cgroups.as_deref().unwrap_or_default()
    }

    /// Read the facts that the options `c` need.
    pub fn gather(c: &Cli) -> HostFacts {
        let directory = directory(c);
        let dir = directory.clone().unwrap_or_default();
        let template = c
            .template
            .as_ref()
            .filter(|_| std::fs::symlink_metadata(&dir).is_err());
        let tree =
            ns_mount::RootFacts::probe(template.map_or(&dir, |t| t), c.mount.volatile.is_some());
        let new_root = template
            .map(|_| std::path::absolute(&dir))
            .transpose()
            .map_err(|e| Error::invalid("--directory", &dir, &e.to_string()));
        let hierarchies = ns_host::cgroups::hierarchies();
        let image = match &new_root {
            Ok(Some(p)) => p.clone(),
            _ => tree
                .canonical
                .clone()
                .unwrap_or_else(|_| dir.clone().into()),
        };
        HostFacts {
            host_root: ns_core::paths::host_root(),
            euid: nix::unistd::geteuid().as_raw(),
            on_tty: matches!(console_mode(c), None | Some("autopipe"))
                && nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
                && nix::unistd::isatty(std::io::stdout()).unwrap_or(false),
            seccomp: std::env::var("SYSTEMD_SECCOMP")
                .ok()
                .and_then(|v| ns_core::parse_boolean(&v))
                .unwrap_or(true),
            directory,
            from_template: template.is_some(),
            hostname: (image.file_name().is_none())
                .then(|| nix::unistd::gethostname().ok())
                .flatten()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            random: if c.mount.ephemeral && c.machine.is_none() {
                ns_core::random_bytes::<8>()
            } else {
                [0; 8]
            },
            netns_path: c.enter.network_namespace_path.as_ref().map(|p| {
                std::fs::metadata(p)
                    .and_then(|_| std::path::absolute(p))
                    .map_err(|e| {
                        Error::invalid("--network-namespace-path", p, &ns_core::error::io_desc(&e))
                    })
            }),
            systemd: systemd_version(&hierarchies, &tree),
            cgroups: Some(hierarchies),
            exec: c.exec.facts(&image),
            scratch: ns_mount::scratch::default_dir(),
            tree,
            new_root,
            resolved: resolve_sources(c),
        }
    }
}

/// Host paths of the user mounts `c` asks for, each with what it resolves to now (only
/// read with a user namespace). Only a name that is the same file: through a magic link
/// (`/proc/PID/root/…`, `/proc/self/fd/N`) the name the kernel gives is another file (the
/// host's of that name), so such a path stays as given, for the monitor to refuse.
fn resolve_sources(c: &Cli) -> std::collections::BTreeMap<PathBuf, PathBuf> {
    use std::os::unix::fs::MetadataExt;
    if !c.userns_pick && c.private_users.is_none() {
        return Default::default();
    }
    let id = |p: &std::path::Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let ops = c.mount.mounts.ops().unwrap_or_default();
    host_sources(&ops)
        .filter_map(|p| {
            let r = std::fs::canonicalize(p).ok()?;
            (id(p)? == id(&r)?).then(|| (p.clone(), r))
        })
        .collect()
}

/// The host paths of `ops`' sources.
fn host_sources(ops: &[MountOp]) -> impl Iterator<Item = &PathBuf> {
    ops.iter()
        .flat_map(|op| match op {
            MountOp::Bind { source, .. } => vec![source],
            MountOp::Overlay { lower, upper, .. } => lower.iter().chain([upper]).collect(),
            _ => Vec::new(),
        })
        .filter_map(|s| match s {
            ns_core::state::Source::Host(p) => Some(p),
            _ => None,
        })
}

/// The monitor opens host paths without following symlinks (`host_by_fd`): name them as
/// they resolved when planned, so that only a symlink planted since is refused.
fn name_resolved(plan: &mut MountPlan, resolved: &std::collections::BTreeMap<PathBuf, PathBuf>) {
    use ns_core::state::Source;
    let fix = |s: &mut Source| {
        if let Source::Host(p) = s {
            if let Some(r) = resolved.get(p) {
                *p = r.clone();
            }
        }
    };
    for op in plan.ops.iter_mut() {
        match op {
            MountOp::Bind { source, .. } => fix(source),
            MountOp::Overlay { lower, upper, .. } => lower.iter_mut().chain([upper]).for_each(fix),
            _ => {}
        }
    }
}

/// The version of systemd in `tree` where the guest's cgroup layout depends on it: on a
/// hybrid host (v1 and cgroup2) unless SYSTEMD_NSPAWN_UNIFIED_HIERARCHY decides.
fn systemd_version(hs: &[ns_host::cgroups::Hierarchy], tree: &ns_mount::RootFacts) -> Option<u32> {
    let hybrid = hs.iter().any(|h| h.v2) && hs.iter().any(|h| !h.v2);
    let knob = std::env::var_os("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY").is_some_and(|v| !v.is_empty());
    match (&tree.canonical, hybrid && !knob) {
        (Ok(root), true) => ns_host::cgroups::systemd_version(root),
        _ => None,
    }
}

/// `-D`, else `-M`'s image, else the working directory.
fn directory(c: &Cli) -> Result<String> {
    match (&c.mount.directory, &c.machine) {
        (Some(d), _) => Ok(d.clone()),
        (None, Some(m)) => Ok(ns_core::paths::find_image(m)
            .ok_or_else(|| {
                Error::setup(format!(
                    "-M {m} without -D: no image {m} in {}",
                    ns_core::paths::IMAGE_DIRS.join(", ")
                ))
            })?
            .to_string_lossy()
            .into_owned()),
        (None, None) => Ok(std::env::current_dir()
            .map_err(|e| Error::setup(format!("cannot determine the current directory: {e}")))?
            .to_string_lossy()
            .into_owned()),
    }
}

/// Whether the options hold a conflict.
type Given = fn(&Cli) -> bool;

/// Options that may not be given together, and what nspawn says then.
const CONFLICTS: &[(Given, &str)] = &[
    (|c| c.share_system, "--share-system is no longer supported"),
    (
        |c| c.exec.boot && c.exec.as_pid2,
        "--boot and --as-pid2 may not be combined",
    ),
    (
        |c| c.mount.ephemeral && c.template.is_some(),
        "--ephemeral and --template= may not be combined",
    ),
    (
        |c| c.image.is_some() && c.mount.directory.is_some() && !c.image_mounted,
        "--directory= and --image= may not be combined",
    ),
    (
        |c| c.image.is_some() && c.template.is_some(),
        "--template= and --image= may not be combined",
    ),
    (
        |c| c.enter.network_namespace_path.is_some() && c.net.options("").private(),
        "--network-namespace-path= cannot be combined with other network options",
    ),
];

/// The checks that need the options alone (also made before a disk image is mounted).
pub fn check_options(c: &Cli) -> Result<()> {
    if let Some((_, msg)) = CONFLICTS.iter().find(|(given, _)| given(c)) {
        return Err(Error::setup(msg.to_string()));
    }
    root_hash(c)?;
    selinux(c)?;
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
    Ok(())
}

/// What the sections share: decided first, from the options and the facts.
struct Common {
    dir: String,
    /// The payload gets a pty as /dev/console.
    pty: bool,
    private_network: bool,
    userns: Option<UserNs>,
}

/// Build the state from the command line `c` and the host's facts `f` (with `oci`, a
/// bundle's own settings), checking everything that can be checked here.
pub fn build(c: &Cli, f: &HostFacts, oci: Option<&OciInput>) -> Result<State> {
    check_options(c)?;
    let register = match &c.register {
        Some(r) => boolean("--register", r)?,
        None => true,
    };
    let console = console(c, f.on_tty)?;
    let (console, pty) = match oci {
        Some(o) => o.console(console),
        None => (console, console != Console::Pipe),
    };
    let dir = f.directory.clone()?;
    // nspawn: every veth/bridge/zone/interface option implies --private-network.
    // A joined namespace (--network-namespace-path) exists already and may be shared: it
    // gets none of what an own one does (CAP_NET_ADMIN, a writable /proc/sys/net).
    let private_network = c.private_network || c.net.options("").private();
    let userns = userns(c, f, &dir)?;
    let common = Common {
        dir,
        pty,
        private_network,
        userns,
    };
    let mut mount = MountPlan {
        create_hooks: oci.and_then(|o| o.create_hooks()),
        credentials: ns_mount::credentials::parse(&c.set_credential, &c.load_credential)?,
        selinux_apifs_context: c.selinux_apifs_context.clone(),
        ..mount(c, f, &common, oci)?
    };
    // The container's machine id, as /run/host/container-uuid carries it.
    let uuid = mount.run_host.uuid.clone();
    let (link_journal, journal_bind) = crate::linkjournal::plan(c, &uuid, &mount.root)?;
    mount.ops.extend(journal_bind);
    let machine = machine(c, f, &common.dir, &mount.root)?;
    if let Some(h) = c.enter.hostname.as_ref().filter(|h| !hostname_is_valid(h)) {
        return Err(Error::invalid("--hostname", h, "invalid hostname"));
    }
    let monitor = monitor(c, f, &mount.ops, console, register, oci)?;
    let exec = ExecPlan {
        credentials: !mount.credentials.is_empty(),
        selinux_context: c.selinux_context.clone(),
        ..exec(c, f, &common, oci)?
    };
    let net = c.net.plan(&machine)?;
    let enter = enter(c, f, &common, &machine, oci)?;
    Ok(State {
        version: STATE_VERSION,
        machine,
        enter,
        net,
        mount,
        exec,
        monitor: MonitorPlan {
            notify_ready: match &c.notify_ready {
                Some(v) => boolean("--notify-ready", v)?,
                None => false,
            },
            link_journal,
            ..monitor
        },
        runtime: Default::default(), // decided by the host at start
    })
}

/// -U/--private-users, and what it allows: without root on the host only a user namespace
/// gives the privileges a container needs.
fn userns(c: &Cli, f: &HostFacts, dir: &str) -> Result<Option<UserNs>> {
    // -U is --private-users=pick with ownership auto; an explicit --private-users wins.
    let users_value = match (&c.private_users, c.userns_pick) {
        (Some(v), _) => Some(v.as_str()),
        (None, true) => Some("pick"),
        (None, false) => None,
    };
    let users_root = f.tree.canonical.clone().unwrap_or_else(|_| dir.into());
    let userns = match users_value {
        // --private-users-chown is nspawn's obsolete spelling of ownership chown.
        Some(v) => {
            let ownership = (c.private_users_ownership.as_deref())
                .or(c.private_users_chown.as_ref().map(|_| "chown"));
            ns_host::userns::parse(v, ownership, &users_root)?
                .map(|u| ns_host::userns::pick_shifted(u, &users_root))
                .transpose()?
        }
        None => None,
    };
    if !f.host_root {
        // Without root, host-side networking stays out of reach.
        if userns.is_none() {
            return Err(Error::setup(format!(
                "running as uid {} without root needs a user namespace: add -U",
                f.euid
            )));
        }
        if c.net.options("").private() || !c.net.port.is_empty() {
            return Err(Error::setup(
                "veths, bridges, zones, moved links and --port need root (--private-network works)"
                    .into(),
            ));
        }
    }
    let rewrites = c.mount.ephemeral
        || c.mount.read_only
        || c.mount.volatile.as_deref().is_some_and(|v| !is_false(v));
    if userns
        .as_ref()
        .is_some_and(|u| u.ownership == Ownership::Chown)
        && rewrites
    {
        let why = match (
            c.image_mounted,
            c.mount.ephemeral || c.mount.volatile.is_some(),
        ) {
            // -i made it read-only: the image cannot be written.
            (true, false) => "rewrites the tree, and the disk image is read-only (use map)",
            _ => "rewrites the tree, so not with -x, --read-only or --volatile (use map)",
        };
        return Err(Error::invalid("--private-users-ownership", "chown", why));
    }
    Ok(userns)
}

/// The mount section (a bundle's mounts instead, for an OCI runtime).
fn mount(c: &Cli, f: &HostFacts, o: &Common, oci: Option<&OciInput>) -> Result<MountPlan> {
    let uuid = c.exec.uuid(&f.exec)?;
    let bind_users = ns_host::userns::bind_users(&c.bind_user, o.userns.is_some())?;
    if !bind_users.is_empty() && !f.host_root {
        return Err(Error::invalid("--bind-user", &c.bind_user[0], "needs root"));
    }
    let boot = c.exec.boot;
    let planned = c.mount.plan(&ns_mount::MountContext {
        tree: &f.tree,
        scratch: f.scratch.clone()?,
        private_network: o.private_network,
        console: o.pty,
        idmapped_root: ns_host::chain::idmapped_root(o.userns.as_ref()),
        userns: o.userns.is_some(),
        // Root on the host, the container in a user namespace: the monitor opens the host
        // paths (a stage in the user namespace cannot enter a 0700 directory).
        host_by_fd: o.userns.as_ref().is_some_and(|u| !u.rootless) && oci.is_none(),
        // An OCI bundle's root need not be an OS tree (a pod's pause image is one binary).
        any_tree: c.oci_bundle.is_some(),
        root: f.new_root.clone()?,
        bind_users,
        run_host: ns_core::state::RunHost {
            manager: f.exec.manager.clone(),
            uuid: uuid.clone(),
        },
        machine_id: boot.then(|| uuid.replace('-', "")),
        cgroups: ns_host::cgroups::plan(f.hierarchies(), f.systemd, o.userns.is_some(), boot)?,
    });
    // With --template and a missing directory, everything is checked against the template,
    // which ns-run copies only once the whole command line has proven good.
    let mut planned = planned.map_err(|e| match f.from_template {
        true => Error::setup(e.msg.replacen("--directory=", "--template=", 1)),
        false => e,
    })?;
    if planned.host_by_fd {
        name_resolved(&mut planned, &f.resolved);
    }
    match oci {
        Some(b) => b.mount(planned, f.hierarchies()),
        None => Ok(planned),
    }
}

/// The machine name: -M, else the directory's (the host's for `/`); -x adds a random part.
fn machine(c: &Cli, f: &HostFacts, dir: &str, root: &std::path::Path) -> Result<String> {
    let mut machine = match &c.machine {
        Some(m) if !hostname_is_valid(m) => {
            return Err(Error::invalid("--machine", m, "invalid machine name"))
        }
        Some(m) => return Ok(m.clone()),
        None => {
            // nspawn: the host's hostname for `/`, else the directory's name.
            let base = match root.file_name() {
                Some(b) => b.to_string_lossy().into_owned(),
                None => f.hostname.clone(),
            };
            let m = hostname_cleanup(&base);
            if !hostname_is_valid(&m) {
                return Err(match (&c.image, c.image_mounted) {
                    (Some(i), true) => Error::invalid(
                        "--image",
                        i,
                        "cannot derive a machine name from the image's name, use -M",
                    ),
                    _ => Error::invalid(
                        "--directory",
                        dir,
                        "cannot derive a machine name from the directory name, use -M",
                    ),
                });
            }
            m
        }
    };
    if c.mount.ephemeral {
        // nspawn names an ephemeral container NAME-<16 hex> (unless -M names it).
        let hex: String = f.random.iter().map(|b| format!("{b:02x}")).collect();
        machine.truncate(64 - 17);
        machine = format!("{}-{hex}", machine.trim_end_matches(['-', '.']));
    }
    Ok(machine)
}

/// The monitor's section: the cgroup's properties (nspawn's unit's, then the user's, or a
/// bundle's resources), the slice, the kill signal (but `--notify-ready`).
fn monitor(
    c: &Cli,
    f: &HostFacts,
    ops: &[MountOp],
    console: Console,
    register: bool,
    oci: Option<&OciInput>,
) -> Result<MonitorPlan> {
    let user_properties = (c.property.iter())
        .map(|p| ns_host::resources::parse(p))
        .collect::<Result<Vec<_>>>()?;
    let slice = (c.slice.as_deref())
        .map(ns_host::cgroups::slice_path)
        .transpose()?;
    if slice.is_some() && !f.host_root {
        return Err(Error::setup(
            "--slice= needs root: a user without it has no cgroups of its own".into(),
        ));
    }
    let properties = if f.host_root {
        // nspawn's unit properties first (its device policy, its task limit), then the
        // user's, as nspawn sends them.
        let mut p = vec![ns_host::devices::nspawn_policy(&bound_devices(ops))];
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
    // nspawn: a booted container is asked to power off (SIGRTMIN+3) unless told otherwise.
    let kill_signal = match c.kill_signal.as_deref() {
        Some(s) => Some(ns_core::parse_signal("--kill-signal", s)?),
        None if c.exec.boot => Some(ns_core::SIGRTMIN + 3),
        None => None,
    };
    Ok(MonitorPlan {
        kill_signal,
        quiet: c.quiet || c.pipe,
        console,
        boot: c.exec.boot,
        notify_ready: false,
        properties: match oci {
            Some(o) => o.properties(properties)?,
            None => properties,
        },
        slice,
        register,
        keep_unit: c.keep_unit,
        link_journal: None,
        log_file: c
            .log_file
            .as_deref()
            .map(|l| ns_core::paths::absolute("--log-file", l))
            .transpose()?,
    })
}

/// The exec section: ns-caps's plan (and a bundle's process over it).
fn exec(c: &Cli, f: &HostFacts, o: &Common, oci: Option<&OciInput>) -> Result<ExecPlan> {
    let exec = c.exec.plan(&ns_caps::ExecContext {
        argv: c.command.clone(),
        private_network: o.private_network,
        userns: o.userns.is_some(),
        console: o.pty,
        seccomp: f.seccomp,
        ..f.exec.clone()
    })?;
    match oci {
        Some(b) => b.exec(exec),
        None => Ok(exec),
    }
}

/// The enter section: nspawn's namespaces (a joined network namespace instead of an own
/// one; the user namespace first), or a bundle's.
fn enter(
    c: &Cli,
    f: &HostFacts,
    o: &Common,
    machine: &str,
    oci: Option<&OciInput>,
) -> Result<EnterPlan> {
    let enter = c.enter.plan(ns_enter::EnterContext {
        namespaces: ns_enter::default_namespaces(o.private_network),
        hostname: Some(machine.to_string()),
        netns_path: f.netns_path.clone().transpose()?,
        userns: o.userns.clone(),
    });
    match oci {
        Some(b) => b.enter(enter),
        None => Ok(enter),
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
            "\n# not in this chain: ns-run reserves and maps the -U id range ({} ids, {}){}; \
             alone, ns-enter --user maps only your own uid to root",
            u.count,
            match u.base {
                ns_core::state::IdBase::Fixed(b) => format!("base {b}"),
                _ => "base picked at start".into(),
            },
            ownership_named(u.ownership, &state.mount)
        ));
    }
    if state.mount.host_by_fd {
        out.push_str(&format!(
            "\n# not in this chain: ns-run opens on the host {}, and hands {} to ns-mount as \
             mounts made there (with -U a stage cannot enter a directory only host root may); \
             alone, ns-mount resolves them itself",
            host_paths_named(&state.mount),
            if state.mount.ops.iter().any(|o| o.made_on_host(true)) {
                "them"
            } else {
                "it"
            }
        ));
    }
    if state.monitor.boot {
        out.push_str(
            "\n# not in this chain: ns-run creates the container's own cgroups (-b) and its \
             /run/host/notify socket",
        );
    }
    out
}

/// What the monitor does to the tree for `ownership`, named for `--print-chain`.
fn ownership_named(ownership: Ownership, m: &MountPlan) -> &'static str {
    match ownership {
        Ownership::Off => "",
        Ownership::Map => ", and idmaps the tree (ownership map)",
        Ownership::Chown => ", and chowns the tree into it (ownership chown)",
        Ownership::Auto if m.rewrites_tree() => {
            ", and idmaps the tree, or chowns it into the range where its file system takes \
             no idmapped mount (ownership auto)"
        }
        Ownership::Auto => {
            ", and idmaps the tree, or leaves its ids as they are where its file system takes \
             no idmapped mount (ownership auto)"
        }
    }
}

/// What the monitor opens for ns-mount, named for `--print-chain`: the tree, then each
/// user mount it makes, by option and source.
fn host_paths_named(m: &MountPlan) -> String {
    let mut named = vec![format!("the tree {}", m.root.display())];
    for op in m.ops.iter().filter(|o| o.made_on_host(true)) {
        named.push(match op {
            MountOp::Overlay { .. } => format!("the layers of {}", ns_mount::spec::op_to_flag(op)),
            _ => format!("the source of {}", ns_mount::spec::op_to_flag(op)),
        });
    }
    named.join(", ")
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
            ns_core::SIGRTMIN + 3
        );
        assert_eq!(
            ns_core::parse_signal("--kill-signal", "RTMAX-1").unwrap(),
            ns_core::SIGRTMAX - 1
        );
        assert_eq!(
            ns_core::parse_signal("--kill-signal", "RTMIN").unwrap(),
            ns_core::SIGRTMIN
        );
        for bad in ["SIGFOO", "sigterm", "0", "65", "RTMIN3", "RTMIN+99"] {
            assert!(
                ns_core::parse_signal("--kill-signal", bad).is_err(),
                "{bad}"
            );
        }
    }

    fn cli(a: &[&str]) -> Cli {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("ns-run").chain(a.iter().copied())).unwrap()
    }

    /// Facts of a root host and an OS tree at `dir`, none of it read: planning reads nothing.
    fn facts(dir: &str) -> HostFacts {
        HostFacts {
            host_root: true,
            euid: 0,
            on_tty: false,
            seccomp: true,
            directory: Ok(dir.into()),
            from_template: false,
            tree: ns_mount::RootFacts {
                given: dir.into(),
                canonical: Ok(dir.into()),
                has_usr: true,
                unmerged: None,
            },
            new_root: Ok(None),
            scratch: Ok("/run/ns-run/scratch".into()),
            hostname: "host".into(),
            random: [0; 8],
            netns_path: None,
            cgroups: None,
            systemd: None,
            exec: ns_caps::ExecContext {
                machine_id: Some("01234567-89ab-cdef-0123-456789abcdef".into()),
                manager: "systemd-nspawn".into(),
                ..Default::default()
            },
            resolved: Default::default(),
        }
    }

    fn plan(c: &Cli) -> Result<State> {
        let dir = c.mount.directory.as_deref().unwrap_or("/srv/box");
        build(c, &facts(dir), None)
    }

    #[test]
    fn facts_decide_what_the_host_would() {
        let c = cli(&["-D", "/srv/box", "true"]);
        let user = HostFacts {
            host_root: false,
            euid: 1000,
            ..facts("/srv/box")
        };
        let e = build(&c, &user, None).unwrap_err();
        assert_eq!(
            e.msg,
            "running as uid 1000 without root needs a user namespace: add -U"
        );
        let c = cli(&["-D", "/srv/box", "-x", "true"]);
        let eph = HostFacts {
            random: [0xab; 8],
            ..facts("/srv/box")
        };
        assert_eq!(
            build(&c, &eph, None).unwrap().machine,
            format!("box-{}", "ab".repeat(8))
        );
        // A container of `/` is named after the host.
        let c = cli(&["-D", "/", "--volatile=state", "true"]);
        assert_eq!(plan(&c).unwrap().machine, "host");
        let tty = HostFacts {
            on_tty: true,
            ..facts("/srv/box")
        };
        let s = build(&cli(&["-D", "/srv/box"]), &tty, None).unwrap();
        assert_eq!(s.monitor.console, Console::Interactive);
        assert!(s.mount.console && s.exec.console);
        // Without a terminal a payload gets pipes, a booted container nspawn's read-only
        // console; an explicit mode wins.
        for (args, on_tty, want) in [
            (&["-b"][..], false, Console::ReadOnly),
            (&["-b"][..], true, Console::Interactive),
            (&["-b", "--console=pipe"][..], false, Console::Pipe),
            (&["-b", "-P"][..], false, Console::Pipe),
            (&["-b", "--console=autopipe"][..], false, Console::Pipe),
            (&["true"][..], false, Console::Pipe),
            (&["--log-file=l", "true"][..], true, Console::ReadOnly),
            (
                &["--log-file=l", "--console=autopipe", "true"][..],
                false,
                Console::ReadOnly,
            ),
            (
                &["--log-file=l", "--console=passive", "true"][..],
                false,
                Console::Passive,
            ),
        ] {
            let c = cli(&[&["-D", "/srv/box"][..], args].concat());
            assert_eq!(console(&c, on_tty).unwrap(), want, "{args:?}");
        }
        for pipe in [&["--console=pipe"][..], &["-P"][..]] {
            let c = cli(&[&["-D", "/srv/box", "--log-file=l"][..], pipe, &["true"]].concat());
            assert!(console(&c, false).is_err(), "{pipe:?}");
        }
    }

    #[test]
    fn conflicts_are_refused_before_anything_else() {
        for (args, want) in [
            (
                &["-b", "-a"][..],
                "--boot and --as-pid2 may not be combined",
            ),
            (&["-x", "--template=/t"], "--ephemeral and --template="),
            (
                &["--network-namespace-path=/n", "-n"],
                "--network-namespace-path= cannot be combined",
            ),
            (&["--share-system"], "--share-system is no longer supported"),
        ] {
            let mut a = vec!["-D", "/srv/box"];
            a.extend_from_slice(args);
            let e = plan(&cli(&a)).unwrap_err();
            assert!(e.msg.starts_with(want), "{args:?}: {}", e.msg);
        }
    }

    #[test]
    fn state_from_a_typical_command_line() {
        let ds = "/srv/My_Root.v2";
        let c = cli(&[
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
        let s = plan(&c).unwrap();
        assert_eq!(s.machine, "MyRoot.v2");
        assert_eq!(s.enter.hostname.as_deref(), Some(s.machine.as_str()));
        assert!(s.enter.namespaces.contains(&ns_core::state::Namespace::Net));
        assert!(s.exec.capabilities.contains(&"net_admin".to_string()));
        assert_eq!(s.exec.argv, vec!["ls", "-la", "--bind=/y"]);
        assert_eq!(s.exec.setenv, vec!["A=1"]);
        assert_eq!(s.mount.ops.len(), 1);
    }

    #[test]
    fn bad_input_is_refused_with_the_option_named() {
        let ds = "/srv/bad";
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
            let c = cli(&a);
            let e = plan(&c).unwrap_err();
            assert!(e.msg.starts_with(want), "{args:?}: {}", e.msg);
            assert_eq!(e.code, ns_core::error::EXIT_SETUP);
        }
    }

    #[test]
    fn chain_quotes_and_carries_the_command() {
        let c = cli(&[
            "-D",
            "/srv/chain",
            "-u",
            "daemon",
            "sh",
            "-c",
            "echo 'hi there'",
        ]);
        let s = plan(&c).unwrap();
        let ch = chain(&s);
        assert!(
            ch.starts_with("ns-enter --mount --uts --ipc --cgroup --pid --hostname="),
            "{ch}"
        );
        assert!(ch.contains(" -- ns-caps --user=daemon "), "{ch}");
        assert!(ch.ends_with(" -- sh -c 'echo '\\''hi there'\\'''"), "{ch}");
        assert!(!ch.contains('#'), "{ch}");
    }

    #[test]
    fn chain_names_what_only_the_monitor_does() {
        // -U looks at the tree's owner: the one tree that is there for sure.
        let c = cli(&["-D", "/", "-x", "-U", "true"]);
        let ch = chain(&plan(&c).unwrap());
        let note = ch.lines().nth(1).unwrap_or_default();
        assert!(
            note.starts_with("# not in this chain: ns-run reserves"),
            "{ch}"
        );
        // -U as root: the monitor opens the tree and the host sources, and says so.
        let c = cli(&[
            "-D",
            "/",
            "-x",
            "-U",
            "--bind=/srv/a:/a",
            "--tmpfs=/t",
            "true",
        ]);
        let ch = chain(&plan(&c).unwrap());
        let note = ch.lines().nth(2).unwrap_or_default();
        assert_eq!(
            note,
            "# not in this chain: ns-run opens on the host the tree /, the source of \
             --bind=/srv/a:/a:rbind, and hands them to ns-mount as mounts made there (with -U a stage \
             cannot enter a directory only host root may); alone, ns-mount resolves them \
             itself",
            "{ch}"
        );
        // Without -U, host root resolves its paths itself: nothing to say.
        let c = cli(&["-D", "/", "-x", "--bind=/srv/a:/a", "true"]);
        assert!(!chain(&plan(&c).unwrap()).contains("opens the tree"));
    }
}
