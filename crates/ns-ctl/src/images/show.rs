//! list-images, image-status, show-image.

use std::os::fd::AsFd;

use ns_core::Result;
use serde_json::json;

use super::progress::bytes;
use super::{discover, find, Image, Kind};

fn ro(i: &Image) -> &'static str {
    if i.read_only {
        "yes"
    } else {
        "no"
    }
}

fn usage_text(u: Option<u64>) -> String {
    u.map_or("-".into(), bytes)
}

/// `list-images [-a] [-o json]`: NAME TYPE RO USAGE MODIFIED, as machinectl's columns.
pub fn list(json: bool, all: bool) -> Result<i32> {
    let imgs = discover(all);
    if json {
        let v: Vec<_> = imgs
            .iter()
            .map(|i| {
                json!({"name": i.name, "type": i.kind.as_str(), "ro": i.read_only,
                       "usage": i.usage, "modified": i.mtime, "path": i.path()})
            })
            .collect();
        ns_core::write_stdout(format_args!("{}\n", serde_json::Value::Array(v)));
        return Ok(0);
    }
    if imgs.is_empty() {
        ns_core::write_stdout(format_args!("No images.\n"));
        return Ok(0);
    }
    let rows: Vec<[String; 5]> = imgs
        .iter()
        .map(|i| {
            [
                i.name.clone(),
                i.kind.as_str().into(),
                ro(i).into(),
                usage_text(i.usage),
                ns_core::format_utc(i.mtime),
            ]
        })
        .collect();
    let head = ["NAME", "TYPE", "RO", "USAGE", "MODIFIED"].map(String::from);
    let w: Vec<usize> = (0..5)
        .map(|c| {
            rows.iter()
                .chain([&head])
                .map(|r| r[c].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in std::iter::once(&head).chain(&rows) {
        let line: Vec<String> = (0..5).map(|c| format!("{:<1$}", r[c], w[c])).collect();
        out.push_str(line.join(" ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!("\n{} images listed.\n", rows.len()));
    ns_core::write_stdout(format_args!("{out}"));
    Ok(0)
}

/// Bytes on disk of a tree: every inode once, on its file system only, fd-relative.
fn tree_usage(i: &Image) -> Option<u64> {
    use nix::fcntl::AtFlags;
    use ns_core::walk;
    let top = super::open_dir(&i.path()).ok()?;
    let dev = nix::sys::stat::fstat(&top).ok()?.st_dev;
    let _headroom = walk::FdHeadroom::raise();
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![(walk::names(top.as_fd()).ok()?, top)];
    while let Some((left, fd)) = stack.last_mut() {
        let Some(n) = left.pop() else {
            stack.pop();
            continue;
        };
        let Ok(st) =
            nix::sys::stat::fstatat(fd.as_fd(), n.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        else {
            continue;
        };
        if st.st_nlink > 1 && !seen.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        total += st.st_blocks as u64 * 512;
        if walk::is_dir(&st) && st.st_dev == dev {
            let sub = walk::open_dir_at(fd.as_fd(), &n).ok();
            if let Some((names, sub)) = sub.and_then(|s| Some((walk::names(s.as_fd()).ok()?, s))) {
                if stack.len() < walk::MAX_DEPTH {
                    stack.push((names, sub));
                }
            }
        }
    }
    Some(total)
}

/// What image-status shows of a tree's guest: its hostname and os-release's PRETTY_NAME,
/// read inside it (openat2 RESOLVE_IN_ROOT).
fn guest(i: &Image) -> (Option<String>, Option<String>) {
    if !i.kind.is_tree() {
        return (None, None);
    }
    let root = i.path();
    let read = |p: &str| {
        ns_core::paths::read_in_root(&root, p, 64 << 10)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let host = read("etc/hostname")
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    let os = read("etc/os-release")
        .or_else(|| read("usr/lib/os-release"))
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches(['"', '\'']).to_string())
        });
    (host, os)
}

/// `image-status NAME... [-o json]`.
pub fn status(names: &[String], json: bool) -> Result<i32> {
    let imgs = names.iter().map(|n| find(n)).collect::<Result<Vec<_>>>()?;
    for mut i in imgs {
        if i.kind.is_tree() {
            i.usage = tree_usage(&i);
        }
        let (host, os) = guest(&i);
        if json {
            let v = json!({"name": i.name, "type": i.kind.as_str(), "path": i.path(), "ro": i.read_only,
                           "usage": i.usage, "modified": i.mtime, "hostname": host, "os": os});
            ns_core::write_stdout(format_args!("{v}\n"));
            continue;
        }
        let mut out = format!(
            "{}\n\t    Type: {}\n\t    Path: {}\n",
            i.name,
            i.kind.as_str(),
            i.path().display()
        );
        if let Some(h) = host {
            out.push_str(&format!("\tHostname: {h}\n"));
        }
        if let Some(o) = os {
            out.push_str(&format!("\t      OS: {o}\n"));
        }
        out.push_str(&format!(
            "\t      RO: {}\n\t   Usage: {}\n\tModified: {}\n",
            if i.read_only { "read-only" } else { "writable" },
            usage_text(i.usage),
            ns_core::format_utc(i.mtime)
        ));
        ns_core::write_stdout(format_args!("{out}"));
    }
    Ok(0)
}

/// `show-image NAME...`: machined's Image properties, key=value. A raw file's limit is its
/// size (machined's); other limits and exclusive usage need btrfs quotas: empty.
pub fn show(names: &[String]) -> Result<i32> {
    let imgs = names.iter().map(|n| find(n)).collect::<Result<Vec<_>>>()?;
    let mut out = String::new();
    for (k, i) in imgs.iter().enumerate() {
        if k > 0 {
            out.push('\n');
        }
        let num = |v: Option<u64>| v.map_or(String::new(), |n| n.to_string());
        let limit = match i.kind {
            Kind::Raw | Kind::Block => std::fs::metadata(i.path()).ok().map(|m| m.len()),
            _ => None,
        };
        let yes = if i.read_only { "yes" } else { "no" };
        out.push_str(&format!(
            "Name={}\nPath={}\nType={}\nReadOnly={yes}\nModificationTimestamp={}\nUsage={}\nUsageExclusive={}\nLimit={}\nLimitExclusive={}\n",
            i.name,
            i.path().display(),
            i.kind.as_str(),
            ns_core::format_utc(i.mtime),
            num(i.usage),
            num(i.usage),
            num(limit),
            num(limit),
        ));
    }
    ns_core::write_stdout(format_args!("{out}"));
    Ok(0)
}
