//! The cleanup journal: paths the chain created on the host (SYNC-4) and the container's
//! cgroups, which the monitor removes once the container is gone. It is journaled under
//! /run/ns-run/cleanup before the objects exist, so that the next ns-run collects what a
//! killed monitor left.

use std::io::Write;

use serde::{Deserialize, Serialize};

use std::fs::File;
use std::path::{Path, PathBuf};

use ns_core::{Context, Error, Result};

use crate::locks::{unused_tree, CollectorLock, ImageLock};

fn cleanup_dir() -> Result<PathBuf> {
    ns_core::paths::runtime_subdir("cleanup")
}

/// Largest journal read back.
const MAX_JOURNAL: u64 = 1 << 20;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The tree whose container created it (removal waits until nobody uses the tree).
    root: PathBuf,
    path: PathBuf,
    recursive: bool,
    /// A cgroup: removed with the cgroups below it, deepest first.
    #[serde(default)]
    cgroup: bool,
    /// A level of a `-S` slice this container made (shared with others): removed after the
    /// cgroups, only while empty.
    #[serde(default)]
    slice: bool,
}

impl Entry {
    /// Only what a monitor creates may be removed: a cgroup (plainly below /sys/fs/cgroup,
    /// and a cgroup directory while it exists), an overlay work directory (`.#…`, the only
    /// thing removed with its content), or a mount point plainly inside the tree.
    fn plausible(&self) -> bool {
        use ns_core::paths::{is_cgroup_dir, plainly_below};
        if self.cgroup {
            return plainly_below(&self.path, Path::new("/sys/fs/cgroup"))
                && (std::fs::symlink_metadata(&self.path).is_err() || is_cgroup_dir(&self.path));
        }
        if self.recursive {
            return plainly_below(&self.path, Path::new("/"))
                && self
                    .path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".#"));
        }
        plainly_below(&self.path, &self.root)
    }
}

/// Paths to remove after the container, journaled as they are announced.
pub struct Cleanup {
    root: PathBuf,
    journal: Option<(PathBuf, File)>,
    entries: Vec<Entry>,
    /// Our journal is a dead monitor's that had our pid and still lists what could not be
    /// removed yet: left for a later collection, not removed with our entries.
    adopted: bool,
}

impl Cleanup {
    pub fn new(root: &Path) -> Cleanup {
        Cleanup {
            root: root.to_path_buf(),
            journal: None,
            entries: Vec::new(),
            adopted: false,
        }
    }

    /// SYNC-4 received: remember and journal before the stage creates it.
    pub fn add(&mut self, path: PathBuf, recursive: bool) -> Result<()> {
        self.journal(Entry {
            root: self.root.clone(),
            path,
            recursive,
            cgroup: false,
            slice: false,
        })
    }

    /// The container's own cgroup (or a level of its slice), made by the monitor.
    pub fn add_cgroup(&mut self, path: PathBuf, slice: bool) -> Result<()> {
        self.journal(Entry {
            root: self.root.clone(),
            path,
            recursive: false,
            cgroup: true,
            slice,
        })
    }

    fn journal(&mut self, e: Entry) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if !e.plausible() {
            return Err(Error::setup(format!(
                "refusing to remove {} after the container: not a path its setup creates",
                e.path.display()
            )));
        }
        if self.journal.is_none() {
            let dir = cleanup_dir()?;
            let p = dir.join(std::process::id().to_string());
            // A dead monitor's journal with our pid was collected at our start
            // (collect_stale(true)); one still there lists what was busy then: we append to
            // it and leave it to be collected after us.
            self.adopted = std::fs::symlink_metadata(&p).is_ok();
            let f = File::options()
                .append(true)
                .create_new(!self.adopted)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&p)
                .ctx(|| format!("cannot create {}", p.display()))?;
            let st = nix::sys::stat::fstat(&f).ctx(|| format!("cannot stat {}", p.display()))?;
            ns_core::paths::check_ours(&p, &st, "a file")?;
            self.journal = Some((p, f));
        }
        let (p, f) = self.journal.as_mut().expect("journal opened");
        let mut line = serde_json::to_vec(&e).expect("entry serializes");
        line.push(b'\n');
        f.write_all(&line)
            .ctx(|| format!("cannot write {}", p.display()))?;
        self.entries.push(e);
        Ok(())
    }

    /// The container is gone: remove what it created, unless another container still uses
    /// the tree (then the journal stays for a later ns-run to collect).
    pub fn run(self, lock: Option<&ImageLock>) {
        if let Some(left) = self.run_but_cgroups(lock) {
            left.remove();
        }
    }

    /// [`Cleanup::run`] but for the container's cgroups, returned to be removed once the
    /// caller has the exit status ([`CgroupsLeft::remove`]): the paths on the tree go now,
    /// under its lock, as before any exit (a start on the same tree must not meet them).
    pub fn run_but_cgroups(self, lock: Option<&ImageLock>) -> Option<CgroupsLeft> {
        let (journal, _) = self.journal?;
        let paths = self.entries.iter().any(|e| !e.cgroup);
        // Paths on a tree others still use are left to the last of them (below): the
        // journal that names them stays.
        let shared = paths && lock.is_some_and(|l| !l.sole_user());
        if !shared {
            remove_paths(&self.entries);
            if paths {
                // The last user of a shared tree also removes what the earlier ones left.
                let _ = collect_stale(false);
            }
        }
        Some(CgroupsLeft {
            keep_journal: shared || self.adopted,
            journal,
            entries: self.entries,
        })
    }
}

