//! The container's system call filter: nspawn's allow-list, on the x86-64, x86 and x32 ABIs.
//!
//! What is allowed: nspawn's groups (@default, @basic-io, @file-system, ...), a list of single
//! calls, and groups and calls that come with retained capabilities (@clock with CAP_SYS_TIME,
//! ptrace with CAP_SYS_PTRACE...), then `--system-call-filter=` (names and @groups added;
//! `~`-prefixed ones removed). A call the build host's kernel headers know but that is not
//! allowed fails with EPERM; a number they do not know (a newer call) with ENOSYS, so that
//! software falls back as it would on an older kernel. socket(AF_NETLINK, *, NETLINK_AUDIT)
//! fails with EAFNOSUPPORT, which audit userspace takes for "no audit". Beyond nspawn,
//! ioctl(TIOCSTI) fails with EPERM: no faking input on a terminal shared with the host.
//!
//! Everything that can be is computed at build time (build.rs): the numbers from the kernel
//! headers, and for each call which items of nspawn's list (`nspawn.txt`; groups from
//! systemd 252 in `groups.txt`, made by scripts/gen-syscall-groups) allow it, as a bit mask.
//! At start-up the program is assembled in one pass over those tables (no libseccomp, which
//! costs nspawn some 40 ms per start). Classic BPF: for each ABI, a binary search over the
//! ranges of numbers that share an outcome.

use std::collections::BTreeSet;

use ns_core::sys::SockFilter;
use ns_core::{Error, Result};

mod tables {
    include!(concat!(env!("OUT_DIR"), "/tables.rs"));
}

/// The calls of `@group` (expanded by build.rs), or None for an unknown group.
fn group(name: &str) -> Option<&'static [&'static str]> {
    tables::GROUPS
        .iter()
        .find(|(g, _)| *g == name)
        .map(|(_, calls)| *calls)
}

/// `--system-call-filter=` items: calls or @groups, checked.
fn calls(option: &str, list: &[String]) -> Result<BTreeSet<&'static str>> {
    let mut out = BTreeSet::new();
    for item in list {
        if item.starts_with('@') {
            out.extend(
                group(item)
                    .ok_or_else(|| Error::invalid(option, item, "no such system call group"))?,
            );
        } else {
            // nspawn silently accepts names it does not know; so do we (they match nothing).
            let leaked: &'static str = tables::X86_64
                .iter()
                .chain(tables::X86)
                .chain(tables::X32)
                .map(|(n, _, _)| *n)
                .find(|n| n == item)
                .unwrap_or("");
            if !leaked.is_empty() {
                out.insert(leaked);
            }
        }
    }
    Ok(out)
}

/// Check a `--system-call-filter=` value: space-separated, `~` in front makes it a deny list.
/// Returns (allow, deny).
pub fn parse_filter(values: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let (mut allow, mut deny) = (Vec::new(), Vec::new());
    for v in values {
        let (list, words) = match v.strip_prefix('~') {
            Some(rest) => (&mut deny, rest),
            None => (&mut allow, v.as_str()),
        };
        for w in words.split_whitespace() {
            if w.starts_with('@') && group(w).is_none() {
                return Err(Error::invalid(
                    "--system-call-filter",
                    v,
                    &format!("no such group {w}"),
                ));
            }
            list.push(w.to_string());
        }
    }
    Ok((allow, deny))
}

/// What the filter lets through: nspawn's items (a mask over `tables::NSPAWN`) plus and
/// minus the `--system-call-filter=` calls.
pub struct Decision {
    items: u128,
    everything: bool,
    allow: BTreeSet<&'static str>,
    deny: BTreeSet<&'static str>,
}

