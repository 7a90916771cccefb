//! What the OOM killer did to a container, said in one line once it is over: whether it took
//! the payload or another process of the container, and which one when the kernel says it.
//!
//! The cgroup counters ([`crate::resources::oom_kills`]) count kills without naming them.
//! The kernel names each victim once, in its log: a record
//! `oom-kill:constraint=…,cpuset=NAME,…,oom_memcg=PATH,task_memcg=PATH,task=COMM,pid=PID,uid=UID`
//! (pid as the host sees it). It is read from /dev/kmsg only after an OOM kill (nothing at
//! start), and trusted only when it is plainly about this container:
//! - the kernel wrote it, not a process (any writer of /dev/kmsg may add lines, but not
//!   with the kernel's facility);
//! - its `task_memcg=` is the container's memory cgroup or below it (the victim was ours);
//! - `,task_memcg=` occurs exactly once: cgroup names (a cpuset name, a nested limit's path)
//!   are chosen by containers, and one of another container that spelt a fake
//!   `,task_memcg=<ours>,task=…` would add a second occurrence to the kernel's own;
//! - of those records, the last as many as the counters count (older ones may be of an
//!   earlier container that had the same cgroup path).
//!
//! The kernel rate-limits the record (10 per 5 s host-wide) and /dev/kmsg needs CAP_SYSLOG
//! (absent inside nspawn's and our containers): without a record the line says only whether
//! the payload was the victim, which the payload's own status tells.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::cgroups::Cgroup;
use ns_core::state::Property;

/// A process the OOM killer killed, as the kernel named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    /// Its pid on the host.
    pub pid: i32,
    /// Its command name (escaped by the kernel, printable only).
    pub name: String,
}

/// How the payload ended, for [`notice`].
#[derive(Debug, Clone, Copy)]
pub struct PayloadEnd {
    /// It died of SIGKILL (the OOM killer's signal; with a stub init, the stub's 137).
    pub killed: bool,
    /// The monitor was asked to stop the container (it may have sent the SIGKILL itself).
    pub requested: bool,
    /// PID 1's host pid, when PID 1 is the payload.
    pub pid: Option<i32>,
    /// The container has a memory limit ([`memory_limited`]): only then are the counters
    /// read whatever the payload's end (else, as before, only when it was killed: nothing
    /// more is read at the exit of a plain container).
    pub limited: bool,
}

/// The properties set a memory limit, whose excess the OOM killer answers.
pub fn memory_limited(properties: &[Property]) -> bool {
    properties.iter().any(|p| match p {
        Property::MemoryMax(l) | Property::MemorySwapMax(l) => l.is_some(),
        Property::Unified(key, _) => key.starts_with("memory."),
        _ => false,
    })
}

/// The line to print after the container ended, if the OOM killer killed any of its
/// processes.
pub fn notice(cgroups: &[Cgroup], end: PayloadEnd) -> Option<String> {
    if !(end.killed || end.limited) || (end.killed && end.requested) {
        return None;
    }
    let kills = crate::resources::oom_kills(cgroups);
    if kills == 0 {
        return None;
    }
    let named = victims(cgroups, kills);
    // A payload that exited was not killed; one that died of SIGKILL was, unless the kernel
    // named every victim and PID 1 (the payload) is not among them.
    let payload = end.killed
        && match end.pid {
            Some(p) if named.len() as u64 == kills => named.iter().any(|v| v.pid == p),
            _ => true,
        };
    Some(say(payload, kills, &named, end.pid))
}

/// The notice's words.
fn say(payload: bool, kills: u64, named: &[Victim], pid1: Option<i32>) -> String {
    const WHY: &str = "by the OOM killer (its memory limit)";
    let others: Vec<String> = named
        .iter()
        .filter(|v| Some(v.pid) != pid1 || !payload)
        .map(|v| format!("host pid {} ({})", v.pid, v.name))
        .collect();
    let list = |v: &[String]| match v.is_empty() {
        true => String::new(),
        false => format!(": {}", v.join(", ")),
    };
    match (payload, kills) {
        (true, 1) => format!("the payload was killed {WHY}"),
        (true, n) => format!(
            "the payload was killed {WHY}, and {} other process(es) of the container{}",
            n - 1,
            list(&others)
        ),
        (false, 1) => format!(
            "a process of the container (not the payload) was killed {WHY}{}",
            list(&others)
        ),
        (false, n) => format!(
            "{n} processes of the container (not the payload) were killed {WHY}{}",
            list(&others)
        ),
    }
}

