//! ns-mount: build the container's root and pivot into it.
//!
//! Reads `mount` of the state (or its flags), and the notify socket from its `runtime`. In order:
//! cut mount propagation to the host (rslave /), mount a private scratch tmpfs (temporary sources,
//! overlay uppers, inaccessible nodes: all gone with the mount namespace), assemble the root (the
//! directory, an overlay for `-x`, or a volatile tmpfs), `--pivot-root`, mount the API file systems
//! (/proc with nspawn's read-only sub-paths, /sys read-only, a minimal /dev, /run, /tmp),
//! /etc/resolv.conf and /etc/localtime, the user mounts in command-line order, make the root
//! read-only if asked, pivot_root into it and detach the old root, then exec the next program.
//!
//! For an OCI runtime (`mount.oci` in the state) it does config.json's mounts instead, as
//! runc does them ([`oci`]).
//!
//! Mount points it has to create in the image are announced on the sync socket first
//! (`created`), so that the monitor removes them after the container is gone.
#![forbid(unsafe_code)]

// Module graph (no cycles): (build) → oci → setup → ops → root → inroot → scratch → tmpfs.
pub mod credentials;
pub mod inroot;
pub mod oci;
pub mod ops;
pub mod root;
pub mod scratch;
pub mod setup;
pub mod spec;
pub mod template;
pub mod tmpfs;

use std::path::{Path, PathBuf};

use clap::Parser;
use ns_core::state::{MountOp, MountPlan, RootMode};
use ns_core::{Error, Result};

pub use spec::{parse_bind, parse_overlay, parse_tmpfs};

/// ns-mount -D ROOT [--read-only] [-x] [--volatile[=MODE]] [--bind SRC[:DST[:OPTS]]]...
///          [--tmpfs PATH[:OPTS]]... [--overlay …] [--inaccessible PATH]... -- PROGRAM
///
/// Must run as PID 1 of a new PID namespace inside a new mount namespace (see ns-enter).
/// With --state-fd N, reads `mount` from the state, and the next stage (ns-caps) from the
/// state when no PROGRAM is given.
#[derive(Parser, Debug, Default)]
#[command(
    name = "ns-mount",
    version,
    about = "Set up the container's mounts and pivot_root into ROOT"
)]
pub struct Args {
    /// Read the plan from this state fd (ns-run sets it).
    #[arg(long, value_name = "FD", conflicts_with_all = ["directory", "read_only", "private_network", "ephemeral", "volatile", "pivot_root", "bind", "bind_ro", "tmpfs", "overlay", "overlay_ro", "inaccessible", "resolv_conf", "timezone", "selinux_apifs_context"])]
    pub state_fd: Option<i32>,
    /// Report failures and created mount points to a monitor on this sync socket.
    #[arg(long, value_name = "FD")]
    pub sync_fd: Option<i32>,
    /// The image as a detached (idmapped) mount, made by the monitor; used instead of
    /// binding the directory.
    #[arg(long, value_name = "FD")]
    pub root_fd: Option<i32>,
    #[command(flatten)]
    pub mount: MountArgs,
    /// The container has its own network namespace (keeps /proc/sys/net writable).
    #[arg(long)]
    pub private_network: bool,
    /// Make a pty whose slave is /dev/console; its master goes to the monitor (--sync-fd).
    #[arg(long)]
    pub console: bool,
    /// Mount the API file systems (tmpfs, devpts) with this SELinux context (ns-run's -L).
    #[arg(long, value_name = "SECLABEL")]
    pub selinux_apifs_context: Option<String>,
    /// The next program: another stage or the payload.
    #[arg(last = true, value_name = "PROGRAM")]
    pub rest: Vec<String>,
}

/// nspawn's image and mount options (ns-mount's share of them), one declaration flattened
/// into both ns-mount's and ns-run's command lines. [`MountArgs::plan`] turns them into the
/// state's `mount` section, [`plan_to_flags`] back.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct MountArgs {
    /// Root directory for the container
    #[arg(short = 'D', long, value_name = "PATH")]
    pub directory: Option<String>,
    /// Run container with snapshot of root directory, and remove it after exit
    #[arg(short = 'x', long)]
    pub ephemeral: bool,
    /// Mount the root directory read-only
    #[arg(long)]
    pub read_only: bool,
    /// Run the system in volatile mode
    #[arg(long, value_name = "MODE", num_args = 0..=1, require_equals = true, default_missing_value = "yes")]
    pub volatile: Option<String>,
    /// Pivot root to given directory in the container
    #[arg(long, value_name = "PATH[:PATH]")]
    pub pivot_root: Option<String>,
    /// Select mode of /etc/resolv.conf initialization
    #[arg(long, value_name = "MODE")]
    pub resolv_conf: Option<String>,
    /// Select mode of /etc/localtime initialization
    #[arg(long, value_name = "MODE")]
    pub timezone: Option<String>,
    /// --bind, --bind-ro, --tmpfs, --overlay, --overlay-ro, --inaccessible, in order.
    #[command(flatten)]
    pub mounts: UserMounts,
}

