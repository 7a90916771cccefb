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
        _ => {
            eprintln!(
                "usage: ns-probe syscall NAME | nr N | socket DOMAIN TYPE PROTOCOL | tiocsti | tioclinux"
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
