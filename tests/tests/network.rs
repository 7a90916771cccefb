//! Networking end to end: --private-network, veth pairs (-n) with nspawn's names and MACs,
//! bridges, zones, extra pairs, moved links, macvlan/ipvlan, joined namespaces, ns-run's
//! address options and -p port forwarding, and what is left after failures and kills.
//!
//! Every container whose network is wired runs inside a throwaway network namespace of its
//! test ([`TestNetns`], `ip netns add ns-t-…`, deleted on drop, also when the test fails), entered
//! with `nsenter --net=` in front of ns-run: the host's own links are never touched, and
//! traffic only goes to addresses inside those namespaces (10.231.x.y), with bounded waits.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ns_tests::{
    our_mounts, procs_in, run_cmd, spawn, wait_no_procs_in, Output, Running, Stopping, TestNetns,
    Tree,
};

/// How long a container may take to print `ready`.
const READY: Duration = Duration::from_secs(10);
/// How long the kernel may take to remove the links of a dead network namespace.
const GONE: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// Helpers

/// What the network tests read in a namespace of theirs ([`TestNetns`], made with the tag
/// `t`): its links in detail, addresses, nftables, and traffic from inside.
trait NetnsExt {
    fn link_list(&self) -> Vec<Link>;
    fn names(&self) -> Vec<String>;
    fn link(&self, name: &str) -> Option<Link>;
    fn wait_gone(&self, name: &str) -> bool;
    fn wait_names(&self, want: &[String]) -> Vec<String>;
    fn addrs4(&self, name: &str) -> Vec<String>;
    fn nft_tables(&self) -> Vec<String>;
    fn ping(&self, addr: &str) -> Output;
    fn fetch(&self, addr: &str, port: u16, want: &str) -> String;
}

impl NetnsExt for TestNetns {
    /// The namespace's links (`ip -j -d link show`).
    fn link_list(&self) -> Vec<Link> {
        let text = self.ok(&["ip", "-j", "-d", "link", "show"]);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip -j link: {e}: {text}"));
        let strs = |x: Option<&serde_json::Value>| -> Vec<String> {
            x.and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        v.as_array()
            .expect("ip -j link gives an array")
            .iter()
            .map(|l| Link {
                index: l["ifindex"].as_u64().unwrap_or_default(),
                name: l["ifname"].as_str().unwrap_or_default().to_string(),
                flags: strs(l.get("flags")),
                master: l.get("master").and_then(|m| m.as_str()).map(String::from),
                mac: l["address"].as_str().unwrap_or_default().to_string(),
                altnames: strs(l.get("altnames")),
                kind: l
                    .get("linkinfo")
                    .and_then(|i| i.get("info_kind"))
                    .and_then(|k| k.as_str())
                    .map(String::from),
            })
            .collect()
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.link_list().into_iter().map(|l| l.name).collect();
        v.sort();
        v
    }

    fn link(&self, name: &str) -> Option<Link> {
        self.link_list().into_iter().find(|l| l.name == name)
    }

    /// Wait up to [`GONE`] for link `name` to disappear; true when it did.
    fn wait_gone(&self, name: &str) -> bool {
        poll(GONE, || self.link(name).is_none())
    }

    /// Wait up to [`GONE`] for the link names to be `want` (sorted); returns the last ones.
    fn wait_names(&self, want: &[String]) -> Vec<String> {
        let mut last = Vec::new();
        poll(GONE, || {
            last = self.names();
            last == want
        });
        last
    }

    /// The IPv4 addresses (ADDR/LEN) of link `name`.
    fn addrs4(&self, name: &str) -> Vec<String> {
        let text = self.ok(&["ip", "-j", "-4", "addr", "show", "dev", name]);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip -j addr: {e}: {text}"));
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .map(|a| {
                format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or_default(),
                    a["prefixlen"]
                )
            })
            .collect()
    }