impl Decision {
    /// For a payload that retains the capabilities `retained` (a mask).
    pub fn new(retained: u64, allow: &[String], deny: &[String]) -> Result<Decision> {
        let items = tables::NSPAWN
            .iter()
            .enumerate()
            .filter(|(_, (cap, _))| {
                cap.is_empty()
                    || cap
                        .parse::<caps::Capability>()
                        .is_ok_and(|c| retained & c.bitmask() != 0)
            })
            .fold(0u128, |m, (i, _)| m | 1 << i);
        Ok(Decision {
            items,
            everything: false,
            allow: calls("--system-call-filter", allow)?,
            deny: calls("--system-call-filter", deny)?,
        })
    }

    /// For `f`, on its base: nspawn's list, nothing or everything.
    pub fn of(retained: u64, f: &ns_core::state::SyscallFilter) -> Result<Decision> {
        use ns_core::state::FilterBase;
        let mut d = Decision::new(retained, &f.allow, &f.deny)?;
        match f.base {
            FilterBase::Nspawn => {}
            FilterBase::Nothing => d.items = 0,
            FilterBase::Everything => d.everything = true,
        }
        Ok(d)
    }

    fn allows(&self, name: &str, items: u128) -> bool {
        (self.everything || items & self.items != 0 || self.allow.contains(name))
            && !self.deny.contains(name)
    }
}

/// The names `d` allows, on any ABI (for tests and diagnostics).
pub fn allowed(retained: u64, allow: &[String], deny: &[String]) -> Result<BTreeSet<&'static str>> {
    let d = Decision::new(retained, allow, deny)?;
    Ok(tables::X86_64
        .iter()
        .chain(tables::X86)
        .chain(tables::X32)
        .filter(|(n, _, m)| d.allows(n, *m))
        .map(|(n, _, _)| *n)
        .collect())
}

// Classic BPF, as the kernel runs it on struct seccomp_data { int nr; u32 arch; u64 ip;
// u64 args[6]; }.
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS: A = data[k]
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA: pc += k
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// The low half of args[0] (little-endian); args[i] is 8 * i further.
const OFF_ARG0: u32 = 16;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_BIT: u32 = 0x4000_0000;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Allow,
    Eperm,
    Enosys,
}

fn ret(o: Outcome) -> SockFilter {
    stmt(
        RET_K,
        match o {
            Outcome::Allow => RET_ALLOW,
            Outcome::Eperm => RET_ERRNO | libc::EPERM as u32,
            Outcome::Enosys => RET_ERRNO | libc::ENOSYS as u32,
        },
    )
}

/// A binary search over `ranges` (sorted starts with their outcome; each runs to the next
/// start) for the number in A. Every node: `jge mid` to a long jump over the lower half.
fn search(ranges: &[(u32, Outcome)]) -> Vec<SockFilter> {
    if ranges.len() == 1 {
        return vec![ret(ranges[0].1)];
    }
    let mid = ranges.len() / 2;
    let low = search(&ranges[..mid]);
    let high = search(&ranges[mid..]);
    let mut p = vec![jump(JGE_K, ranges[mid].0, 0, 1), stmt(JA, low.len() as u32)];
    p.extend(low);
    p.extend(high);
    p
}

/// The outcome ranges of one ABI's `table` (numbers in `lo..hi`, sorted) under `d`.
fn ranges(table: &[(&str, u32, u128)], d: &Decision, lo: u32, hi: u32) -> Vec<(u32, Outcome)> {
    let nrs = table
        .iter()
        .filter(|(_, nr, _)| (lo..hi).contains(nr))
        .map(|(n, nr, m)| {
            (
                *nr,
                if d.allows(n, *m) {
                    Outcome::Allow
                } else {
                    Outcome::Eperm
                },
            )
        });
    let mut out = vec![(0, Outcome::Enosys)];
    let mut push = |start: u32, o: Outcome| {
        if out.last().map(|l| l.1) != Some(o) {
            if out.last().map(|l| l.0) == Some(start) {
                out.pop();
            }
            if out.last().map(|l| l.1) != Some(o) {
                out.push((start, o));
            }
        }
    };
    let mut next = lo;
    for (nr, o) in nrs {
        if nr > next {
            push(next, Outcome::Enosys); // a gap: numbers nobody defined
        }
        push(nr, o);
        next = nr + 1;
    }
    push(next, Outcome::Enosys);
    out
}

