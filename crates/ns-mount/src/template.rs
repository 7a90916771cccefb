//! `--template=DIR`: create a missing root directory as a copy of a template tree
//! (directories, files, symlinks, device nodes, fifos; modes, owners and times kept). A copy
//! that fails half-way is removed: bad input leaves nothing behind.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::sys::stat::{Mode, SFlag};
use ns_core::{Context, Error, Result};

/// Copy `template` to `dir`, which must not exist. Returns whether a copy was made (false
/// when `dir` already exists: nspawn then ignores the template).
pub fn instantiate(template: &Path, dir: &Path) -> Result<bool> {
    if dir.symlink_metadata().is_ok() {
        return Ok(false);
    }
    crate::check_root(
        &template.to_string_lossy(),
        ns_core::state::RootMode::Directory,
        true,
    )
    .map_err(|e| Error::setup(e.msg.replacen("--directory", "--template", 1)))?;
    // Copy beside `dir` and rename when complete, so that a copy cut short (even by SIGKILL)
    // is never taken for the root directory by the next start.
    let name = dir.file_name().ok_or_else(|| {
        Error::invalid("--directory", &dir.to_string_lossy(), "names no directory")
    })?;
    let tmp = |pid: &str| dir.with_file_name(format!(".#{}.ns-run-{pid}", name.to_string_lossy()));
    sweep_dead_copies(dir, &name.to_string_lossy());
    let partial = tmp(&std::process::id().to_string());
    let r = copy_tree(template, &partial).and_then(|()| {
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &partial,
            nix::fcntl::AT_FDCWD,
            dir,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .ctx(|| format!("cannot rename the copy of --template to {}", dir.display()))
    });
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    r.map(|()| true)
}

/// Remove copies of a template into `dir` left by ns-runs that were killed (named by pid).
fn sweep_dead_copies(dir: &Path, name: &str) {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let prefix = format!(".#{name}.ns-run-");
    for p in ns_core::paths::of_dead_monitors(parent.unwrap_or(Path::new(".")), &prefix) {
        let _ = std::fs::remove_dir_all(p);
    }
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let md = src
        .symlink_metadata()
        .ctx(|| format!("--template: cannot stat {}", src.display()))?;
    let ft = md.file_type();
    let what = || {
        format!(
            "--template: cannot copy {} to {}",
            src.display(),
            dst.display()
        )
    };
    if ft.is_dir() {
        std::fs::create_dir(dst).ctx(what)?;
        for e in std::fs::read_dir(src).ctx(what)? {
            let e = e.ctx(what)?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src).ctx(what)?, dst).ctx(what)?;
    } else if ft.is_file() {
        std::fs::copy(src, dst).ctx(what)?;
    } else {
        let kind = if ft.is_char_device() {
            SFlag::S_IFCHR
        } else if ft.is_block_device() {
            SFlag::S_IFBLK
        } else if ft.is_fifo() {
            SFlag::S_IFIFO
        } else {
            return Ok(()); // sockets are not copied
        };
        nix::sys::stat::mknod(dst, kind, Mode::empty(), md.rdev()).ctx(what)?;
    }
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        dst,
        Some(nix::unistd::Uid::from_raw(md.uid())),
        Some(nix::unistd::Gid::from_raw(md.gid())),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ctx(what)?;
    if !ft.is_symlink() {
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(md.mode() & 0o7777))
            .ctx(what)?;
    }
    let t = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        dst,
        &t(md.atime(), md.atime_nsec()),
        &t(md.mtime(), md.mtime_nsec()),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .ctx(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_a_tree_and_refuses_a_non_os_template() {
        let base = std::env::temp_dir().join(format!("ns-template-{}", std::process::id()));
        let t = base.join("t");
        std::fs::create_dir_all(t.join("usr/bin")).unwrap();
        std::fs::write(t.join("usr/bin/x"), "hi").unwrap();
        std::fs::set_permissions(t.join("usr/bin/x"), std::fs::Permissions::from_mode(0o751))
            .unwrap();
        std::os::unix::fs::symlink("usr/bin", t.join("bin")).unwrap();
        let d = base.join("d");
        assert!(instantiate(&t, &d).unwrap());
        assert_eq!(std::fs::read_to_string(d.join("bin/x")).unwrap(), "hi");
        assert_eq!(
            d.join("usr/bin/x").metadata().unwrap().mode() & 0o777,
            0o751
        );
        assert!(
            !instantiate(&t, &d).unwrap(),
            "an existing directory is kept"
        );
        let e = instantiate(&base.join("nope"), &base.join("d2")).unwrap_err();
        assert!(e.msg.starts_with("--template="), "{}", e.msg);
        assert!(!base.join("d2").exists());
        // A copy cut short by a killed run (its pid is gone) is swept, never taken as done.
        let stale = base.join(format!(".#d3.ns-run-{}", i32::MAX));
        std::fs::create_dir(&stale).unwrap();
        assert!(instantiate(&t, &base.join("d3")).unwrap());
        assert!(!stale.exists());
        let left: Vec<_> = std::fs::read_dir(&base)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".#"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
