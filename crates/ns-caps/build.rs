//! System call numbers of the three x86 ABIs, from the kernel headers of the build host
//! (Debian's linux-libc-dev: /usr/include/x86_64-linux-gnu/asm/unistd_{64,32,x32}.h), as
//! Rust tables for the seccomp filter (src/seccomp/mod.rs). Set NS_SYSCALL_HEADERS to use
//! another directory.

use std::fmt::Write;

fn main() {
    let dir = std::env::var("NS_SYSCALL_HEADERS")
        .unwrap_or_else(|_| "/usr/include/x86_64-linux-gnu/asm".into());
    let mut out = String::new();
    for (abi, file) in [
        ("X86_64", "unistd_64.h"),
        ("X86", "unistd_32.h"),
        ("X32", "unistd_x32.h"),
    ] {
        let path = format!("{dir}/{file}");
        println!("cargo:rerun-if-changed={path}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{path}: {e} (install linux-libc-dev, or set NS_SYSCALL_HEADERS)")
        });
        writeln!(out, "pub const {abi}: &[(&str, u32)] = &[").unwrap();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("#define __NR_") else {
                continue;
            };
            let Some((name, value)) = rest.split_once(char::is_whitespace) else {
                continue;
            };
            // `N`, or `(__X32_SYSCALL_BIT + N)` for x32.
            let value = value.trim();
            let (bit, n) = match value.strip_prefix("(__X32_SYSCALL_BIT + ") {
                Some(v) => (0x4000_0000u32, v.trim_end_matches(')')),
                None => (0, value),
            };
            let Ok(n) = n.trim().parse::<u32>() else {
                continue;
            };
            writeln!(out, "    ({name:?}, {}),", bit | n).unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    println!("cargo:rerun-if-env-changed=NS_SYSCALL_HEADERS");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("syscalls.rs");
    std::fs::write(dest, out).unwrap();
}
