//! OCI bundles (`--oci-bundle=DIR`, and the ns-oci runtime): config.json, read with the
//! oci-spec crate, becomes nspawn options ([`options`], parsed by the same parser as a
//! command line, so an option and its OCI field cannot drift apart) plus what no nspawn
//! option can say ([`OciInput`], which the plan's section builders take: the process
//! exactly as given, joined namespaces, the seccomp profile, the cgroup resources).
//!
//! Mounts: for an OCI runtime (ns-oci), config.json's own, as listed and nothing else
//! ([`crate::oci_mounts`]). For `ns-run --oci-bundle` the API file systems stay nspawn's:
//! config.json's own /proc, /sys, /dev, /dev/pts, /dev/shm, /dev/mqueue, /run and
//! /sys/fs/cgroup mounts are what ns-mount mounts anyway; its other mounts become nspawn
//! options. Every field this cannot honour fails with one line naming it; none is ignored.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxNamespaceType, LinuxResources, LinuxSeccomp, LinuxSeccompAction, Mount, Spec,
};

use ns_core::state::{
    Console, EnterPlan, ExecPlan, FilterBase, IdMaps, IdRange, Ids, JoinNs, Namespace, Property,
    Rlimit, StageHooks, SyscallFilter,
};
use ns_core::{Error, Result};

/// A bundle directory and its parsed config.json.
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    /// The root file system, absolute.
    pub root: PathBuf,
}

/// Read `dir`/config.json. `option` names the flag that gave `dir`, for errors.
pub fn load(option: &str, dir: &Path) -> Result<Bundle> {
    let shown = dir.display().to_string();
    let dir =
        std::path::absolute(dir).map_err(|e| Error::invalid(option, &shown, &e.to_string()))?;
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(Error::invalid(option, &shown, "no config.json in it"));
    }
    let spec = Spec::load(&config)
        .map_err(|e| Error::invalid(option, &shown, &format!("bad config.json: {e}")))?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::invalid(option, &shown, "config.json has no root"))?;
    let root = dir.join(root.path());
    if !root.is_dir() {
        return Err(Error::invalid(
            option,
            &shown,
            &format!("root {} is not a directory", root.display()),
        ));
    }
    Ok(Bundle { dir, spec, root })
}

fn unsupported(field: &str) -> Error {
    Error::setup(format!("config.json: {field}: not supported"))
}

/// `:` and `\` escaped for nspawn's colon-separated mount values.
fn esc(p: &Path) -> String {
    p.to_string_lossy()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
}

/// The mounts ns-mount makes anyway (nspawn's API file systems).
fn is_api_mount(m: &Mount) -> bool {
    let t = m.typ().as_deref().unwrap_or("");
    let d = m.destination().to_string_lossy();
    matches!(
        (t, d.as_ref()),
        ("proc", "/proc")
            | ("sysfs", "/sys")
            | ("tmpfs", "/dev")
            | ("devpts", "/dev/pts")
            | ("tmpfs", "/dev/shm")
            | ("mqueue", "/dev/mqueue")
            | ("cgroup" | "cgroup2", "/sys/fs/cgroup")
            | ("tmpfs", "/run")
    )
}

/// One mount as an nspawn option.
fn mount_option(i: usize, m: &Mount) -> Result<String> {
    let opts = m.options().clone().unwrap_or_default();
    let t = m.typ().as_deref().unwrap_or("");
    let dest = m.destination();
    let bind = t == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind");
    if bind {
        let src = m
            .source()
            .as_ref()
            .ok_or_else(|| unsupported(&format!("mounts[{i}]: a bind mount without source")))?;
        let ro = opts.iter().any(|o| o == "ro");
        let rec = if opts.iter().any(|o| o == "rbind") {
            "rbind"
        } else {
            "norbind"
        };
        let flag = if ro { "--bind-ro" } else { "--bind" };
        return Ok(format!("{flag}={}:{}:{rec}", esc(src), esc(dest)));
    }
    if t == "tmpfs" {
        // Data options only; ns-mount sets nodev and strictatime itself.
        let data: Vec<&str> = opts
            .iter()
            .map(String::as_str)
            .filter(|o| {
                ["size=", "mode=", "nr_inodes=", "uid=", "gid="]
                    .iter()
                    .any(|p| o.starts_with(p))
            })
            .collect();
        return Ok(format!("--tmpfs={}:{}", esc(dest), data.join(",")));
    }
    Err(unsupported(&format!(
        "mounts[{i}]: type {t:?} on {}",
        dest.display()
    )))
}

/// The bundle as nspawn options, for a machine called `name` (they go before the command
/// line's own, which win). The process's arguments are not among them: see [`argv_of`];
/// nor are the mounts ([`nspawn_mounts`] for ns-run, [`OciInput::mount`] for a runtime).
pub fn options(b: &Bundle, name: &str) -> Result<Vec<String>> {
    let s = &b.spec;
    let mut o = vec![
        format!("--directory={}", b.root.display()),
        format!("--machine={name}"),
    ];
    if s.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        o.push("--read-only".into());
    }
    if let Some(h) = s.hostname() {
        o.push(format!("--hostname={h}"));
    }
    if let Some(p) = s.process() {
        let cwd = p.cwd().to_string_lossy();
        if cwd != "/" {
            o.push(format!("--chdir={cwd}"));
        }
    }
    let linux = s.linux().clone().unwrap_or_default();
    if linux
        .mount_label()
        .as_deref()
        .is_some_and(|l| !l.is_empty())
    {
        // An SELinux context for the mounts: no SELinux here (as process.selinuxLabel).
        return Err(unsupported("linux.mountLabel"));
    }
    for ns in linux.namespaces().clone().unwrap_or_default() {
        match (ns.typ(), ns.path()) {
            (LinuxNamespaceType::Network, None) => o.push("--private-network".into()),
            (LinuxNamespaceType::Network, Some(p)) => {
                o.push(format!("--network-namespace-path={}", p.display()))
            }
            (LinuxNamespaceType::User, None) => o.push(private_users(&linux)?),
            (LinuxNamespaceType::User, Some(_)) => {
                return Err(unsupported("linux.namespaces: joining a user namespace"))
            }
            (LinuxNamespaceType::Time, _) => return Err(unsupported("linux.namespaces: time")),
            _ => {}
        }
    }
    Ok(o)
}