/// One kind of user mount option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    BindRo,
    Inaccessible,
    Tmpfs,
    Overlay,
    OverlayRo,
}

/// The user mount options: (kind, clap id, long name, value name, help).
const USER_MOUNTS: [(MountKind, &str, &str, &str, &str); 6] = [
    (
        MountKind::Bind,
        "bind",
        "bind",
        "PATH[:PATH[:OPTIONS]]",
        "Bind mount a file or directory from the host into the container",
    ),
    (
        MountKind::BindRo,
        "bind_ro",
        "bind-ro",
        "PATH[:PATH[:OPTIONS]]",
        "Similar, but creates a read-only bind mount",
    ),
    (
        MountKind::Inaccessible,
        "inaccessible",
        "inaccessible",
        "PATH",
        "Over-mount file node with inaccessible node to mask it",
    ),
    (
        MountKind::Tmpfs,
        "tmpfs",
        "tmpfs",
        "PATH:[OPTIONS]",
        "Mount an empty tmpfs to the specified directory",
    ),
    (
        MountKind::Overlay,
        "overlay",
        "overlay",
        "PATH[:PATH...]:PATH",
        "Create an overlay mount from the host to the container",
    ),
    (
        MountKind::OverlayRo,
        "overlay_ro",
        "overlay-ro",
        "PATH[:PATH...]:PATH",
        "Similar, but creates a read-only overlay mount",
    ),
];

impl MountKind {
    /// The option, as errors name it (`--bind-ro`).
    pub fn option(self) -> String {
        let (_, _, long, _, _) = USER_MOUNTS
            .iter()
            .find(|(k, ..)| *k == self)
            .expect("listed");
        format!("--{long}")
    }

    /// `value` parsed into its operation.
    pub fn parse(self, value: &str) -> Result<MountOp> {
        match self {
            MountKind::Bind | MountKind::BindRo => parse_bind(value, self == MountKind::BindRo),
            MountKind::Tmpfs => parse_tmpfs(value),
            MountKind::Overlay | MountKind::OverlayRo => {
                parse_overlay(value, self == MountKind::OverlayRo)
            }
            MountKind::Inaccessible => spec::parse_inaccessible(value),
        }
    }
}

/// The user mount options as given, in command-line order across all six (mounts stack:
/// their order is their meaning). Declared by hand for clap, which reports where each
/// value stood only through its matches.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UserMounts(pub Vec<(MountKind, String)>);

impl clap::FromArgMatches for UserMounts {
    fn from_arg_matches(m: &clap::ArgMatches) -> std::result::Result<Self, clap::Error> {
        let mut found: Vec<(usize, MountKind, String)> = Vec::new();
        for (kind, id, ..) in USER_MOUNTS {
            if let (Some(idx), Some(vals)) = (m.indices_of(id), m.get_many::<String>(id)) {
                found.extend(idx.zip(vals).map(|(i, v)| (i, kind, v.clone())));
            }
        }
        found.sort_by_key(|(i, _, _)| *i);
        Ok(UserMounts(
            found.into_iter().map(|(_, k, v)| (k, v)).collect(),
        ))
    }

