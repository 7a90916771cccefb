//! The container's system call filter: nspawn's allow-list, on the x86-64, x86 and x32 ABIs.
//!
//! What is allowed: nspawn's groups (@default, @basic-io, @file-system, ...), a list of single
//! calls, and groups and calls that come with retained capabilities (@clock with CAP_SYS_TIME,
//! ptrace with CAP_SYS_PTRACE...), then `--system-call-filter=` (names and @groups added;
//! `~`-prefixed ones removed). A call the build host's kernel headers know but that is not
//! allowed fails with EPERM; a number they do not know (a newer call) with ENOSYS, so that
//! software falls back as it would on an older kernel. socket(AF_NETLINK, *, NETLINK_AUDIT)
//! fails with EAFNOSUPPORT, which audit userspace takes for "no audit". Beyond nspawn,
//! ioctl(TIOCSTI) and ioctl(TIOCLINUX) fail with EPERM: no faking input on a terminal shared
//! with the host (TIOCLINUX's select-and-paste types a selection into a host VT; its subcode
//! is behind a pointer that a filter cannot read, so the whole request goes); so do the
//! ioctls that set the console keyboard's tables (a remapped key types a string).
//! `--suppress-sync=yes` adds nspawn's rules: the sync calls succeed without doing anything,
//! and an open asking for synchronous writes fails (see [`suppress_sync`]).
//!
//! Everything that can be is computed at build time (build.rs): the numbers from the kernel
//! headers, and for each call which items of nspawn's list (`nspawn.txt`; groups from
//! systemd 252 in `groups.txt`, made by scripts/gen-syscall-groups) allow it, as a bit mask.
//! At start-up the program is assembled in one pass over those tables (no libseccomp, which
//! costs nspawn some 40 ms per start). Classic BPF: for each ABI, a binary search over the
//! ranges of numbers that share an outcome.

use std::collections::BTreeSet;

use ns_core::state::{ArgCmp, CmpOp, SeccompAction, SyscallFilter};
use ns_core::sys::SockFilter;
use ns_core::{Error, Result};

mod tables {
    include!(concat!(env!("OUT_DIR"), "/tables.rs"));
}