fn exists_for(b: &Bundle, p: &str) -> bool {
    let kernel = p.starts_with("/proc/") || p.starts_with("/sys/");
    if kernel {
        Path::new(p).symlink_metadata().is_ok()
    } else {
        b.root
            .join(p.trim_start_matches('/'))
            .symlink_metadata()
            .is_ok()
    }
}

/// A user namespace: `--private-users=` with container root's uid range (ns-oci then maps
/// exactly config.json's ranges: [`OciInput::enter`]).
fn private_users(linux: &oci_spec::runtime::Linux) -> Result<String> {
    let maps = id_maps(linux)?;
    let root = maps.uid.iter().find(|r| r.container == 0).expect("checked");
    Ok(format!("--private-users={}:{}", root.host, root.size))
}

/// config.json's uid and gid maps, checked as the kernel would (no empty range, no id
/// mapped twice on either side, at most 340 lines) and with container root mapped, which
/// the chain becomes in the user namespace.
fn id_maps(linux: &oci_spec::runtime::Linux) -> Result<IdMaps> {
    let ranges = |field: &str, m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        let v: Vec<IdRange> = m
            .iter()
            .flatten()
            .map(|m| IdRange {
                container: m.container_id(),
                host: m.host_id(),
                size: m.size(),
            })
            .collect();
        check_ranges(field, &v).map(|()| v)
    };
    Ok(IdMaps {
        uid: ranges("linux.uidMappings", linux.uid_mappings())?,
        gid: ranges("linux.gidMappings", linux.gid_mappings())?,
    })
}

fn check_ranges(field: &str, v: &[IdRange]) -> Result<()> {
    let bad = |why: String| Error::setup(format!("config.json: {why}"));
    if v.len() > 340 {
        return Err(bad(format!("{field}: {} ranges (at most 340)", v.len())));
    }
    for (i, r) in v.iter().enumerate() {
        if r.size == 0 {
            return Err(bad(format!("{field}[{i}]: size 0")));
        }
        let last = |start: u32| start.checked_add(r.size - 1).filter(|l| *l < u32::MAX);
        if last(r.container).is_none() || last(r.host).is_none() {
            return Err(bad(format!("{field}[{i}]: past the largest id")));
        }
    }
    for (side, start) in [
        (
            "container",
            (|r: &IdRange| r.container) as fn(&IdRange) -> u32,
        ),
        ("host", |r: &IdRange| r.host),
    ] {
        let mut spans: Vec<(u32, u32)> = v
            .iter()
            .map(|r| (start(r), start(r) + r.size - 1))
            .collect();
        spans.sort_unstable();
        if let Some(w) = spans.windows(2).find(|w| w[1].0 <= w[0].1) {
            let (lo, hi) = (w[1].0, w[0].1.min(w[1].1));
            return Err(bad(format!(
                "{field}: {side} ids {lo}-{hi} are mapped twice"
            )));
        }
    }
    if !v.iter().any(|r| r.container == 0) {
        return Err(bad(format!("{field}: container id 0 is not mapped")));
    }
    Ok(())
}

/// The bundle's mounts, masked and read-only paths as nspawn options, for `ns-run
/// --oci-bundle` (an OCI runtime does config.json's own: [`crate::oci_mounts`]). nspawn's
/// API file systems win over config.json's.
fn nspawn_mounts(b: &Bundle) -> Result<Vec<String>> {
    let s = &b.spec;
    let linux = s.linux().clone().unwrap_or_default();
    let mut o = Vec::new();
    for (i, m) in s.mounts().clone().unwrap_or_default().iter().enumerate() {
        if !is_api_mount(m) {
            o.push(mount_option(i, m)?);
        }
    }
    for p in linux.masked_paths().clone().unwrap_or_default() {
        // Absent paths are skipped, as runc does: /proc and /sys paths are the kernel's, the
        // same here as in the container; others are the image's.
        if exists_for(b, &p) {
            o.push(format!("--inaccessible={p}"));
        }
    }
    for p in linux.readonly_paths().clone().unwrap_or_default() {
        if exists_for(b, &p) {
            let p = esc(Path::new(&p));
            o.push(format!("--bind-ro=+{p}:{p}"));
        }
    }
    Ok(o)
}

/// `--oci-bundle=DIR` on ns-run's command line `argv`: the bundle's options first, then the
/// command line's own (which win: a single-valued option given there replaces the bundle's),
/// then the command line's command, or else the bundle's process arguments.
/// `cmd` is [`crate::cli::command`]'s.
pub fn merge(cmd: &clap::Command, argv: &[String], b: &Bundle, name: &str) -> Result<Vec<String>> {
    let (given, rest) = crate::cli::split_options(cmd, argv)?;
    if given.iter().any(|g| g.id == "directory" || g.id == "image") {
        return Err(Error::setup(
            "--oci-bundle= may not be combined with --directory= or --image=".into(),
        ));
    }
    let repeatable = |id: &str| {
        cmd.get_arguments()
            .find(|a| a.get_id() == id)
            .is_some_and(|a| matches!(a.get_action(), clap::ArgAction::Append))
    };
    let mut bundle_argv = vec![argv[0].clone()];
    bundle_argv.extend(options(b, name)?);
    bundle_argv.extend(nspawn_mounts(b)?);
    let (from_bundle, _) = crate::cli::split_options(cmd, &bundle_argv)?;
    let mut out = vec![argv[0].clone()];
    for g in from_bundle {
        if repeatable(&g.id) || !given.iter().any(|u| u.id == g.id) {
            out.extend(g.tokens);
        }
    }
    for g in given {
        out.extend(g.tokens); // --oci-bundle= stays: its root need not be an OS tree
    }
    if rest.is_empty() || rest == ["--"] {
        out.push("--".into());
        out.extend(argv_of(b));
    } else {
        out.extend(rest);
    }
    Ok(out)
}