    /// `nft list tables` inside.
    fn nft_tables(&self) -> Vec<String> {
        self.ok(&["nft", "list", "tables"])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// One ping from the namespace (busybox: the host has no other ping).
    fn ping(&self, addr: &str) -> Output {
        self.exec(&["busybox", "ping", "-c1", "-W1", addr])
    }

    /// Connect to ADDR:PORT from the namespace and read what the server sends; retried
    /// (the container's server is restarted between connections) for at most ~10 s.
    fn fetch(&self, addr: &str, port: u16, want: &str) -> String {
        let port = port.to_string();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.exec(&["timeout", "2", "busybox", "nc", "-w", "1", addr, &port]);
            if out.stdout.contains(want) {
                return out.stdout;
            }
            if Instant::now() >= end {
                panic!("no answer from {addr}:{port} in {}: {out}", self.name)
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One link as `ip -j -d link` shows it.
#[derive(Debug, Clone)]
struct Link {
    index: u64,
    name: String,
    flags: Vec<String>,
    master: Option<String>,
    mac: String,
    altnames: Vec<String>,
    kind: Option<String>,
}

impl Link {
    fn up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }
}

/// Call `f` until it is true or `timeout` passed; returns its last answer.
fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Nothing of a container is left: no process in its tree, the host mount table unchanged.
fn assert_nothing_left(tree: &Tree, mounts_before: &[String]) {
    let left = wait_no_procs_in(tree.path(), Duration::from_secs(3));
    assert!(left.is_empty(), "processes left: {left:#?}");
    let after = our_mounts();
    assert_eq!(after, mounts_before, "host mount table changed");
}

/// Start `cmd` and wait until the container prints `ready`.
fn start(cmd: Command) -> Running {
    let mut r = spawn(cmd, None);
    if !r.wait_stdout("ready", READY) {
        let out = r.wait_for(Duration::from_secs(2));
        panic!("container did not get ready: {out:?}");
    }
    r
}

/// Stop a running container with SIGTERM (nspawn's rules: killed at once, ns-run exits 137).
fn stop(r: Stopping) -> Output {
    let out = r.stop();
    assert_eq!((out.code, out.signal), (137, None), "{out}");
    out
}

/// Exit code 125 and exactly one line on stderr that names `needles`.
fn assert_fails_one_line(out: &Output, needles: &[&str]) {
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(out.stderr_lines().len(), 1, "not one line: {out}");
    assert!(out.stderr.ends_with('\n'), "{out}");
    for n in needles {
        assert!(out.stderr.contains(n), "stderr does not name {n:?}: {out}");
    }
}

/// Link names of busybox `ip -o link` output, `@peer` removed.
fn ip_o_names(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    v.sort();
    v
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// A payload printing `ready` after `before` and then sleeping.
fn ready_then_sleep(before: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("{before}\necho ready\nexec sleep 1000"),
    ]
}

fn argv(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Removes a zone's lock file if a failed test left it (the runtime removes it itself).
struct ZoneFile(String);

impl ZoneFile {
    fn new(prefix: &str) -> ZoneFile {
        ZoneFile(ns_tests::unique(prefix))
    }

    fn lock_path(&self) -> String {
        format!("/run/ns-run/zones/{}", self.0)
    }
}

impl Drop for ZoneFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.lock_path());
    }
}

// ---------------------------------------------------------------------------------------
// --private-network

#[test]
fn private_network_has_only_lo_up() {
    let ns = TestNetns::new("t");
    let t = Tree::rootfs("privnet");
    let before = our_mounts();
    // A link the container must not see.
    ns.ok(&[
        "ip", "link", "add", "pn0", "type", "veth", "peer", "name", "pn1",
    ]);
    let host_links = ns.names();
    let out = run_cmd(
        ns.ns_run(
            &t,
            &["--private-network", "-M", "t-priv"],
            &[
                "sh",
                "-c",
                "ip -o link\n\
                 ping -c1 -W1 127.0.0.1 >/dev/null && echo PING-OK\n\
                 echo NS=$(readlink /proc/self/ns/net)",
            ],
        ),
        None,
    );
    assert_eq!(out.code, 0, "{out}");
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| *l != "PING-OK" && !l.starts_with("NS="))
        .collect();
    assert_eq!(lines.len(), 1, "more than lo: {out}");
    assert!(lines[0].starts_with("1: lo: <"), "{out}");
    let flags = lines[0].split(['<', '>']).nth(1).unwrap_or_default();
    assert!(flags.split(',').any(|f| f == "UP"), "lo is not up: {out}");
    assert!(
        out.stdout.contains("PING-OK"),
        "127.0.0.1 not pingable: {out}"
    );
    use std::os::unix::fs::MetadataExt;
    let outer = std::fs::metadata(ns.path()).expect("stat netns").ino();
    assert!(out.stdout.contains("NS=net:["), "{out}");
    assert!(
        !out.stdout.contains(&format!("NS=net:[{outer}]")),
        "the container shares the outer namespace: {out}"
    );
    // Nothing was wired on the host side.
    assert_eq!(ns.names(), host_links);
    assert_nothing_left(&t, &before);
}

// ---------------------------------------------------------------------------------------
// -n: veth pair

/// MAC addresses of one `-n` run of machine `m`: (host end, container end).
fn veth_run(ns: &TestNetns, t: &Tree, m: &str) -> (String, String) {
    let host_if = format!("ve-{m}");
    let payload = ready_then_sleep("ip -o link; echo MAC=$(cat /sys/class/net/host0/address)");
    let r = start(ns.ns_run(t, &["-n", "-M", m], &argv(&payload)));
    let inside = r.stdout_so_far();
    let r = Stopping::new(r);
    let macs = {
        let names = ip_o_names(
            &inside
                .lines()
                .filter(|l| !l.starts_with("MAC=") && *l != "ready")
                .collect::<Vec<_>>()
                .join("\n"),
        );
        assert_eq!(names, sorted(&["host0", "lo"]), "inside: {inside}");
        let l = ns
            .link(&host_if)
            .unwrap_or_else(|| panic!("no {host_if} on the host side: {:?}", ns.names()));
        assert_eq!(l.kind.as_deref(), Some("veth"), "{l:?}");
        // nspawn leaves both ends down and unconfigured without address options.
        assert!(!l.up(), "{host_if} is up: {l:?}");
        assert!(ns.addrs4(&host_if).is_empty(), "{host_if} has addresses");
        let cmac = inside
            .lines()
            .find_map(|l| l.strip_prefix("MAC="))
            .unwrap_or_default()
            .to_string();
        (l.mac, cmac)
    };
    stop(r);
    assert!(
        ns.wait_gone(&host_if),
        "{host_if} still there {GONE:?} after exit: {:?}",
        ns.names()
    );
    macs
}