/// `--suppress-sync=yes`, as nspawn 252 does it (checked against it in tests/tests/seccomp.rs):
/// sync, syncfs, fsync, fdatasync, msync and sync_file_range return 0 at once, whatever
/// their arguments (a closed fd included; a negative one gets EBADF); open, openat and open_by_handle_at with O_SYNC or
/// O_DSYNC in their flags fail with EINVAL; openat2, whose flags are behind a pointer a filter
/// cannot read, fails with ENOSYS, so that the C library falls back to openat.
pub fn suppress_sync() -> Vec<ns_core::state::SeccompRule> {
    use ns_core::state::SeccompRule;
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let flags_ask_sync = |index: u32| ArgCmp {
        index,
        op: CmpOp::MaskedEq,
        value: libc::O_DSYNC as u64, // O_SYNC is O_DSYNC and one more bit
        value_two: libc::O_DSYNC as u64,
    };
    let einval = SeccompAction::Errno(libc::EINVAL as u32);
    // Calls on an fd: only for an fd number an int holds, as nspawn's rules say (a negative
    // one still gets the kernel's EBADF).
    let fd_in_range = ArgCmp {
        index: 0,
        op: CmpOp::Le,
        value: i32::MAX as u64,
        value_two: 0,
    };
    vec![
        SeccompRule {
            names: names(&["sync", "msync"]),
            args: Vec::new(),
            action: SeccompAction::Errno(0),
        },
        SeccompRule {
            names: names(&["syncfs", "fsync", "fdatasync", "sync_file_range"]),
            args: vec![fd_in_range],
            action: SeccompAction::Errno(0),
        },
        SeccompRule {
            names: names(&["open"]),
            args: vec![flags_ask_sync(1)],
            action: einval,
        },
        SeccompRule {
            names: names(&["openat", "open_by_handle_at"]),
            args: vec![flags_ask_sync(2)],
            action: einval,
        },
        SeccompRule {
            names: names(&["openat2"]),
            args: Vec::new(),
            action: SeccompAction::Errno(libc::ENOSYS as u32),
        },
    ]
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
    /// What a denied call gets.
    denied: Outcome,
    /// Rules tried before the number decides (OCI profiles): calls, conditions, outcome.
    rules: Vec<(Vec<&'static str>, Vec<ArgCmp>, Outcome)>,
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
            denied: Outcome::Errno(libc::EPERM as u16),
            rules: Vec::new(),
            allow: calls("--system-call-filter", allow)?,
            deny: calls("--system-call-filter", deny)?,
        })
    }

    /// For `f`, on its base: nspawn's list, nothing or everything.
    pub fn of(retained: u64, f: &SyscallFilter) -> Result<Decision> {
        use ns_core::state::FilterBase;
        let mut d = Decision::new(retained, &f.allow, &f.deny)?;
        match f.base {
            FilterBase::Nspawn => {}
            FilterBase::Nothing => d.items = 0,
            FilterBase::Everything => d.everything = true,
        }
        if let Some(a) = f.denied {
            d.denied = outcome(a);
        }
        for r in &f.rules {
            let names: Vec<&'static str> = calls("linux.seccomp", &r.names)?.into_iter().collect();
            if r.args.iter().any(|a| a.index > 5) {
                return Err(Error::setup(format!(
                    "linux.seccomp: {:?}: an argument index above 5",
                    r.names
                )));
            }
            d.rules.push((names, r.args.clone(), outcome(r.action)));
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
const JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K: A &= k
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
const RET_KILL_PROCESS: u32 = 0x8000_0000;

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
    Errno(u16),
    Kill,
    Notify,
}

const ENOSYS: Outcome = Outcome::Errno(libc::ENOSYS as u16);

fn outcome(a: SeccompAction) -> Outcome {
    match a {
        SeccompAction::Allow => Outcome::Allow,
        SeccompAction::Errno(e) => Outcome::Errno(e.min(4095) as u16),
        SeccompAction::Kill => Outcome::Kill,
        SeccompAction::Notify => Outcome::Notify,
    }
}

fn ret(o: Outcome) -> SockFilter {
    stmt(
        RET_K,
        match o {
            Outcome::Allow => RET_ALLOW,
            Outcome::Errno(e) => RET_ERRNO | u32::from(e),
            Outcome::Kill => RET_KILL_PROCESS,
            Outcome::Notify => ns_core::sys::SECCOMP_RET_USER_NOTIF,
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
                    d.denied
                },
            )
        });
    let mut out = vec![(0, ENOSYS)];
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
            push(next, ENOSYS); // a gap: numbers nobody defined
        }
        push(nr, o);
        next = nr + 1;
    }
    push(next, ENOSYS);
    out
}

/// Calls answered by their arguments, before the search: (call, [(argument, value)], errno).
/// The audit socket as nspawn; TIOCSTI (pushing input into a terminal, which would reach the
/// user's shell through a terminal passed with --console=pipe) and TIOCLINUX (a VT's
/// select-and-paste, the same through a host VT given as stdin) beyond nspawn. The kernel
/// takes ioctl's request as an unsigned int: comparing the low word is exact.
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
    ("ioctl", &[(1, libc::TIOCLINUX as u32)], libc::EPERM),
    // The console keyboard's tables (linux/kd.h), shared by every VT: a function key's
    // string (KDSKBSENT) sent by a remapped key (KDSKBENT, KDSETKEYCODE, the accent tables)
    // types the container's command at the host user's next key press. The kernel allows
    // it with CAP_SYS_TTY_CONFIG, which containers keep by default.
    ("ioctl", &[(1, KDSKBENT)], libc::EPERM),
    ("ioctl", &[(1, KDSKBSENT)], libc::EPERM),
    ("ioctl", &[(1, KDSKBDIACR)], libc::EPERM),
    ("ioctl", &[(1, KDSKBDIACRUC)], libc::EPERM),
    ("ioctl", &[(1, KDSETKEYCODE)], libc::EPERM),
];

// linux/kd.h (not in the libc crate).
const KDSKBENT: u32 = 0x4B47;
const KDSKBSENT: u32 = 0x4B49;
const KDSKBDIACR: u32 = 0x4B4B;
const KDSKBDIACRUC: u32 = 0x4BFB;
const KDSETKEYCODE: u32 = 0x4B4D;

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
    for (names, conds, o) in &d.rules {
        for name in names {
            if let Some((_, nr, _)) = table.iter().find(|(n, _, _)| n == name) {
                p.extend(rule_block(*nr, conds, *o));
            }
        }
    }
    if !d.rules.is_empty() {
        p.push(stmt(LD_W_ABS, OFF_NR));
    }
    p.extend(search(&ranges(table, d, lo, hi)));
    p
}

