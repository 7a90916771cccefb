//! The netlink work, in nspawn's order: host links moved in, the veth pair (its container end
//! created directly inside the container's namespace), bridge or zone, extra pairs, macvlan,
//! ipvlan; then ns-run's addresses, routes and links up, first on the host, then inside.
//! Anything created on the host before a failure is deleted again: bad input leaves no link.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use futures_util::stream::TryStreamExt;
use ns_core::state::{NetPlan, Veth};
use ns_core::{Context, Error, Result};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, IpVlanMode, LinkAttribute, LinkInfo, LinkMessage, MacVlanMode,
};
use rtnetlink::{Handle, LinkBridge, LinkIpVlan, LinkMacVlan, LinkMessageBuilder, LinkUnspec};

/// An rtnetlink error as one line: the errno's text when the kernel sent one.
fn nl_err(what: String) -> impl FnOnce(rtnetlink::Error) -> Error {
    move |e| {
        let why = match &e {
            rtnetlink::Error::NetlinkError(m) => ns_core::error::io_desc(&m.to_io()),
            e => e.to_string(),
        };
        Error::setup(format!("{what}: {why}"))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .ctx(|| "cannot start the netlink executor".into())
}

/// A connection in the current network namespace (the socket stays bound to it).
fn connect() -> Result<Handle> {
    let (conn, handle, _) =
        rtnetlink::new_connection().ctx(|| "cannot open a netlink socket".into())?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(m) => Ok(m),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl_err(format!("cannot look up link {name}"))(e)),
    }
}

async fn index_of(h: &Handle, option: &str, name: &str) -> Result<u32> {
    link_by_name(h, name)
        .await?
        .map(|m| m.header.index)
        .ok_or_else(|| Error::invalid(option, name, "no such network interface"))
}

fn is_bridge(m: &LinkMessage) -> bool {
    m.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

async fn set_up(h: &Handle, index: u32, name: &str) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl_err(format!("cannot bring {name} up")))
}

/// Wire the namespace behind `netns` as `plan` says.
pub fn setup(plan: &NetPlan, netns: BorrowedFd<'_>) -> Result<()> {
    runtime()?.block_on(async {
        let host = connect()?;
        let mut created: Vec<String> = Vec::new();
        let r = setup_host(&host, plan, netns, &mut created).await;
        ns_core::stage::fault("ns-net:mid");
        let r = match r {
            Ok(()) => inside(plan, netns).await,
            e => e,
        };
        if r.is_err() {
            for name in created.iter().rev() {
                if let Ok(Some(m)) = link_by_name(&host, name).await {
                    let _ = host.link().del(m.header.index).execute().await;
                }
            }
        }
        r
    })
}

async fn add_veth(
    h: &Handle,
    v: &Veth,
    netns: BorrowedFd<'_>,
    created: &mut Vec<String>,
) -> Result<u32> {
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new().name(v.container.clone());
    if let Some(mac) = v.container_mac {
        peer = peer.address(mac.to_vec());
    }
    let peer = peer.setns_by_fd(netns.as_raw_fd()).build();
    let mut msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(v.host.clone())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)));
    if let Some(mac) = v.host_mac {
        msg = msg.address(mac.to_vec());
    }
    let msg = msg.build();
    // The host end of a container that just ended goes away with its network namespace,
    // which the kernel tears down asynchronously: a quick restart of the same machine can
    // still find the old name. Wait for it a little (at most 2 s) rather than paying a
    // synchronous delete on every container's exit; a name held by a running container
    // still fails, after the wait.
    let mut delay = std::time::Duration::from_millis(2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match h.link().add(msg.clone()).execute().await {
            Ok(()) => break,
            Err(rtnetlink::Error::NetlinkError(m))
                if m.raw_code() == -libc::EEXIST && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_millis(100));
            }
            Err(e) => {
                return Err(nl_err(format!(
                    "cannot create veth {} ↔ {}",
                    v.host, v.container
                ))(e))
            }
        }
    }
    created.push(v.host.clone());
    let index = index_of(h, "veth", &v.host).await?;
    if let Some(alt) = &v.host_altname {
        // As nspawn: a failed altname is not fatal (it is only a second name).
        let _ = h
            .link()
            .property_add(index)
            .alt_ifname(&[alt.as_str()])
            .execute()
            .await;
    }
    Ok(index)
}

