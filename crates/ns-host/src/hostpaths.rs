//! Host paths of a container with a user namespace, opened by the host (design constraint
//! 10): a stage inside the user namespace cannot enter a directory only host root may
//! (/var/lib/machines is 0700 on systemd hosts). The monitor opens each path once, without
//! following a symlink (the plan names it resolved, see ns-run's plan), and hands down only
//! what it made of it: a detached clone of the tree or bind source, an overlay assembled here,
//! each locked for the container's user namespace ([`locked`]) as a copied mount namespace
//! would be. Nothing is resolved by path again.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use ns_core::state::Source;
use ns_core::sys::{fs_mount, FsParam, MOUNT_ATTR_RDONLY};
use ns_core::{Context, Error, Result};

/// What a failure to open `path` for `what` says: the path and why (a symlink met on the
/// way was not there when ns-run resolved the path at start).
fn open_error(what: &str, path: &Path, e: Errno) -> Error {
    let why = match e {
        Errno::ELOOP | Errno::EXDEV => "a symlink is on the way (not followed)".to_string(),
        e => e.desc().to_string(),
    };
    Error::setup(format!("cannot {what} {}: {why}", path.display()))
}

/// `path` (absolute), opened O_PATH by host root without following any symlink on the way.
pub fn open_host(path: &Path, what: &str) -> Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(nix::fcntl::AT_FDCWD, path, how).map_err(|e| open_error(what, path, e))
}

/// A detached clone of the mount of what `path` names (with its submounts if `recursive`):
/// the container's tree, or a bind source.
pub fn clone_host(path: &Path, recursive: bool, what: &str) -> Result<OwnedFd> {
    let fd = open_host(path, what)?;
    ns_core::sys::open_tree_clone_fd(fd.as_fd(), recursive)
        .ctx(|| format!("cannot {what} {}", path.display()))
}

/// `/proc/self/fd/N` of an fd we hold: how overlayfs's options name a layer we opened (the
/// kernel follows the link to the open file; nothing is looked up by its path).
fn fd_name(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The mount points `names` that are missing at the top of the tree `root`, made by host
/// root (0755, as nspawn's outer child makes them) before the tree is handed down
/// read-only; each announced first (`announce`: removed after exit). A name that is there
/// in any form (a symlink too, which ns-mount follows inside the tree) is left as it is.
pub fn make_mount_points(
    root: &Path,
    names: &[&str],
    announce: &mut dyn FnMut(PathBuf) -> Result<()>,
) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let top = open_host(root, "create mount points in")?;
    for name in names {
        let nofollow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        if nix::sys::stat::fstatat(top.as_fd(), *name, nofollow).is_ok() {
            continue;
        }
        let path = root.join(name);
        announce(path.clone())?;
        let made = nix::sys::stat::mkdirat(top.as_fd(), *name, Mode::from_bits_truncate(0o755));
        if let Err(e) = made.or_else(|e| if e == Errno::EEXIST { Ok(()) } else { Err(e) }) {
            let why = e.desc();
            return Err(Error::setup(format!(
                "cannot create mount point {}: {why}",
                path.display()
            )));
        }
    }
    Ok(())
}

/// A directory layer, opened.
fn layer(s: &Source) -> Result<OwnedFd> {
    let Source::Host(p) = s else {
        return Err(Error::setup(format!(
            "overlay layer {s:?} is not on the host"
        )));
    };
    let fd = open_host(p, "use as overlay layer")?;
    let st = nix::sys::stat::fstat(fd.as_fd())
        .ctx(|| format!("cannot use as overlay layer {}", p.display()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(Error::setup(format!(
            "overlay layer {} is not a directory",
            p.display()
        )));
    }
    Ok(fd)
}

/// A random name: `<prefix><16 hex>`.
fn random_name(prefix: &str) -> PathBuf {
    let hex: String = ns_core::random_bytes::<8>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    PathBuf::from(format!("{prefix}{hex}"))
}

/// Where a temporary upper goes: a fresh `.#ns-run-overlay-…` in /var/tmp, as nspawn's
/// (overlayfs takes no upper from a detached tmpfs), its upper owned by container root
/// (`root`: its host id), removed after exit (`announce`).
fn temp_upper(
    root: Option<u32>,
    announce: &mut dyn FnMut(PathBuf) -> Result<()>,
) -> Result<OwnedFd> {
    let var_tmp = Path::new("/var/tmp");
    let vt = open_host(var_tmp, "use for a temporary overlay upper")?;
    let dir = random_name(".#ns-run-overlay-");
    announce(var_tmp.join(&dir))?;
    let what = || format!("cannot create {}", var_tmp.join(&dir).display());
    nix::sys::stat::mkdirat(vt.as_fd(), &dir, Mode::from_bits_truncate(0o700)).ctx(what)?;
    let fd = beneath(&vt, &dir).ctx(what)?;
    for (name, mode) in [("upper", 0o755), ("work", 0o700)] {
        nix::sys::stat::mkdirat(fd.as_fd(), name, Mode::from_bits_truncate(mode)).ctx(what)?;
    }
    if let Some(id) = root {
        let (uid, gid) = (
            nix::unistd::Uid::from_raw(id),
            nix::unistd::Gid::from_raw(id),
        );
        let nofollow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        nix::unistd::fchownat(fd.as_fd(), "upper", Some(uid), Some(gid), nofollow).ctx(what)?;
    }
    Ok(fd)
}

/// The directory `name` below `dir`, O_PATH, no symlink followed.
fn beneath(dir: &OwnedFd, name: &Path) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    nix::fcntl::openat2(dir.as_fd(), name, how)
}