/// The process's arguments.
pub fn argv_of(b: &Bundle) -> Vec<String> {
    b.spec
        .process()
        .as_ref()
        .and_then(|p| p.args().clone())
        .unwrap_or_default()
}

/// A bundle as the plan's section builders take it (what no nspawn option says): the
/// process's identity, capabilities, limits and environment (exactly its own for a
/// [`OciRuntime`]; else over nspawn's, as `--oci-bundle` does); namespaces joined or not
/// created; the seccomp profile; the resources as the cgroup's properties (device policy
/// included; with nspawn's default task limit, which a pids limit overrides).
pub struct OciInput<'a> {
    pub bundle: &'a Bundle,
    /// As an OCI runtime (ns-oci) runs it; `None`: `ns-run --oci-bundle`.
    pub oci_runtime: Option<OciRuntime>,
}

/// What changes when an OCI runtime runs the bundle: the environment exactly config.json's,
/// the hostname config.json's (or the one inherited), no task limit it does not set, the
/// id mapping as given with the image's ownership as it is, stdio passed through (a pty
/// for `terminal`, whose master goes to the console socket).
#[derive(Debug, Clone)]
pub struct OciRuntime {
    pub terminal: bool,
    /// The container's id (for the state its hooks get).
    pub id: String,
}

impl OciInput<'_> {
    /// config.json's `linux` section (an empty one without), borrowed: it holds the
    /// seccomp profile, not to be copied for each field read.
    fn linux(&self) -> std::borrow::Cow<'_, oci_spec::runtime::Linux> {
        match self.bundle.spec.linux() {
            Some(l) => std::borrow::Cow::Borrowed(l),
            None => std::borrow::Cow::Owned(Default::default()),
        }
    }

    /// The monitor's console mode, and whether the payload gets a pty, from nspawn's.
    pub fn console(&self, console: Console) -> (Console, bool) {
        match &self.oci_runtime {
            Some(r) => (Console::Passive, r.terminal),
            None => (console, console != Console::Pipe),
        }
    }

    /// The exec section from nspawn's options, `e`: the process as config.json gives it, and
    /// its seccomp profile.
    pub fn exec(&self, mut e: ExecPlan) -> Result<ExecPlan> {
        if let Some(p) = self.bundle.spec.process() {
            process_into(p, &mut e, self.oci_runtime.is_some())?;
        }
        e.syscall_filter = self.linux().seccomp().as_ref().map(seccomp).transpose()?;
        e.start_hooks = self.stage_hooks(|h| h.start_container());
        e.seccomp_listener = self.seccomp_listener(e.syscall_filter.as_ref())?;
        if self.oci_runtime.is_some() && e.argv.is_empty() {
            return Err(Error::setup("config.json: process.args is empty".into()));
        }
        Ok(e)
    }

    /// OCI seccomp notify: the container process state sent with the listener to
    /// `linux.seccomp.listenerPath` (which ns-oci connects to on the host), where the
    /// kernel has SECCOMP_RET_USER_NOTIF.
    fn seccomp_listener(&self, f: Option<&SyscallFilter>) -> Result<Option<String>> {
        use ns_core::state::SeccompAction;
        let linux = self.linux();
        let sc = linux.seccomp().as_ref();
        let notifies = f.is_some_and(|f| f.rules.iter().any(|r| r.action == SeccompAction::Notify));
        let (r, path) = match (
            &self.oci_runtime,
            sc.and_then(|s| s.listener_path().as_ref()),
        ) {
            (_, None) if notifies => {
                return Err(unsupported(
                    "linux.seccomp: SCMP_ACT_NOTIFY without listenerPath",
                ))
            }
            (_, None) => return Ok(None),
            (None, Some(_)) => return Err(unsupported("linux.seccomp.listenerPath (ns-oci only)")),
            (Some(r), Some(p)) => (r, p),
        };
        if !ns_core::sys::seccomp_action_available(ns_core::sys::SECCOMP_RET_USER_NOTIF) {
            return Err(Error::setup(format!(
                "config.json: linux.seccomp.listenerPath {}: this kernel has no seccomp notify",
                path.display()
            )));
        }
        let spec = &self.bundle.spec;
        let state = serde_json::json!({
            "ociVersion": spec.version(),
            "fds": ["seccompFd"],
            "metadata": sc.and_then(|s| s.listener_metadata().clone()).unwrap_or_default(),
            "state": {
                "ociVersion": spec.version(),
                "id": r.id,
                "status": "creating",
                "bundle": self.bundle.dir,
                "annotations": spec.annotations().clone().unwrap_or_default(),
            },
        });
        Ok(Some(state.to_string()))
    }

    /// The createContainer hooks, for the mount section.
    pub fn create_hooks(&self) -> Option<StageHooks> {
        self.stage_hooks(|h| h.create_container())
    }

    /// The hooks of one kind that a stage runs inside the container (an OCI runtime's
    /// only), with the state they get: runc's for hooks (the stage adds pid and status).
    fn stage_hooks(
        &self,
        kind: impl Fn(&oci_spec::runtime::Hooks) -> &Option<Vec<oci_spec::runtime::Hook>>,
    ) -> Option<StageHooks> {
        let r = self.oci_runtime.as_ref()?;
        let spec = &self.bundle.spec;
        let hooks = spec.hooks().as_ref().and_then(|h| kind(h).clone())?;
        let state = serde_json::json!({
            "ociVersion": spec.version(),
            "id": r.id,
            "bundle": self.bundle.dir,
            "annotations": spec.annotations().clone().unwrap_or_default(),
        });
        (!hooks.is_empty()).then(|| StageHooks {
            hooks: hooks_of(&hooks),
            state: state.to_string(),
        })
    }

    /// The enter section from nspawn's options, `enter`: exactly the namespaces listed (but
    /// network and user, made from the options); one with a path is joined.
    pub fn enter(&self, mut enter: EnterPlan) -> Result<EnterPlan> {
        let (create, join) = namespaces(&self.linux(), self.oci_runtime.is_some())?;
        let keep =
            |n: &Namespace| matches!(n, Namespace::User | Namespace::Net) || create.contains(n);
        enter.namespaces.retain(keep);
        for n in create {
            if !enter.namespaces.contains(&n) {
                enter.namespaces.push(n);
            }
        }
        enter.namespaces.sort();
        enter.join = join;
        let uts = enter.namespaces.contains(&Namespace::Uts);
        if self.oci_runtime.is_some() {
            // Only set in a UTS namespace of its own (a pod's member joins the pod's,
            // hostname and all).
            enter.hostname = self.bundle.spec.hostname().clone().filter(|_| uts);
            if let Some(u) = &mut enter.userns {
                u.ownership = ns_core::state::Ownership::Off;
                u.maps = Some(id_maps(&self.linux())?);
            }
        } else {
            if !uts {
                enter.hostname = None;
            }
            check_one_range(&self.linux())?;
        }
        Ok(enter)
    }

    /// The cgroup properties from nspawn's, `props`: the resources replace them, but for its
    /// task limit (nspawn's unit keeps it for a bundle too; a runtime leaves it out).
    pub fn properties(&self, mut props: Vec<Property>) -> Result<Vec<Property>> {
        let linux = self.linux();
        // As runc (and crun, youki), a runtime sets no task limit that config.json does
        // not: the engine that writes it decides (docker's --pids-limit, the kubelet's).
        let runtime = self.oci_runtime.is_some();
        props.retain(|p| matches!(p, Property::DefaultTasksMax(_)) && !runtime);
        if let Some(r) = linux.resources() {
            props.extend(properties(r)?);
        }
        if props.iter().any(|p| matches!(p, Property::DevicePolicy(_))) {
            props.extend(listed_devices(&linux));
        }
        if !runtime {
            // ns-run's /dev and procfs are nspawn's (a runtime's: [`Self::mount`]).
            if linux.sysctl().as_ref().is_some_and(|m| !m.is_empty()) {
                return Err(unsupported("linux.sysctl"));
            }
            check_devices(&linux)?;
        }
        Ok(props)
    }

    /// The mount section from nspawn's, `m`: for an OCI runtime, config.json's mounts and
    /// what runc does around them, instead of nspawn's (`cgroups`: the host's hierarchies,
    /// for a cgroup mount).
    pub fn mount(
        &self,
        mut m: ns_core::state::MountPlan,
        cgroups: &[ns_host::cgroups::Hierarchy],
    ) -> Result<ns_core::state::MountPlan> {
        if self.oci_runtime.is_none() {
            return Ok(m);
        }
        let mut oci = crate::oci_mounts::plan(&self.bundle.spec, &self.bundle.dir)?;
        oci.chroot = !(self.linux().namespaces().iter().flatten())
            .any(|n| n.typ() == LinuxNamespaceType::Mount);
        if oci.chroot {
            check_chroot(&m, &oci)?;
        }
        m.cgroups = match crate::oci_mounts::has_cgroup_mount(&oci) {
            // The host's layout (a bundle's tree need not hold systemd to be given it).
            true => ns_host::cgroups::plan(cgroups, Some(u32::MAX), false, false)?,
            false => None,
        };
        m.oci = Some(oci);
        Ok(m)
    }
}

