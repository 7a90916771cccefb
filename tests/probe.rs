//! ns-probe: attempts one thing from inside a container and prints the outcome, `ok` or the
//! errno's name (`EPERM`...), exiting 0 either way; the hardening tests compare the outcome
//! with what they expect. Built statically like every binary of the workspace and copied
//! into the test's tree.
//!
//!   ns-probe syscall NAME        the call with all-zero arguments (only the filter's answer
//!                                matters: a call it lets through usually fails with EFAULT,
//!                                EINVAL or EBADF instead)
//!   ns-probe nr N                the same by number (an unknown one)
//!   ns-probe socket DOMAIN TYPE PROTOCOL
//!   ns-probe tiocsti             push one character into stdin's terminal (TIOCSTI)
//!   ns-probe tioclinux           paste a VT's selection into stdin's terminal (TIOCLINUX,
//!                                subcode TIOCL_PASTESEL)
//!   ns-probe ioctl REQ           ioctl(0, REQ, a zeroed buffer): what the filter says
//!                                (on a non-terminal stdin the terminal says ENOTTY)
//!   ns-probe udp-frame IFACE MAC SRC DST PORT TEXT
//!                                one UDP datagram SRC -> DST:PORT carrying TEXT, built by
//!                                hand and sent with a packet socket on IFACE to the
//!                                Ethernet address MAC: the kernel's routing is bypassed, so
//!                                any addresses go on the wire (127.0.0.1 included)
//!   ns-probe bpf-detach-devices DIR
//!                                detach every eBPF device program in force on cgroup2
//!                                directory DIR (BPF_PROG_QUERY with the effective flag,
//!                                BPF_PROG_GET_FD_BY_ID, BPF_PROG_DETACH): `ok` once one is
//!                                detached, `none` when none is in force, else the errno
//!   ns-probe grab STOPFILE [PREFIX]
//!                                the CVE-2019-5736 attack, until STOPFILE exists (at most
//!                                120 s): open every /proc/PID/exe and /proc/PID/fd/N of the
//!                                others O_PATH, keep those that are regular files of
//!                                nobody in here, and reopen them through /proc/self/fd for
//!                                writing (again while the kernel says ETXTBSY). Only a file
//!                                whose name starts with PREFIX (the test's copies of our
//!                                binaries) is written (a line appended): any other is only
//!                                opened, so that a host file reached is never changed; a
//!                                sealed memfd counts as refused (EPERM).
//!                                One line per file: `seen LINK`, then `WROTE LINK`,
//!                                `OPENED-RW LINK` or `denied LINK ERRNO`; `ready` first,
//!                                `done` last.
//!   ns-probe sync                the calls --suppress-sync changes, one line each (`NAME ok`
//!                                or `NAME ERRNO`): fsync, fdatasync, syncfs and
//!                                sync_file_range of a file in /tmp, msync of a shared map,
//!                                fsync of a closed fd and msync of a bad address, then opens
//!                                asking for O_SYNC and O_DSYNC (open, openat, openat2)
//!   ns-probe ptrace STOPFILE     the attack on a process entering the container: until
//!                                STOPFILE exists (at most 120 s), every process that
//!                                appears (not us) is PTRACE_SEIZEd, stopped
//!                                (PTRACE_INTERRUPT), looked at (/proc/PID/status, its fds)
//!                                and detached, never changed. One line per process
//!                                attached: `attached PID NAME CapEff=.. CapPrm=.. CapBnd=..
//!                                Seccomp=N fds=[..]`, then `PRIVILEGED PID ...` when it held
//!                                a capability beyond our own bounding set or a weaker
//!                                system call filter than ours; after each, `environ PID
//!                                NAME VAR=VALUE...` (its /proc/PID/environ); `ready`
//!                                first, `done` last.

fn errno_name(e: i32) -> String {
    match e {
        libc::EPERM => "EPERM".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::EAFNOSUPPORT => "EAFNOSUPPORT".into(),
        libc::EACCES => "EACCES".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EBADF => "EBADF".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EROFS => "EROFS".into(),
        libc::ETXTBSY => "ETXTBSY".into(),
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT".into(),
        libc::ENOTTY => "ENOTTY".into(),
        n => format!("errno {n}"),
    }
}