async fn setup_host(
    h: &Handle,
    plan: &NetPlan,
    netns: BorrowedFd<'_>,
    created: &mut Vec<String>,
) -> Result<()> {
    for name in &plan.interfaces {
        let index = index_of(h, "--network-interface", name).await?;
        h.link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(netns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!("cannot move {name} into the container")))?;
    }
    if let Some(zone) = &plan.zone {
        zone_bridge(h, zone).await?;
    }
    if let Some(v) = &plan.veth {
        host_veth(h, plan, v, netns, created).await?;
    }
    for v in &plan.veth_extra {
        add_veth(h, v, netns, created).await?;
    }
    add_vlans(h, plan, netns).await
}

/// The bridge `vz-ZONE` of a network zone, created by its first container.
async fn zone_bridge(h: &Handle, zone: &str) -> Result<()> {
    let br = format!("vz-{zone}");
    if link_by_name(h, &br).await?.is_none() {
        match h
            .link()
            .add(LinkBridge::new(&br).up().build())
            .execute()
            .await
        {
            Ok(()) => {}
            // Another container of the zone created it meanwhile.
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => {}
            Err(e) => return Err(nl_err(format!("cannot create zone bridge {br}"))(e)),
        }
    }
    Ok(())
}

/// The main veth: checked bridge first, then the pair, its host end on the bridge, the host
/// addresses and the link up.
async fn host_veth(
    h: &Handle,
    plan: &NetPlan,
    v: &Veth,
    netns: BorrowedFd<'_>,
    created: &mut Vec<String>,
) -> Result<()> {
    // Check the bridge before creating anything.
    let bridge = match &v.bridge {
        Some(b) => {
            let option = if plan.zone.is_some() {
                "--network-zone"
            } else {
                "--network-bridge"
            };
            let m = link_by_name(h, b)
                .await?
                .ok_or_else(|| Error::invalid(option, b, "no such network interface"))?;
            if !is_bridge(&m) {
                return Err(Error::invalid(option, b, "not a bridge"));
            }
            Some(m.header.index)
        }
        None => None,
    };
    let index = add_veth(h, v, netns, created).await?;
    if let Some(br) = bridge {
        h.link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(br)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!(
                "cannot add {} to bridge {}",
                v.host,
                v.bridge.as_deref().unwrap_or("")
            )))?;
    }
    if !plan.host_address.is_empty() || !plan.address.is_empty() || plan.gateway.is_some() {
        for a in &plan.host_address {
            let (ip, len) = cidr(a)?;
            h.address()
                .add(index, ip, len)
                .execute()
                .await
                .map_err(nl_err(format!("cannot add {a} to {}", v.host)))?;
        }
        set_up(h, index, &v.host).await?;
    }
    Ok(())
}

/// `--network-macvlan` and `--network-ipvlan` links, created straight in the container.
async fn add_vlans(h: &Handle, plan: &NetPlan, netns: BorrowedFd<'_>) -> Result<()> {
    for m in &plan.macvlan {
        let parent = index_of(h, "--network-macvlan", &m.parent).await?;
        let mut b = LinkMacVlan::new(&m.name, parent, MacVlanMode::Bridge);
        if let Some(mac) = m.mac {
            b = b.address(mac.to_vec());
        }
        h.link()
            .add(b.setns_by_fd(netns.as_raw_fd()).build())
            .execute()
            .await
            .map_err(nl_err(format!(
                "cannot create macvlan {} on {}",
                m.name, m.parent
            )))?;
    }
    for m in &plan.ipvlan {
        let parent = index_of(h, "--network-ipvlan", &m.parent).await?;
        h.link()
            .add(
                LinkIpVlan::new(&m.name, parent, IpVlanMode::L2)
                    .setns_by_fd(netns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!(
                "cannot create ipvlan {} on {}",
                m.name, m.parent
            )))?;
    }
    Ok(())
}

