//! ns-mount: build the container's root and pivot into it.
//!
//! Reads `mount` of the state (or its flags). In order: cut mount propagation to the host
//! (rslave /), mount a private scratch tmpfs (temporary sources, overlay uppers, inaccessible
//! nodes: all gone with the mount namespace), assemble the root (the directory, an overlay
//! for `-x`, or a volatile tmpfs), `--pivot-root`, mount the API file systems (/proc with
//! nspawn's read-only sub-paths, /sys read-only, a minimal /dev, /run, /tmp), /etc/resolv.conf
//! and /etc/localtime, the user mounts in command-line order, make the root read-only if
//! asked, pivot_root into it and detach the old root, then exec the next program.
//!
//! Mount points it has to create in the image are announced on the sync socket first
//! (`created`), so that the monitor removes them after the container is gone.
#![forbid(unsafe_code)]

// Module graph (no cycles): setup → ops → root → inroot → scratch → tmpfs.
pub mod inroot;
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
    #[arg(long, value_name = "FD", conflicts_with_all = ["directory", "read_only", "private_network", "ephemeral", "volatile", "pivot_root", "bind", "bind_ro", "tmpfs", "overlay", "overlay_ro", "inaccessible", "resolv_conf", "timezone"])]
    pub state_fd: Option<i32>,
    /// Report failures and created mount points to a monitor on this sync socket.
    #[arg(long, value_name = "FD")]
    pub sync_fd: Option<i32>,
    /// The image as a detached (idmapped) mount, made by the monitor; used instead of
    /// binding the directory.
    #[arg(long, value_name = "FD")]
    pub root_fd: Option<i32>,
    /// Root directory of the container (must contain /usr).
    #[arg(short = 'D', long, value_name = "PATH")]
    pub directory: Option<String>,
    /// Mount the root read-only.
    #[arg(long)]
    pub read_only: bool,
    /// The container has its own network namespace (keeps /proc/sys/net writable).
    #[arg(long)]
    pub private_network: bool,
    /// Run on an overlay of ROOT whose changes vanish with the container.
    #[arg(short = 'x', long)]
    pub ephemeral: bool,
    /// no, yes (tmpfs root with ROOT's /usr), state (tmpfs /var), overlay.
    #[arg(long, value_name = "MODE", num_args = 0..=1, require_equals = true, default_missing_value = "yes")]
    pub volatile: Option<String>,
    /// Make NEW (inside ROOT) the root; put ROOT at OLD, or unmount it.
    #[arg(long, value_name = "NEW[:OLD]")]
    pub pivot_root: Option<String>,
    /// Bind mount SRC (host; +PATH in the image; empty: temporary) on DST.
    #[arg(long, value_name = "SRC[:DST[:OPTS]]")]
    pub bind: Vec<String>,
    /// Same, read-only (submounts too).
    #[arg(long, value_name = "SRC[:DST[:OPTS]]")]
    pub bind_ro: Vec<String>,
    /// Mount a tmpfs on PATH with kernel options OPTS.
    #[arg(long, value_name = "PATH[:OPTS]")]
    pub tmpfs: Vec<String>,
    /// Overlay LOWER…:UPPER:DEST (or LOWER:UPPER).
    #[arg(long, value_name = "PATH[:PATH...]:PATH")]
    pub overlay: Vec<String>,
    /// Same, read-only.
    #[arg(long, value_name = "PATH[:PATH...]:PATH")]
    pub overlay_ro: Vec<String>,
    /// Cover PATH with an inaccessible node.
    #[arg(long, value_name = "PATH")]
    pub inaccessible: Vec<String>,
    /// /etc/resolv.conf handling (nspawn's modes; auto never writes the image).
    #[arg(long, value_name = "MODE")]
    pub resolv_conf: Option<String>,
    /// /etc/localtime handling (nspawn's modes; auto never writes the image).
    #[arg(long, value_name = "MODE")]
    pub timezone: Option<String>,
    /// Make a pty whose slave is /dev/console; its master goes to the monitor (--sync-fd).
    #[arg(long)]
    pub console: bool,
    /// The next program: another stage or the payload.
    #[arg(last = true, value_name = "PROGRAM")]
    pub rest: Vec<String>,
}

/// The options that decide the mount plan, shared by ns-mount's flags and ns-run's nspawn
/// command line so that the two cannot drift apart.
#[derive(Debug)]
pub struct MountOptions<'a> {
    pub directory: &'a str,
    pub read_only: bool,
    pub private_network: bool,
    pub ephemeral: bool,
    pub volatile: Option<&'a str>,
    pub pivot_root: Option<&'a str>,
    pub resolv_conf: Option<&'a str>,
    pub timezone: Option<&'a str>,
    /// The root is seen through an idmapped mount (user namespaces, ownership `map`).
    pub idmapped_root: bool,
    /// The container has a user namespace (idmap bind options need one).
    pub userns: bool,
    /// Make a pty for /dev/console.
    pub console: bool,
    /// The root of an OCI bundle: any directory, not only an OS tree with /usr.
    pub any_tree: bool,
    /// Where `--bind`, `--bind-ro`, `--tmpfs`, `--overlay*`, `--inaccessible` stood.
    pub matches: &'a clap::ArgMatches,
}