/// The upper directory and its work directory (both open). A host upper gets its work
/// directory beside it, `.#<name><16 hex>` as nspawn names it, announced first (the caller
/// removes it after exit); a temporary one is made by [`temp_upper`].
fn upper_and_work(
    upper: &Source,
    root: Option<u32>,
    announce: &mut dyn FnMut(PathBuf) -> Result<()>,
) -> Result<(OwnedFd, OwnedFd)> {
    let p = match upper {
        Source::Host(p) => p,
        Source::Temp => {
            let dir = temp_upper(root, announce)?;
            let open = |n: &str| {
                beneath(&dir, Path::new(n)).ctx(|| "cannot open the temporary overlay upper".into())
            };
            return Ok((open("upper")?, open("work")?));
        }
        Source::Image(p) => {
            let m = format!("overlay upper +{} is not on the host", p.display());
            return Err(Error::setup(m));
        }
    };
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        let m = format!("overlay upper {} has no parent", p.display());
        return Err(Error::setup(m));
    };
    let parent_fd = open_host(parent, "use as overlay upper")?;
    let up = beneath(&parent_fd, Path::new(name))
        .map_err(|e| open_error("use as overlay upper", p, e))?;
    let work = random_name(&format!(".#{}", name.to_string_lossy()));
    let shown = parent.join(&work);
    announce(shown.clone())?;
    nix::sys::stat::mkdirat(parent_fd.as_fd(), &work, Mode::from_bits_truncate(0o700))
        .ctx(|| format!("cannot create overlay workdir {}", shown.display()))?;
    let work = beneath(&parent_fd, &work)
        .ctx(|| format!("cannot open overlay workdir {}", shown.display()))?;
    Ok((up, work))
}

/// An overlay of host layers (`lower` bottom first, as the plan lists them), mounted by host
/// root as a detached mount, as nspawn's outer child mounts it. `root`: container root's
/// host id (owner of a temporary upper). `announce`: a work directory about to be created
/// on the host. `dest` names it in an error (with its layers, as the option gives them).
pub fn overlay(
    lower: &[Source],
    upper: &Source,
    dest: &Path,
    read_only: bool,
    root: Option<u32>,
    announce: &mut dyn FnMut(PathBuf) -> Result<()>,
) -> Result<OwnedFd> {
    // overlayfs lists lowers top first; ours are bottom first.
    let mut tops = lower.iter().rev().map(layer).collect::<Result<Vec<_>>>()?;
    let mut upper_work = Vec::new();
    if read_only {
        tops.insert(0, layer(upper)?);
    } else {
        let (up, work) = upper_and_work(upper, root, announce)?;
        upper_work = vec![up, work];
    }
    let lowerdir = tops.iter().map(fd_name).collect::<Vec<_>>().join(":");
    let names: Vec<String> = upper_work.iter().map(fd_name).collect();
    let mut params = vec![FsParam::Str("lowerdir", &lowerdir)];
    if let [up, work] = names.as_slice() {
        params.extend([FsParam::Str("upperdir", up), FsParam::Str("workdir", work)]);
    }
    // The layers' fds (`tops`, `upper_work`) live until it is made.
    let attrs = if read_only { MOUNT_ATTR_RDONLY } else { 0 };
    fs_mount(c"overlay", &params, attrs).map_err(|e| {
        let layers: Vec<String> = lower.iter().chain([upper]).map(shown).collect();
        let (layers, dest) = (layers.join(":"), dest.display());
        let ro = if read_only { "-ro" } else { "" };
        Error::setup(format!("--overlay{ro}={layers}:{dest}: {}", e.msg))
    })
}

/// A layer as the option names it.
fn shown(s: &Source) -> String {
    match s {
        Source::Host(p) => p.display().to_string(),
        Source::Image(p) => format!("+{}", p.display()),
        Source::Temp => String::new(),
    }
}