    fn update_from_arg_matches(
        &mut self,
        m: &clap::ArgMatches,
    ) -> std::result::Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for UserMounts {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        USER_MOUNTS
            .iter()
            .fold(cmd, |cmd, (_, id, long, value, help)| {
                cmd.arg(
                    clap::Arg::new(*id)
                        .long(*long)
                        .value_name(*value)
                        .help(*help)
                        .action(clap::ArgAction::Append),
                )
            })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl UserMounts {
    /// The operations, in order.
    pub fn ops(&self) -> Result<Vec<MountOp>> {
        self.0.iter().map(|(k, v)| k.parse(v)).collect()
    }
}

/// What the mount plan takes besides its own flags: what other stages' options decided,
/// and the host's facts (probed before planning, so that planning reads nothing).
#[derive(Debug)]
pub struct MountContext<'a> {
    /// The directory the checks run against (`-D`, or what ns-run chose without it).
    pub tree: &'a RootFacts,
    /// Where the scratch tmpfs goes ([`scratch::default_dir`]).
    pub scratch: PathBuf,
    pub private_network: bool,
    /// The root is seen through an idmapped mount (user namespaces, ownership `map`).
    pub idmapped_root: bool,
    /// The container has a user namespace (idmap bind options need one).
    pub userns: bool,
    /// The monitor opens the host paths and hands them down (`MountPlan::host_by_fd`).
    pub host_by_fd: bool,
    /// Make a pty for /dev/console.
    pub console: bool,
    /// The root of an OCI bundle: any directory, not only an OS tree with /usr.
    pub any_tree: bool,
    /// Where the tree will be, when not where it was checked (a template's copy).
    pub root: Option<PathBuf>,
    /// `--bind-user`'s users (the monitor maps them; ns-mount binds their homes).
    pub bind_users: Vec<ns_core::state::BoundUser>,
    /// systemd's container interface under /run/host.
    pub run_host: ns_core::state::RunHost,
    /// `-b`: a transient /etc/machine-id, and the cgroup file systems for the guest's init.
    pub machine_id: Option<String>,
    pub cgroups: Option<ns_core::state::CgroupMounts>,
}

impl MountArgs {
    /// Check the options and compute the plan.
    pub fn plan(&self, cx: &MountContext) -> Result<MountPlan> {
        let mut root_mode = match &self.volatile {
            Some(v) => spec::parse_volatile(v)?,
            None => RootMode::Directory,
        };
        if self.ephemeral {
            if root_mode != RootMode::Directory {
                return Err(Error::setup(
                    "--ephemeral and --volatile= may not be combined".into(),
                ));
            }
            root_mode = RootMode::Overlay;
        }
        let checked = check_root(cx.tree, root_mode, !cx.any_tree)?;
        let ops = self.mounts.ops()?;
        if !cx.userns {
            check_no_idmap(&self.mounts.0, &ops)?;
        }
        Ok(MountPlan {
            root: cx.root.clone().unwrap_or(checked),
            root_mode,
            idmapped_root: cx.idmapped_root,
            host_by_fd: cx.host_by_fd,
            read_only: self.read_only,
            private_network: cx.private_network,
            pivot_root: self
                .pivot_root
                .as_deref()
                .map(spec::parse_pivot_root)
                .transpose()?,
            ops,
            scratch: cx.scratch.clone(),
            console: cx.console,
            resolv_conf: spec::parse_resolv_conf(
                self.resolv_conf.as_deref().unwrap_or("auto"),
                cx.private_network,
            )?,
            timezone: spec::parse_timezone(self.timezone.as_deref().unwrap_or("auto"))?,
            bind_users: cx.bind_users.clone(),
            run_host: cx.run_host.clone(),
            machine_id: cx.machine_id.clone(),
            cgroups: cx.cgroups.clone(),
            credentials: Vec::new(), // read by ns-run from its own options
            create_hooks: None,      // an OCI bundle's only
            oci: None,               // an OCI runtime's: its plan builder's
            selinux_apifs_context: None, // ns-run's -L, planned with -Z
        })
    }
}

/// idmap and rootidmap bind options need a user namespace.
fn check_no_idmap(given: &[(MountKind, String)], ops: &[MountOp]) -> Result<()> {
    let by_kind = [MountKind::Bind, MountKind::BindRo]
        .into_iter()
        .flat_map(|k| given.iter().zip(ops).filter(move |((g, _), _)| *g == k));
    for ((kind, value), op) in by_kind {
        if matches!(op, MountOp::Bind { idmap, .. } if *idmap != ns_core::state::Idmap::No) {
            return Err(Error::invalid(
                &kind.option(),
                value,
                "idmap and rootidmap need a user namespace (--private-users or -U)",
            ));
        }
    }
    Ok(())
}

impl Args {
    /// The chain's command line, `--state-fd N [--sync-fd M]` ([`ns_core::stage::stage_args`]).
    pub fn set_fds(&mut self, state_fd: i32, sync_fd: Option<i32>) {
        self.state_fd = Some(state_fd);
        self.sync_fd = sync_fd;
    }