/// Unicast and locally administered, as nspawn's generated MACs.
fn assert_local_mac(mac: &str) {
    let first = u8::from_str_radix(mac.get(..2).unwrap_or("zz"), 16)
        .unwrap_or_else(|_| panic!("not a MAC: {mac:?}"));
    assert_eq!(first & 0x03, 0x02, "not a local unicast MAC: {mac}");
}

#[test]
fn veth_pair_names_macs_and_lifetime() {
    let ns = TestNetns::new("t");
    let t = Tree::rootfs("veth");
    let before = our_mounts();
    let (h1, c1) = veth_run(&ns, &t, "t-veth");
    assert_local_mac(&h1);
    assert_local_mac(&c1);
    assert_ne!(h1, c1);
    // Stable: derived from the machine id and the machine name (a restart right after the
    // exit also waits for the old host end, if the kernel has not removed it yet).
    let (h2, c2) = veth_run(&ns, &t, "t-veth");
    assert_eq!((&h1, &c1), (&h2, &c2), "MACs changed between runs");
    // Another name, other MACs.
    let (h3, c3) = veth_run(&ns, &t, "t-veth2");
    assert_ne!(h3, h1);
    assert_ne!(c3, c1);
    assert_nothing_left(&t, &before);
}

#[test]
fn veth_long_machine_name_is_shortened_with_an_altname() {
    let ns = TestNetns::new("t");
    let t = Tree::rootfs("longname");
    let before = our_mounts();
    let r = start(ns.ns_run(
        &t,
        &["-n", "-M", "abcdefghijklm"],
        &argv(&ready_then_sleep("")),
    ));
    let r = Stopping::new(r);
    let l = ns
        .link("ve-abcdefghyhe5")
        .unwrap_or_else(|| panic!("no ve-abcdefghyhe5: {:?}", ns.link_list()));
    assert_eq!(l.altnames, vec!["ve-abcdefghijklm".to_string()], "{l:?}");
    // Also as ip shows it, looked up by the altname.
    let text = ns.ok(&["ip", "-d", "link", "show", "ve-abcdefghijklm"]);
    assert!(text.contains("ve-abcdefghyhe5"), "{text}");
    assert!(text.contains("altname ve-abcdefghijklm"), "{text}");
    stop(r);
    assert!(ns.wait_gone("ve-abcdefghyhe5"), "{:?}", ns.names());
    assert_nothing_left(&t, &before);
}

// ---------------------------------------------------------------------------------------
// ns-run's address options

#[test]
fn addresses_gateway_and_ping_both_ways() {
    let ns = TestNetns::new("t");
    let t = Tree::rootfs("addr");
    let before = our_mounts();
    let payload = ready_then_sleep(
        "ip -o link show host0; ip -o -4 addr show host0; ip route\n\
         ping -c1 -W1 10.231.1.1 >/dev/null && echo PING-OK",
    );
    let r = start(ns.ns_run(
        &t,
        &[
            "-n",
            "-M",
            "t-addr",
            "--network-address=10.231.1.2/24",
            "--network-host-address=10.231.1.1/24",
            "--network-gateway=10.231.1.1",
        ],
        &argv(&payload),
    ));
    let inside = r.stdout_so_far();
    let r = Stopping::new(r);
    let link_line = inside.lines().next().unwrap_or_default();
    let flags = link_line.split(['<', '>']).nth(1).unwrap_or_default();
    assert!(flags.split(',').any(|f| f == "UP"), "host0 down: {inside}");
    assert!(inside.contains("inet 10.231.1.2/24"), "{inside}");
    assert!(
        inside
            .lines()
            .any(|l| l.starts_with("default via 10.231.1.1 dev host0")),
        "no default route: {inside}"
    );
    assert!(
        inside.contains("PING-OK"),
        "container cannot ping the host end: {inside}"
    );
    let l = ns.link("ve-t-addr").expect("host end");
    assert!(l.up(), "host end down: {l:?}");
    assert_eq!(ns.addrs4("ve-t-addr"), vec!["10.231.1.1/24".to_string()]);
    let p = ns.ping("10.231.1.2");
    assert_eq!(p.code, 0, "host side cannot ping the container: {p}");
    stop(r);
    assert!(ns.wait_gone("ve-t-addr"), "{:?}", ns.names());
    assert_nothing_left(&t, &before);
}

