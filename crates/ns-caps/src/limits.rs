//! Process attributes the payload inherits, as nspawn sets them: `--rlimit=`,
//! `--oom-score-adjust=`, `--cpu-affinity=` and `--personality=`. Parsed (with one-line errors
//! naming the option and value) when the plan is made, applied by ns-caps before it gives up
//! the capabilities that raising a hard limit or lowering the OOM score need.

use nix::errno::Errno;
use nix::sys::resource::Resource;
use ns_core::state::Rlimit;
use ns_core::{Context, Error, Result};

/// The resources, by nspawn's names (`RLIMIT_` prefix optional).
const RESOURCES: &[(&str, Resource)] = &[
    ("AS", Resource::RLIMIT_AS),
    ("CORE", Resource::RLIMIT_CORE),
    ("CPU", Resource::RLIMIT_CPU),
    ("DATA", Resource::RLIMIT_DATA),
    ("FSIZE", Resource::RLIMIT_FSIZE),
    ("LOCKS", Resource::RLIMIT_LOCKS),
    ("MEMLOCK", Resource::RLIMIT_MEMLOCK),
    ("MSGQUEUE", Resource::RLIMIT_MSGQUEUE),
    ("NICE", Resource::RLIMIT_NICE),
    ("NOFILE", Resource::RLIMIT_NOFILE),
    ("NPROC", Resource::RLIMIT_NPROC),
    ("RSS", Resource::RLIMIT_RSS),
    ("RTPRIO", Resource::RLIMIT_RTPRIO),
    ("RTTIME", Resource::RLIMIT_RTTIME),
    ("SIGPENDING", Resource::RLIMIT_SIGPENDING),
    ("STACK", Resource::RLIMIT_STACK),
];

/// `NAME=VALUE` or `NAME=SOFT:HARD`; a value is a number or `infinity`.
pub fn parse_rlimit(v: &str) -> Result<Rlimit> {
    let bad = |why: &str| Error::invalid("--rlimit", v, why);
    let (name, value) = v.split_once('=').ok_or_else(|| bad("not NAME=LIMIT"))?;
    let name = name.strip_prefix("RLIMIT_").unwrap_or(name);
    if !RESOURCES.iter().any(|(n, _)| *n == name) {
        return Err(bad("unknown resource"));
    }
    let number = |s: &str| match s {
        "infinity" => Ok(None),
        _ => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| bad("a limit is a number or infinity")),
    };
    let (soft, hard) = match value.split_once(':') {
        Some((s, h)) => (number(s)?, number(h)?),
        None => (number(value)?, number(value)?),
    };
    if soft.unwrap_or(u64::MAX) > hard.unwrap_or(u64::MAX) {
        return Err(bad("the soft limit is above the hard limit"));
    }
    Ok(Rlimit {
        resource: name.to_string(),
        soft,
        hard,
    })
}

/// -1000..=1000, as /proc/PID/oom_score_adj takes it.
pub fn parse_oom_score_adjust(v: &str) -> Result<i32> {
    v.parse::<i32>()
        .ok()
        .filter(|n| (-1000..=1000).contains(n))
        .ok_or_else(|| Error::invalid("--oom-score-adjust", v, "not a number from -1000 to 1000"))
}

/// A CPU list: numbers and ranges (`0-3`) separated by commas or spaces.
pub fn parse_cpu_list(v: &str) -> Result<Vec<usize>> {
    ns_core::cpus::parse(v).map_err(|why| Error::invalid("--cpu-affinity", v, &why))
}

/// The personalities this (x86-64) host can run, by nspawn's names, and their
/// personality(2) values: PER_LINUX32 (uname -m says i686) and PER_LINUX.
const PERSONALITIES: &[(&str, i32)] = &[("x86", 0x0008), ("x86-64", 0x0000)];

pub fn parse_personality(v: &str) -> Result<String> {
    if cfg!(target_arch = "x86_64") && PERSONALITIES.iter().any(|(n, _)| *n == v) {
        Ok(v.to_string())
    } else {
        Err(Error::invalid(
            "--personality",
            v,
            "unknown or unsupported personality",
        ))
    }
}

