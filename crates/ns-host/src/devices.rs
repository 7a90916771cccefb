//! The container's device policy (`DevicePolicy=`, `DeviceAllow=`): which device nodes its
//! processes may open or create. By default nspawn's unit policy, on any host: `closed` (the
//! standard pseudo devices) plus /dev/net/tun, the ptys and device nodes bound in with
//! `--bind`. Enforced by the v1 devices controller where it is mounted, else by an eBPF
//! program (BPF_PROG_TYPE_CGROUP_DEVICE) attached to the container's cgroup2 directory;
//! for ns-run that is the level above the container's cgroup namespace (see `cgroups`), so
//! container root can neither widen the v1 rules (a child gets no more than its parent) nor
//! detach the program (attached with BPF_F_ALLOW_MULTI, it runs for every cgroup below,
//! along with whatever a booted guest attaches there). Where neither can be applied (inside
//! a container: its v1 devices controller read-only, bpf() refused by its system call
//! filter), nspawn's default is skipped with a notice and the container keeps the policy
//! ns-run runs under; a policy asked for with `--property=` is an error there.
//! Rules use the v1 syntax throughout: `TYPE MAJOR:MINOR ACCESS`, `*` for any number.

use std::io::Write;
use std::os::fd::AsFd;

use crate::cgroups::Cgroup;
use nix::errno::Errno;
use ns_core::state::Property;
use ns_core::sys::BpfInsn;
use ns_core::{Context, Error, Result};

/// What systemd's `DevicePolicy=closed` lets through: the standard pseudo devices.
const STANDARD: &[&str] = &[
    "c 1:3 rwm", // null
    "c 1:5 rwm", // zero
    "c 1:7 rwm", // full
    "c 1:8 rwm", // random
    "c 1:9 rwm", // urandom
    "c 5:0 rwm", // tty
    "c 5:2 rwm", // ptmx
];

/// What nspawn's unit adds (nspawn-register.c): /dev/net/tun, and ptys without mknod.
const NSPAWN_ALLOW: &[&str] = &["c 10:200 rwm", "c 136:* rw"];

/// What runc allows every container after its config's own rules, in runc's order
/// (libcontainer/specconv's AllowedDevices, runc 1.1): mknod of any node, the standard
/// pseudo devices, the ptys, /dev/ptmx and /dev/net/tun.
pub const RUNC_DEFAULT: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",    // null
    "c 1:8 rwm",    // random
    "c 1:7 rwm",    // full
    "c 5:0 rwm",    // tty
    "c 1:5 rwm",    // zero
    "c 1:9 rwm",    // urandom
    "c 136:* rwm",  // /dev/pts/*
    "c 5:2 rwm",    // ptmx
    "c 10:200 rwm", // /dev/net/tun
];

/// The device node at `path` in the v1 syntax without access (`c 1:3`): None when it is
/// missing or not a character or block device.
pub fn node(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = std::fs::metadata(path).ok()?;
    let kind = match md.file_type() {
        t if t.is_char_device() => 'c',
        t if t.is_block_device() => 'b',
        _ => return None,
    };
    Some(format!(
        "{kind} {}:{}",
        libc::major(md.rdev()),
        libc::minor(md.rdev())
    ))
}

/// nspawn's unit policy (`DevicePolicy=closed` plus `NSPAWN_ALLOW`) for a container with
/// the host device nodes `bound` in (path, read-only); other paths are skipped.
pub fn nspawn_policy(bound: &[(std::path::PathBuf, bool)]) -> Property {
    let nodes = bound.iter().filter_map(|(p, ro)| {
        let node = node(p)?;
        let access = if *ro { "r" } else { "rw" };
        Some(format!("{node} {access}"))
    });
    let allow = NSPAWN_ALLOW.iter().map(|r| r.to_string()).chain(nodes);
    Property::DefaultDevices(allow.collect())
}

/// Access bits, as the kernel's BPF_DEVCG_ACC_* (mknod 1, read 2, write 4).
const MKNOD: u8 = 1;
const READ: u8 = 2;
const WRITE: u8 = 4;

/// One allow rule. `kind` is b, c or a (any); `None` numbers match any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub kind: char,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u8,
}

impl Rule {
    /// A rule in the v1 syntax (`c 1:3 rwm`, `b 7:* r`, `a *:* rwm`).
    pub fn parse(s: &str) -> Option<Rule> {
        let mut f = s.split_whitespace();
        let kind = f.next().filter(|k| matches!(*k, "a" | "b" | "c"))?;
        let (major, minor) = f.next()?.split_once(':')?;
        let num = |n: &str| match n {
            "*" => Some(None),
            _ => n.parse::<u32>().ok().map(Some),
        };
        let access = f.next()?.chars().try_fold(0u8, |a, c| match c {
            'm' => Some(a | MKNOD),
            'r' => Some(a | READ),
            'w' => Some(a | WRITE),
            _ => None,
        })?;
        f.next().is_none().then_some(())?;
        Some(Rule {
            kind: kind.chars().next()?,
            major: num(major)?,
            minor: num(minor)?,
            access,
        })
    }
}