// ---------------------------------------------------------------------------------------
// --network-bridge

#[test]
fn bridge_enslaves_the_host_end() {
    let ns = TestNetns::new("t");
    let t = Tree::rootfs("bridge");
    let before = our_mounts();
    ns.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    let r = start(ns.ns_run(
        &t,
        &["--network-bridge=br0", "-M", "t-br"],
        &argv(&ready_then_sleep("")),
    ));
    let r = Stopping::new(r);
    let l = ns
        .link("vb-t-br")
        .unwrap_or_else(|| panic!("no vb-t-br: {:?}", ns.names()));
    assert_eq!(l.master.as_deref(), Some("br0"), "{l:?}");
    assert!(l.up(), "vb-t-br is not up: {l:?}");
    assert!(
        ns.link("ve-t-br").is_none(),
        "a ve- link too: {:?}",
        ns.names()
    );
    stop(r);
    assert!(ns.wait_gone("vb-t-br"), "{:?}", ns.names());
    assert!(ns.link("br0").is_some(), "the user's bridge is gone");
    assert_nothing_left(&t, &before);
}

#[test]
fn bridge_missing_or_not_a_bridge_creates_nothing() {
    let ns = TestNetns::new("t");
    let t = Tree::rootfs("nobridge");
    let before = our_mounts();
    ns.ok(&[
        "ip", "link", "add", "vx0", "type", "veth", "peer", "name", "vx1",
    ]);
    let links = ns.names();

    let out = run_cmd(
        ns.ns_run(&t, &["--network-bridge=nosuch", "-M", "t-nobr"], &["true"]),
        None,
    );
    assert_fails_one_line(&out, &["--network-bridge=nosuch"]);
    // Documented: checked before anything is created, so nothing to wait for.
    assert_eq!(ns.names(), links, "links changed");
    assert_nothing_left(&t, &before);

    let out = run_cmd(
        ns.ns_run(&t, &["--network-bridge=vx0", "-M", "t-nobr"], &["true"]),
        None,
    );
    assert_fails_one_line(&out, &["--network-bridge=vx0", "not a bridge"]);
    assert_eq!(ns.names(), links, "links changed");
    assert!(ns.link("vx0").is_some_and(|l| l.master.is_none()));
    assert_nothing_left(&t, &before);
}

// ---------------------------------------------------------------------------------------
// --network-zone

/// Bridge ports: the links whose master is `bridge`, sorted.
fn ports_of(ns: &TestNetns, bridge: &str) -> Vec<String> {
    let mut v: Vec<String> = ns
        .link_list()
        .into_iter()
        .filter(|l| l.master.as_deref() == Some(bridge))
        .map(|l| l.name)
        .collect();
    v.sort();
    v
}

#[test]
fn zone_bridge_is_shared_and_removed_by_the_last_container() {
    let ns = TestNetns::new("t");
    let zone = ZoneFile::new("z1");
    let br = format!("vz-{}", zone.0);
    let ta = Tree::rootfs("zone-a");
    let tb = Tree::rootfs("zone-b");
    let before = our_mounts();
    let zopt = format!("--network-zone={}", zone.0);
    let pinger = |peer: &str| {
        vec![
            "sh".to_string(),
            "-c".to_string(),
            format!(
                "echo ready\n\
                 n=0\n\
                 until ping -c1 -W1 {peer} >/dev/null 2>&1; do\n\
                   n=$((n+1)); [ $n -lt 15 ] || {{ echo PING-FAIL; exec sleep 1000; }}\n\
                   sleep 0.5\n\
                 done\n\
                 echo PING-OK\n\
                 exec sleep 1000"
            ),
        ]
    };
    let mut a = start(ns.ns_run(
        &ta,
        &[&zopt, "-M", "t-za", "--network-address=10.231.5.2/24"],
        &argv(&pinger("10.231.5.3")),
    ));
    let l = ns.link(&br);
    assert!(
        l.as_ref()
            .is_some_and(|l| l.kind.as_deref() == Some("bridge") && l.up()),
        "zone bridge {br} missing or down: {l:?}"
    );
    assert!(Path::new(&zone.lock_path()).exists());
    let mut b = start(ns.ns_run(
        &tb,
        &[&zopt, "-M", "t-zb", "--network-address=10.231.5.3/24"],
        &argv(&pinger("10.231.5.2")),
    ));
    assert_eq!(ports_of(&ns, &br), sorted(&["vb-t-za", "vb-t-zb"]));
    for (r, who) in [(&mut a, "a"), (&mut b, "b")] {
        let ok = r.wait_stdout("PING-OK", Duration::from_secs(20));
        assert!(
            ok,
            "container {who} cannot ping the other: {}",
            r.stdout_so_far()
        );
    }
    // The first one to leave keeps the bridge for the other.
    stop(Stopping::new(a));
    assert!(ns.wait_gone("vb-t-za"), "{:?}", ns.names());
    assert!(
        ns.link(&br).is_some(),
        "{br} removed while t-zb still uses it"
    );
    assert_eq!(ports_of(&ns, &br), vec!["vb-t-zb".to_string()]);
    assert!(Path::new(&zone.lock_path()).exists());
    stop(Stopping::new(b));
    assert!(
        ns.wait_gone(&br),
        "{br} left after the last container: {:?}",
        ns.names()
    );
    assert!(
        !Path::new(&zone.lock_path()).exists(),
        "{} left",
        zone.lock_path()
    );
    assert!(ns.wait_gone("vb-t-zb"), "{:?}", ns.names());
    assert_nothing_left(&ta, &before);
    assert_nothing_left(&tb, &before);
}

