//! Shared by the ns-* stages: the state document, the sync protocol, the stage runner and
//! exec helpers. Stage logic lives in the stages; the only `unsafe` code of the toolkit is in
//! [`sys`].

pub mod cpus;
pub mod error;
pub mod exec;
pub mod paths;
pub mod stage;
pub mod state;
pub mod sync;
pub mod sys;

pub use error::{Context, Error, Result};

/// systemd's parse_boolean: 1/yes/y/true/t/on and 0/no/n/false/f/off, in any case.
pub fn parse_boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
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