fn number(name: &str) -> Option<libc::c_long> {
    Some(match name {
        "keyctl" => libc::SYS_keyctl,
        "add_key" => libc::SYS_add_key,
        "bpf" => libc::SYS_bpf,
        "userfaultfd" => libc::SYS_userfaultfd,
        "perf_event_open" => libc::SYS_perf_event_open,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "kexec_load" => libc::SYS_kexec_load,
        "init_module" => libc::SYS_init_module,
        "finit_module" => libc::SYS_finit_module,
        "clock_settime" => libc::SYS_clock_settime,
        "swapon" => libc::SYS_swapon,
        "getpid" => libc::SYS_getpid,
        "ptrace" => libc::SYS_ptrace,
        _ => return None,
    })
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> i64 { a.get(i).and_then(|s| s.parse().ok()).unwrap_or(0) };
    let r: i64 = match a.first().map(String::as_str) {
        Some("syscall") => {
            let Some(nr) = a.get(1).and_then(|n| number(n)) else {
                eprintln!("ns-probe: unknown call {:?}", a.get(1));
                std::process::exit(2)
            };
            // SAFETY: every argument is 0: no pointer is passed for the kernel to use.
            unsafe { libc::syscall(nr, 0, 0, 0, 0, 0, 0) }
        }
        // SAFETY: as above.
        Some("nr") => unsafe { libc::syscall(arg(1), 0, 0, 0, 0, 0, 0) },
        // SAFETY: socket() takes only integers; the fd is left to exit.
        Some("socket") => {
            unsafe { libc::socket(arg(1) as i32, arg(2) as i32, arg(3) as i32) }.into()
        }
        Some("grab") => grab(
            a.get(1).map(String::as_str).unwrap_or("/stop"),
            a.get(2).map(String::as_str),
        ),
        Some("ptrace") => ptrace_watch(a.get(1).map(String::as_str).unwrap_or("/stop")),
        Some("tiocsti") => {
            let c = b'x';
            // SAFETY: TIOCSTI reads one byte from the pointer, which points at `c`.
            unsafe { libc::ioctl(0, libc::TIOCSTI, &c as *const u8) }.into()
        }
        Some("tioclinux") => {
            let subcode = 3u8; // TIOCL_PASTESEL
                               // SAFETY: TIOCLINUX reads the subcode byte from the pointer, which points at it.
            unsafe { libc::ioctl(0, libc::TIOCLINUX, &subcode as *const u8) }.into()
        }
        Some("ioctl") => {
            let buf = [0u8; 1024];
            // SAFETY: stdin and a zeroed buffer larger than any request here reads (struct
            // kbsentry: 513 bytes); the kernel only reads it.
            unsafe { libc::ioctl(0, arg(1) as libc::Ioctl, buf.as_ptr()) }.into()
        }
        Some("udp-frame") if a.len() == 7 => udp_frame(&a[1..]),
        Some("sync") => sync_calls(),
        Some("session-keyring") => {
            // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0): integers.
            let id = unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) };
            if id >= 0 {
                println!("{id}");
                return;
            }
            id
        }
        Some("no-clone3") if a.len() > 2 => no_clone3(&a[1], &a[2..]),
        Some("bpf-detach-devices") => match a.get(1) {
            Some(dir) => bpf_detach_devices(dir),
            None => -1,
        },
        _ => {
            eprintln!(
                "usage: ns-probe syscall NAME | nr N | socket DOMAIN TYPE PROTOCOL | tiocsti \
                 | tioclinux | ioctl REQ | udp-frame IFACE MAC SRC DST PORT TEXT \
                 | bpf-detach-devices DIR | grab STOPFILE [PREFIX] | ptrace STOPFILE | sync \
                 | session-keyring | no-clone3 ENOSYS|EPERM CMD..."
            );
            std::process::exit(2)
        }
    };
    if r < 0 {
        println!(
            "{}",
            errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        );
    } else {
        println!("ok");
    }
}

/// `ns-probe no-clone3 ERRNO CMD...`: exec CMD under a seccomp filter that fails clone3 with
/// ERRNO (ENOSYS, as containerd's default profile does, or EPERM), as a runtime nested in
/// such a container meets it. Returns only on failure.
fn no_clone3(errno: &str, cmd: &[String]) -> i64 {
    let e = match errno {
        "ENOSYS" => libc::ENOSYS,
        _ => libc::EPERM,
    } as u32;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let prog = [
        stmt(ld, 4), // seccomp_data.arch
        jeq(AUDIT_ARCH_X86_64, 1, 0),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
        stmt(ld, 0), // seccomp_data.nr
        jeq(libc::SYS_clone3 as u32, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | e),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integers, then with a pointer to `fprog`, which points at `prog`;
    // both outlive the calls.
    let r = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return r.into();
    }
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
    eprintln!("ns-probe: cannot execute {}: {err}", cmd[0]);
    -1
}