/// Without a mount namespace, what would change the caller's mounts is refused: runc's
/// rule for the masked and read-only paths, and (where runc would remount the host's `/`
/// or ignore it) the root's propagation and a read-only root.
fn check_chroot(m: &ns_core::state::MountPlan, oci: &ns_core::state::OciMounts) -> Result<()> {
    let refused = if !oci.masked_paths.is_empty() || !oci.readonly_paths.is_empty() {
        Some("linux.maskedPaths, linux.readonlyPaths")
    } else if oci.root_propagation.is_some() {
        Some("linux.rootfsPropagation")
    } else if m.read_only {
        Some("root.readonly")
    } else {
        None
    };
    match refused {
        Some(what) => Err(Error::setup(format!(
            "config.json: {what}: not possible without a mount namespace in linux.namespaces"
        ))),
        None => Ok(()),
    }
}

/// `ns-run --oci-bundle` keeps nspawn's id range: one mapping of container id 0, the same
/// for uids and gids.
fn check_one_range(linux: &oci_spec::runtime::Linux) -> Result<()> {
    let listed = linux.namespaces().iter().flatten();
    if !listed
        .into_iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none())
    {
        return Ok(());
    }
    let m = id_maps(linux)?;
    match (m.uid.as_slice(), m.gid.as_slice()) {
        ([u], [g]) if u == g => Ok(()),
        _ => Err(unsupported(
            "linux.uidMappings/gidMappings: with ns-run, only one mapping of container id 0, the same for uids and gids",
        )),
    }
}

