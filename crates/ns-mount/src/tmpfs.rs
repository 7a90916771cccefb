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