/// The rules in force for `props` (in order; the last `DevicePolicy=` wins), as systemd
/// computes them: `None` when access is open (`auto` without any `DeviceAllow=`).
pub fn rules(props: &[&Property]) -> Option<Vec<Rule>> {
    let policy = props
        .iter()
        .rev()
        .find_map(|p| match p {
            Property::DevicePolicy(l) => Some(l.as_str()),
            Property::DefaultDevices(_) => Some("closed"),
            _ => None,
        })
        .unwrap_or("auto");
    let allows: Vec<&str> = props
        .iter()
        .flat_map(|p| match p {
            Property::DeviceAllow(r) => std::slice::from_ref(r),
            Property::DefaultDevices(rules) => rules.as_slice(),
            _ => &[],
        })
        .map(String::as_str)
        .collect();
    if policy == "auto" && allows.is_empty() {
        return None;
    }
    let standard = if policy == "strict" {
        &[][..]
    } else {
        STANDARD
    };
    Some(
        standard
            .iter()
            .copied()
            .chain(allows)
            .filter_map(Rule::parse)
            .collect(),
    )
}

/// Force the eBPF program even where the v1 devices controller is mounted (as on
/// cgroup2-only hosts), e.g. to test that path on a hybrid host.
const FORCE_BPF: &str = "NS_RUN_DEVICE_FILTER";

/// Enforce `rules` in the container's cgroups, before anything joins them: the v1 devices
/// controller where we made a cgroup in it, else an eBPF program on the cgroup2 one. Where
/// neither can be (no such cgroup, or `bpf()` refused, as by the system call filter of the
/// container we run in), a policy asked for (`required`) is an error; nspawn's default is
/// not, and the container runs under the policy of the one we are in: returns the notice.
pub fn apply(rules: &[Rule], cgroups: &[Cgroup], required: bool) -> Result<Option<String>> {
    let forced = match std::env::var(FORCE_BPF).as_deref() {
        Ok("ebpf") => true,
        Ok("" | "auto") | Err(_) => false,
        Ok(v) => return Err(Error::invalid(FORCE_BPF, v, "not ebpf or auto")),
    };
    let v1 = cgroups
        .iter()
        .find(|c| !c.v2 && c.options.split(',').any(|o| o == "devices"));
    let v2 = cgroups.iter().find(|c| c.v2);
    let why = match (v1, v2) {
        (Some(c), _) if !forced => return apply_v1(rules, c).map(|()| None),
        (_, Some(c)) => {
            let dir = std::fs::File::open(&c.dir)
                .ctx(|| format!("cannot open cgroup {}", c.dir.display()))?;
            match ns_core::sys::attach_device_program(dir.as_fd(), &program(rules)) {
                Ok(()) => return Ok(None),
                // Refused by a system call filter (nspawn's has no bpf) or not built in.
                Err(("BPF_PROG_LOAD", e @ (Errno::EPERM | Errno::ENOSYS))) => {
                    format!("BPF_PROG_LOAD of its eBPF filter: {}", e.desc())
                }
                Err((call, e)) => {
                    return Err(Error::setup(format!(
                        "device policy: {call} of the eBPF device filter for {} failed: {}",
                        c.dir.display(),
                        e.desc()
                    )))
                }
            }
        }
        _ => "neither a writable v1 devices controller nor cgroup2 here".to_string(),
    };
    match required {
        true => Err(Error::setup(format!("device policy: {why}"))),
        false => Ok(Some(format!(
            "no device policy of its own for the container ({why}): it has the one ns-run runs under"
        ))),
    }
}

/// The v1 devices controller's rules for cgroup `c`: all denied, then each allowed.
fn apply_v1(rules: &[Rule], c: &Cgroup) -> Result<()> {
    let deny = c.dir.join("devices.deny");
    std::fs::write(&deny, "a").ctx(|| format!("cannot write a to {}", deny.display()))?;
    // One rule per write(2), on one open file.
    let allow = c.dir.join("devices.allow");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&allow)
        .ctx(|| format!("cannot open {}", allow.display()))?;
    for r in rules {
        let line = v1_line(r);
        f.write_all(line.as_bytes())
            .ctx(|| format!("cannot write {line} to {}", allow.display()))?;
    }
    Ok(())
}

