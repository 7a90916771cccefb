//! ns-net: wire the container's network from the host, as systemd-nspawn does: a veth pair
//! (`ve-NAME` ↔ `host0`), bridged (`vb-NAME`) or in a zone (`vz-ZONE`, created on demand), extra
//! pairs, host links moved in, macvlan/ipvlan links; plus ns-run's extensions (addresses, a
//! default route, links up), which nspawn leaves to networkd in the guest.
//!
//! It never runs inside the chain: the monitor runs it on the host once the container's
//! PID 1 exists (between SYNC-2 and SYNC-3), against that PID's network namespace. rtnetlink
//! needs an executor; a current-thread tokio runtime starts no thread. The container's links
//! need no removal: they go with its network namespace.
#![forbid(unsafe_code)]

pub mod names;
pub mod ports;
pub mod wire;

use clap::Parser;
use ns_core::state::{NetPlan, Veth, Vlan};
use ns_core::{Error, Result};

use names::{generate_mac, ifname_valid, shorten_ifname, MacKey};

/// ns-net (--pid PID | --netns PATH) [-n] [--network-bridge BR | --network-zone Z] ...
///
/// Wires the network namespace of PID (or the one at PATH) from the host. With --state-fd N,
/// reads `net` from the state. `--remove-zone Z` deletes the zone bridge `vz-Z`.
#[derive(Parser, Debug, Default)]
#[command(
    name = "ns-net",
    version,
    about = "Wire a container's network namespace from the host"
)]
pub struct Args {
    /// Read the plan from this state fd.
    #[arg(long, value_name = "FD")]
    pub state_fd: Option<i32>,
    /// The container's PID (its network namespace is used).
    #[arg(long, value_name = "PID", conflicts_with = "netns", required_unless_present_any = ["netns", "remove_zone"])]
    pub pid: Option<i32>,
    /// A network namespace file (e.g. /run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<String>,
    /// Machine name: names and MAC addresses derive from it.
    #[arg(short = 'M', long, value_name = "NAME", default_value = "container")]
    pub machine: String,
    #[command(flatten)]
    pub net: NetArgs,
    /// Delete the zone bridge vz-ZONE and exit.
    #[arg(long, value_name = "ZONE")]
    pub remove_zone: Option<String>,
}

/// nspawn's network options (plus ns-run's address extensions), shared by ns-net's and
/// ns-run's command lines.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct NetArgs {
    /// Add a virtual Ethernet connection between host and container (ve-NAME ↔ host0)
    #[arg(short = 'n', long)]
    pub network_veth: bool,
    /// Attach the host end (vb-NAME) to this bridge.
    #[arg(long, value_name = "BRIDGE")]
    pub network_bridge: Option<String>,
    /// Attach the host end to bridge vz-ZONE, created if missing.
    #[arg(long, value_name = "ZONE")]
    pub network_zone: Option<String>,
    /// An extra veth pair HOST[:CONTAINER].
    #[arg(long, value_name = "HOST[:CONTAINER]")]
    pub network_veth_extra: Vec<String>,
    /// Move a host link into the container.
    #[arg(long, value_name = "IFACE")]
    pub network_interface: Vec<String>,
    /// A macvlan link mv-IFACE on a host link.
    #[arg(long, value_name = "IFACE")]
    pub network_macvlan: Vec<String>,
    /// An ipvlan link iv-IFACE on a host link.
    #[arg(long, value_name = "IFACE")]
    pub network_ipvlan: Vec<String>,
    /// Address (CIDR) for the container end of the veth.
    #[arg(long, value_name = "ADDR/LEN")]
    pub network_address: Vec<String>,
    /// Address (CIDR) for the host end of the veth.
    #[arg(long, value_name = "ADDR/LEN")]
    pub network_host_address: Vec<String>,
    /// Default route in the container via this address.
    #[arg(long, value_name = "ADDR")]
    pub network_gateway: Option<String>,
    /// Forward a host port to the container: [PROTO:]HOSTPORT[:CONTAINERPORT].
    #[arg(short = 'p', long, value_name = "[PROTO:]HOSTPORT[:CONTAINERPORT]")]
    pub port: Vec<String>,
}

impl NetArgs {
    /// Check the options and compute the plan for machine `machine` (names and MAC
    /// addresses derive from it).
    pub fn plan(&self, machine: &str) -> Result<NetPlan> {
        net_plan(&self.options(machine))
    }

    /// These options for machine `machine`.
    pub fn options<'a>(&'a self, machine: &'a str) -> NetOptions<'a> {
        NetOptions {
            machine,
            veth: self.network_veth,
            bridge: self.network_bridge.as_deref(),
            zone: self.network_zone.as_deref(),
            veth_extra: &self.network_veth_extra,
            interfaces: &self.network_interface,
            macvlan: &self.network_macvlan,
            ipvlan: &self.network_ipvlan,
            address: &self.network_address,
            host_address: &self.network_host_address,
            gateway: self.network_gateway.as_deref(),
            ports: &self.port,
        }
    }
}

