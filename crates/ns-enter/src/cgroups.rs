//! ns-enter's part of the container's cgroups: joining the v1 hierarchies the monitor made
//! (cgroup2 is entered by clone3(CLONE_INTO_CGROUP) in the monitor's fork). Making them,
//! their limits and their removal are the host's (ns-host's `cgroups`).

use std::path::PathBuf;

use ns_core::{Context, Result};

/// Move ourselves into the v1 cgroups `dirs` (before the cgroup namespace is created;
/// cgroup2 was joined by forking into it). Through `tasks`, which moves only the writing
/// thread: a `cgroup.procs` write locks the whole thread group with cgroup_threadgroup_rwsem
/// and waits out an RCU grace period (3-13 ms measured here, per start). This process has
/// one thread, so the two are the same move.
pub fn join_v1(dirs: &[PathBuf]) -> Result<()> {
    for d in dirs {
        std::fs::write(d.join("tasks"), "0")
            .ctx(|| format!("cannot join cgroup {}", d.display()))?;
    }
    Ok(())
}