fn cidr(a: &str) -> Result<(IpAddr, u8)> {
    let (ip, len) = a
        .split_once('/')
        .ok_or_else(|| Error::invalid("address", a, "not ADDR/LEN"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| Error::invalid("address", a, "not an IP address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| Error::invalid("address", a, "bad prefix length"))?;
    Ok((ip, len))
}

/// [`setup_inside`], then back to the host's namespace (port forwarding follows there).
async fn inside(plan: &NetPlan, netns: BorrowedFd<'_>) -> Result<()> {
    let home = std::fs::File::open("/proc/self/ns/net")
        .ctx(|| "cannot open our network namespace".into())?;
    let r = setup_inside(plan, netns).await;
    nix::sched::setns(home.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .ctx(|| "cannot return to the host's network namespace".into())?;
    r
}

/// Inside the container's namespace: addresses and links up, default route; altnames of
/// macvlan/ipvlan links. Runs after setns, with a connection opened there.
async fn setup_inside(plan: &NetPlan, netns: BorrowedFd<'_>) -> Result<()> {
    let wants_config =
        !plan.address.is_empty() || plan.gateway.is_some() || !plan.host_address.is_empty();
    let altnames: Vec<(&String, &String)> = plan
        .macvlan
        .iter()
        .chain(&plan.ipvlan)
        .filter_map(|m| m.altname.as_ref().map(|a| (&m.name, a)))
        .collect();
    if !wants_config && altnames.is_empty() {
        return Ok(());
    }
    nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .ctx(|| "cannot enter the container's network namespace".into())?;
    let h = connect()?;
    for (name, alt) in altnames {
        if let Ok(Some(m)) = link_by_name(&h, name).await {
            let _ = h
                .link()
                .property_add(m.header.index)
                .alt_ifname(&[alt.as_str()])
                .execute()
                .await;
        }
    }
    let Some(v) = plan.veth.as_ref().filter(|_| wants_config) else {
        return Ok(());
    };
    let index = index_of(&h, "veth", &v.container).await?;
    for a in &plan.address {
        let (ip, len) = cidr(a)?;
        h.address()
            .add(index, ip, len)
            .execute()
            .await
            .map_err(nl_err(format!(
                "cannot add {a} to {} in the container",
                v.container
            )))?;
    }
    set_up(&h, index, &v.container).await?;
    if let Some(g) = &plan.gateway {
        let msg = match g
            .parse::<IpAddr>()
            .map_err(|_| Error::invalid("--network-gateway", g, "not an IP address"))?
        {
            IpAddr::V4(a) => rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .output_interface(index)
                .gateway(a)
                .build(),
            IpAddr::V6(a) => rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .output_interface(index)
                .gateway(a)
                .build(),
        };
        h.route().add(msg).execute().await.map_err(nl_err(format!(
            "cannot add a default route via {g} in the container"
        )))?;
    }
    Ok(())
}

/// Delete the zone bridge `vz-ZONE` (the monitor does this when its container was the zone's
/// last one). A missing bridge is fine.
pub fn remove_zone(zone: &str) -> Result<()> {
    runtime()?.block_on(async {
        let h = connect()?;
        let br = format!("vz-{zone}");
        match link_by_name(&h, &br).await? {
            Some(m) => h
                .link()
                .del(m.header.index)
                .execute()
                .await
                .map_err(nl_err(format!("cannot delete zone bridge {br}"))),
            None => Ok(()),
        }
    })
}

/// Give moved host links back: from the namespace behind `netns` into ours. Each is tried
/// (one that fails does not keep the others); the first failure is returned. A link the
/// guest renamed is not found here: the kernel still hands physical links back to the
/// host's initial namespace when the container's namespace dies.
pub fn return_interfaces(names: &[String], netns: BorrowedFd<'_>) -> Result<()> {
    let home = std::fs::File::open("/proc/self/ns/net")
        .ctx(|| "cannot open our network namespace".into())?;
    nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .ctx(|| "cannot enter the container's network namespace".into())?;
    runtime()?.block_on(async {
        let h = connect()?;
        let mut first_error = None;
        for name in names {
            let r = match index_of(&h, "--network-interface", name).await {
                Ok(index) => h
                    .link()
                    .set(
                        LinkUnspec::new_with_index(index)
                            .down()
                            .setns_by_fd(home.as_raw_fd())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(nl_err(format!("cannot give {name} back to the host"))),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}