/// OCI hooks as the stages take them (a timeout of 0 or less is refused at create).
pub fn hooks_of(hooks: &[oci_spec::runtime::Hook]) -> Vec<ns_core::state::Hook> {
    hooks
        .iter()
        .map(|h| ns_core::state::Hook {
            path: h.path().clone(),
            args: h.args().clone().unwrap_or_default(),
            env: h.env().clone().unwrap_or_default(),
            timeout: h.timeout().and_then(|t| u64::try_from(t).ok()),
        })
        .collect()
}

/// The namespaces to create and those to join (network and user are left to the options:
/// --private-network and its path, -U); for an OCI `runtime`, exactly those listed (the
/// rest are inherited), else with the mount namespace nspawn always makes.
fn namespaces(
    linux: &oci_spec::runtime::Linux,
    runtime: bool,
) -> Result<(Vec<Namespace>, Vec<JoinNs>)> {
    let mut create = Vec::new();
    let mut join = Vec::new();
    let listed = linux.namespaces().clone().unwrap_or_default();
    for ns in &listed {
        let kind = match ns.typ() {
            LinuxNamespaceType::Mount => Namespace::Mount,
            LinuxNamespaceType::Uts => Namespace::Uts,
            LinuxNamespaceType::Ipc => Namespace::Ipc,
            LinuxNamespaceType::Pid => Namespace::Pid,
            LinuxNamespaceType::Cgroup => Namespace::Cgroup,
            LinuxNamespaceType::Network | LinuxNamespaceType::User => continue,
            LinuxNamespaceType::Time => return Err(unsupported("linux.namespaces: time")),
        };
        match ns.path() {
            Some(p) if kind == Namespace::Mount && !runtime => {
                return Err(unsupported(&format!(
                    "linux.namespaces: with ns-run, joining the mount namespace {}",
                    p.display()
                )))
            }
            Some(p) => join.push(JoinNs {
                ns: kind,
                path: p.clone(),
            }),
            None if !create.contains(&kind) => create.push(kind),
            None => {}
        }
    }
    let joins_mount = join.iter().any(|j| j.ns == Namespace::Mount);
    let new_user = listed
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    if joins_mount && new_user {
        // Our stages would be root of a user namespace that does not own the mount
        // namespace they have to build the root in.
        return Err(unsupported(
            "linux.namespaces: joining a mount namespace with a new user namespace",
        ));
    }
    // ns-oci without a mount namespace chroots (`OciMounts::chroot`); ns-run makes one.
    if !create.contains(&Namespace::Mount) && !joins_mount && !runtime {
        create.push(Namespace::Mount);
    }
    Ok((create, join))
}

/// ns-mount's /dev has null zero full random urandom tty ptmx: only those may be asked for.
fn check_devices(linux: &oci_spec::runtime::Linux) -> Result<()> {
    const STANDARD: &[&str] = &[
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/ptmx",
    ];
    let devices = linux.devices().clone().unwrap_or_default();
    match devices
        .iter()
        .find(|x| !STANDARD.iter().any(|s| Path::new(s) == x.path()))
    {
        Some(x) => Err(unsupported(&format!(
            "linux.devices: {}",
            x.path().display()
        ))),
        None => Ok(()),
    }
}

/// An OCI process's identity, capabilities, limits and environment into `e` (with
/// `exact_env` the environment is exactly its own; else it goes over nspawn's). Used for
/// config.json's process and for `ns-oci exec --process`.
pub fn process_into(
    p: &oci_spec::runtime::Process,
    e: &mut ns_core::state::ExecPlan,
    exact_env: bool,
) -> Result<()> {
    let mut env = p.env().clone().unwrap_or_default();
    env.append(&mut e.setenv); // ns-run's -E, over the bundle's
    e.setenv = env;
    e.exact_env = exact_env;
    let u = p.user();
    if e.user.is_none() {
        // (ns-run's -u wins over the bundle's user.)
        let ids = Ids {
            uid: u.uid(),
            gid: u.gid(),
            groups: u.additional_gids().clone().unwrap_or_default(),
        };
        ids.check()
            .map_err(|e| Error::setup(format!("config.json: {e}")))?;
        e.ids = Some(ids);
    }
    e.umask = u.umask();
    capabilities_into(p.capabilities().as_ref(), e);
    e.no_new_privileges = p.no_new_privileges().unwrap_or(false);
    e.oom_score_adjust = p.oom_score_adj();
    e.rlimits = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| Rlimit {
            resource: r
                .typ()
                .to_string()
                .trim_start_matches("RLIMIT_")
                .to_string(),
            soft: (r.soft() != u64::MAX).then_some(r.soft()),
            hard: (r.hard() != u64::MAX).then_some(r.hard()),
        })
        .collect();
    if p.apparmor_profile()
        .as_deref()
        .is_some_and(|a| !a.is_empty())
    {
        return Err(unsupported("process.apparmorProfile"));
    }
    if p.selinux_label().as_deref().is_some_and(|a| !a.is_empty()) {
        return Err(unsupported("process.selinuxLabel"));
    }
    Ok(())
}

