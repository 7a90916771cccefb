//! ns-mount: build the container's root and pivot into it.
//!
//! Reads `mount` of the state (or its flags). In order: cut mount propagation to the host
//! (rslave /), bind the root directory on itself, mount the API file systems (/proc with
//! nspawn's read-only sub-paths, /sys read-only, a minimal /dev, /run, /tmp), apply the user
//! mounts in command-line order, make the root read-only if asked, pivot_root into it and
//! detach the old root, then exec the next program (looked up inside the new root unless it
//! is a stage opened before).
#![forbid(unsafe_code)]

pub mod setup;

use std::path::{Path, PathBuf};

use clap::Parser;
use ns_core::state::{MountOp, MountPlan};
use ns_core::{Error, Result};

/// ns-mount -D ROOT [--read-only] [--bind SRC[:DST[:OPTS]]]... [--tmpfs PATH[:OPTS]]... -- PROGRAM
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
    #[arg(long, value_name = "FD", conflicts_with_all = ["directory", "read_only", "private_network", "bind", "bind_ro", "tmpfs"])]
    pub state_fd: Option<i32>,
    /// Report failures to a monitor on this sync socket.
    #[arg(long, value_name = "FD")]
    pub sync_fd: Option<i32>,
    /// Root directory of the container (must contain /usr).
    #[arg(short = 'D', long, value_name = "PATH")]
    pub directory: Option<String>,
    /// Mount the root read-only.
    #[arg(long)]
    pub read_only: bool,
    /// The container has its own network namespace (keeps /proc/sys/net writable).
    #[arg(long)]
    pub private_network: bool,
    /// Bind mount SRC (host) on DST (container), OPTS rbind|norbind.
    #[arg(long, value_name = "SRC[:DST[:OPTS]]")]
    pub bind: Vec<String>,
    /// Same, read-only (submounts too).
    #[arg(long, value_name = "SRC[:DST[:OPTS]]")]
    pub bind_ro: Vec<String>,
    /// Mount a tmpfs on PATH with kernel options OPTS.
    #[arg(long, value_name = "PATH[:OPTS]")]
    pub tmpfs: Vec<String>,
    /// The next program: another stage or the payload.
    #[arg(last = true, value_name = "PROGRAM")]
    pub rest: Vec<String>,
}

impl Args {
    /// The plan these flags describe (`m`: the matches they came from, for mount order).
    pub fn to_plan(&self, m: &clap::ArgMatches) -> Result<MountPlan> {
        let dir = self
            .directory
            .as_deref()
            .ok_or_else(|| Error::setup("-D/--directory is required".into()))?;
        Ok(MountPlan {
            root: check_root(dir)?,
            read_only: self.read_only,
            private_network: self.private_network,
            ops: ops_from_matches(m)?,
        })
    }
}

/// The user mount options (`--bind`, `--bind-ro`, `--tmpfs`), parsed, in command-line order
/// across the three (clap reports where each value stood).
pub fn ops_from_matches(m: &clap::ArgMatches) -> Result<Vec<MountOp>> {
    let mut found: Vec<(usize, &str, String)> = Vec::new();
    for id in ["bind", "bind_ro", "tmpfs"] {
        if let (Some(idx), Some(vals)) = (m.indices_of(id), m.get_many::<String>(id)) {
            found.extend(idx.zip(vals).map(|(i, v)| (i, id, v.clone())));
        }
    }
    found.sort_by_key(|(i, _, _)| *i);
    found
        .into_iter()
        .map(|(_, id, v)| match id {
            "tmpfs" => parse_tmpfs(&v),
            _ => parse_bind(&v, id == "bind_ro"),
        })
        .collect()
}

/// Resolve and check a root directory as nspawn does: it must exist, be a directory holding
/// /usr, and not be the host's root.
pub fn check_root(dir: &str) -> Result<PathBuf> {
    let p = std::fs::canonicalize(dir)
        .map_err(|e| Error::invalid("--directory", dir, &ns_core::error::io_desc(&e)))?;
    if p == Path::new("/") {
        return Err(Error::invalid(
            "--directory",
            dir,
            "spawning a container on the root directory is not supported (use --ephemeral)",
        ));
    }
    if !p.join("usr").is_dir() {
        return Err(Error::invalid(
            "--directory",
            dir,
            "does not look like an OS tree (/usr/ directory is missing)",
        ));
    }
    Ok(p)
}

/// Split on unescaped `:`; `\:` is a literal colon.
fn split_colons(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&':') => {
                out.last_mut().unwrap().push(':');
                chars.next();
            }
            ':' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