/// The options that decide the network plan, shared by ns-net's flags and ns-run.
#[derive(Debug, Default)]
pub struct NetOptions<'a> {
    pub machine: &'a str,
    pub veth: bool,
    pub bridge: Option<&'a str>,
    pub zone: Option<&'a str>,
    pub veth_extra: &'a [String],
    pub interfaces: &'a [String],
    pub macvlan: &'a [String],
    pub ipvlan: &'a [String],
    pub address: &'a [String],
    pub host_address: &'a [String],
    pub gateway: Option<&'a str>,
    pub ports: &'a [String],
}

impl<'a> NetOptions<'a> {
    /// Does the container need its own network namespace?
    pub fn private(&self) -> bool {
        self.veth
            || self.bridge.is_some()
            || self.zone.is_some()
            || !self.veth_extra.is_empty()
            || !self.interfaces.is_empty()
            || !self.macvlan.is_empty()
            || !self.ipvlan.is_empty()
    }
}

fn check_ifname(option: &str, name: &str) -> Result<()> {
    if ifname_valid(name) {
        Ok(())
    } else {
        Err(Error::invalid(option, name, "not a valid interface name"))
    }
}

fn check_cidr(option: &str, v: &str) -> Result<()> {
    let ok = v.split_once('/').is_some_and(|(a, l)| {
        let max = match a.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => 32,
            Ok(std::net::IpAddr::V6(_)) => 128,
            Err(_) => return false,
        };
        l.parse::<u8>().is_ok_and(|l| l <= max)
    });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            option,
            v,
            "not an address with a prefix length (ADDR/LEN)",
        ))
    }
}

/// A shortened name with its altname (`None` when it fitted).
fn named(prefix: &str, base: &str) -> (String, Option<String>) {
    let full = format!("{prefix}{base}");
    let short = shorten_ifname(&full);
    let alt = (short != full).then_some(full);
    (short, alt)
}

/// Check the options and compute names and MAC addresses as nspawn does.
pub fn net_plan(o: &NetOptions) -> Result<NetPlan> {
    let veth = veth(o)?;
    check_addresses(o, veth.is_some())?;
    let ports = o
        .ports
        .iter()
        .map(|p| ports::parse_port(p))
        .collect::<Result<Vec<_>>>()?;
    if !ports.is_empty() && (veth.is_none() || o.address.is_empty()) {
        return Err(Error::setup(
            "--port needs a veth with a container address (-n and --network-address) to forward to"
                .into(),
        ));
    }
    let veth_extra = veth_extra(o)?;
    for i in o.interfaces {
        check_ifname("--network-interface", i)?;
    }
    Ok(NetPlan {
        veth,
        zone: o.zone.map(str::to_string),
        veth_extra,
        interfaces: o.interfaces.to_vec(),
        macvlan: vlans(o, "--network-macvlan", "mv-", o.macvlan, true)?,
        ipvlan: vlans(o, "--network-ipvlan", "iv-", o.ipvlan, false)?,
        address: o.address.to_vec(),
        host_address: o.host_address.to_vec(),
        gateway: o.gateway.map(str::to_string),
        ports,
    })
}

/// The main veth (-n, or bridged: --network-bridge, --network-zone), if any.
fn veth(o: &NetOptions) -> Result<Option<Veth>> {
    if o.bridge.is_some() && o.zone.is_some() {
        return Err(Error::setup(
            "--network-bridge= and --network-zone= may not be combined".into(),
        ));
    }
    if let Some(b) = o.bridge {
        check_ifname("--network-bridge", b)?;
    }
    let zone_bridge = match o.zone {
        Some(z) => {
            let b = format!("vz-{z}");
            if !ifname_valid(&b) {
                return Err(Error::invalid(
                    "--network-zone",
                    z,
                    "vz-ZONE must be a valid interface name (at most 12 characters)",
                ));
            }
            Some(b)
        }
        None => None,
    };
    let bridge = o.bridge.map(str::to_string).or(zone_bridge);
    if !o.veth && bridge.is_none() {
        return Ok(None);
    }
    let (host, host_altname) = named(if bridge.is_some() { "vb-" } else { "ve-" }, o.machine);
    Ok(Some(Veth {
        host,
        host_altname,
        container: "host0".into(),
        host_mac: generate_mac(o.machine, MacKey::Host, 0),
        container_mac: generate_mac(o.machine, MacKey::Container, 0),
        bridge,
    }))
}

/// ns-run's address extensions: they need a veth, and well-formed values.
fn check_addresses(o: &NetOptions, veth: bool) -> Result<()> {
    if !veth && (!o.address.is_empty() || !o.host_address.is_empty() || o.gateway.is_some()) {
        return Err(Error::setup(
            "--network-address, --network-host-address and --network-gateway need a veth (-n, --network-bridge or --network-zone)".into(),
        ));
    }
    for a in o.address {
        check_cidr("--network-address", a)?;
    }
    for a in o.host_address {
        check_cidr("--network-host-address", a)?;
    }
    if let Some(g) = o.gateway {
        g.parse::<std::net::IpAddr>()
            .map_err(|_| Error::invalid("--network-gateway", g, "not an IP address"))?;
    }
    Ok(())
}