#[test]
fn zone_bridge_is_removed_when_its_containers_end_together() {
    let ns = TestNetns::new("t");
    let zone = ZoneFile::new("z2");
    let br = format!("vz-{}", zone.0);
    let ta = Tree::rootfs("zone2-a");
    let tb = Tree::rootfs("zone2-b");
    let before = our_mounts();
    let zopt = format!("--network-zone={}", zone.0);
    for round in 0..3 {
        let a = start(ns.ns_run(&ta, &[&zopt, "-M", "t-zc"], &argv(&ready_then_sleep(""))));
        let b = start(ns.ns_run(&tb, &[&zopt, "-M", "t-zd"], &argv(&ready_then_sleep(""))));
        assert_eq!(ports_of(&ns, &br), sorted(&["vb-t-zc", "vb-t-zd"]));
        // As close together as we can.
        a.signal(libc::SIGTERM);
        b.signal(libc::SIGTERM);
        for r in [a, b] {
            let out = r.wait();
            assert_eq!(out.code, 137, "{out}");
        }
        assert!(
            ns.wait_gone(&br),
            "round {round}: {br} left after both ended: {:?}",
            ns.names()
        );
        assert!(
            !Path::new(&zone.lock_path()).exists(),
            "round {round}: {} left",
            zone.lock_path()
        );
        assert!(ns.wait_gone("vb-t-zc") && ns.wait_gone("vb-t-zd"));
    }
    assert_nothing_left(&ta, &before);
    assert_nothing_left(&tb, &before);
}

// ---------------------------------------------------------------------------------------
// Extra pairs, moved links, macvlan/ipvlan

#[test]
fn veth_extra_and_moved_interface() {
    let ns = TestNetns::new("t");
    let t = Tree::rootfs("extra");
    let before = our_mounts();
    ns.ok(&[
        "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1",
    ]);
    let r = start(ns.ns_run(
        &t,
        &[
            "-M",
            "t-extra",
            "--network-veth-extra=hx:cx",
            "--network-veth-extra=hy",
            "--network-interface=p1",
        ],
        &argv(&ready_then_sleep("ip -o link")),
    ));
    let inside = r.stdout_so_far();
    let r = Stopping::new(r);
    let names = ip_o_names(&inside.replace("ready\n", ""));
    assert_eq!(names, sorted(&["cx", "hy", "lo", "p1"]), "inside: {inside}");
    let host = ns.names();
    for n in ["hx", "hy", "p0"] {
        assert!(
            host.iter().any(|h| h == n),
            "no {n} on the host side: {host:?}"
        );
    }
    for n in ["cx", "p1"] {
        assert!(
            !host.iter().any(|h| h == n),
            "{n} on the host side: {host:?}"
        );
    }
    stop(r);
    // Given back before ns-run exits.
    let p1 = ns.link("p1");
    assert!(p1.is_some(), "p1 not given back: {:?}", ns.names());
    assert!(ns.wait_gone("hx"), "{:?}", ns.names());
    assert!(ns.wait_gone("hy"), "{:?}", ns.names());
    assert_eq!(ns.names(), sorted(&["lo", "p0", "p1"]));
    assert_nothing_left(&t, &before);
}

#[test]
fn macvlan_inside_and_ipvlan() {
    let ns = TestNetns::new("t");
    let t = Tree::rootfs("macvlan");
    let before = our_mounts();
    ns.ok(&[
        "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1",
    ]);
    let links = ns.names();
    let r = start(ns.ns_run(
        &t,
        &["-M", "t-mv", "--network-macvlan=p0"],
        &argv(&ready_then_sleep("ip -o link")),
    ));
    let inside = r.stdout_so_far();
    let r = Stopping::new(r);
    let names = ip_o_names(&inside.replace("ready\n", ""));
    assert_eq!(names, sorted(&["lo", "mv-p0"]), "inside: {inside}");
    // busybox ip has no -d: look at the container's namespace from the host.
    let pid = payload_pid(&t, "1000");
    let text = ns.ok(&[
        "nsenter",
        &format!("--net=/proc/{pid}/ns/net"),
        "ip",
        "-d",
        "link",
        "show",
        "mv-p0",
    ]);
    assert!(text.contains("macvlan mode bridge"), "{text}");
    let mac = text
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default();
    assert_local_mac(mac);
    assert_eq!(ns.names(), links, "mv-p0 on the host side");
    stop(r);
    assert_eq!(ns.wait_names(&links), links, "links changed");

    // ipvlan: what the kernel supports decides what to expect.
    let probe = ns.exec(&[
        "ip", "link", "add", "ivprobe", "link", "p0", "type", "ipvlan", "mode", "l2",
    ]);
    let has_ipvlan = probe.code == 0;
    if has_ipvlan {
        ns.ok(&["ip", "link", "del", "ivprobe"]);
    }
    let out = run_cmd(
        ns.ns_run(
            &t,
            &["-M", "t-iv", "--network-ipvlan=p0"],
            &["sh", "-c", "ip -o link show iv-p0"],
        ),
        None,
    );
    if has_ipvlan {
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("iv-p0"), "{out}");
    } else {
        assert_fails_one_line(&out, &["iv-p0"]);
    }
    assert_eq!(ns.wait_names(&links), links, "links changed");
    assert_nothing_left(&t, &before);
}

