//! The seccomp filter's tables (src/seccomp/mod.rs), computed once here:
//! - the system call numbers of the three x86 ABIs, from the kernel headers of the build host
//!   (Debian's linux-libc-dev: /usr/include/x86_64-linux-gnu/asm/unistd_{64,32,x32}.h; set
//!   NS_SYSCALL_HEADERS for another directory);
//! - systemd's groups (src/seccomp/groups.txt), nested groups expanded;
//! - for each call, which items of nspawn's allow-list (src/seccomp/nspawn.txt) include it,
//!   as a bit mask.
//!
//! So that at start-up the filter is a pass over three arrays.

use std::collections::BTreeSet;
use std::fmt::Write;

/// The calls of `@group`, nested groups expanded.
fn group(groups: &str, name: &str) -> BTreeSet<String> {
    let line = groups
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("groups.txt has no {name}"));
    let mut out = BTreeSet::new();
    for item in line.split_whitespace().skip(1) {
        if item.starts_with('@') {
            out.extend(group(groups, item));
        } else {
            out.insert(item.to_string());
        }
    }
    out
}

fn main() {
    let src =
        std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("src/seccomp");
    let groups = std::fs::read_to_string(src.join("groups.txt")).unwrap();
    let nspawn = std::fs::read_to_string(src.join("nspawn.txt")).unwrap();
    println!(
        "cargo:rerun-if-changed={}",
        src.join("groups.txt").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        src.join("nspawn.txt").display()
    );
    // nspawn's items: (capability or "", the calls they cover).
    let items: Vec<(String, String, BTreeSet<String>)> = nspawn
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (cap, item) = l.split_once(' ').expect("CAP ITEM");
            let calls = if item.starts_with('@') {
                group(&groups, item)
            } else {
                BTreeSet::from([item.to_string()])
            };
            (
                if cap == "-" {
                    String::new()
                } else {
                    cap.to_string()
                },
                item.to_string(),
                calls,
            )
        })
        .collect();
    assert!(
        items.len() <= 128,
        "nspawn.txt has more items than a u128 has bits"
    );
    let mut out = String::new();
    writeln!(
        out,
        "/// systemd's groups, nested ones expanded (for --system-call-filter=@...)."
    )
    .unwrap();
    writeln!(out, "pub const GROUPS: &[(&str, &[&str])] = &[").unwrap();
    for name in groups
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with('@'))
    {
        let calls: Vec<String> = group(&groups, name).into_iter().collect();
        writeln!(out, "    ({name:?}, &{calls:?}),").unwrap();
    }
    writeln!(out, "];").unwrap();
    writeln!(
        out,
        "/// nspawn's allow-list items: (capability needed, or \"\"; group or call)."
    )
    .unwrap();
    writeln!(out, "pub const NSPAWN: &[(&str, &str)] = &[").unwrap();
    for (cap, item, _) in &items {
        writeln!(out, "    ({cap:?}, {item:?}),").unwrap();
    }
    writeln!(out, "];").unwrap();

    let dir = std::env::var("NS_SYSCALL_HEADERS")
        .unwrap_or_else(|_| "/usr/include/x86_64-linux-gnu/asm".into());
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
        let mut calls: Vec<(u32, String)> = Vec::new();
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
            calls.push((bit | n, name.to_string()));
        }
        calls.sort();
        writeln!(
            out,
            "/// (name, number, nspawn items that allow it), by number."
        )
        .unwrap();
        writeln!(out, "pub const {abi}: &[(&str, u32, u128)] = &[").unwrap();
        for (nr, name) in calls {
            let mask = items
                .iter()
                .enumerate()
                .filter(|(_, (_, _, c))| c.contains(&name))
                .fold(0u128, |m, (i, _)| m | 1 << i);
            writeln!(out, "    ({name:?}, {nr}, {mask:#x}),").unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    println!("cargo:rerun-if-env-changed=NS_SYSCALL_HEADERS");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("tables.rs");
    std::fs::write(dest, out).unwrap();
}