/// `--network-veth-extra=HOST[:CONTAINER]` pairs.
fn veth_extra(o: &NetOptions) -> Result<Vec<Veth>> {
    let mut out = Vec::new();
    for (i, v) in o.veth_extra.iter().enumerate() {
        let (h, c) = v.split_once(':').unwrap_or((v, v));
        check_ifname("--network-veth-extra", h)?;
        check_ifname("--network-veth-extra", c)?;
        out.push(Veth {
            host: h.into(),
            host_altname: None,
            container: c.into(),
            host_mac: generate_mac(o.machine, MacKey::VethExtraHost, i as u64),
            container_mac: generate_mac(o.machine, MacKey::VethExtraContainer, i as u64),
            bridge: None,
        });
    }
    Ok(out)
}

/// macvlan (with a MAC address of its own) or ipvlan links on host links.
fn vlans(
    o: &NetOptions,
    option: &str,
    prefix: &str,
    list: &[String],
    mac: bool,
) -> Result<Vec<Vlan>> {
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            check_ifname(option, p)?;
            let (name, altname) = named(prefix, p);
            Ok(Vlan {
                parent: p.clone(),
                name,
                altname,
                mac: mac
                    .then(|| generate_mac(o.machine, MacKey::Macvlan, i as u64))
                    .flatten(),
            })
        })
        .collect()
}

/// The flags that reproduce `plan` (for `ns-run --print-chain`).
pub fn plan_to_flags(machine: &str, plan: &NetPlan) -> Vec<String> {
    let mut out = vec![format!("--machine={machine}")];
    if let Some(v) = &plan.veth {
        match (&plan.zone, &v.bridge) {
            (Some(z), _) => out.push(format!("--network-zone={z}")),
            (None, Some(b)) => out.push(format!("--network-bridge={b}")),
            (None, None) => out.push("--network-veth".into()),
        }
    }
    for v in &plan.veth_extra {
        out.push(format!("--network-veth-extra={}:{}", v.host, v.container));
    }
    out.extend(
        plan.interfaces
            .iter()
            .map(|i| format!("--network-interface={i}")),
    );
    out.extend(
        plan.macvlan
            .iter()
            .map(|m| format!("--network-macvlan={}", m.parent)),
    );
    out.extend(
        plan.ipvlan
            .iter()
            .map(|m| format!("--network-ipvlan={}", m.parent)),
    );
    out.extend(
        plan.address
            .iter()
            .map(|a| format!("--network-address={a}")),
    );
    out.extend(
        plan.host_address
            .iter()
            .map(|a| format!("--network-host-address={a}")),
    );
    if let Some(g) = &plan.gateway {
        out.push(format!("--network-gateway={g}"));
    }
    out.extend(
        plan.ports
            .iter()
            .map(|p| format!("--port={}:{}:{}", p.proto, p.host, p.container)),
    );
    out
}

impl Args {
    pub fn to_plan(&self) -> Result<NetPlan> {
        self.net.plan(&self.machine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names_like_nspawn() {
        let p = net_plan(&NetOptions {
            machine: "abcdefghijklm",
            veth: true,
            ..Default::default()
        })
        .unwrap();
        let v = p.veth.unwrap();
        assert_eq!(v.host, "ve-abcdefghyhe5");
        assert_eq!(v.host_altname.as_deref(), Some("ve-abcdefghijklm"));
        assert_eq!(v.container, "host0");
        let p = net_plan(&NetOptions {
            machine: "abcdefghijklmnop",
            zone: Some("z"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.veth.as_ref().unwrap().host, "vb-abcdefgh3JDR");
        assert_eq!(p.veth.unwrap().bridge.as_deref(), Some("vz-z"));
    }

    #[test]
    fn bad_network_options() {
        let e = net_plan(&NetOptions {
            machine: "m",
            bridge: Some("b"),
            zone: Some("z"),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.msg.contains("may not be combined"));
        let addr = vec!["10.0.0.1/24".to_string()];
        let e = net_plan(&NetOptions {
            machine: "m",
            address: &addr,
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.msg.contains("need a veth"));
        let bad = vec!["10.0.0.1".to_string()];
        let e = net_plan(&NetOptions {
            machine: "m",
            veth: true,
            address: &bad,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            e.msg,
            "--network-address=10.0.0.1: not an address with a prefix length (ADDR/LEN)"
        );
        let e = net_plan(&NetOptions {
            machine: "m",
            zone: Some("waytoolongzone"),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.msg.starts_with("--network-zone=waytoolongzone"));
        let bad = vec!["a/b".to_string()];
        assert!(net_plan(&NetOptions {
            machine: "m",
            interfaces: &bad,
            ..Default::default()
        })
        .is_err());
    }
}