fn v1_line(r: &Rule) -> String {
    let n = |x: Option<u32>| x.map_or("*".to_string(), |n| n.to_string());
    let access: String = [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')]
        .iter()
        .filter(|(b, _)| r.access & b != 0)
        .map(|(_, c)| *c)
        .collect();
    format!("{} {}:{} {access}", r.kind, n(r.major), n(r.minor))
}

// The eBPF program. Its input (r1) is struct bpf_cgroup_dev_ctx { u32 access_type; u32
// major; u32 minor; }, access_type being (access << 16) | type (type: block 1, char 2). It
// returns 1 to allow, 0 to deny. Registers: r2 access, r3 type, r4 major, r5 minor, r6
// scratch. Each rule is a block of tests that jump past the block's end on a mismatch and
// falls into `return 1` when all match; after the last block comes `return 0`.
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)
const MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X: dst = src
const MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K: dst = imm
const AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K: dst &= imm
const RSH_K: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K: dst >>= imm
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K: if dst != imm, pc += off
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT: return r0

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The device program allowing exactly `rules`.
pub fn program(rules: &[Rule]) -> Vec<BpfInsn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),      // r2 = access_type
        insn(MOV_X, 3, 2, 0, 0),      // r3 = access_type
        insn(AND_K, 3, 0, 0, 0xffff), // r3 = type
        insn(RSH_K, 2, 0, 0, 16),     // r2 = access
        insn(LDX_W, 4, 1, 4, 0),      // r4 = major
        insn(LDX_W, 5, 1, 8, 0),      // r5 = minor
    ];
    for r in rules {
        let mut block = Vec::new();
        match r.kind {
            'b' => block.push(insn(JNE_K, 3, 0, 0, 1)),
            'c' => block.push(insn(JNE_K, 3, 0, 0, 2)),
            _ => {}
        }
        if let Some(major) = r.major {
            block.push(insn(JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = r.minor {
            block.push(insn(JNE_K, 5, 0, 0, minor as i32));
        }
        // Every access asked for must be among the rule's: (access & !allowed) == 0.
        block.push(insn(MOV_X, 6, 2, 0, 0));
        block.push(insn(AND_K, 6, 0, 0, !i32::from(r.access)));
        block.push(insn(JNE_K, 6, 0, 0, 0));
        block.push(insn(MOV_K, 0, 0, 0, 1));
        block.push(insn(EXIT, 0, 0, 0, 0));
        // Every jump so far goes to the block's end.
        let len = block.len();
        for (i, b) in block.iter_mut().enumerate() {
            if b.code == JNE_K {
                b.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(MOV_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `prog` on a device access the way the kernel would (only the opcodes we emit).
    fn run(prog: &[BpfInsn], kind: char, major: u32, minor: u32, access: u8) -> u64 {
        let ty = if kind == 'b' { 1 } else { 2 };
        let ctx = [(u32::from(access) << 16) | ty, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let imm = i.imm as i64 as u64;
            pc += 1;
            match i.code {
                LDX_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
                MOV_X => r[dst] = r[src],
                MOV_K => r[dst] = imm,
                AND_K => r[dst] &= imm,
                RSH_K => r[dst] >>= imm,
                JNE_K if r[dst] != imm => pc += i.off as usize,
                JNE_K => {}
                EXIT => return r[0],
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    fn props(v: &[&str]) -> Vec<Property> {
        v.iter()
            .map(|p| crate::resources::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn policies_as_systemd() {
        let p = props(&["DeviceAllow=/dev/null r"]);
        assert!(rules(&[]).is_none());
        assert!(rules(&p.iter().collect::<Vec<_>>()).unwrap().len() == STANDARD.len() + 1);
        let p = props(&["DevicePolicy=strict", "DeviceAllow=char-* rwm"]);
        let r = rules(&p.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(
            r,
            vec![Rule {
                kind: 'c',
                major: None,
                minor: None,
                access: 7
            }]
        );
        let p = props(&["DevicePolicy=closed", "DevicePolicy=auto"]);
        assert!(rules(&p.iter().collect::<Vec<_>>()).is_none());
        assert_eq!(v1_line(&Rule::parse("c 136:* wr").unwrap()), "c 136:* rw");
        for bad in ["x 1:3 r", "c 1 r", "c 1:3 q", "c 1:3", "c 1:3 r extra"] {
            assert!(Rule::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn program_allows_exactly_the_rules() {
        let rules: Vec<Rule> = STANDARD
            .iter()
            .chain(NSPAWN_ALLOW)
            .chain(&["b 7:* r"])
            .map(|r| Rule::parse(r).unwrap())
            .collect();
        let p = program(&rules);
        assert_eq!(run(&p, 'c', 1, 3, READ | WRITE), 1); // /dev/null
        assert_eq!(run(&p, 'c', 1, 3, MKNOD), 1);
        assert_eq!(run(&p, 'c', 1, 1, READ), 0); // /dev/mem
        assert_eq!(run(&p, 'b', 1, 3, READ), 0); // the type counts
        assert_eq!(run(&p, 'c', 136, 5, READ | WRITE), 1); // a pty
        assert_eq!(run(&p, 'c', 136, 5, MKNOD), 0); // but not made
        assert_eq!(run(&p, 'b', 7, 42, READ), 1); // any loop device, read
        assert_eq!(run(&p, 'b', 7, 42, READ | WRITE), 0);
        assert_eq!(run(&p, 'b', 8, 0, READ), 0); // a disk
        assert_eq!(run(&p, 'c', 10, 232, READ | WRITE), 0); // kvm
        let any = program(&[Rule::parse("a *:* rwm").unwrap()]);
        assert_eq!(run(&any, 'b', 8, 0, READ | WRITE | MKNOD), 1);
        assert_eq!(run(&program(&[]), 'c', 1, 3, READ), 0);
    }
}
