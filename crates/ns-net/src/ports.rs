//! `-p/--port`: forward host ports to the container with nftables (the `nft` tool reads one
//! ruleset per container, so a table is added and removed atomically).
//!
//! Unlike nspawn (systemd#6106, #30475), connections the host makes to its own addresses are
//! forwarded too, 127.0.0.1 included: the output chain has no loopback exception, and the
//! veth's host end gets `route_localnet`, so that a DNATed packet with a loopback source may
//! leave through it (it is then masqueraded to the host end's address). IPv6 has no such
//! switch: ::1 stays local, other IPv6 host addresses are forwarded.
//!
//! As nspawn's, the forward answers on every local address (`fib daddr type local`), for the
//! host's own connections and for those arriving from elsewhere (when the host forwards:
//! net.ipv4.ip_forward, as networkd's IPForward= sets it for nspawn). A container without a
//! `--network-gateway` of the family has no route back to those sources (nspawn's guests get
//! one from networkd's DHCP): then every forwarded connection is masqueraded to the host end's
//! address; with a gateway only loopback sources are, and the container sees its clients.
//!
//! `route_localnet` also lifts the kernel's "martian" checks on what arrives through the host
//! end: the container could send to the host's 127.0.0.0/8 services, or from a 127.0.0.0/8
//! source. A filter chain (as Kubernetes' fix for CVE-2020-8558) drops, on that interface,
//! every packet from 127.0.0.0/8 and every packet to 127.0.0.0/8 that is not a reply of a
//! connection the host made (the de-masqueraded answers of forwarded localhost connections,
//! whose destination is 127.0.0.1 again by then); a packet with no conntrack entry is dropped.
//!
//! Each container's rules live in their own tables, `ip ns-run-<monitor pid>` and `ip6 …`;
//! the monitor deletes them at exit, and a later ns-run deletes those of a dead monitor.

use std::io::Write;
use std::process::{Command, Stdio};

use ns_core::state::{NetPlan, Port};
use ns_core::{Context, Error, Result};

/// `[PROTO:]HOSTPORT[:CONTAINERPORT]`, as nspawn.
pub fn parse_port(v: &str) -> Result<Port> {
    let bad = |why: &str| Error::invalid("--port", v, why);
    let (proto, rest) = match v.split_once(':') {
        Some((p @ ("tcp" | "udp"), r)) => (p, r),
        _ => ("tcp", v),
    };
    let (h, c) = rest.split_once(':').unwrap_or((rest, rest));
    let port = |s: &str| {
        s.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("ports are numbers from 1 to 65535"))
    };
    Ok(Port {
        proto: proto.into(),
        host: port(h)?,
        container: port(c)?,
    })
}

pub fn table_name(monitor: u32) -> String {
    format!("ns-run-{monitor}")
}

fn first_addr(list: &[String], v6: bool) -> Option<String> {
    list.iter()
        .filter_map(|a| a.split_once('/').map(|(ip, _)| ip.to_string()))
        .find(|ip| ip.contains(':') == v6)
}

/// The ruleset for one family: DNAT in prerouting (traffic from elsewhere) and output (the
/// host's own connections, to any local address), and the masquerade of what the container
/// could not answer: loopback sources, and, when it has no gateway of the family (no route
/// back to other sources), every forwarded connection.
fn ruleset(
    family: &str,
    table: &str,
    dest: &str,
    host_if: &str,
    ports: &[Port],
    gateway: bool,
) -> String {
    let d = if family == "ip6" {
        format!("[{dest}]")
    } else {
        dest.to_string()
    };
    let mut rules = String::new();
    for p in ports {
        rules.push_str(&format!(
            "    fib daddr type local {} dport {} dnat to {d}:{}\n",
            p.proto, p.host, p.container
        ));
    }
    let masquerade = match (gateway, family) {
        (true, "ip6") => format!("oifname \"{host_if}\" ip6 saddr ::1"),
        (true, _) => format!("oifname \"{host_if}\" ip saddr 127.0.0.0/8"),
        (false, _) => format!("{family} daddr {dest} ct status dnat"),
    };
    // After the NAT of prerouting (-99): a reply's destination is 127.0.0.1 again there.
    let localnet = if family == "ip" {
        format!(
            "  chain localnet {{\n    type filter hook prerouting priority 0;\n    \
             iifname \"{host_if}\" ip saddr 127.0.0.0/8 drop\n    \
             iifname \"{host_if}\" ip daddr 127.0.0.0/8 ct direction reply accept\n    \
             iifname \"{host_if}\" ip daddr 127.0.0.0/8 drop\n  }}\n"
        )
    } else {
        String::new()
    };
    format!(
        "table {family} {table} {{\n  chain prerouting {{\n    type nat hook prerouting priority -99;\n{rules}  }}\n  \
         chain output {{\n    type nat hook output priority -99;\n{rules}  }}\n  \
         chain postrouting {{\n    type nat hook postrouting priority 101;\n    {masquerade} masquerade\n  }}\n{localnet}}}\n"
    )
}

fn nft(input: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(|| "--port needs nftables: cannot run nft".into())?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .ctx(|| "cannot write to nft".into())?;
    let out = child
        .wait_with_output()
        .ctx(|| "cannot wait for nft".into())?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(Error::setup(format!(
            "nft failed: {}",
            err.lines().next().unwrap_or("").trim()
        )))
    }
}