/// `ns-probe sync`: see the top of the file.
fn sync_calls() -> i64 {
    let show = |name: &str, r: i64| {
        let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        println!("{name} {}", if r < 0 { errno_name(e) } else { "ok".into() });
    };
    let path = |n: &str| std::ffi::CString::new(format!("/tmp/ns-probe-sync-{n}")).unwrap();
    let file = path("a");
    // SAFETY: plain calls on a file this program opens and maps; every pointer passed is a
    // valid C string, a map of one page, or (msync's bad case) an address the kernel checks.
    unsafe {
        let fd = libc::open(file.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600);
        libc::write(fd, b"x".as_ptr().cast(), 1);
        show("fsync", libc::fsync(fd).into());
        show("fdatasync", libc::fdatasync(fd).into());
        show("syncfs", libc::syncfs(fd).into());
        libc::sync();
        let range = libc::syscall(libc::SYS_sync_file_range, fd, 0, 1, 2);
        show("sync_file_range", range);
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let m = libc::mmap(std::ptr::null_mut(), 4096, prot, libc::MAP_SHARED, fd, 0);
        show("msync", libc::msync(m, 4096, libc::MS_SYNC).into());
        show(
            "msync-bad-address",
            // Address 1: not page-aligned, which the kernel refuses (EINVAL).
            libc::msync(std::ptr::dangling_mut::<u8>().cast(), 4096, libc::MS_SYNC).into(),
        );
        show("fsync-closed-fd", libc::fsync(999).into());
        show("fsync-minus-one", libc::fsync(-1).into());
        let flags = libc::O_RDWR | libc::O_CREAT;
        let o = libc::syscall(
            libc::SYS_open,
            path("b").as_ptr(),
            flags | libc::O_SYNC,
            0o600,
        );
        show("open-O_SYNC", o);
        let openat = |name: &str, flags: i32| {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                path(name).as_ptr(),
                flags,
                0o600,
            )
        };
        show("openat-O_DSYNC", openat("c", flags | libc::O_DSYNC));
        show("openat-plain", openat("d", flags));
        // struct open_how { u64 flags; u64 mode; u64 resolve; }
        let how: [u64; 3] = [(flags | libc::O_SYNC) as u64, 0o600, 0];
        let at2 = libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path("e").as_ptr(),
            &how,
            24,
        );
        show("openat2-O_SYNC", at2);
    }
    0
}