/// A jump target while a rule block is assembled: the next instruction plus `n`, or the
/// block's end (the rule does not apply).
#[derive(Clone, Copy)]
enum To {
    Skip(u8),
    Fail,
}

/// One rule for call `nr`: `ret o` when the number and every condition match; else on to
/// what follows the block. Conditions compare whole 64-bit arguments (two 32-bit words).
fn rule_block(nr: u32, conds: &[ArgCmp], o: Outcome) -> Vec<SockFilter> {
    let ld = |k: u32| (LD_W_ABS, k, To::Skip(0), To::Skip(0));
    let j = |code: u16, k: u32, jt: To, jf: To| (code, k, jt, jf);
    let mut b = vec![ld(OFF_NR), j(JEQ_K, nr, To::Skip(0), To::Fail)];
    for c in conds {
        let (lo, hi) = (OFF_ARG0 + 8 * c.index, OFF_ARG0 + 8 * c.index + 4);
        let (vlo, vhi) = (c.value as u32, (c.value >> 32) as u32);
        match c.op {
            CmpOp::Eq => b.extend([
                ld(hi),
                j(JEQ_K, vhi, To::Skip(0), To::Fail),
                ld(lo),
                j(JEQ_K, vlo, To::Skip(0), To::Fail),
            ]),
            CmpOp::Ne => b.extend([
                ld(hi),
                j(JEQ_K, vhi, To::Skip(0), To::Skip(2)),
                ld(lo),
                j(JEQ_K, vlo, To::Fail, To::Skip(0)),
            ]),
            CmpOp::MaskedEq => {
                let (wlo, whi) = (c.value_two as u32, (c.value_two >> 32) as u32);
                b.extend([
                    ld(hi),
                    (AND_K, vhi, To::Skip(0), To::Skip(0)),
                    j(JEQ_K, whi, To::Skip(0), To::Fail),
                    ld(lo),
                    (AND_K, vlo, To::Skip(0), To::Skip(0)),
                    j(JEQ_K, wlo, To::Skip(0), To::Fail),
                ])
            }
            // Above: the high word decides unless equal, then the low one.
            CmpOp::Gt | CmpOp::Ge => b.extend([
                ld(hi),
                j(JGT_K, vhi, To::Skip(3), To::Skip(0)),
                j(JEQ_K, vhi, To::Skip(0), To::Fail),
                ld(lo),
                j(
                    if c.op == CmpOp::Gt { JGT_K } else { JGE_K },
                    vlo,
                    To::Skip(0),
                    To::Fail,
                ),
            ]),
            CmpOp::Lt | CmpOp::Le => b.extend([
                ld(hi),
                j(JGE_K, vhi, To::Skip(0), To::Skip(3)),
                j(JEQ_K, vhi, To::Skip(0), To::Fail),
                ld(lo),
                j(
                    if c.op == CmpOp::Lt { JGE_K } else { JGT_K },
                    vlo,
                    To::Fail,
                    To::Skip(0),
                ),
            ]),
        }
    }
    b.push((RET_K, 0, To::Skip(0), To::Skip(0)));
    let end = b.len();
    let mut p: Vec<SockFilter> = b
        .iter()
        .enumerate()
        .map(|(i, (code, k, jt, jf))| {
            let t = |to: &To| match to {
                To::Skip(n) => *n,
                To::Fail => u8::try_from(end - i - 1).expect("a rule block is short"),
            };
            jump(*code, *k, t(jt), t(jf))
        })
        .collect();
    p[end - 1] = ret(o);
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
        ret(ENOSYS), // any other ABI
        stmt(LD_W_ABS, OFF_NR),
    ]);
    p.extend(x86);
    p
}

/// A filter built ahead, for a payload retaining `retained`: installing it is then one
/// system call, the last before exec (nothing after it may need a call the filter denies).
pub struct Prepared {
    program: Vec<SockFilter>,
    /// Some rule notifies: the filter is installed with a listener.
    notifies: bool,
}