/// A container's cgroups after it: its alone (named for its monitor), empty of processes
/// but those a dying PID namespace is still letting go, invisible to the container's name
/// and tree. Removing them (~20 rmdirs on a v1 host, each retried while busy) need not
/// delay the caller; their journal goes with them, or stays, naming them, for the next
/// ns-run to collect if they cannot be removed (or the remover is killed).
pub struct CgroupsLeft {
    journal: PathBuf,
    entries: Vec<Entry>,
    keep_journal: bool,
}

impl CgroupsLeft {
    /// The journal becomes the remover's (`pid`, alive while it works, an ns-run): named for
    /// the monitor, dead once the caller has the status, every start would take it for a
    /// dead monitor's, and a monitor given the same pid meanwhile would adopt it, its own
    /// entries then removed with it. Kept as it is if a journal has that name already, or
    /// if it stays after the cgroups (paths on a tree still used: left to the last user,
    /// which collects it as a dead monitor's, never removed by the remover).
    pub fn hand_to(&mut self, pid: u32) {
        if self.keep_journal {
            return;
        }
        let to = self.journal.with_file_name(pid.to_string());
        let at = nix::fcntl::AT_FDCWD;
        if ns_core::sys::renameat2(at, &self.journal, at, &to, libc::RENAME_NOREPLACE).is_ok() {
            self.journal = to;
        }
    }

    pub fn remove(self) {
        let gone = remove_cgroups(&self.entries);
        if gone && !self.keep_journal {
            let _ = std::fs::remove_file(&self.journal);
        }
    }
}

/// Remove the cgroups `entries` name; false when one could not be removed (still busy), so
/// that the journal stays for the next ns-run.
fn remove_cgroups(entries: &[Entry]) -> bool {
    let gone = entries
        .iter()
        .filter(|e| e.cgroup && !e.slice)
        .map(|e| crate::cgroups::remove(&e.path)) // every one tried
        .filter(|gone| !gone)
        .count()
        == 0;
    // Slice levels, deepest first; one still holding another container's cgroup stays.
    for e in entries.iter().rev().filter(|e| e.slice) {
        let _ = std::fs::remove_dir(&e.path);
    }
    gone
}

/// Remove the paths `entries` name (not cgroups), last first.
fn remove_paths(entries: &[Entry]) {
    for e in entries.iter().rev().filter(|e| !e.cgroup) {
        crate::mountpoints::remove_no_symlinks(&e.path, e.recursive);
    }
}

/// Remove what dead monitors left behind (killed before they could clean up): what their
/// cleanup journals list. (Their notify sockets go when the next socket is bound.) A journal
/// that is not ours (another owner, writable by others, a symlink, not a regular file) is
/// left alone, and of the entries of ours only what a monitor creates is removed.
/// `at_start`: a monitor that has no journal yet; one named with its pid is a dead
/// monitor's (of_dead_monitors takes it for a live one: the pid is ours, and ns-run).
pub fn collect_stale(at_start: bool) -> Result<()> {
    let dir = cleanup_dir()?;
    let mut journals = ns_core::paths::of_dead_monitors(&dir, "");
    let own = dir.join(std::process::id().to_string());
    if at_start && std::fs::symlink_metadata(&own).is_ok() {
        journals.push(own);
    }
    // A disk image's tree (`-i`) was in the dead monitor's own mount namespace, gone with
    // it: nothing of it can be reached from here, and a path naming it here would name
    // another container's image.
    let images = dir.parent().map(|run| run.join("images"));
    // Taken at the first journal that names a tree, held to the end.
    let mut collector: Option<CollectorLock> = None;
    for journal in journals {
        let Ok(text) = ns_core::paths::read_ours(&journal, MAX_JOURNAL) else {
            continue;
        };
        let entries: Vec<Entry> = String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| serde_json::from_str::<Entry>(l).ok())
            .filter(Entry::plausible)
            .filter(|e| e.cgroup || images.as_ref().is_none_or(|i| !e.root.starts_with(i)))
            .collect();
        // The cgroups were the dead container's alone; its paths wait until nobody runs on
        // their tree.
        let gone = remove_cgroups(&entries);
        // Their trees, locked while the paths go (a journal names one).
        let mut roots: Vec<&Path> = Vec::new();
        for e in entries.iter().filter(|e| !e.cgroup) {
            if !roots.contains(&e.root.as_path()) {
                roots.push(&e.root);
            }
        }
        if !roots.is_empty() && collector.is_none() {
            collector = Some(CollectorLock::acquire()?);
        }
        let Some(_locks) = roots
            .into_iter()
            .map(|root| unused_tree(collector.as_ref()?, root))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        remove_paths(&entries);
        if gone {
            let _ = std::fs::remove_file(&journal);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, recursive: bool, cgroup: bool) -> Entry {
        Entry {
            root: PathBuf::from("/srv/tree"),
            path: PathBuf::from(path),
            recursive,
            cgroup,
            slice: false,
        }
    }

    #[test]
    fn only_what_a_monitor_creates_is_plausible() {
        assert!(entry("/srv/tree/mnt", false, false).plausible());
        assert!(!entry("/srv/other", false, false).plausible());
        assert!(!entry("/srv/tree/../etc", false, false).plausible());
        assert!(!entry("/srv/tree", false, false).plausible());
        assert!(entry("/srv/.#upper0123456789abcdef", true, false).plausible());
        assert!(!entry("/srv/tree/upper", true, false).plausible());
        assert!(!entry("/home", true, false).plausible());
        // A cgroup that no longer exists is plausible (nothing to do); a path outside the
        // cgroup file system never is.
        assert!(entry("/sys/fs/cgroup/ns-run-gone-4242424242", false, true).plausible());
        assert!(!entry("/tmp/x", false, true).plausible());
        assert!(!entry("/sys/fs/cgroup/../../tmp", false, true).plausible());
    }
}