/// The last `count` victims the kernel log names in the container's memory cgroups (fewer
/// or none when it does not, or cannot be read).
pub fn victims(cgroups: &[Cgroup], count: u64) -> Vec<Victim> {
    let paths = kernel_paths(cgroups);
    if paths.is_empty() {
        return Vec::new();
    }
    let mut found: Vec<Victim> = kmsg()
        .iter()
        .filter_map(|m| paths.iter().find_map(|p| parse(m, p)))
        .collect();
    let skip = found.len().saturating_sub(count as usize);
    found.drain(..skip);
    found
}

/// The container's cgroups as the kernel prints them: the path below the hierarchy's root
/// (cgroupfs mounted at its root, as on a host; inside a cgroup namespace the paths differ
/// and nothing matches).
fn kernel_paths(cgroups: &[Cgroup]) -> Vec<String> {
    let hierarchies = crate::cgroups::hierarchies();
    cgroups
        .iter()
        .filter_map(|c| {
            hierarchies
                .iter()
                .find_map(|h| c.dir.strip_prefix(&h.mountpoint).ok())
                .map(|rel| Path::new("/").join(rel).to_string_lossy().into_owned())
        })
        .collect()
}

/// The victim a kernel log message names, if it is an OOM kill record of a process in the
/// cgroup `path` or below it (see the module's rules).
fn parse(msg: &str, path: &str) -> Option<Victim> {
    let rest = msg.strip_prefix("oom-kill:")?;
    let (head, tail) = rest.split_once(",task_memcg=")?;
    if tail.contains(",task_memcg=") {
        return None;
    }
    let (left, uid) = tail.rsplit_once(",uid=")?;
    uid.parse::<u32>().ok()?;
    let (left, pid) = left.rsplit_once(",pid=")?;
    let (task_memcg, name) = left.rsplit_once(",task=")?;
    let below =
        |p: &str, dir: &str| p == dir || p.strip_prefix(dir).is_some_and(|r| r.starts_with('/'));
    // The victim is below the cgroup whose limit was hit: a record cut short by the log's
    // line limit, whose only `,task_memcg=` is one spelt in a (long) limit path, is not.
    let in_scope = match head.split_once(",oom_memcg=") {
        Some((_, limit)) => below(task_memcg, limit),
        None => head.ends_with(",global_oom"),
    };
    if !(in_scope && below(task_memcg, path)) {
        return None;
    }
    Some(Victim {
        pid: pid.parse().ok()?,
        name: name.chars().filter(|c| !c.is_control()).collect(),
    })
}

/// The kernel's own `oom-kill:` records still in its log buffer, oldest first; none when
/// /dev/kmsg cannot be read.
fn kmsg() -> Vec<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    {
        Ok(mut f) => oom_records(&mut f, MAX_RECORDS),
        Err(_) => Vec::new(),
    }
}

/// How many records [`oom_records`] reads at most: more than a full log buffer holds (at
/// least 16 bytes each), so that a writer adding records as fast as they are read cannot
/// keep the monitor reading.
const MAX_RECORDS: usize = 1 << 20;