/// An OCI process's capability sets into `e` (none given: none at all).
fn capabilities_into(
    c: Option<&oci_spec::runtime::LinuxCapabilities>,
    e: &mut ns_core::state::ExecPlan,
) {
    let Some(c) = c else {
        e.capabilities = Vec::new();
        e.ambient = Vec::new();
        e.cap_sets = Some(Default::default());
        return;
    };
    let names = |set: &Option<oci_spec::runtime::Capabilities>| -> Vec<String> {
        let mut v: Vec<String> = set
            .iter()
            .flatten()
            .map(|c| c.to_string().to_ascii_lowercase())
            .collect();
        v.sort();
        v
    };
    let (permitted, inheritable) = (names(c.permitted()), names(c.inheritable()));
    e.capabilities = names(c.bounding());
    // The kernel raises an ambient capability only when it is permitted and inheritable;
    // runc leaves the others out (its default spec lists ambient ones with no inheritable).
    e.ambient = names(c.ambient())
        .into_iter()
        .filter(|a| permitted.contains(a) && inheritable.contains(a))
        .collect();
    e.cap_sets = Some(ns_core::state::CapSets {
        effective: names(c.effective()),
        permitted,
        inheritable,
    });
}

/// An OCI seccomp profile as our filter. The default action decides the base (everything
/// for SCMP_ACT_ALLOW or LOG, else nothing) and what a denied call gets (its errno, or the
/// process killed). Unconditional rules go into the allow or deny list (or, with an outcome
/// of their own, such as containerd's ENOSYS for clone3, become rules); rules with argument
/// conditions are checked on the arguments. Trap, trace and notify are refused.
pub fn seccomp(sc: &LinuxSeccomp) -> Result<SyscallFilter> {
    use ns_core::state::{SeccompAction, SeccompRule};
    let default = seccomp_action(sc.default_action(), sc.default_errno_ret())?;
    if default == SeccompAction::Notify {
        // As libseccomp: a filter that hands every call to the agent would hand it its own.
        return Err(unsupported("linux.seccomp.defaultAction: SCMP_ACT_NOTIFY"));
    }
    let allows = default == SeccompAction::Allow;
    let denied = if allows {
        SeccompAction::Errno(libc::EPERM as u32)
    } else {
        default
    };
    let mut f = SyscallFilter {
        base: if allows {
            FilterBase::Everything
        } else {
            FilterBase::Nothing
        },
        denied: Some(denied),
        ..Default::default()
    };
    for r in sc.syscalls().iter().flatten() {
        let a = seccomp_action(r.action(), r.errno_ret())?;
        let args = seccomp_conditions(r);
        let names = r.names().clone();
        // Several conditions on one argument are alternatives (runc adds a rule for each).
        let mut indexes: Vec<u32> = args.iter().map(|c| c.index).collect();
        indexes.sort_unstable();
        if indexes.windows(2).any(|w| w[0] == w[1]) {
            for c in args {
                f.rules.push(SeccompRule {
                    names: names.clone(),
                    args: vec![c],
                    action: a,
                });
            }
            continue;
        }
        match (args.is_empty(), a) {
            (true, a) if a == default => {}
            (true, SeccompAction::Allow) => f.allow.extend(names),
            (true, a) if a == denied => f.deny.extend(names),
            (_, action) => f.rules.push(SeccompRule {
                names,
                args,
                action,
            }),
        }
    }
    Ok(f)
}

/// An OCI seccomp action as ours (trap, trace and notify are refused).
fn seccomp_action(
    a: LinuxSeccompAction,
    errno: Option<u32>,
) -> Result<ns_core::state::SeccompAction> {
    use ns_core::state::SeccompAction;
    match a {
        LinuxSeccompAction::ScmpActAllow | LinuxSeccompAction::ScmpActLog => {
            Ok(SeccompAction::Allow)
        }
        LinuxSeccompAction::ScmpActErrno => {
            Ok(SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32)))
        }
        LinuxSeccompAction::ScmpActKill
        | LinuxSeccompAction::ScmpActKillProcess
        | LinuxSeccompAction::ScmpActKillThread => Ok(SeccompAction::Kill),
        LinuxSeccompAction::ScmpActNotify => Ok(SeccompAction::Notify),
        a => Err(unsupported(&format!("linux.seccomp: action {a:?}"))),
    }
}

/// A rule's argument conditions.
fn seccomp_conditions(r: &oci_spec::runtime::LinuxSyscall) -> Vec<ns_core::state::ArgCmp> {
    use ns_core::state::{ArgCmp, CmpOp};
    use oci_spec::runtime::LinuxSeccompOperator as Op;
    r.args()
        .iter()
        .flatten()
        .map(|c| ArgCmp {
            index: c.index() as u32,
            op: match c.op() {
                Op::ScmpCmpNe => CmpOp::Ne,
                Op::ScmpCmpLt => CmpOp::Lt,
                Op::ScmpCmpLe => CmpOp::Le,
                Op::ScmpCmpEq => CmpOp::Eq,
                Op::ScmpCmpGe => CmpOp::Ge,
                Op::ScmpCmpGt => CmpOp::Gt,
                Op::ScmpCmpMaskedEq => CmpOp::MaskedEq,
            },
            value: c.value(),
            value_two: c.value_two().unwrap_or(0),
        })
        .collect()
}

/// Whether the host's memory controller accounts swap (v1 memsw files; cgroup2 has it).
fn swap_accounted() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|n| n == "memory"))
}

/// `linux.resources` as cgroup properties (the container's only ones: the device rules are
/// its whole device policy). Used at create and by `update`.
pub fn properties(r: &LinuxResources) -> Result<Vec<Property>> {
    let mut p = Vec::new();
    if let Some(m) = r.memory() {
        p.extend(memory(m)?);
    }
    if let Some(c) = r.cpu() {
        p.extend(cpu(c)?);
    }
    if let Some(pids) = r.pids() {
        let l = pids.limit();
        p.push(prop(if l > 0 {
            format!("TasksMax={l}")
        } else {
            "TasksMax=infinity".into()
        })?);
    }
    if let Some(b) = r.block_io() {
        p.extend(block_io(b)?);
    }
    for h in r.hugepage_limits().iter().flatten() {
        let limit = u64::try_from(h.limit()).unwrap_or(u64::MAX);
        p.push(Property::HugetlbMax(h.page_size().clone(), limit));
    }
    let mut unified: Vec<_> = r.unified().iter().flatten().collect();
    unified.sort();
    for (k, v) in unified {
        if k.contains('/') || !k.contains('.') {
            return Err(unsupported(&format!("linux.resources.unified: {k}")));
        }
        p.push(Property::Unified(k.clone(), v.clone()));
    }
    if let Some(n) = r.network() {
        p.extend(n.class_id().map(Property::NetClassId));
        for prio in n.priorities().iter().flatten() {
            p.push(Property::NetPriority(prio.name().clone(), prio.priority()));
        }
    }
    p.extend(devices(&r.devices().clone().unwrap_or_default())?);
    Ok(p)
}

