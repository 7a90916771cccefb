//! Our tmpfs mounts' limits.

/// The size and inode limits of our tmpfs mounts: nspawn 252's (systemd's TMPFS_LIMITS_*), so
/// that no single one can take half the host's RAM (the kernel's default). /tmp and /dev/shm.
pub const TMPFS_NESTED: &str = "size=10%,nr_inodes=400k";
/// /run.
pub const TMPFS_RUN: &str = "size=20%,nr_inodes=800k";
/// What holds a container's writes to its root: the volatile root, volatile=state's /var and
/// the scratch tmpfs (the upper layer of -x and of --volatile=overlay).
pub const TMPFS_ROOT: &str = "size=25%,nr_inodes=1m";
/// /dev (nodes and links only).
pub const TMPFS_DEV: &str = "size=4m,nr_inodes=64k";
/// /sys/fs/cgroup of a v1 layout (mount points only).
pub const TMPFS_ALMOST_EMPTY: &str = "size=4m,nr_inodes=1k";

/// `opts` with `-L`'s SELinux context for an API file system (tmpfs, devpts): nspawn's
/// `context="LABEL"`, quoted since an MLS label may hold commas (`s0:c1,c2`).
pub fn with_context(opts: &str, label: Option<&str>) -> String {
    match label {
        Some(l) => format!("{opts},context=\"{l}\""),
        None => opts.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn context_is_quoted() {
        assert_eq!(super::with_context("mode=0755", None), "mode=0755");
        assert_eq!(
            super::with_context("mode=0755", Some("u:r:t:s0:c1,c2")),
            "mode=0755,context=\"u:r:t:s0:c1,c2\""
        );
    }
}