/// The `oom-kill:` messages of the kernel among the first `limit` /dev/kmsg records `src`
/// gives (one per read). A process may write records too (anyone /dev/kmsg is open to for
/// writing, a container it is bound into): the kernel gives those a facility of its users
/// (LOG_USER when none is said), never its own (0), which is what the record's priority
/// (`PRI,SEQ,TIME,FLAGS;MESSAGE`, PRI = facility * 8 + level) tells.
fn oom_records(src: &mut impl Read, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..limit {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                let Some((prefix, msg)) = rec.split_once(';') else {
                    continue;
                };
                let pri = prefix.split(',').next().and_then(|p| p.parse::<u32>().ok());
                let msg = msg.lines().next().unwrap_or("");
                if pri.is_some_and(|p| p >> 3 == 0) && msg.starts_with("oom-kill:") {
                    out.push(msg.to_string());
                }
            }
            // Overwritten while we read: the next record follows.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "/process_api/7e7e/ns-run-box-29548";

    fn record(cpuset: &str, oom: &str, task: &str, comm: &str, pid: i32) -> String {
        format!(
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset={cpuset},\
             mems_allowed=0,oom_memcg={oom},task_memcg={task},task={comm},pid={pid},uid=0"
        )
    }

    #[test]
    fn a_record_of_ours_names_the_victim() {
        let r = record("payload", OURS, &format!("{OURS}/payload"), "tail", 29552);
        let v = parse(&r, OURS).unwrap();
        assert_eq!(
            v,
            Victim {
                pid: 29552,
                name: "tail".into()
            }
        );
        // The cgroup itself, and a global OOM (no oom_memcg).
        let r = format!(
            "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,\
             global_oom,task_memcg={OURS},task=hog,pid=7,uid=0"
        );
        assert_eq!(parse(&r, OURS).unwrap().pid, 7);
        // A command name with the field separators in it: the pid is still the kernel's.
        let r = record("p", OURS, OURS, "a,pid=9", 40);
        assert_eq!(parse(&r, OURS).unwrap().pid, 40);
    }

    #[test]
    fn records_of_others_and_forgeries_are_refused() {
        // Another container, a sibling whose name extends ours, something else.
        let other = "/process_api/7e7e/ns-run-other-1";
        assert!(parse(&record("p", other, other, "tail", 5), OURS).is_none());
        let longer = format!("{OURS}0");
        assert!(parse(&record("p", &longer, &longer, "tail", 5), OURS).is_none());
        assert!(parse("Memory cgroup out of memory: Killed process 5 (tail)", OURS).is_none());
        // Another container spelling a record of ours in a cgroup name it chose (its
        // cpuset's name, its nested limit's path): the kernel's own field makes two.
        let fake = format!("x,task_memcg={OURS},task=evil,pid=1,uid=0");
        assert!(parse(&record(&fake, other, other, "tail", 5), OURS).is_none());
        let fake_oom = format!("{other}/x,task_memcg={OURS}");
        assert!(parse(&record("p", &fake_oom, other, "tail", 5), OURS).is_none());
        // The same spelt at the end of a limit path so long that the kernel's own
        // `,task_memcg=…` went on to the next record.
        let cut = format!(
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=p,mems_allowed=0,\
             oom_memcg={other}/x,task_memcg={OURS},task=evil,pid=1,uid=0"
        );
        assert!(parse(&cut, OURS).is_none());
        let cut = format!(
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=x,oom_memcg=/process_api,\
             mems_allowed=0,oom_memcg={other}/x,task_memcg={OURS},task=evil,pid=1,uid=0"
        );
        assert!(parse(&cut, OURS).is_none());
    }

    /// /dev/kmsg as a reader sees it: one record per read, forever (a writer keeping up).
    struct Endless(u64);

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0 += 1;
            let (pri, msg) = match self.0 % 3 {
                0 => (6, record("p", OURS, OURS, "tail", 5)),
                1 => (12, record("p", OURS, OURS, "forged", 1)),
                _ => (4, "eth0: link up".to_string()),
            };
            let rec = format!("{pri},{},1000,-;{msg}\n", self.0);
            buf[..rec.len()].copy_from_slice(rec.as_bytes());
            Ok(rec.len())
        }
    }

    #[test]
    fn the_kernel_log_is_read_boundedly_and_only_the_kernel_is_believed() {
        let got = oom_records(&mut Endless(0), 30);
        assert_eq!(got.len(), 10, "{got:?}");
        assert!(got.iter().all(|m| m.contains("task=tail,")), "{got:?}");
    }

    #[test]
    fn the_notice_says_who() {
        let tail = [Victim {
            pid: 9,
            name: "tail".into(),
        }];
        assert_eq!(
            say(false, 1, &tail, Some(3)),
            "a process of the container (not the payload) was killed by the OOM killer \
             (its memory limit): host pid 9 (tail)"
        );
        assert_eq!(
            say(false, 1, &[], Some(3)),
            "a process of the container (not the payload) was killed by the OOM killer \
             (its memory limit)"
        );
        assert_eq!(
            say(true, 1, &[], None),
            "the payload was killed by the OOM killer (its memory limit)"
        );
        let both = [
            Victim {
                pid: 9,
                name: "tail".into(),
            },
            Victim {
                pid: 3,
                name: "sh".into(),
            },
        ];
        assert_eq!(
            say(true, 2, &both, Some(3)),
            "the payload was killed by the OOM killer (its memory limit), and 1 other \
             process(es) of the container: host pid 9 (tail)"
        );
    }
}