/// Install the forwarding rules for `plan.ports` under tables named after `monitor`.
pub fn apply(plan: &NetPlan, monitor: u32) -> Result<()> {
    if plan.ports.is_empty() {
        return Ok(());
    }
    let host_if = &plan.veth.as_ref().expect("checked by net_plan").host;
    let table = table_name(monitor);
    let mut input = String::new();
    let gateway = |v6: bool| plan.gateway.as_ref().is_some_and(|g| g.contains(':') == v6);
    if let Some(a) = first_addr(&plan.address, false) {
        input.push_str(&ruleset(
            "ip",
            &table,
            &a,
            host_if,
            &plan.ports,
            gateway(false),
        ));
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{host_if}/route_localnet"),
            "1",
        )
        .ctx(|| format!("cannot set route_localnet on {host_if}"))?;
    }
    if let Some(a) = first_addr(&plan.address, true) {
        input.push_str(&ruleset(
            "ip6",
            &table,
            &a,
            host_if,
            &plan.ports,
            gateway(true),
        ));
    }
    nft(&input)
}

/// The line to say when the host does not forward the families of `plan`'s ports: then only
/// connections made on the host itself reach the container (nspawn's guests depend on
/// networkd's IPForward= alike).
pub fn forwarding_note(plan: &NetPlan) -> Option<String> {
    if plan.ports.is_empty() {
        return None;
    }
    let knobs = [
        (
            false,
            "net.ipv4.ip_forward",
            "/proc/sys/net/ipv4/ip_forward",
        ),
        (
            true,
            "net.ipv6.conf.all.forwarding",
            "/proc/sys/net/ipv6/conf/all/forwarding",
        ),
    ];
    let off: Vec<&str> = knobs
        .iter()
        .filter(|(v6, _, file)| {
            first_addr(&plan.address, *v6).is_some()
                && std::fs::read_to_string(file).is_ok_and(|v| v.trim() == "0")
        })
        .map(|(_, name, _)| *name)
        .collect();
    (!off.is_empty()).then(|| {
        format!(
            "--port: {} is 0 here: only connections made on this host reach the container",
            off.join(" and ")
        )
    })
}

/// Remove the tables of `monitor` (missing ones are fine).
pub fn remove(monitor: u32) -> Result<()> {
    let table = table_name(monitor);
    let listing = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .ctx(|| "cannot run nft".into())?;
    let text = String::from_utf8_lossy(&listing.stdout);
    let mut input = String::new();
    for fam in ["ip", "ip6"] {
        if text
            .lines()
            .any(|l| l.trim() == format!("table {fam} {table}"))
        {
            input.push_str(&format!("delete table {fam} {table}\n"));
        }
    }
    if input.is_empty() {
        Ok(())
    } else {
        nft(&input)
    }
}

/// Tables of monitors that are gone (killed before they could remove them).
pub fn stale_monitors() -> Vec<u32> {
    let Ok(out) = Command::new("nft")
        .args(["list", "tables"])
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.trim()
                .rsplit_once(" ns-run-")
                .and_then(|(_, p)| p.parse().ok())
        })
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map_or(true, |c| c.trim() != "ns-run")
        })
        .collect();
    pids.dedup();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_syntax() {
        assert_eq!(
            parse_port("8080").unwrap(),
            Port {
                proto: "tcp".into(),
                host: 8080,
                container: 8080
            }
        );
        assert_eq!(
            parse_port("udp:53:5353").unwrap(),
            Port {
                proto: "udp".into(),
                host: 53,
                container: 5353
            }
        );
        assert_eq!(
            parse_port("8080:80").unwrap(),
            Port {
                proto: "tcp".into(),
                host: 8080,
                container: 80
            }
        );
        for bad in ["0", "x", "tcp:", "sctp:1:2", "70000", "1:2:3"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ruleset_shape() {
        let p = [Port {
            proto: "tcp".into(),
            host: 8080,
            container: 80,
        }];
        let r = ruleset("ip", "ns-run-1", "10.0.0.2", "ve-x", &p, true);
        assert!(
            r.contains("fib daddr type local tcp dport 8080 dnat to 10.0.0.2:80"),
            "{r}"
        );
        assert!(
            r.contains("oifname \"ve-x\" ip saddr 127.0.0.0/8 masquerade"),
            "{r}"
        );
        assert!(
            r.contains("iifname \"ve-x\" ip daddr 127.0.0.0/8 ct direction reply accept\n    iifname \"ve-x\" ip daddr 127.0.0.0/8 drop"),
            "{r}"
        );
        let r6 = ruleset("ip6", "t", "fd00::2", "ve-x", &p, true);
        assert!(r6.contains("dnat to [fd00::2]:80"), "{r6}");
        assert!(!r6.contains("localnet"), "{r6}");
        // Without a gateway the container could not answer other sources: every forwarded
        // connection is masqueraded.
        let r = ruleset("ip", "t", "10.0.0.2", "ve-x", &p, false);
        assert!(
            r.contains("ip daddr 10.0.0.2 ct status dnat masquerade"),
            "{r}"
        );
        let r6 = ruleset("ip6", "t", "fd00::2", "ve-x", &p, false);
        assert!(
            r6.contains("ip6 daddr fd00::2 ct status dnat masquerade"),
            "{r6}"
        );
    }
}