/// A property as `--property=` would give it.
fn prop(v: String) -> Result<Property> {
    ns_host::resources::parse(&v)
}

fn memory(m: &oci_spec::runtime::LinuxMemory) -> Result<Vec<Property>> {
    let mut p = Vec::new();
    if let Some(l) = m.limit().filter(|l| *l > 0) {
        p.push(prop(format!("MemoryMax={l}"))?);
        // swap is memory plus swap: the part beyond the limit is the swap limit (CRI's
        // swap = limit: none), where the host accounts swap at all.
        match m.swap() {
            Some(sw) if sw > l => p.push(prop(format!("MemorySwapMax={}", sw - l))?),
            Some(sw) if sw == l && swap_accounted() => p.push(prop("MemorySwapMax=0".into())?),
            _ => {}
        }
    }
    if let Some(r) = m.reservation().filter(|r| *r > 0) {
        p.push(Property::MemoryLow(Some(r as u64)));
    }
    // What only v1 has: written there, refused in one line on cgroup2.
    let v1 = |file: &str, v: String| Property::MemoryV1(file.into(), v);
    if m.kernel().is_some_and(|v| v > 0) {
        // v1 memory.kmem.limit_in_bytes takes a value and ignores it on kernels since 6.1.
        return Err(unsupported("linux.resources.memory.kernel"));
    }
    p.extend(
        m.kernel_tcp()
            .map(|k| v1("memory.kmem.tcp.limit_in_bytes", k.to_string())),
    );
    p.extend(
        m.swappiness()
            .map(|s| v1("memory.swappiness", s.to_string())),
    );
    if m.disable_oom_killer() == Some(true) {
        p.push(v1("memory.oom_control", "1".into()));
    }
    Ok(p)
}

fn cpu(c: &oci_spec::runtime::LinuxCpu) -> Result<Vec<Property>> {
    let mut p = Vec::new();
    if let Some(s) = c.shares().filter(|s| *s > 0) {
        p.push(prop(format!("CPUShares={}", s.clamp(2, 262144)))?);
    }
    if let Some(q) = c.quota().filter(|q| *q > 0) {
        let period = c.period().filter(|p| *p > 0).unwrap_or(100_000);
        p.push(Property::CpuMax(q as u64, period));
    }
    if let Some(cpus) = c.cpus().as_deref().filter(|v| !v.is_empty()) {
        p.push(prop(format!("AllowedCPUs={cpus}"))?);
    }
    if let Some(mems) = c.mems().as_deref().filter(|v| !v.is_empty()) {
        p.push(prop(format!("AllowedMemoryNodes={mems}"))?);
    }
    if c.realtime_runtime().is_some_and(|v| v > 0) {
        return Err(unsupported("linux.resources.cpu.realtimeRuntime"));
    }
    Ok(p)
}

fn block_io(b: &oci_spec::runtime::LinuxBlockIo) -> Result<Vec<Property>> {
    use ns_core::state::IoLimit;
    // Leaf weights were CFQ's, which kernels since 5.0 no longer have.
    if b.leaf_weight().is_some()
        || b.weight_device()
            .iter()
            .flatten()
            .any(|d| d.leaf_weight().is_some())
    {
        return Err(unsupported(
            "linux.resources.blockIO leafWeight (no kernel since 5.0 has it)",
        ));
    }
    let mut p = Vec::new();
    if let Some(w) = b.weight() {
        p.push(prop(format!("BlockIOWeight={w}"))?);
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = d.weight() {
            let dev = format!("{}:{}", d.major(), d.minor());
            if !(10..=1000).contains(&w) {
                return Err(unsupported(&format!(
                    "linux.resources.blockIO.weightDevice {dev}: weight {w} (10 to 1000)"
                )));
            }
            p.push(Property::BlkioDeviceWeight(dev, u64::from(w)));
        }
    }
    for (list, limit) in [
        (b.throttle_read_bps_device(), IoLimit::ReadBytes),
        (b.throttle_write_bps_device(), IoLimit::WriteBytes),
        (b.throttle_read_iops_device(), IoLimit::ReadIops),
        (b.throttle_write_iops_device(), IoLimit::WriteIops),
    ] {
        for d in list.iter().flatten() {
            let dev = format!("{}:{}", d.major(), d.minor());
            p.push(Property::IoMax(
                dev,
                limit,
                Some(d.rate()).filter(|r| *r > 0),
            ));
        }
    }
    Ok(p)
}