/// The one's-complement sum of 16-bit words (IPv4 header checksum).
fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// `udp-frame IFACE MAC SRC DST PORT TEXT`: an IPv4 header and a UDP header (checksum 0: none,
/// which IPv4 allows) in front of TEXT, sent on IFACE to MAC. Returns sendto's result.
fn udp_frame(a: &[String]) -> i64 {
    let bad = |what: &str| -> ! {
        eprintln!("ns-probe: udp-frame: bad {what}");
        std::process::exit(2)
    };
    let ifname = std::ffi::CString::new(a[0].as_str()).unwrap_or_else(|_| bad("interface"));
    let mac: Vec<u8> = a[1]
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap_or_else(|_| bad("MAC")))
        .collect();
    if mac.len() != 6 {
        bad("MAC")
    }
    let src: std::net::Ipv4Addr = a[2].parse().unwrap_or_else(|_| bad("source"));
    let dst: std::net::Ipv4Addr = a[3].parse().unwrap_or_else(|_| bad("destination"));
    let port: u16 = a[4].parse().unwrap_or_else(|_| bad("port"));
    let text = a[5].as_bytes();
    let udp_len = 8 + text.len() as u16;
    let mut p = vec![0x45, 0];
    p.extend((20 + udp_len).to_be_bytes());
    p.extend([0, 0, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    p.extend(src.octets());
    p.extend(dst.octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend(40000u16.to_be_bytes());
    p.extend(port.to_be_bytes());
    p.extend(udp_len.to_be_bytes());
    p.extend([0, 0]);
    p.extend(text);
    // SAFETY: if_nametoindex reads the NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    if ifindex == 0 {
        return -1;
    }
    let proto = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: socket() takes only integers.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
    if fd < 0 {
        return -1;
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to fill in.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = proto;
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&mac);
    // SAFETY: the buffer and the address are valid for the lengths given; fd is ours.
    unsafe {
        libc::sendto(
            fd,
            p.as_ptr().cast(),
            p.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) as i64
    }
}

/// `bpf-detach-devices DIR` (see the header): returns what `main` prints, -1 with errno set
/// on failure; prints `none` itself and exits when no program is in force.
fn bpf_detach_devices(dir: &str) -> i64 {
    use std::os::fd::AsRawFd;
    const BPF_PROG_GET_FD_BY_ID: i64 = 13;
    const BPF_PROG_DETACH: i64 = 9;
    const BPF_PROG_QUERY: i64 = 16;
    const BPF_CGROUP_DEVICE: u32 = 6;
    const BPF_F_QUERY_EFFECTIVE: u32 = 1;
    let Ok(cg) = std::fs::File::open(dir) else {
        return -1;
    };
    let bpf = |cmd: i64, attr: &mut [u64; 8]| -> i64 {
        // SAFETY: `attr` is a zeroed union bpf_attr of 64 bytes; the kernel reads and
        // writes only within the size passed, and the pointers it holds live meanwhile.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 64) }
    };
    // BPF_PROG_QUERY: target_fd, attach_type, query_flags, attach_flags, prog_ids, prog_cnt.
    let mut ids = [0u32; 64];
    let mut q = [0u64; 8];
    q[0] = cg.as_raw_fd() as u64 | (u64::from(BPF_CGROUP_DEVICE) << 32);
    q[1] = u64::from(BPF_F_QUERY_EFFECTIVE);
    q[2] = ids.as_mut_ptr() as u64;
    q[3] = ids.len() as u64;
    if bpf(BPF_PROG_QUERY, &mut q) < 0 {
        return -1;
    }
    let count = (q[3] & 0xffff_ffff) as usize;
    if count == 0 {
        println!("none");
        std::process::exit(0);
    }
    let mut last = -1;
    for id in &ids[..count.min(ids.len())] {
        let mut g = [0u64; 8];
        g[0] = u64::from(*id);
        let prog = bpf(BPF_PROG_GET_FD_BY_ID, &mut g);
        if prog < 0 {
            return -1;
        }
        // BPF_PROG_DETACH: target_fd, attach_bpf_fd, attach_type, attach_flags.
        let mut d = [0u64; 8];
        d[0] = cg.as_raw_fd() as u64 | ((prog as u64) << 32);
        d[1] = u64::from(BPF_CGROUP_DEVICE);
        last = bpf(BPF_PROG_DETACH, &mut d);
        if last == 0 {
            return 0;
        }
    }
    last
}

/// A file grabbed through another process's /proc entry, held O_PATH until it can be
/// written (or is refused).
struct Held {
    fd: std::os::fd::OwnedFd,
    link: String,
    /// What the link leads to.
    name: String,
}

/// `ns-probe grab STOPFILE` (see the header). Exits 0; the lines tell.
fn grab(stop: &str, writable: Option<&str>) -> ! {
    use std::collections::HashSet;
    use std::io::Write;
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let me = std::process::id().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    // (dev, ino) of every file already looked at: each is tried once (and retried while
    // it is busy).
    let mut known: HashSet<(u64, u64)> = HashSet::new();
    let mut held: Vec<Held> = Vec::new();
    say("ready".into());
    while std::path::Path::new(stop).symlink_metadata().is_err()
        && std::time::Instant::now() < deadline
    {
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = p.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
                continue;
            }
            let mut links = vec![format!("/proc/{pid}/exe")];
            if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                links.extend(
                    fds.flatten()
                        .map(|f| f.path().to_string_lossy().into_owned()),
                );
            }
            for l in links {
                if let Some(h) = take(&l, &mut known) {
                    say(format!("seen {}", h.link));
                    held.push(h);
                }
            }
        }
        held.retain(|h| match reopen_for_writing(h, writable) {
            Ok(true) => {
                say(format!("WROTE {}", h.link));
                false
            }
            Ok(false) => {
                say(format!("OPENED-RW {}", h.link));
                false
            }
            Err(libc::ETXTBSY) => true,
            Err(e) => {
                say(format!("denied {} {}", h.link, errno_name(e)));
                false
            }
        });
    }
    say("done".into());
    std::process::exit(0)
}

/// `link` opened O_PATH, if it is a regular file not seen before and not one of ours (its
/// name does not lead to the same file in here).
fn take(link: &str, known: &mut std::collections::HashSet<(u64, u64)>) -> Option<Held> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::MetadataExt;
    let c = std::ffi::CString::new(link).ok()?;
    // SAFETY: a NUL-terminated path; the fd returned is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mine = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let md = std::fs::metadata(&mine).ok()?;
    if !md.is_file() || !known.insert((md.dev(), md.ino())) {
        return None;
    }
    let name = std::fs::read_link(&mine)
        .ok()?
        .to_string_lossy()
        .into_owned();
    let ours = std::fs::metadata(&name).is_ok_and(|m| (m.dev(), m.ino()) == (md.dev(), md.ino()));
    (!ours).then(|| Held {
        fd,
        link: format!("{link} -> {name}"),
        name,
    })
}