/// Check the options and compute the plan.
pub fn mount_plan(o: &MountOptions) -> Result<MountPlan> {
    let mut root_mode = match o.volatile {
        Some(v) => spec::parse_volatile(v)?,
        None => RootMode::Directory,
    };
    if o.ephemeral {
        if root_mode != RootMode::Directory {
            return Err(Error::setup(
                "--ephemeral and --volatile= may not be combined".into(),
            ));
        }
        root_mode = RootMode::Overlay;
    }
    let root = check_root(o.directory, root_mode, !o.any_tree)?;
    let ops = ops_from_matches(o.matches)?;
    if !o.userns {
        for id in ["bind", "bind_ro"] {
            for v in o.matches.get_many::<String>(id).into_iter().flatten() {
                let idmapped = matches!(
                    parse_bind(v, id == "bind_ro")?,
                    MountOp::Bind { idmap, .. } if idmap != ns_core::state::Idmap::No
                );
                if idmapped {
                    let opt = if id == "bind_ro" {
                        "--bind-ro"
                    } else {
                        "--bind"
                    };
                    return Err(Error::invalid(
                        opt,
                        v,
                        "idmap and rootidmap need a user namespace (--private-users or -U)",
                    ));
                }
            }
        }
    }
    Ok(MountPlan {
        root,
        root_mode,
        idmapped_root: o.idmapped_root,
        read_only: o.read_only,
        private_network: o.private_network,
        pivot_root: o.pivot_root.map(spec::parse_pivot_root).transpose()?,
        ops,
        scratch: scratch::default_dir()?,
        bind_users: Vec::new(),
        console: o.console,
        // ns-run fills these in (they come from the exec plan's uuid and manager).
        run_host: ns_core::state::RunHost::default(),
        machine_id: None,
        cgroups: None,
        notify_socket: None,
        resolv_conf: spec::parse_resolv_conf(o.resolv_conf.unwrap_or("auto"), o.private_network)?,
        timezone: spec::parse_timezone(o.timezone.unwrap_or("auto"))?,
    })
}

impl Args {
    /// The plan these flags describe (`m`: the matches they came from, for mount order).
    pub fn to_plan(&self, m: &clap::ArgMatches) -> Result<MountPlan> {
        let dir = self
            .directory
            .as_deref()
            .ok_or_else(|| Error::setup("-D/--directory is required".into()))?;
        mount_plan(&MountOptions {
            directory: dir,
            read_only: self.read_only,
            private_network: self.private_network,
            ephemeral: self.ephemeral,
            volatile: self.volatile.as_deref(),
            pivot_root: self.pivot_root.as_deref(),
            resolv_conf: self.resolv_conf.as_deref(),
            timezone: self.timezone.as_deref(),
            idmapped_root: false,
            userns: false,
            console: self.console,
            any_tree: false,
            matches: m,
        })
    }
}

/// The user mount options, parsed, in command-line order across all of them (clap reports
/// where each value stood).
pub fn ops_from_matches(m: &clap::ArgMatches) -> Result<Vec<MountOp>> {
    let mut found: Vec<(usize, &str, String)> = Vec::new();
    for id in [
        "bind",
        "bind_ro",
        "tmpfs",
        "overlay",
        "overlay_ro",
        "inaccessible",
    ] {
        if let (Some(idx), Some(vals)) = (m.indices_of(id), m.get_many::<String>(id)) {
            found.extend(idx.zip(vals).map(|(i, v)| (i, id, v.clone())));
        }
    }
    found.sort_by_key(|(i, _, _)| *i);
    found
        .into_iter()
        .map(|(_, id, v)| match id {
            "tmpfs" => parse_tmpfs(&v),
            "overlay" | "overlay_ro" => parse_overlay(&v, id == "overlay_ro"),
            "inaccessible" => spec::parse_inaccessible(&v),
            _ => parse_bind(&v, id == "bind_ro"),
        })
        .collect()
}

/// Resolve and check a root directory as nspawn does: it must exist and be a directory
/// holding /usr (with `os_tree`); the host's root only for modes that never write to it;
/// `--volatile=yes` only for a merged-/usr tree.
pub fn check_root(dir: &str, mode: RootMode, os_tree: bool) -> Result<PathBuf> {
    let p = std::fs::canonicalize(dir)
        .map_err(|e| Error::invalid("--directory", dir, &ns_core::error::io_desc(&e)))?;
    if p == Path::new("/") && mode == RootMode::Directory {
        return Err(Error::invalid(
            "--directory",
            dir,
            "spawning a container on the root directory is not supported (use --ephemeral, --volatile=yes or --volatile=state)",
        ));
    }
    if os_tree && !p.join("usr").is_dir() {
        return Err(Error::invalid(
            "--directory",
            dir,
            "does not look like an OS tree (/usr/ directory is missing)",
        ));
    }
    if mode == RootMode::Volatile {
        for d in ["bin", "sbin", "lib", "lib64"] {
            let m = std::fs::symlink_metadata(p.join(d));
            if m.is_ok_and(|m| !m.file_type().is_symlink()) {
                return Err(Error::invalid(
                    "--volatile",
                    "yes",
                    &format!("needs an image with /{d} merged into /usr (a symlink)"),
                ));
            }
        }
    }
    Ok(p)
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
    use clap::CommandFactory;
    use ns_core::state::Source;

    fn ops_of(argv: &[String]) -> Vec<MountOp> {
        ops_from_matches(&Args::command().try_get_matches_from(argv).unwrap()).unwrap()
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
        assert!(check_root("/", d, true)
            .unwrap_err()
            .msg
            .contains("root directory is not supported"));
        assert!(check_root("/", RootMode::Overlay, true).is_ok());
        assert!(check_root("/nonexistent/dir", d, true)
            .unwrap_err()
            .msg
            .contains("No such file"));
        assert!(check_root("/etc", d, true)
            .unwrap_err()
            .msg
            .contains("/usr/ directory is missing"));
    }
}