// ---------------------------------------------------------------------------------------
// --network-namespace-path

#[test]
fn joins_an_existing_network_namespace() {
    let outer = TestNetns::new("t");
    let target = TestNetns::new("t");
    let t = Tree::rootfs("joinns");
    let before = our_mounts();
    outer.ok(&[
        "ip", "link", "add", "oa0", "type", "veth", "peer", "name", "oa1",
    ]);
    target.ok(&[
        "ip", "link", "add", "np0", "type", "veth", "peer", "name", "np1",
    ]);
    let (outer_links, target_links) = (outer.names(), target.names());
    let nspath = format!("--network-namespace-path={}", target.path());
    let out = run_cmd(
        outer.ns_run(
            &t,
            &[&nspath, "-M", "t-join"],
            &[
                "sh",
                "-c",
                "ip -o link; echo NS=$(readlink /proc/self/ns/net)",
            ],
        ),
        None,
    );
    assert_eq!(out.code, 0, "{out}");
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(target.path()).expect("stat netns").ino();
    assert!(
        out.stdout.contains(&format!("NS=net:[{ino}]")),
        "not in {}: {out}",
        target.path()
    );
    let links: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("NS="))
        .collect();
    assert_eq!(
        ip_o_names(&links.join("\n")),
        sorted(&["lo", "np0", "np1"]),
        "{out}"
    );
    assert_eq!(outer.names(), outer_links);
    assert_eq!(target.names(), target_links);
    assert_nothing_left(&t, &before);

    let out = run_cmd(
        outer.ns_run(&t, &[&nspath, "-n", "-M", "t-join"], &["true"]),
        None,
    );
    assert_fails_one_line(&out, &["--network-namespace-path"]);
    assert_eq!(outer.names(), outer_links);
    assert_eq!(target.names(), target_links);
    assert_nothing_left(&t, &before);
}

// ---------------------------------------------------------------------------------------
// -p/--port

const PORT_OPTS: [&str; 5] = [
    "-n",
    "-M",
    "t-port",
    "--network-address=10.231.3.2/24",
    "--network-host-address=10.231.3.1/24",
];

fn port_server() -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        "echo ready\nwhile true; do echo hello-from-t-port | nc -l -p 80; done".into(),
    ]
}

#[test]
fn port_forwarding_from_the_host_and_its_tables() {
    let ns = TestNetns::new("t");
    let t = Tree::rootfs("port");
    let before = our_mounts();
    let mut opts = PORT_OPTS.to_vec();
    opts.extend(["-p", "8080:80"]);
    let server = port_server();
    let r = start(ns.ns_run(&t, &opts, &argv(&server)));
    let monitor = r.pid();
    let table = format!("table ip ns-run-{monitor}");
    let r = Stopping::new(r);
    let tables = ns.nft_tables();
    assert!(tables.contains(&table), "no {table}: {tables:?}");
    ns.fetch("127.0.0.1", 8080, "hello-from-t-port");
    ns.fetch("10.231.3.1", 8080, "hello-from-t-port");
    stop(r);
    let tables = ns.nft_tables();
    assert!(
        !tables.iter().any(|l| l.contains("ns-run-")),
        "tables left: {tables:?}"
    );
    assert!(ns.wait_gone("ve-t-port"), "{:?}", ns.names());
    assert_nothing_left(&t, &before);

    // A killed monitor leaves its table; the next ns-run with -p removes it.
    let r = start(ns.ns_run(&t, &opts, &argv(&server)));
    let killed = r.pid();
    let table = format!("table ip ns-run-{killed}");
    assert!(ns.nft_tables().contains(&table), "{:?}", ns.nft_tables());
    r.signal(libc::SIGKILL);
    let out = r.wait(); // reaped: the pid is gone
    assert_eq!(out.signal, Some(libc::SIGKILL), "{out}");
    assert!(wait_no_procs_in(t.path(), Duration::from_secs(3)).is_empty());
    assert!(
        ns.nft_tables().contains(&table),
        "the killed monitor's table is gone already: {:?}",
        ns.nft_tables()
    );
    assert!(ns.wait_gone("ve-t-port"), "{:?}", ns.names());
    let mut opts2 = PORT_OPTS.to_vec();
    opts2.extend(["-p", "8081:81"]);
    let out = run_cmd(ns.ns_run(&t, &opts2, &["true"]), None);
    assert_eq!(out.code, 0, "{out}");
    let tables = ns.nft_tables();
    assert!(
        !tables.iter().any(|l| l.contains("ns-run-")),
        "tables left: {tables:?}"
    );
    assert!(ns.wait_gone("ve-t-port"), "{:?}", ns.names());
    assert_nothing_left(&t, &before);
}