/// Calls answered by their arguments, before the search: (call, [(argument, value)], errno).
/// The audit socket as nspawn; TIOCSTI (pushing input into a terminal, which would reach the
/// user's shell through a terminal passed with --console=pipe) beyond nspawn.
/// (call, the arguments it must have as (index, value), the errno it gets then).
type ArgumentRule = (&'static str, &'static [(u32, u32)], i32);

const ARGUMENT_RULES: &[ArgumentRule] = &[
    (
        "socket",
        &[
            (0, libc::AF_NETLINK as u32),
            (2, libc::NETLINK_AUDIT as u32),
        ],
        libc::EAFNOSUPPORT,
    ),
    ("ioctl", &[(1, libc::TIOCSTI as u32)], libc::EPERM),
];

/// The section of one ABI: the argument rules for its numbers, then the search on the number.
fn section(table: &[(&str, u32, u128)], d: &Decision, lo: u32, hi: u32) -> Vec<SockFilter> {
    let mut p = Vec::new();
    for (call, conds, errno) in ARGUMENT_RULES {
        let Some((_, nr, _)) = table.iter().find(|(n, _, _)| n == call) else {
            continue;
        };
        // [0] jeq nr, else past the rule; per condition: ld arg, jeq value, else to the
        // reload; ret errno; reload the number.
        let k = conds.len() as u8;
        p.push(jump(JEQ_K, *nr, 0, 2 * k + 2));
        for (i, (arg, value)) in conds.iter().enumerate() {
            p.push(stmt(LD_W_ABS, OFF_ARG0 + 8 * arg));
            p.push(jump(JEQ_K, *value, 0, 2 * k - 2 * i as u8 - 1));
        }
        p.push(stmt(RET_K, RET_ERRNO | *errno as u32));
        p.push(stmt(LD_W_ABS, OFF_NR));
    }
    p.extend(search(&ranges(table, d, lo, hi)));
    p
}

/// The whole program for `d`.
pub fn program(d: &Decision) -> Vec<SockFilter> {
    let x86_64 = section(tables::X86_64, d, 0, X32_BIT);
    let x32 = section(tables::X32, d, X32_BIT, u32::MAX);
    let x86 = section(tables::X86, d, 0, u32::MAX);
    let mut p = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(JA, 0), // patched: to the x86 check
        stmt(LD_W_ABS, OFF_NR),
        jump(JGE_K, X32_BIT, 0, 1),
        stmt(JA, x86_64.len() as u32),
    ];
    p.extend(x86_64);
    p.extend(x32);
    let to_x86 = p.len() - 3;
    p[2].k = to_x86 as u32;
    p.extend([
        jump(JEQ_K, AUDIT_ARCH_I386, 1, 0),
        ret(Outcome::Enosys), // any other ABI
        stmt(LD_W_ABS, OFF_NR),
    ]);
    p.extend(x86);
    p
}

