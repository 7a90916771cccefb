//! One error convention for every stage: a message built where the errno is known, and the
//! exit code the toolkit documents (125 setup failed, 126 cannot execute, 127 not found).

use std::fmt;

/// The toolkit (ns-run or a stage) failed: bad option, setup error.
pub const EXIT_SETUP: i32 = 125;
/// The payload exists but cannot be executed.
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// The payload was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: i32,
    pub msg: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn setup(msg: String) -> Error {
        Error {
            code: EXIT_SETUP,
            msg,
        }
    }

    /// An invalid option value: `--option=value: why`.
    pub fn invalid(option: &str, value: &str, why: &str) -> Error {
        Error::setup(format!("{option}={value}: {why}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

/// Attach "what we were doing" to a system error: `cannot mount proc on /proc: EPERM: ...`.
pub trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::setup(format!("{}: {}", what(), e.desc())))
    }
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::setup(format!("{}: {}", what(), io_desc(&e))))
    }
}

/// An io::Error as the one-line strerror text, without Rust's "(os error N)".
pub fn io_desc(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}