#[test]
fn port_needs_an_address_and_a_valid_port() {
    let ns = TestNetns::new("t");
    let t = Tree::rootfs("badport");
    let before = our_mounts();
    let links = ns.names();
    let out = run_cmd(
        ns.ns_run(&t, &["-n", "-M", "t-badport", "-p", "8080:80"], &["true"]),
        None,
    );
    assert_fails_one_line(&out, &["--port"]);
    let mut opts = vec!["-n", "-M", "t-badport", "--network-address=10.231.4.2/24"];
    opts.extend(["-p", "0"]);
    let out = run_cmd(ns.ns_run(&t, &opts, &["true"]), None);
    assert_fails_one_line(&out, &["--port=0"]);
    assert_eq!(ns.wait_names(&links), links);
    assert!(ns.nft_tables().iter().all(|l| !l.contains("ns-run-")));
    assert_nothing_left(&t, &before);
}

// ---------------------------------------------------------------------------------------
// Failures and kills

#[test]
fn network_failure_after_links_were_created_leaves_nothing() {
    let ns = TestNetns::new("t");
    let t = Tree::rootfs("netfail");
    let before = our_mounts();
    ns.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    ns.ok(&[
        "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1",
    ]);
    let links = ns.names();
    let cases: [(&[&str], &str); 2] = [
        // p1 moved in, ve-, hx created, then the macvlan parent is missing.
        (
            &[
                "-n",
                "--network-interface=p1",
                "--network-veth-extra=hx:cx",
                "--network-macvlan=nosuch",
            ],
            "nosuch",
        ),
        // p1 moved in, then the bridge is missing.
        (
            &[
                "--network-bridge=nosuch",
                "--network-interface=p1",
                "--network-veth-extra=hx:cx",
            ],
            "--network-bridge=nosuch",
        ),
    ];
    for (opts, needle) in cases {
        let mut o = opts.to_vec();
        o.extend(["-M", "t-fail"]);
        let out = run_cmd(ns.ns_run(&t, &o, &["sh", "-c", "echo payload-ran"]), None);
        assert_fails_one_line(&out, &[needle]);
        assert_eq!(out.stdout, "", "the payload ran: {out}");
        assert_eq!(ns.wait_names(&links), links, "{opts:?}: links left or lost");
        assert!(ns.link("p1").is_some_and(|l| l.master.is_none()));
        assert_nothing_left(&t, &before);
    }
}

#[test]
fn network_failure_in_a_zone_removes_the_new_bridge() {
    let ns = TestNetns::new("t");
    let zone = ZoneFile::new("z3");
    let t = Tree::rootfs("zonefail");
    let before = our_mounts();
    let links = ns.names();
    let zopt = format!("--network-zone={}", zone.0);
    let out = run_cmd(
        ns.ns_run(
            &t,
            &[&zopt, "--network-macvlan=nosuch", "-M", "t-zfail"],
            &["echo", "payload-ran"],
        ),
        None,
    );
    assert_fails_one_line(&out, &["nosuch"]);
    assert_eq!(out.stdout, "", "the payload ran: {out}");
    assert_eq!(ns.wait_names(&links), links, "links left");
    assert!(
        !Path::new(&zone.lock_path()).exists(),
        "{} left",
        zone.lock_path()
    );
    assert_nothing_left(&t, &before);
}

#[test]
fn port_without_nft_fails_with_one_line_and_leaves_nothing() {
    let ns = TestNetns::new("t");
    let t = Tree::rootfs("nonft");
    let before = our_mounts();
    ns.ok(&[
        "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1",
    ]);
    let links = ns.names();
    let mut opts = PORT_OPTS.to_vec();
    opts.extend(["--network-interface=p1", "-p", "8080:80"]);
    let mut cmd = ns.ns_run(&t, &opts, &["echo", "payload-ran"]);
    // ns-run finds nft through PATH: none there.
    cmd.env("PATH", t.host_dir("empty-path"));
    let out = run_cmd(cmd, None);
    assert_fails_one_line(&out, &["--port", "nft"]);
    assert_eq!(out.stdout, "", "the payload ran: {out}");
    assert_eq!(ns.wait_names(&links), links, "links left or lost");
    assert!(ns.nft_tables().iter().all(|l| !l.contains("ns-run-")));
    assert_nothing_left(&t, &before);
}