/// Device rules, in order: a leading deny-all makes the policy strict (only what follows
/// is allowed); without one, access is open and allow rules change nothing.
fn devices(rules: &[oci_spec::runtime::LinuxDeviceCgroup]) -> Result<Vec<Property>> {
    let deny_all = |d: &oci_spec::runtime::LinuxDeviceCgroup| {
        !d.allow()
            && matches!(d.typ(), None | Some(oci_spec::runtime::LinuxDeviceType::A))
            && d.major().is_none()
            && d.minor().is_none()
    };
    let Some(first) = rules.iter().position(deny_all) else {
        if rules.iter().any(|d| !d.allow()) {
            return Err(unsupported(
                "linux.resources.devices: deny rules without a leading deny-all",
            ));
        }
        return Ok(Vec::new());
    };
    let mut p = vec![Property::DevicePolicy("strict".into())];
    for (i, d) in rules.iter().enumerate().skip(first + 1) {
        let rule = d.to_string();
        if !d.allow() || ns_host::devices::Rule::parse(&rule).is_none() {
            return Err(unsupported(&format!(
                "linux.resources.devices[{i}]: {} {rule}",
                if d.allow() { "allow" } else { "deny" }
            )));
        }
        p.push(Property::DeviceAllow(rule));
    }
    p.extend(
        ns_host::devices::RUNC_DEFAULT
            .iter()
            .map(|r| Property::DeviceAllow(r.to_string())),
    );
    Ok(p)
}

/// Allow rules for the nodes `linux.devices` lists (they "MUST be available in the
/// container"), after runc's defaults: a character device of type c or u, a block device;
/// a fifo needs no rule.
fn listed_devices(linux: &oci_spec::runtime::Linux) -> Vec<Property> {
    use oci_spec::runtime::LinuxDeviceType as T;
    let listed = linux.devices().clone().unwrap_or_default();
    listed
        .iter()
        .filter_map(|d| {
            let kind = match d.typ() {
                T::C | T::U => 'c',
                T::B => 'b',
                T::P | T::A => return None,
            };
            let rule = format!("{kind} {}:{} rwm", d.major(), d.minor());
            Some(Property::DeviceAllow(rule))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_colons() {
        assert_eq!(esc(Path::new("/a:b\\c")), "/a\\:b\\\\c");
    }

    #[test]
    fn resources_become_properties() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":1048576,"swap":3145728},"pids":{"limit":10},
                "cpu":{"shares":512,"quota":50000,"period":100000},
                "devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"}]}"#,
        )
        .unwrap();
        let p = properties(&r).unwrap();
        assert_eq!(
            p,
            vec![
                Property::MemoryMax(Some(1048576)),
                Property::MemorySwapMax(Some(2097152)),
                Property::CpuShares(512),
                Property::CpuMax(50000, 100000),
                Property::TasksMax(Some(10)),
                Property::DevicePolicy("strict".into()),
                Property::DeviceAllow("c 1:3 rwm".into()),
            ]
            .into_iter()
            .chain(
                ns_host::devices::RUNC_DEFAULT
                    .iter()
                    .map(|r| Property::DeviceAllow(r.to_string()))
            )
            .collect::<Vec<_>>()
        );
        let bad: LinuxResources = serde_json::from_str(
            r#"{"devices":[{"allow":false,"type":"c","major":1,"access":"r"}]}"#,
        )
        .unwrap();
        assert!(properties(&bad).unwrap_err().msg.contains("deny rules"));
        let leaf: LinuxResources =
            serde_json::from_str(r#"{"blockIO":{"weight":500,"leafWeight":300}}"#).unwrap();
        assert!(properties(&leaf).unwrap_err().msg.contains("leafWeight"));
    }

    #[test]
    fn runc_defaults_follow_the_rules_and_listed_devices_are_allowed() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"b","major":8,"minor":0,"access":"r"}]}"#,
        )
        .unwrap();
        let rules: Vec<String> = properties(&r)
            .unwrap()
            .into_iter()
            .filter_map(|p| match p {
                Property::DeviceAllow(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(rules[0], "b 8:0 r");
        assert_eq!(rules[1..], *ns_host::devices::RUNC_DEFAULT);
        assert_eq!(rules[1..3], ["c *:* m", "b *:* m"]);
        let linux: oci_spec::runtime::Linux = serde_json::from_str(
            r#"{"devices":[{"path":"/dev/btrfs-control","type":"c","major":10,"minor":234},
                {"path":"/dev/sda","type":"b","major":8,"minor":0},
                {"path":"/dev/u","type":"u","major":4,"minor":1},
                {"path":"/dev/fifo","type":"p"}]}"#,
        )
        .unwrap();
        assert_eq!(
            listed_devices(&linux),
            ["c 10:234 rwm", "b 8:0 rwm", "c 4:1 rwm"].map(|r| Property::DeviceAllow(r.into()))
        );
    }

    #[test]
    fn seccomp_profiles_map_to_a_base_and_exceptions() {
        let sc: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"}]}"#,
        )
        .unwrap();
        let f = seccomp(&sc).unwrap();
        assert_eq!(f.base, FilterBase::Nothing);
        assert_eq!(f.allow, vec!["read", "write"]);
        let sc: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mount"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"}]},
                {"names":["umount2"],"action":"SCMP_ACT_ERRNO"},
                {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
        )
        .unwrap();
        let f = seccomp(&sc).unwrap();
        assert_eq!(f.base, FilterBase::Everything);
        assert_eq!(f.deny, vec!["umount2"]);
        assert_eq!(f.rules.len(), 2);
        assert_eq!(f.rules[1].action, ns_core::state::SeccompAction::Errno(38));
        // Two conditions on one argument: either will do (two rules), as runc reads them.
        let sc: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["personality"],
                "action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"},
                {"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap();
        let f = seccomp(&sc).unwrap();
        assert_eq!(f.rules.len(), 2);
        assert_eq!(f.rules[1].args[0].value, 8);
        let sc: LinuxSeccomp =
            serde_json::from_str(r#"{"defaultAction":"SCMP_ACT_TRAP"}"#).unwrap();
        assert!(seccomp(&sc).unwrap_err().msg.contains("ScmpActTrap"));
    }
}
