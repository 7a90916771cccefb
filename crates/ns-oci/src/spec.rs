//! `spec [--rootless]`: the default config.json runc 1.1 writes, the same document (the same
//! fields and values, arrays in the same order), tab-indented as runc writes it.
//!
//! A plain spec runs `sh` on a terminal as root in a read-only `rootfs`, with a few
//! capabilities, new pid, network, ipc, uts and mount namespaces, hostname `runc`, every
//! device denied, and runc's masked and read-only /proc paths. `--rootless` adapts it as
//! `runc spec --rootless` does: a user namespace mapping root to the caller's ids instead of a
//! network namespace, /sys bound from the host, no `gid=5` on /dev/pts, no resources.

use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use ns_core::{Error, Result};

/// Write `BUNDLE/config.json` (not over an existing one).
pub fn write(bundle: &Path, rootless: bool) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(Error::setup(format!("{} exists already", path.display())));
    }
    let mut text = Vec::new();
    let tabs = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut text, tabs);
    default(rootless).serialize(&mut ser).expect("json");
    std::fs::write(&path, text)
        .map_err(|e| Error::setup(format!("cannot write {}: {e}", path.display())))
}

/// The whole document.
pub fn default(rootless: bool) -> Value {
    let mut spec = json!({
        "ociVersion": "1.0.2-dev",
        "process": process(),
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "runc",
        "mounts": mounts(),
        "linux": linux(),
    });
    if rootless {
        to_rootless(&mut spec);
    }
    spec
}

fn process() -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "terminal": true,
        "user": { "uid": 0, "gid": 0 },
        "args": ["sh"],
        "env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TERM=xterm",
        ],
        "cwd": "/",
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
            "ambient": caps,
        },
        "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
        "noNewPrivileges": true,
    })
}

/// One mount: its destination, type and source, and its options when there are any.
fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Value {
    let mut m = json!({ "destination": destination, "type": kind, "source": source });
    if !options.is_empty() {
        m["options"] = json!(options);
    }
    m
}

fn mounts() -> Value {
    let hardened = ["nosuid", "noexec", "nodev"];
    json!([
        mount("/proc", "proc", "proc", &[]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"]
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5"
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &[&hardened[..], &["mode=1777", "size=65536k"]].concat()
        ),
        mount("/dev/mqueue", "mqueue", "mqueue", &hardened),
        mount("/sys", "sysfs", "sysfs", &[&hardened[..], &["ro"]].concat()),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &[&hardened[..], &["relatime", "ro"]].concat()
        ),
    ])
}

fn linux() -> Value {
    let namespaces: Vec<Value> = ["pid", "network", "ipc", "uts", "mount"]
        .iter()
        .map(|t| json!({ "type": t }))
        .collect();
    json!({
        "resources": { "devices": [{ "allow": false, "access": "rwm" }] },
        "namespaces": namespaces,
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
            "/proc/scsi",
        ],
        "readonlyPaths": [
            "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
        ],
    })
}

/// `--rootless`: what runc changes for a container run without root.
fn to_rootless(spec: &mut Value) {
    let linux = &mut spec["linux"];
    let ids = |host: u32| json!([{ "containerID": 0, "hostID": host, "size": 1 }]);
    linux["uidMappings"] = ids(nix::unistd::geteuid().as_raw());
    linux["gidMappings"] = ids(nix::unistd::getegid().as_raw());
    let map = linux.as_object_mut().expect("linux is an object");
    map.remove("resources");
    let ns = map["namespaces"].as_array_mut().expect("namespaces");
    ns.retain(|n| n["type"] != "network");
    ns.push(json!({ "type": "user" }));
    for m in spec["mounts"].as_array_mut().expect("mounts") {
        match m["destination"].as_str() {
            Some("/dev/pts") => {
                let opts = m["options"].as_array_mut().expect("options");
                opts.retain(|o| o != "gid=5");
            }
            Some("/sys") => {
                *m = mount(
                    "/sys",
                    "none",
                    "/sys",
                    &["rbind", "nosuid", "noexec", "nodev", "ro"],
                );
            }
            _ => {}
        }
    }
}