impl Prepared {
    pub fn new(retained: u64, f: &SyscallFilter) -> Result<Prepared> {
        Ok(Prepared {
            program: program(&Decision::of(retained, f)?),
            notifies: f.rules.iter().any(|r| r.action == SeccompAction::Notify),
        })
    }

    /// Install it (needs CAP_SYS_ADMIN in effect, or no_new_privs). One that notifies gets a
    /// listener, sent to the seccomp agent through `listener` (the socket is closed after; a
    /// process without one, such as `exec`'s, drops it: its notified calls fail with ENOSYS).
    pub fn install(&self, listener: &Listener) -> Result<()> {
        let err = |e: nix::errno::Errno| {
            Error::setup(format!(
                "cannot install the system call filter: {}",
                e.desc()
            ))
        };
        if !self.notifies {
            return ns_core::sys::seccomp_install(&self.program).map_err(err);
        }
        let fd = ns_core::sys::seccomp_install_listener(&self.program).map_err(err)?;
        let (Some(socket), Some(state)) = (listener.socket, listener.state.as_deref()) else {
            return Ok(());
        };
        send_listener(socket, state, fd)
    }
}

/// Where a filter's listener goes (OCI seccomp notify): the socket the runtime connected
/// to `linux.seccomp.listenerPath`, and the container process state sent with it.
#[derive(Debug, Clone, Default)]
pub struct Listener {
    pub socket: Option<i32>,
    pub state: Option<String>,
}

impl Listener {
    pub fn of(plan: &ns_core::state::ExecPlan, runtime: &ns_core::state::Runtime) -> Self {
        Listener {
            socket: runtime.seccomp_listener_fd,
            state: plan.seccomp_listener.clone(),
        }
    }
}