/// Reopen a held file for writing through /proc/self/fd: Err(errno), else whether a line
/// was appended (only to a file named under `writable`).
fn reopen_for_writing(h: &Held, writable: Option<&str>) -> Result<bool, i32> {
    use std::io::Write;
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&h.fd));
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(0);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(errno)?;
    // SAFETY: fcntl on an fd we own, with an integer command.
    let seals = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_GET_SEALS) };
    if seals >= 0 && seals & libc::F_SEAL_WRITE != 0 {
        return Err(libc::EPERM); // a sealed memfd: open, but never written
    }
    if !writable.is_some_and(|p| h.name.starts_with(p)) {
        return Ok(false);
    }
    f.write_all(b"\ngrabbed by ns-probe\n").map_err(errno)?;
    Ok(true)
}

/// A field of /proc/PID/status as text.
fn status_of(pid: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| Some(l.strip_prefix(key)?.strip_prefix(':')?.trim().to_string()))
}

fn hex_status(pid: &str, key: &str) -> u64 {
    status_of(pid, key)
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(u64::MAX)
}

/// `ns-probe ptrace STOPFILE` (see the header). Exits 0; the lines tell.
fn ptrace_watch(stop: &str) -> ! {
    use std::collections::HashSet;
    use std::io::Write;
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let me = std::process::id().to_string();
    let bound = hex_status("self", "CapBnd");
    let filtered: u32 = status_of("self", "Seccomp")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    // pid and start time of every process already tried: each is tried once.
    let mut known: HashSet<(i32, String)> = HashSet::new();
    say(format!("ready CapBnd={bound:x} Seccomp={filtered}"));
    while std::path::Path::new(stop).symlink_metadata().is_err()
        && std::time::Instant::now() < deadline
    {
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = p.file_name().to_string_lossy().into_owned();
            let Ok(n) = pid.parse::<i32>() else { continue };
            if pid == me {
                continue;
            }
            let start = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let after = s.rsplit_once(')')?.1.to_string();
                    after.split_whitespace().nth(19).map(str::to_string)
                })
                .unwrap_or_default();
            if !known.insert((n, start)) {
                continue;
            }
            if let Some(line) = inspect(n, bound, filtered) {
                say(line);
            }
        }
    }
    say("done".into());
    std::process::exit(0)
}

/// Seize `pid`, stop it, read its status and fds, detach: the lines to print, or None when
/// it could not be stopped (gone, refused).
fn inspect(pid: i32, bound: u64, filtered: u32) -> Option<String> {
    // SAFETY: ptrace requests with integer arguments only; the tracee is left running
    // (detached) on every path, and nothing in it is changed.
    if unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) } != 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0) };
    // Until it stops (or exits), at most 2 s.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut stopped = false;
    while std::time::Instant::now() < end {
        let mut st = 0;
        // SAFETY: waitpid with a valid status pointer, on our tracee only.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::__WALL | libc::WNOHANG) };
        if r == pid {
            stopped = libc::WIFSTOPPED(st);
            break;
        }
        if r < 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let out = stopped.then(|| {
        let p = pid.to_string();
        let name = status_of(&p, "Name").unwrap_or_default();
        let (eff, prm, bnd) = (
            hex_status(&p, "CapEff"),
            hex_status(&p, "CapPrm"),
            hex_status(&p, "CapBnd"),
        );
        let sec: u32 = status_of(&p, "Seccomp")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|f| {
                let link = std::fs::read_link(f.path())
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("{}:{link}", f.file_name().to_string_lossy())
            })
            .collect();
        let line = format!(
            "{pid} {name} CapEff={eff:x} CapPrm={prm:x} CapBnd={bnd:x} Seccomp={sec} fds={fds:?}"
        );
        // What its environment says (the host tool's, before the command's exec?).
        let environ = std::fs::read(format!("/proc/{pid}/environ"))
            .map(|e| String::from_utf8_lossy(&e).replace('\0', " "))
            .unwrap_or_default();
        let environ = format!("\nenviron {pid} {name} {}", environ.trim_end());
        if (eff | prm | bnd) & !bound != 0 || sec < filtered {
            format!("attached {line}\nPRIVILEGED {line}{environ}")
        } else {
            format!("attached {line}{environ}")
        }
    });
    // SAFETY: as above; detaching a tracee that is not stopped fails harmlessly (our exit
    // detaches it then).
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
    out
}