/// Install the filter for a payload retaining `retained`.
pub fn install(retained: u64, f: &ns_core::state::SyscallFilter) -> Result<()> {
    let prog = program(&Decision::of(retained, f)?);
    ns_core::sys::seccomp_install(&prog).map_err(|e| {
        Error::setup(format!(
            "cannot install the system call filter: {}",
            e.desc()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `p` on (arch, nr, args) as the kernel would (only the opcodes we emit).
    fn run(p: &[SockFilter], arch: u32, nr: u32, args: [u32; 3]) -> u32 {
        let word = |k: u32| match k {
            OFF_NR => nr,
            OFF_ARCH => arch,
            16 => args[0],
            24 => args[1],
            32 => args[2],
            _ => panic!("load {k}"),
        };
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = p[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => a = word(i.k),
                JEQ_K => pc += if a == i.k { i.jt } else { i.jf } as usize,
                JGE_K => pc += if a >= i.k { i.jt } else { i.jf } as usize,
                JA => pc += i.k as usize,
                RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    fn nr(table: &[(&str, u32, u128)], name: &str) -> u32 {
        table.iter().find(|(n, _, _)| *n == name).unwrap().1
    }

    #[test]
    fn outcomes_on_every_abi() {
        let allowed = allowed(0, &[], &[]).unwrap();
        let p = program(&Decision::new(0, &[], &[]).unwrap());
        assert!(p.len() < 4096, "{}", p.len());
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let enosys = RET_ERRNO | libc::ENOSYS as u32;
        for (arch, table) in [
            (AUDIT_ARCH_X86_64, tables::X86_64),
            (AUDIT_ARCH_X86_64, tables::X32),
            (AUDIT_ARCH_I386, tables::X86),
        ] {
            for (name, want) in [
                ("read", RET_ALLOW),
                ("execve", RET_ALLOW),
                ("mount", RET_ALLOW),
                ("keyctl", eperm),
                ("bpf", eperm),
                ("perf_event_open", eperm),
                ("kexec_load", eperm),
                ("open_by_handle_at", eperm),
                ("ptrace", eperm),
                ("clock_settime", eperm),
            ] {
                assert_eq!(
                    run(&p, arch, nr(table, name), [0; 3]),
                    want,
                    "{arch:#x} {name}"
                );
            }
            // Every number of the ABI, and the gaps between them.
            for (name, n, _) in table {
                let want = if allowed.contains(name) {
                    RET_ALLOW
                } else {
                    eperm
                };
                if *name != "socket" && *name != "ioctl" {
                    assert_eq!(run(&p, arch, *n, [0; 3]), want, "{arch:#x} {name}");
                }
                if !table.iter().any(|(_, m, _)| *m == n + 1) {
                    assert_eq!(
                        run(&p, arch, n + 1, [0; 3]),
                        enosys,
                        "{arch:#x} after {name}"
                    );
                }
            }
            // Beyond every known number: ENOSYS.
            let top = table.iter().map(|(_, n, _)| *n).max().unwrap();
            assert_eq!(run(&p, arch, top + 1, [0; 3]), enosys, "{arch:#x}");
            // socket(AF_NETLINK, _, NETLINK_AUDIT) only.
            let socket = nr(table, "socket");
            let audit = [libc::AF_NETLINK as u32, 3, libc::NETLINK_AUDIT as u32];
            assert_eq!(
                run(&p, arch, socket, audit),
                RET_ERRNO | libc::EAFNOSUPPORT as u32
            );
            assert_eq!(
                run(&p, arch, socket, [libc::AF_NETLINK as u32, 3, 0]),
                RET_ALLOW
            );
            assert_eq!(
                run(&p, arch, socket, [libc::AF_INET as u32, 1, 0]),
                RET_ALLOW
            );
        }
        assert_eq!(
            run(&p, 0xc000_00b7, 0, [0; 3]),
            enosys,
            "aarch64 is not ours"
        );
    }

    #[test]
    fn capabilities_and_options_change_the_set() {
        let base = allowed(0, &[], &[]).unwrap();
        let time = allowed(caps::Capability::CAP_SYS_TIME.bitmask(), &[], &[]).unwrap();
        assert!(!base.contains("clock_settime") && time.contains("clock_settime"));
        let ptrace = allowed(caps::Capability::CAP_SYS_PTRACE.bitmask(), &[], &[]).unwrap();
        assert!(ptrace.contains("ptrace"));
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let more = allowed(0, &v(&["@keyring", "bpf"]), &v(&["mount"])).unwrap();
        assert!(more.contains("keyctl") && more.contains("bpf") && !more.contains("mount"));
        assert!(parse_filter(&v(&["@nosuch"])).is_err());
        assert_eq!(
            parse_filter(&v(&["bpf @keyring", "~mount"])).unwrap(),
            (v(&["bpf", "@keyring"]), v(&["mount"]))
        );
    }
}