/// `--bind`/`--bind-ro`: SRC[:DST[:OPTS]] as nspawn reads it. SRC is made absolute against
/// the current directory; DST must be absolute; OPTS is rbind (default) or norbind.
pub fn parse_bind(v: &str, read_only: bool) -> Result<MountOp> {
    let opt = if read_only { "--bind-ro" } else { "--bind" };
    let parts = split_colons(v);
    if parts.len() > 3 {
        return Err(Error::invalid(opt, v, "too many colon-separated fields"));
    }
    let src = &parts[0];
    if src.is_empty() || src.starts_with('+') {
        return Err(Error::invalid(
            opt,
            v,
            "temporary and image-relative sources are not supported yet",
        ));
    }
    let source = std::path::absolute(src).map_err(|e| Error::invalid(opt, v, &e.to_string()))?;
    let dest = match parts.get(1) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => source.clone(),
    };
    if !dest.is_absolute() {
        return Err(Error::invalid(
            opt,
            v,
            "destination is not an absolute path",
        ));
    }
    let recursive = match parts.get(2).map(String::as_str) {
        None | Some("") | Some("rbind") => true,
        Some("norbind") => false,
        Some("idmap") | Some("rootidmap") | Some("noidmap") => {
            return Err(Error::invalid(
                opt,
                v,
                "idmap options need user namespaces, not supported yet",
            ))
        }
        Some(o) => {
            return Err(Error::invalid(
                opt,
                v,
                &format!("invalid bind mount option: {o}"),
            ))
        }
    };
    Ok(MountOp::Bind {
        source,
        dest,
        read_only,
        recursive,
    })
}

/// `--tmpfs=PATH[:OPTS]`; without OPTS nspawn's default `mode=0755`.
pub fn parse_tmpfs(v: &str) -> Result<MountOp> {
    let (path, opts) = match v.split_once(':') {
        Some((p, o)) => (p, o.to_string()),
        None => (v, "mode=0755".to_string()),
    };
    if !path.starts_with('/') {
        return Err(Error::invalid("--tmpfs", v, "path is not absolute"));
    }
    Ok(MountOp::Tmpfs {
        dest: PathBuf::from(path),
        options: opts,
    })
}

fn escape(p: &Path) -> String {
    p.to_string_lossy().replace(':', "\\:")
}

/// The flags that reproduce `plan` (for `ns-run --print-chain`).
pub fn plan_to_flags(plan: &MountPlan) -> Vec<String> {
    let mut out = vec![format!("--directory={}", plan.root.display())];
    if plan.read_only {
        out.push("--read-only".into());
    }
    if plan.private_network {
        out.push("--private-network".into());
    }
    for op in &plan.ops {
        out.push(match op {
            MountOp::Bind {
                source,
                dest,
                read_only,
                recursive,
            } => format!(
                "--bind{}={}:{}:{}",
                if *read_only { "-ro" } else { "" },
                escape(source),
                escape(dest),
                if *recursive { "rbind" } else { "norbind" }
            ),
            MountOp::Tmpfs { dest, options } => format!("--tmpfs={}:{options}", dest.display()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_syntax_matches_nspawn() {
        assert_eq!(
            parse_bind("/a", false).unwrap(),
            MountOp::Bind {
                source: "/a".into(),
                dest: "/a".into(),
                read_only: false,
                recursive: true
            }
        );
        assert_eq!(
            parse_bind("/a\\:b:/c:norbind", true).unwrap(),
            MountOp::Bind {
                source: "/a:b".into(),
                dest: "/c".into(),
                read_only: true,
                recursive: false
            }
        );
        let e = parse_bind("/a:relative", false).unwrap_err();
        assert_eq!(
            e.msg,
            "--bind=/a:relative: destination is not an absolute path"
        );
        let e = parse_bind("/a:/b:bogus", true).unwrap_err();
        assert_eq!(
            e.msg,
            "--bind-ro=/a:/b:bogus: invalid bind mount option: bogus"
        );
        assert!(parse_bind("/a:/b:rbind:extra", false).is_err());
    }

    #[test]
    fn tmpfs_syntax() {
        assert_eq!(
            parse_tmpfs("/x").unwrap(),
            MountOp::Tmpfs {
                dest: "/x".into(),
                options: "mode=0755".into()
            }
        );
        assert!(parse_tmpfs("rel").is_err());
    }

    fn ops_of(argv: &[String]) -> Vec<MountOp> {
        use clap::CommandFactory;
        ops_from_matches(&Args::command().try_get_matches_from(argv).unwrap()).unwrap()
    }

    #[test]
    fn ops_keep_command_line_order_and_round_trip() {
        let argv: Vec<String> = [
            "ns-mount",
            "--tmpfs=/t",
            "--bind-ro",
            "/a:/b",
            "--bind=/c",
            "--",
            "--bind=/no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let ops = ops_of(&argv);
        assert_eq!(ops.len(), 3);
        assert!(matches!(ops[0], MountOp::Tmpfs { .. }));
        assert!(matches!(
            ops[1],
            MountOp::Bind {
                read_only: true,
                ..
            }
        ));
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
        assert!(check_root("/")
            .unwrap_err()
            .msg
            .contains("root directory is not supported"));
        assert!(check_root("/nonexistent/dir")
            .unwrap_err()
            .msg
            .contains("No such file"));
        assert!(check_root("/etc")
            .unwrap_err()
            .msg
            .contains("/usr/ directory is missing"));
    }
}