/// The container process state (with our pid) and the listener fd, in one message, as the
/// OCI spec has it; then the socket is closed.
fn send_listener(socket: i32, state: &str, fd: std::os::fd::OwnedFd) -> Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    let text = ns_core::hook::with_own_pid(state, "linux.seccomp.listenerPath")?.to_string();
    // Handed down for us alone: closed here.
    let socket = ns_core::sys::adopt_fd(socket, "the seccomp listener socket")?;
    ns_core::sync::send_with_fd(socket.as_raw_fd(), text.as_bytes(), fd.as_fd()).map_err(|e| {
        Error::setup(format!(
            "cannot send the seccomp listener to linux.seccomp.listenerPath: {}",
            e.desc()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_core::state::SeccompRule;

    /// Run `p` on (arch, nr, args) as the kernel would (only the opcodes we emit).
    fn run(p: &[SockFilter], arch: u32, nr: u32, args: [u32; 3]) -> u32 {
        run64(
            p,
            arch,
            nr,
            [args[0].into(), args[1].into(), args[2].into(), 0, 0, 0],
        )
    }

    fn run64(p: &[SockFilter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let word = |k: u32| match k {
            OFF_NR => nr,
            OFF_ARCH => arch,
            16..=63 if k.is_multiple_of(4) => {
                let a = args[((k - 16) / 8) as usize];
                if (k - 16) % 8 == 4 {
                    (a >> 32) as u32
                } else {
                    a as u32
                }
            }
            _ => panic!("load {k}"),
        };
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = p[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => a = word(i.k),
                AND_K => a &= i.k,
                JEQ_K => pc += if a == i.k { i.jt } else { i.jf } as usize,
                JGE_K => pc += if a >= i.k { i.jt } else { i.jf } as usize,
                JGT_K => pc += if a > i.k { i.jt } else { i.jf } as usize,
                JA => pc += i.k as usize,
                RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    /// An OCI profile as containerd's default writes it: deny by default, an allow list,
    /// calls allowed for some arguments only, one call with its own errno.
    #[test]
    fn oci_profiles_with_arguments_and_errnos() {
        use ns_core::state::FilterBase;
        let cmp = |index, op, value, value_two| ArgCmp {
            index,
            op,
            value,
            value_two,
        };
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let f = SyscallFilter {
            allow: v(&["read", "write", "exit_group"]),
            base: FilterBase::Nothing,
            denied: Some(SeccompAction::Errno(libc::EACCES as u32)),
            rules: vec![
                SeccompRule {
                    names: v(&["personality"]),
                    args: vec![cmp(0, CmpOp::Eq, 8, 0)],
                    action: SeccompAction::Allow,
                },
                SeccompRule {
                    names: v(&["clone"]),
                    args: vec![cmp(0, CmpOp::MaskedEq, 0x7e02_0000, 0)],
                    action: SeccompAction::Allow,
                },
                SeccompRule {
                    names: v(&["clone3"]),
                    args: vec![],
                    action: SeccompAction::Errno(libc::ENOSYS as u32),
                },
                SeccompRule {
                    names: v(&["socket"]),
                    args: vec![cmp(0, CmpOp::Ne, 40, 0)],
                    action: SeccompAction::Allow,
                },
                SeccompRule {
                    names: v(&["mmap"]),
                    args: vec![cmp(1, CmpOp::Gt, 0x1_0000_0000, 0), cmp(2, CmpOp::Le, 7, 0)],
                    action: SeccompAction::Allow,
                },
                SeccompRule {
                    names: v(&["kill"]),
                    args: vec![cmp(1, CmpOp::Lt, 10, 0), cmp(0, CmpOp::Ge, 2, 0)],
                    action: SeccompAction::Kill,
                },
            ],
            ..Default::default()
        };
        let p = program(&Decision::of(0, &f).unwrap());
        let t = tables::X86_64;
        let x = |name, args: [u64; 6]| run64(&p, AUDIT_ARCH_X86_64, nr(t, name), args);
        let eacces = RET_ERRNO | libc::EACCES as u32;
        assert_eq!(x("read", [0; 6]), RET_ALLOW);
        assert_eq!(x("open", [0; 6]), eacces);
        assert_eq!(x("personality", [8, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(x("personality", [0x8 | 1 << 32, 0, 0, 0, 0, 0]), eacces);
        assert_eq!(x("personality", [0, 0, 0, 0, 0, 0]), eacces);
        assert_eq!(x("clone", [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), RET_ALLOW);
        let newns = libc::CLONE_NEWNS as u64 | libc::SIGCHLD as u64;
        assert_eq!(x("clone", [newns, 0, 0, 0, 0, 0]), eacces);
        assert_eq!(x("clone3", [0; 6]), RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(x("socket", [2, 1, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(x("socket", [40, 1, 0, 0, 0, 0]), eacces);
        assert_eq!(x("socket", [40 | 1 << 32, 1, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(x("mmap", [0, 0x1_0000_0001, 7, 0, 0, 0]), RET_ALLOW);
        assert_eq!(x("mmap", [0, 0x1_0000_0000, 7, 0, 0, 0]), eacces);
        assert_eq!(x("mmap", [0, 0x2_0000_0000, 8, 0, 0, 0]), eacces);
        assert_eq!(x("mmap", [0, 0xffff_ffff, 0, 0, 0, 0]), eacces);
        assert_eq!(x("kill", [2, 9, 0, 0, 0, 0]), RET_KILL_PROCESS);
        assert_eq!(x("kill", [1, 9, 0, 0, 0, 0]), eacces);
        assert_eq!(x("kill", [2, 10, 0, 0, 0, 0]), eacces);
        assert_eq!(x("kill", [2, 1 << 32, 0, 0, 0, 0]), eacces);
        // The same on the 32-bit ABI, where the call has its own number.
        let i386 = run64(
            &p,
            AUDIT_ARCH_I386,
            nr(tables::X86, "personality"),
            [8, 0, 0, 0, 0, 0],
        );
        assert_eq!(i386, RET_ALLOW);
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
            // The terminal requests that fake input, on every ABI; other requests pass.
            let ioctl = nr(table, "ioctl");
            for req in [
                libc::TIOCSTI as u32,
                libc::TIOCLINUX as u32,
                KDSKBENT,
                KDSKBSENT,
                KDSKBDIACR,
                KDSKBDIACRUC,
                KDSETKEYCODE,
            ] {
                assert_eq!(
                    run(&p, arch, ioctl, [0, req, 0]),
                    eperm,
                    "{arch:#x} {req:#x}"
                );
            }
            assert_eq!(run(&p, arch, ioctl, [0, libc::TCGETS as u32, 0]), RET_ALLOW);
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