    /// The plan these flags describe.
    pub fn to_plan(&self) -> Result<MountPlan> {
        let dir = self
            .mount
            .directory
            .as_deref()
            .ok_or_else(|| Error::setup("-D/--directory is required".into()))?;
        let plan = self.mount.plan(&MountContext {
            tree: &RootFacts::probe(dir, self.mount.volatile.is_some()),
            scratch: scratch::default_dir()?,
            private_network: self.private_network,
            console: self.console,
            idmapped_root: false,
            userns: false,
            host_by_fd: false,
            any_tree: false,
            root: None,
            bind_users: Vec::new(),
            run_host: Default::default(),
            machine_id: None,
            cgroups: None,
        })?;
        Ok(MountPlan {
            selinux_apifs_context: self.selinux_apifs_context.clone(),
            ..plan
        })
    }
}

/// What planning needs to know of a root directory, probed before planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFacts {
    /// The directory as given (errors name it).
    pub given: String,
    /// Its canonical path, or why there is none.
    pub canonical: Result<PathBuf>,
    /// It holds a /usr directory.
    pub has_usr: bool,
    /// The first of /bin, /sbin, /lib, /lib64 that is there and not a symlink (probed only
    /// when asked: `--volatile=yes` needs a merged /usr).
    pub unmerged: Option<&'static str>,
}

impl RootFacts {
    /// Probe `dir` (`merged`: also look for an unmerged /usr).
    pub fn probe(dir: &str, merged: bool) -> Self {
        let canonical = std::fs::canonicalize(dir)
            .map_err(|e| Error::invalid("--directory", dir, &ns_core::error::io_desc(&e)));
        let (has_usr, unmerged) = match &canonical {
            Ok(p) => (
                p.join("usr").is_dir(),
                merged
                    .then(|| {
                        ["bin", "sbin", "lib", "lib64"].into_iter().find(|d| {
                            std::fs::symlink_metadata(p.join(d))
                                .is_ok_and(|m| !m.file_type().is_symlink())
                        })
                    })
                    .flatten(),
            ),
            Err(_) => (false, None),
        };
        RootFacts {
            given: dir.to_string(),
            canonical,
            has_usr,
            unmerged,
        }
    }
}

/// Check a root directory as nspawn does: it must exist and be a directory holding /usr
/// (with `os_tree`); the host's root only for modes that never write to it;
/// `--volatile=yes` only for a merged-/usr tree.
pub fn check_root(tree: &RootFacts, mode: RootMode, os_tree: bool) -> Result<PathBuf> {
    let dir = &tree.given;
    let p = tree.canonical.clone()?;
    if p == Path::new("/") && mode == RootMode::Directory {
        return Err(Error::invalid(
            "--directory",
            dir,
            "spawning a container on the root directory is not supported (use --ephemeral, --volatile=yes or --volatile=state)",
        ));
    }
    if os_tree && !tree.has_usr {
        return Err(Error::invalid(
            "--directory",
            dir,
            "does not look like an OS tree (/usr/ directory is missing)",
        ));
    }
    if let (RootMode::Volatile, Some(d)) = (mode, tree.unmerged) {
        return Err(Error::invalid(
            "--volatile",
            "yes",
            &format!("needs an image with /{d} merged into /usr (a symlink)"),
        ));
    }
    Ok(p)
}

/// Build the root (nspawn's, or an OCI runtime's) and pivot into it, with what the host
/// decided at start (`runtime`). On return the process's root is the container.
pub fn build(
    plan: &MountPlan,
    runtime: &ns_core::state::Runtime,
    sync: Option<&ns_core::sync::SyncSocket>,
    root_fd: Option<std::os::fd::OwnedFd>,
) -> Result<()> {
    match &plan.oci {
        Some(oci) => oci::build_root(plan, oci, sync, root_fd),
        None => setup::build_root(plan, runtime, sync, root_fd),
    }
}

