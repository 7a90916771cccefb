//! `list` and `status`, in machinectl's text layout or as JSON (`--output=json`).

use ns_core::Result;
use ns_host::registry::{self, Machine};
use serde_json::json;

/// ID and VERSION_ID of the container's os-release, and PRETTY_NAME, read through the
/// leader's root (what the container itself sees), resolved inside it: a symlink there
/// never reaches a host file, a FIFO does not hang us, and only 64 KiB are read.
fn os_release(m: &Machine) -> (String, String, String) {
    let root = std::path::PathBuf::from(format!("/proc/{}/root", m.leader));
    let text = ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|p| ns_core::paths::read_in_root(&root, p, 64 * 1024))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "-".into())
    };
    (get("ID"), get("VERSION_ID"), get("PRETTY_NAME"))
}

/// The container's own addresses, when it has its own network namespace: IPv4 from its
/// fib_trie (local host routes), IPv6 from if_inet6; loopback and link-local left out.
pub fn addresses(m: &Machine) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: String| std::fs::metadata(p).map(|m| m.ino()).ok();
    if ino(format!("/proc/{}/ns/net", m.leader)) == ino("/proc/self/ns/net".into()) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let trie =
        std::fs::read_to_string(format!("/proc/{}/net/fib_trie", m.leader)).unwrap_or_default();
    let mut last = "";
    for l in trie.lines() {
        let t = l.trim_start_matches([' ', '|', '-', '+']).trim();
        if l.contains("/32 host LOCAL") {
            if !last.starts_with("127.") && !out.iter().any(|a| a == last) {
                out.push(last.to_string());
            }
        } else if !t.is_empty() && t.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            last = t.split_whitespace().next().unwrap_or("");
        }
    }
    let v6 =
        std::fs::read_to_string(format!("/proc/{}/net/if_inet6", m.leader)).unwrap_or_default();
    for l in v6.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Scope 00: global.
        if f.len() == 6 && f[3] == "00" {
            let groups: Vec<String> = (0..8)
                .map(|i| f[0][i * 4..i * 4 + 4].trim_start_matches('0').to_string())
                .collect();
            let a = groups
                .iter()
                .map(|g| if g.is_empty() { "0" } else { g })
                .collect::<Vec<_>>()
                .join(":");
            out.push(a);
        }
    }
    out
}

/// Pids of the container's processes, from its cgroup (the first hierarchy that lists them).
pub fn processes(m: &Machine) -> Vec<i32> {
    m.cgroups
        .iter()
        .find_map(|d| {
            let mut pids = Vec::new();
            pids.extend(ns_host::cgroups::procs_below(d));
            (!pids.is_empty()).then_some(pids)
        })
        .unwrap_or_default()
}

fn ago(usec: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let s = now.saturating_sub(usec) / 1_000_000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}min {}s ago", s / 60, s % 60),
        _ => format!("{}h {}min ago", s / 3600, s % 3600 / 60),
    }
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

pub fn list(json: bool) -> Result<i32> {
    let machines = registry::list()?;
    let rows: Vec<[String; 6]> = machines
        .iter()
        .map(|m| {
            let (os, version, _) = os_release(m);
            let addr = addresses(m);
            [
                m.name.clone(),
                m.class.clone(),
                m.service.clone(),
                os,
                version,
                addr.first().cloned().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"machine": r[0], "class": r[1], "service": r[2], "os": r[3],
                       "version": r[4], "addresses": r[5]})
            })
            .collect();
        ns_core::outln!("{}", serde_json::Value::Array(v));
        return Ok(0);
    }
    if rows.is_empty() {
        ns_core::outln!("No machines.");
        return Ok(0);
    }
    let head = ["MACHINE", "CLASS", "SERVICE", "OS", "VERSION", "ADDRESSES"];
    let width: Vec<usize> = (0..6)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect();
        ns_core::outln!("{}", s.join(" ").trim_end());
    };
    line(head.to_vec());
    for r in &rows {
        line(r.iter().map(|s| s.as_str()).collect());
    }
    ns_core::outln!("\n{} machines listed.", rows.len());
    Ok(0)
}

pub fn status(m: &Machine, json: bool) -> Result<()> {
    let (os, version, pretty) = os_release(m);
    let addrs = addresses(m);
    let procs = processes(m);
    if json {
        let v = json!({
            "name": m.name, "id": m.uuid, "class": m.class, "service": m.service,
            "leader": m.leader, "monitor": m.monitor, "root": m.root,
            "since": m.since_usec, "interfaces": m.interfaces, "addresses": addrs,
            "os": os, "version": version, "boot": m.boot, "processes": procs,
        });
        ns_core::outln!("{v}");
        return Ok(());
    }
    ns_core::outln!("{}({})", m.name, m.uuid);
    let row = |k: &str, v: &str| ns_core::outln!("{k:>16}: {v}");
    row(
        "Since",
        &format!(
            "{}; {}",
            ns_core::format_utc(m.since_usec),
            ago(m.since_usec)
        ),
    );
    row("Leader", &format!("{} ({})", m.leader, comm(m.leader)));
    row("Service", &format!("{}; class {}", m.service, m.class));
    row("Root", &m.root.display().to_string());
    if !m.interfaces.is_empty() {
        row("Iface", &m.interfaces.join(" "));
    }
    for (i, a) in addrs.iter().enumerate() {
        row(if i == 0 { "Address" } else { "" }, a);
    }
    if pretty != "-" {
        row("OS", &pretty);
    }
    row("Monitor", &format!("{} ({})", m.monitor, comm(m.monitor)));
    if !procs.is_empty() {
        ns_core::outln!("{:>16}:", "Processes");
        for p in procs {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            ns_core::outln!("{:>18}{p} {cmd}", "");
        }
    }
    // The console's last lines, as machinectl shows the journal's.
    let lines = crate::log::tail(m, 10);
    if !lines.is_empty() {
        ns_core::outln!("");
        for l in lines {
            ns_core::outln!("{l}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_format() {
        assert_eq!(ns_core::format_utc(0), "Thu 1970-01-01 00:00:00 UTC");
        assert_eq!(
            ns_core::format_utc(1_796_006_486_000_000),
            "Mon 2026-11-30 02:41:26 UTC"
        );
    }
}
