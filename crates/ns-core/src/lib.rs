//! Shared by the ns-* stages: the state document, the sync protocol, the stage runner, the reap
//! loop and exec helpers. Stage logic lives in the stages; the only `unsafe` code of the toolkit
//! is in [`sys`].

pub mod console;
pub mod cpus;
pub mod error;
pub mod exec;
pub mod hook;
pub mod logfile;
pub mod paths;
pub mod progress;
pub mod reap;
pub mod stage;
pub mod state;
pub mod sync;
pub mod sys;
pub mod walk;

pub use error::{Context, Error, Result};

/// `println!` that never panics: on a closed pipe (`ns-ctl status | head -1`) the process
/// dies of SIGPIPE, quietly, as coreutils do; see [`write_stdout`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that never panics: an error line that cannot be written is dropped (a
/// monitor whose stderr went away still cleans up after its container).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Write to stdout and flush; on EPIPE die of SIGPIPE (the disposition is changed only on
/// the way out, so no stage hands it to a payload); other errors are ignored, as by
/// `print!`'s callers that cannot do better.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            sys::die_of_sigpipe();
        }
    }
}

/// Write to stderr; errors are ignored.
pub fn write_stderr(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// The UTC calendar date (year, month, day) and time of day (hour, minute, second) of a
/// Unix time, without a time zone database (Howard Hinnant's civil_from_days).
pub fn utc(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `Mon 2026-11-30 02:41:26 UTC` of a time in microseconds since the epoch (UTC: no time
/// zone database needed), as ns-ctl prints times.
pub fn format_utc(usec: u64) -> String {
    let secs = (usec / 1_000_000) as i64;
    let (y, mo, d, h, mi, s) = utc(secs);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]
        [secs.div_euclid(86400).rem_euclid(7) as usize];
    format!("{wd} {y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// ns-ctl's `-o/--output`: whether it asks for JSON (text or json; anything else refused).
pub fn output_is_json(output: &str) -> Result<bool> {
    match output {
        "text" => Ok(false),
        "json" => Ok(true),
        o => Err(Error::invalid("--output", o, "not text or json")),
    }
}

/// systemd's parse_boolean: 1/yes/y/true/t/on and 0/no/n/false/f/off, in any case.
pub fn parse_boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

/// The largest uid or gid a container process may take. `(uid_t)-1` tells setresuid and
/// friends "leave it unchanged" (uid 4294967295 would stay root), and ids from 2^31 are
/// negative wherever they are read as a signed int; runc refuses ids past 2^31 - 1 and this
/// toolkit refuses 2^31 - 1 as well (kept free, as nspawn keeps its -1 sentinels free).
pub const MAX_ID: u32 = (1 << 31) - 2;

/// `id` as a uid or gid a payload may run with, else the error naming `what=id`.
pub fn check_id(what: &str, id: u64) -> Result<u32> {
    u32::try_from(id)
        .ok()
        .filter(|i| *i <= MAX_ID)
        .ok_or_else(|| {
            Error::invalid(
                what,
                &id.to_string(),
                &format!("uids and gids must be in range 0-{MAX_ID}"),
            )
        })
}

/// N random bytes from the kernel (getrandom via /dev/urandom's interface).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut b = [0u8; N];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b
}

/// The first real-time signal as systemd, nspawn and every other glibc program number it:
/// the kernel's 32 plus the two that glibc keeps for itself. `SIGRTMIN+4` means 38 (systemd's
/// power-off) to the init of any container image; musl, which the toolkit is built against,
/// keeps three and would say 35, so the C library is never asked.
pub const SIGRTMIN: i32 = 34;
/// The last signal number (the kernel's, glibc's and musl's alike).
pub const SIGRTMAX: i32 = 64;

/// systemd's signal_from_string: `SIGTERM`, `TERM`, a number, `RTMIN+N`, `RTMAX-N`.
pub fn parse_signal(option: &str, v: &str) -> Result<i32> {
    let bad = || Error::invalid(option, v, "cannot parse signal");
    if let Ok(n) = v.parse::<i32>() {
        return if (1..65).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let s = v.strip_prefix("SIG").unwrap_or(v);
    let (rtmin, rtmax) = (SIGRTMIN, SIGRTMAX);
    let rt = |base: i32, rest: &str, sign: i32| -> Result<i32> {
        if rest.is_empty() {
            return Ok(base);
        }
        let n: i32 = rest.parse().map_err(|_| bad())?;
        let r = base + sign * n;
        if (0..=rtmax - rtmin).contains(&n) && (rtmin..=rtmax).contains(&r) {
            Ok(r)
        } else {
            Err(bad())
        }
    };
    if let Some(rest) = s.strip_prefix("RTMIN") {
        return rt(
            rtmin,
            rest.strip_prefix('+')
                .unwrap_or(if rest.is_empty() { "" } else { "x" }),
            1,
        );
    }
    if let Some(rest) = s.strip_prefix("RTMAX") {
        return rt(
            rtmax,
            rest.strip_prefix('-')
                .unwrap_or(if rest.is_empty() { "" } else { "x" }),
            -1,
        );
    }
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    NAMES
        .iter()
        .position(|n| *n == s)
        .map(|i| i as i32 + 1)
        .ok_or_else(bad)
}