/// The flags that reproduce `plan` (for `ns-run --print-chain`).
pub fn plan_to_flags(plan: &MountPlan) -> Vec<String> {
    use ns_core::state::EtcFile;
    let mut out = vec![format!("--directory={}", plan.root.display())];
    match plan.root_mode {
        RootMode::Directory => {}
        RootMode::Overlay => out.push("--volatile=overlay".into()),
        RootMode::Volatile => out.push("--volatile=yes".into()),
        RootMode::State => out.push("--volatile=state".into()),
    }
    if plan.read_only {
        out.push("--read-only".into());
    }
    if plan.private_network {
        out.push("--private-network".into());
    }
    if let Some(p) = &plan.pivot_root {
        let old = p
            .old
            .as_ref()
            .map(|o| format!(":{}", o.display()))
            .unwrap_or_default();
        out.push(format!("--pivot-root={}{old}", p.new.display()));
    }
    out.extend(plan.ops.iter().map(spec::op_to_flag));
    // The resolved modes; ns-mount resolves them again against the same host.
    let etc = |f: &EtcFile| match f {
        EtcFile::Off => "off",
        EtcFile::Bind { create: false, .. } => "auto",
        EtcFile::Bind { .. } => "bind",
        EtcFile::Copy { replace: false, .. } => "copy",
        EtcFile::Copy { replace: true, .. } => "replace",
        EtcFile::Symlink(_) => "symlink",
        EtcFile::Delete => "delete",
    };
    let resolv = match (&plan.resolv_conf, etc(&plan.resolv_conf)) {
        (EtcFile::Bind { create: false, .. }, how) => how.to_string(),
        (EtcFile::Bind { source: s, .. } | EtcFile::Copy { source: s, .. }, how) => {
            format!("{how}-{}", resolv_source_name(s))
        }
        (_, how) => how.to_string(),
    };
    out.push(format!("--resolv-conf={resolv}"));
    out.push(format!("--timezone={}", etc(&plan.timezone)));
    if let Some(l) = &plan.selinux_apifs_context {
        out.push(format!("--selinux-apifs-context={l}"));
    }
    out
}

/// Which of nspawn's resolv.conf sources a resolved path is (host, static, uplink, stub).
fn resolv_source_name(p: &Path) -> &'static str {
    let same = |q: &str| std::fs::canonicalize(q).is_ok_and(|c| c == p);
    if same("/run/systemd/resolve/stub-resolv.conf") {
        "stub"
    } else if same("/run/systemd/resolve/resolv.conf") {
        "uplink"
    } else if same("/usr/lib/systemd/resolv.conf") {
        "static"
    } else {
        "host"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_core::state::Source;

    fn ops_of(argv: &[String]) -> Vec<MountOp> {
        use clap::Parser;
        Args::try_parse_from(argv)
            .unwrap()
            .mount
            .mounts
            .ops()
            .unwrap()
    }

    #[test]
    fn ops_keep_command_line_order_and_round_trip() {
        let argv: Vec<String> = [
            "ns-mount",
            "--tmpfs=/t",
            "--bind-ro",
            "/a:/b",
            "--overlay=/l::/o",
            "--inaccessible=/i",
            "--bind=/c",
            "--",
            "--bind=/no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let ops = ops_of(&argv);
        assert_eq!(ops.len(), 5);
        assert!(matches!(ops[0], MountOp::Tmpfs { .. }));
        assert!(matches!(
            ops[1],
            MountOp::Bind {
                read_only: true,
                ..
            }
        ));
        assert!(matches!(
            &ops[2],
            MountOp::Overlay {
                upper: Source::Temp,
                ..
            }
        ));
        assert!(matches!(ops[3], MountOp::Inaccessible { .. }));
        let plan = MountPlan {
            root: "/r".into(),
            ops,
            ..Default::default()
        };
        let mut again = vec!["ns-mount".to_string()];
        again.extend(plan_to_flags(&plan).into_iter().skip(1));
        assert_eq!(ops_of(&again), plan.ops);
    }

    #[test]
    fn root_checks() {
        let d = RootMode::Directory;
        let check = |dir: &str, mode| check_root(&RootFacts::probe(dir, false), mode, true);
        assert!(check("/", d)
            .unwrap_err()
            .msg
            .contains("root directory is not supported"));
        assert!(check("/", RootMode::Overlay).is_ok());
        assert!(check("/nonexistent/dir", d)
            .unwrap_err()
            .msg
            .contains("No such file"));
        assert!(check("/etc", d)
            .unwrap_err()
            .msg
            .contains("/usr/ directory is missing"));
        let unmerged = RootFacts {
            given: "/img".into(),
            canonical: Ok("/img".into()),
            has_usr: true,
            unmerged: Some("lib"),
        };
        assert!(check_root(&unmerged, RootMode::Volatile, true)
            .unwrap_err()
            .msg
            .contains("/lib merged into /usr"));
        assert!(check_root(&unmerged, RootMode::State, true).is_ok());
    }
}