/// The host pid of the container process running `sleep <tag>`.
fn payload_pid(tree: &Tree, tag: &str) -> i32 {
    let want = format!("sleep {tag}");
    let mut found = None;
    poll(Duration::from_secs(5), || {
        found = procs_in(tree.path()).into_iter().find_map(|p| {
            let (pid, cmd) = p.split_once(": ")?;
            (cmd.trim() == want)
                .then(|| pid.parse::<i32>().ok())
                .flatten()
        });
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no {want} among {:?}", procs_in(tree.path())))
}

#[test]
fn killed_payload_or_monitor_leaves_no_link() {
    let ns = TestNetns::new("t");
    let t = Tree::rootfs("netkill");
    let before = our_mounts();
    let payload = ["sh", "-c", "echo ready; exec sleep 4242"];

    // The payload killed.
    let r = start(ns.ns_run(&t, &["-n", "-M", "t-kill"], &payload));
    assert!(ns.link("ve-t-kill").is_some(), "{:?}", ns.names());
    let pid = payload_pid(&t, "4242");
    // SAFETY: kill takes plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let out = r.wait();
    assert_eq!((out.code, out.signal), (137, None), "{out}");
    assert!(ns.wait_gone("ve-t-kill"), "{:?}", ns.names());
    assert_nothing_left(&t, &before);

    // The monitor killed: the container follows it, and its links with its namespace.
    let r = start(ns.ns_run(&t, &["-n", "-M", "t-kill"], &payload));
    assert!(ns.link("ve-t-kill").is_some(), "{:?}", ns.names());
    r.signal(libc::SIGKILL);
    let out = r.wait();
    assert_eq!(out.signal, Some(libc::SIGKILL), "{out}");
    let left = wait_no_procs_in(t.path(), Duration::from_secs(3));
    assert!(left.is_empty(), "processes left: {left:#?}");
    assert!(ns.wait_gone("ve-t-kill"), "{:?}", ns.names());
    assert_eq!(ns.names(), sorted(&["lo"]));
    // Collect what the killed monitor journaled, then check the mounts.
    let out = run_cmd(ns.ns_run(&t, &["-M", "t-kill"], &["true"]), None);
    assert_eq!(out.code, 0, "{out}");
    assert_nothing_left(&t, &before);
}

#[test]
fn veth_name_held_by_a_running_container_fails_and_keeps_it() {
    let ns = TestNetns::new("t");
    let ta = Tree::rootfs("held-a");
    let tb = Tree::rootfs("held-b");
    let before = our_mounts();
    let r = start(ns.ns_run(&ta, &["-n", "-M", "t-held"], &argv(&ready_then_sleep(""))));
    let r = Stopping::new(r);
    let first = ns.link("ve-t-held").expect("first container's host end");
    // The same machine name on another tree: its host end name is taken (after
    // ns-run's wait for a dying namespace's link, at most 2 s).
    let t0 = Instant::now();
    let out = run_cmd(
        ns.ns_run(&tb, &["-n", "-M", "t-held"], &["echo", "payload-ran"]),
        None,
    );
    assert_fails_one_line(&out, &["ve-t-held", "File exists"]);
    assert_eq!(out.stdout, "", "{out}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_nothing_left(&tb, &before);
    // The failed one did not delete the running container's link.
    let l = ns
        .link("ve-t-held")
        .expect("the running container lost its link");
    assert_eq!((l.index, &l.mac), (first.index, &first.mac));
    assert_eq!(ns.names(), sorted(&["lo", "ve-t-held"]));
    stop(r);
    assert!(ns.wait_gone("ve-t-held"), "{:?}", ns.names());
    assert_nothing_left(&ta, &before);
}

#[test]
fn port_forwarding_over_ipv6() {
    let ns = TestNetns::new("t");
    let t = Tree::rootfs("port6");
    let before = our_mounts();
    let r = start(ns.ns_run(
        &t,
        &[
            "-n",
            "-M",
            "t-port6",
            "--network-address=10.231.6.2/24",
            "--network-address=fd31:231:6::2/64",
            "--network-host-address=10.231.6.1/24",
            "--network-host-address=fd31:231:6::1/64",
            "-p",
            "8080:80",
        ],
        &argv(&port_server()),
    ));
    let monitor = r.pid();
    let r = Stopping::new(r);
    let tables = ns.nft_tables();
    for fam in ["ip", "ip6"] {
        let want = format!("table {fam} ns-run-{monitor}");
        assert!(tables.contains(&want), "no {want}: {tables:?}");
    }
    // Duplicate address detection makes the addresses usable after a moment: fetch
    // retries for 10 s.
    ns.fetch("fd31:231:6::1", 8080, "hello-from-t-port");
    ns.fetch("10.231.6.1", 8080, "hello-from-t-port");
    stop(r);
    let tables = ns.nft_tables();
    assert!(
        !tables.iter().any(|l| l.contains("ns-run-")),
        "tables left: {tables:?}"
    );
    assert!(ns.wait_gone("ve-t-port6"), "{:?}", ns.names());
    assert_nothing_left(&t, &before);
}