/// `tree` (a detached mount made here, by host root) as the container's own mount namespace
/// would have it had it been there when that namespace was copied for its user namespace
/// `userns`: every mount locked by the kernel (a submount cannot be unmounted to show what
/// it covers; read-only, nosuid, nodev, noexec cannot be lifted), as ns-mount's binds in its
/// own namespace are and as nspawn's are; and a slave of the host's mount where that is
/// shared (systemd's default), never its peer. A clone made by host root and attached as it
/// is carries none of these locks (container root could undo them all) and is a peer of a
/// shared source: every mount made below it in the container propagated to the host.
///
/// A short-lived child stages `tree` in a private copy of our mount namespace, joins
/// `userns` and copies that namespace again (the kernel locks every mount of a copy made
/// for a less privileged user namespace), and sends back a clone of the locked tree.
pub fn locked(tree: OwnedFd, userns: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd> {
    let mut all = locked_all(vec![tree], userns)?;
    all.pop()
        .ok_or_else(|| Error::setup("cannot lock a mount for the container".into()))
}

/// [`locked`] for several trees at once, in order: one child and two copies of the mount
/// namespace for all of them (each child costs a fork and two namespace copies).
pub fn locked_all(
    trees: Vec<OwnedFd>,
    userns: std::os::fd::BorrowedFd<'_>,
) -> Result<Vec<OwnedFd>> {
    use ns_core::sync::{Msg, SyncSocket};
    let (ours, theirs) = SyncSocket::pair()?;
    let n = trees.len();
    match ns_core::sys::fork().ctx(|| "cannot fork".into())? {
        ns_core::sys::Forked::Child => {
            drop(ours);
            let sent = match lock_in_child(trees, userns) {
                Ok(ts) => ts
                    .iter()
                    .try_for_each(|t| theirs.send_fd(&Msg::Mount, t.as_fd())),
                Err(e) => theirs.send(&Msg::Failed {
                    stage: "monitor".into(),
                    code: ns_core::error::EXIT_SETUP,
                    message: e.msg,
                }),
            };
            std::process::exit(i32::from(sent.is_err()))
        }
        ns_core::sys::Forked::Parent(child) => {
            drop((trees, theirs));
            let got = (0..n)
                .map(
                    |_| match ours.recv_any(nix::sys::socket::MsgFlags::empty())? {
                        Some((Msg::Mount, Some(fd))) => Ok(fd),
                        Some((Msg::Failed { message, .. }, _)) => Err(Error::setup(message)),
                        _ => Err(Error::setup("cannot lock a mount for the container".into())),
                    },
                )
                .collect();
            let _ = nix::sys::wait::waitpid(child, None);
            got
        }
    }
}

/// [`locked_all`]'s child: stage each tree as `mN` on a tmpfs over `/` of a private copy of
/// our mount namespace (cwd: that tmpfs), copy the namespace for `userns`, clone each `mN`
/// there.
fn lock_in_child(trees: Vec<OwnedFd>, userns: std::os::fd::BorrowedFd<'_>) -> Result<Vec<OwnedFd>> {
    use nix::sched::{setns, unshare, CloneFlags};
    let what = || "cannot lock a mount for the container".to_string();
    unshare(CloneFlags::CLONE_NEWNS).ctx(what)?;
    let private = nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE;
    nix::mount::mount(None::<&str>, "/", None::<&str>, private, None::<&str>).ctx(what)?;
    let stage = fs_mount(c"tmpfs", &[FsParam::Str("mode", "0755")], 0)?;
    ns_core::sys::move_mount_to(stage.as_fd(), open_host(Path::new("/"), "stage")?.as_fd())
        .ctx(what)?;
    let names: Vec<String> = (0..trees.len()).map(|i| format!("m{i}")).collect();
    for (tree, name) in trees.iter().zip(&names) {
        let st = nix::sys::stat::fstat(tree.as_fd()).ctx(what)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            nix::sys::stat::mkdirat(
                stage.as_fd(),
                name.as_str(),
                Mode::from_bits_truncate(0o755),
            )
            .ctx(what)?;
        } else {
            let kind = nix::sys::stat::SFlag::S_IFREG;
            let mode = Mode::from_bits_truncate(0o644);
            nix::sys::stat::mknodat(stage.as_fd(), name.as_str(), kind, mode, 0).ctx(what)?;
        }
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let target = nix::fcntl::openat2(stage.as_fd(), name.as_str(), how).ctx(what)?;
        ns_core::sys::move_mount_to(tree.as_fd(), target.as_fd()).ctx(what)?;
    }
    nix::unistd::fchdir(&stage).ctx(what)?;
    setns(userns, CloneFlags::CLONE_NEWUSER).ctx(what)?;
    unshare(CloneFlags::CLONE_NEWNS).ctx(what)?;
    names
        .iter()
        .map(|name| ns_core::sys::open_tree_clone(Path::new(name), true).ctx(what))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_on_the_way_is_not_followed() {
        let base = std::env::temp_dir().join(format!("ns-host-hostpaths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("real/dir")).unwrap();
        std::os::unix::fs::symlink("real", base.join("link")).unwrap();
        assert!(open_host(&base.join("real/dir"), "bind").is_ok());
        let e = open_host(&base.join("link/dir"), "bind").unwrap_err();
        assert_eq!(
            e.msg,
            format!(
                "cannot bind {}: a symlink is on the way (not followed)",
                base.join("link/dir").display()
            )
        );
        let e = open_host(&base.join("none"), "bind").unwrap_err();
        assert!(
            e.msg.ends_with("none: No such file or directory"),
            "{}",
            e.msg
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