/// Apply what the plan asks for, in the calling process (inherited through exec).
pub fn apply(plan: &ns_core::state::ExecPlan) -> Result<()> {
    // A session keyring of its own: the caller's (a root login's, sudo's) would otherwise be
    // the payload's too, readable where the filter lets keyctl through (@keyring). Where
    // keyrings are off, or a filter above us refuses keyctl, there is none to share.
    match ns_core::sys::join_new_session_keyring() {
        Ok(_) | Err(Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EPERM | Errno::EACCES) => {}
        Err(e) => {
            return Err(Error::setup(format!(
                "cannot make a session keyring: {}",
                e.desc()
            )))
        }
    }
    for r in &plan.rlimits {
        let res = RESOURCES
            .iter()
            .find(|(n, _)| *n == r.resource)
            .map(|(_, res)| *res)
            .ok_or_else(|| Error::invalid("--rlimit", &r.resource, "unknown resource"))?;
        let inf = nix::sys::resource::RLIM_INFINITY;
        nix::sys::resource::setrlimit(res, r.soft.unwrap_or(inf), r.hard.unwrap_or(inf))
            .ctx(|| format!("--rlimit={}: cannot set the limit", r.resource))?;
    }
    if let Some(n) = plan.oom_score_adjust {
        std::fs::write("/proc/self/oom_score_adj", n.to_string())
            .ctx(|| format!("--oom-score-adjust={n}: cannot write /proc/self/oom_score_adj"))?;
    }
    if !plan.cpu_affinity.is_empty() {
        let mut set = nix::sched::CpuSet::new();
        for &c in &plan.cpu_affinity {
            set.set(c)
                .ctx(|| format!("--cpu-affinity: CPU {c} is out of range"))?;
        }
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).ctx(|| {
            format!(
                "--cpu-affinity={}: cannot set the CPU affinity",
                ns_core::cpus::format(&plan.cpu_affinity)
            )
        })?;
    }
    if let Some(p) = &plan.personality {
        let value = PERSONALITIES
            .iter()
            .find(|(n, _)| n == p)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                Error::invalid("--personality", p, "unknown or unsupported personality")
            })?;
        nix::sys::personality::set(nix::sys::personality::Persona::from_bits_retain(value))
            .ctx(|| format!("--personality={p}: cannot set it"))?;
    }
    Ok(())
}

/// The flags that reproduce these attributes (for `--print-chain`).
pub fn to_flags(plan: &ns_core::state::ExecPlan) -> Vec<String> {
    let limit = |v: Option<u64>| v.map_or("infinity".to_string(), |n| n.to_string());
    let mut out: Vec<String> = plan
        .rlimits
        .iter()
        .map(|r| {
            format!(
                "--rlimit={}={}:{}",
                r.resource,
                limit(r.soft),
                limit(r.hard)
            )
        })
        .collect();
    if let Some(n) = plan.oom_score_adjust {
        out.push(format!("--oom-score-adjust={n}"));
    }
    if !plan.cpu_affinity.is_empty() {
        out.push(format!(
            "--cpu-affinity={}",
            ns_core::cpus::format(&plan.cpu_affinity)
        ));
    }
    if let Some(p) = &plan.personality {
        out.push(format!("--personality={p}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimits_as_nspawn_writes_them() {
        let r = parse_rlimit("RLIMIT_NOFILE=100:200").unwrap();
        assert_eq!(
            (r.resource.as_str(), r.soft, r.hard),
            ("NOFILE", Some(100), Some(200))
        );
        let r = parse_rlimit("NPROC=50").unwrap();
        assert_eq!((r.soft, r.hard), (Some(50), Some(50)));
        let r = parse_rlimit("CORE=0:infinity").unwrap();
        assert_eq!((r.soft, r.hard), (Some(0), None));
        for bad in [
            "NOFILE",
            "BOGUS=1",
            "NOFILE=x",
            "NOFILE=200:100",
            "NOFILE=infinity:5",
        ] {
            let e = parse_rlimit(bad).unwrap_err();
            assert!(e.msg.starts_with(&format!("--rlimit={bad}: ")), "{}", e.msg);
        }
    }

    #[test]
    fn oom_cpus_and_personality() {
        assert_eq!(parse_oom_score_adjust("-1000").unwrap(), -1000);
        assert!(parse_oom_score_adjust("1001").is_err());
        assert!(parse_oom_score_adjust("x").is_err());
        assert_eq!(parse_cpu_list("0-2,5 1").unwrap(), vec![0, 1, 2, 5]);
        for bad in ["", "3-1", "a", "99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_personality("x86").unwrap(), "x86");
        assert!(parse_personality("arm").is_err());
    }
}
