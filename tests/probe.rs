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
        Some("tiocsti") => {
            let c = b'x';
            // SAFETY: TIOCSTI reads one byte from the pointer, which points at `c`.
            unsafe { libc::ioctl(0, libc::TIOCSTI, &c as *const u8) }.into()
        }
        _ => {
            eprintln!(
                "usage: ns-probe syscall NAME | nr N | socket DOMAIN TYPE PROTOCOL | tiocsti | grab STOPFILE [PREFIX]"
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
