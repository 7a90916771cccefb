//! An OCI runtime's mount section ([`ns_core::state::OciMounts`]): config.json's `mounts`
//! with their options parsed as runc parses them, `linux.devices` (after runc's default
//! nodes), `linux.rootfsPropagation`, `linux.sysctl` (checked by runc's validator rules),
//! `linux.readonlyPaths` and `linux.maskedPaths`. ns-mount does them in runc's order.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Linux, LinuxDeviceType, LinuxNamespaceType, Mount, Spec};

use ns_core::state::{DeviceNode, OciMount, OciMounts};
use ns_core::{Error, Result};

fn bad(what: &str) -> Error {
    Error::setup(format!("config.json: {what}"))
}

/// config.json's mounts and what goes with them (`bundle`: where relative bind sources are).
pub fn plan(spec: &Spec, bundle: &Path) -> Result<OciMounts> {
    let linux = spec.linux().clone().unwrap_or_default();
    let mounts = (spec.mounts().iter().flatten().enumerate())
        .map(|(i, m)| mount(i, m, bundle))
        .collect::<Result<Vec<_>>>()?;
    // As runc: /dev gets its nodes and links unless it is a bind mount (the host's, say).
    let setup_dev = !mounts
        .iter()
        .any(|m| m.dest == Path::new("/dev") && m.fstype == "bind");
    let paths = |v: &Option<Vec<String>>| v.iter().flatten().map(PathBuf::from).collect();
    Ok(OciMounts {
        setup_dev,
        // (runc makes no node at all in a /dev it did not set up.)
        devices: if setup_dev {
            devices(&linux)?
        } else {
            Vec::new()
        },
        root_propagation: (linux.rootfs_propagation().as_deref())
            .map(|p| {
                propagation_flag(p)
                    .ok_or_else(|| bad(&format!("linux.rootfsPropagation: {p:?} is not valid")))
            })
            .transpose()?,
        sysctl: sysctls(&linux)?,
        readonly_paths: paths(linux.readonly_paths()),
        masked_paths: paths(linux.masked_paths()),
        chroot: false, // decided with the namespaces
        mounts,
    })
}

/// Whether any of the mounts is a cgroup file system.
pub fn has_cgroup_mount(m: &OciMounts) -> bool {
    (m.mounts.iter()).any(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
}

/// An option that sets (`false`) or clears (`true`) MS_* bits, as runc reads them.
fn mount_flag(o: &str) -> Option<(bool, libc::c_ulong)> {
    use libc::*;
    Some(match o {
        "acl" => (false, MS_POSIXACL),
        "async" => (true, MS_SYNCHRONOUS),
        "atime" => (true, MS_NOATIME),
        "bind" => (false, MS_BIND),
        "defaults" => (false, 0),
        "dev" => (true, MS_NODEV),
        "diratime" => (true, MS_NODIRATIME),
        "dirsync" => (false, MS_DIRSYNC),
        "exec" => (true, MS_NOEXEC),
        "iversion" => (false, MS_I_VERSION),
        "lazytime" => (false, MS_LAZYTIME),
        "loud" => (true, MS_SILENT),
        "mand" => (false, MS_MANDLOCK),
        "noacl" => (true, MS_POSIXACL),
        "noatime" => (false, MS_NOATIME),
        "nodev" => (false, MS_NODEV),
        "nodiratime" => (false, MS_NODIRATIME),
        "noexec" => (false, MS_NOEXEC),
        "noiversion" => (true, MS_I_VERSION),
        "nolazytime" => (true, MS_LAZYTIME),
        "nomand" => (true, MS_MANDLOCK),
        "norelatime" => (true, MS_RELATIME),
        "nostrictatime" => (true, MS_STRICTATIME),
        "nosuid" => (false, MS_NOSUID),
        "rbind" => (false, MS_BIND | MS_REC),
        "relatime" => (false, MS_RELATIME),
        "remount" => (false, MS_REMOUNT),
        "ro" => (false, MS_RDONLY),
        "rw" => (true, MS_RDONLY),
        "silent" => (false, MS_SILENT),
        "strictatime" => (false, MS_STRICTATIME),
        "suid" => (true, MS_NOSUID),
        "sync" => (false, MS_SYNCHRONOUS),
        _ => return None,
    })
}

/// A propagation option's MS_* bits.
fn propagation_flag(o: &str) -> Option<u64> {
    use libc::*;
    let (rec, kind) = match o.strip_prefix('r') {
        Some(k) => (MS_REC, k),
        None => (0, o),
    };
    let f = match kind {
        "private" => MS_PRIVATE,
        "shared" => MS_SHARED,
        "slave" => MS_SLAVE,
        "unbindable" => MS_UNBINDABLE,
        _ => return None,
    };
    Some(f | rec)
}

/// `mounts[i]`: its options split into flags, propagation and data, as runc splits them.
fn mount(i: usize, m: &Mount, bundle: &Path) -> Result<OciMount> {
    let (mut flags, mut propagation, mut data) = (0, Vec::new(), Vec::new());
    for o in m.options().iter().flatten() {
        if let Some((clear, f)) = mount_flag(o) {
            flags = if clear { flags & !f } else { flags | f };
        } else if let Some(p) = propagation_flag(o) {
            propagation.push(p);
        } else if o == "tmpcopyup" {
            return Err(bad(&format!(
                "mounts[{i}]: option tmpcopyup: not supported"
            )));
        } else {
            data.push(o.as_str());
        }
    }
    let typ = m.typ().clone().unwrap_or_default();
    let mut source = m.source().clone().unwrap_or_default();
    let fstype = if flags & libc::MS_BIND != 0 || typ == "bind" {
        flags |= libc::MS_BIND;
        source = bundle.join(source); // a relative source is the bundle's (an absolute stays)
        "bind".to_string()
    } else if typ.is_empty() {
        return Err(bad(&format!(
            "mounts[{i}]: no type for {}",
            m.destination().display()
        )));
    } else {
        typ
    };
    Ok(OciMount {
        fstype,
        source: source.to_string_lossy().into_owned(),
        dest: Path::new("/").join(m.destination()),
        flags,
        propagation,
        data: data.join(","),
    })
}

/// The nodes to make: runc's defaults, then `linux.devices`.
fn devices(linux: &Linux) -> Result<Vec<DeviceNode>> {
    let listed = linux.devices().clone().unwrap_or_default();
    // (nspawn's minimal /dev has the same ones.) config.json's own win.
    let mut out: Vec<DeviceNode> = ns_mount::setup::DEVICES
        .iter()
        .map(|&(name, major, minor)| (Path::new("/dev").join(name), major, minor))
        .filter(|(p, ..)| !listed.iter().any(|d| d.path() == p))
        .map(|(path, major, minor)| DeviceNode {
            path,
            kind: 'c',
            major: major as i64,
            minor: minor as i64,
            mode: 0o666,
            uid: 0,
            gid: 0,
        })
        .collect();
    for (i, d) in listed.iter().enumerate() {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => 'c',
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::P => 'p',
            LinuxDeviceType::A => {
                return Err(bad(&format!(
                    "linux.devices[{i}]: type \"a\" for {} is not a node type",
                    d.path().display()
                )))
            }
        };
        if !d.path().is_absolute() {
            return Err(bad(&format!(
                "linux.devices[{i}]: path {:?} is not absolute",
                d.path()
            )));
        }
        out.push(DeviceNode {
            path: d.path().clone(),
            kind,
            major: d.major(),
            minor: d.minor(),
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    Ok(out)
}

/// The IPC namespace's sysctls (runc's list; and `fs.mqueue.*`).
const IPC_SYSCTLS: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// `linux.sysctl`, sorted, each checked as runc's validator checks it: only what belongs
/// to a namespace the container has of its own.
fn sysctls(linux: &Linux) -> Result<Vec<(String, String)>> {
    let mut all: Vec<(String, String)> = linux
        .sysctl()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    all.sort();
    let nss = linux.namespaces().clone().unwrap_or_default();
    let ns = |t: LinuxNamespaceType| nss.iter().find(|n| n.typ() == t);
    for (key, _) in &all {
        let s = key.replace('/', ".");
        let refuse = |why: &str| Err(bad(&format!("linux.sysctl: {key}: {why}")));
        if IPC_SYSCTLS.contains(&s.as_str()) || s.starts_with("fs.mqueue.") {
            if ns(LinuxNamespaceType::Ipc).is_none() {
                return refuse("not allowed in the host's IPC namespace");
            }
        } else if s.starts_with("net.") {
            let host = match ns(LinuxNamespaceType::Network) {
                None => true,
                Some(n) => n.path().as_deref().is_some_and(is_current_netns),
            };
            if host {
                return refuse("not allowed in the host's network namespace");
            }
        } else if ns(LinuxNamespaceType::Uts).is_some() && s == "kernel.domainname" {
        } else if ns(LinuxNamespaceType::Uts).is_some() && s == "kernel.hostname" {
            return refuse("conflicts with the hostname field");
        } else {
            return refuse("not in a separate kernel namespace");
        }
    }
    Ok(all)
}

/// Whether the network namespace at `p` is ours (the host's, as runc means it).
fn is_current_netns(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let of_p = id(p);
    of_p.is_some() && of_p == id(Path::new("/proc/self/ns/net"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn options_split_as_runc_splits_them() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","mounts":[
              {"destination":"/dev/shm","type":"tmpfs","source":"shm",
               "options":["nosuid","noexec","nodev","mode=1777","size=65536k"]},
              {"destination":"/data","type":"none","source":"d","options":["rbind","ro","rslave"]}]}"#,
        );
        let m = plan(&s, Path::new("/b")).unwrap();
        let shm = &m.mounts[0];
        assert_eq!((shm.fstype.as_str(), shm.source.as_str()), ("tmpfs", "shm"));
        let f = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
        assert_eq!((shm.flags, shm.data.as_str()), (f, "mode=1777,size=65536k"));
        let d = &m.mounts[1];
        assert_eq!((d.fstype.as_str(), d.source.as_str()), ("bind", "/b/d"));
        let f = libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY;
        assert_eq!(d.flags, f);
        assert_eq!(d.propagation, vec![libc::MS_SLAVE | libc::MS_REC]);
        assert!(m.setup_dev);
        assert_eq!(m.devices.len(), 6);
    }

    #[test]
    fn sysctls_follow_runc_validator() {
        let with = |ns: &str, key: &str| {
            let s = spec(&format!(
                r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":[{ns}],"sysctl":{{"{key}":"1"}}}}}}"#
            ));
            plan(&s, Path::new("/b")).map(|m| m.sysctl.len())
        };
        assert_eq!(
            with(r#"{"type":"ipc"}"#, "kernel.shm_rmid_forced").unwrap(),
            1
        );
        assert_eq!(
            with(r#"{"type":"network"}"#, "net.ipv4.ip_forward").unwrap(),
            1
        );
        assert_eq!(with(r#"{"type":"uts"}"#, "kernel.domainname").unwrap(), 1);
        let e = with(r#"{"type":"network"}"#, "kernel.shm_rmid_forced").unwrap_err();
        assert!(e.msg.contains("host's IPC namespace"), "{}", e.msg);
        let e = with(r#"{"type":"ipc"}"#, "net.ipv4.ip_forward").unwrap_err();
        assert!(e.msg.contains("host's network namespace"), "{}", e.msg);
        let e = with(r#"{"type":"uts"}"#, "kernel.hostname").unwrap_err();
        assert!(e.msg.contains("hostname field"), "{}", e.msg);
        let e = with(r#"{"type":"ipc"}"#, "vm.swappiness").unwrap_err();
        assert!(
            e.msg.contains("not in a separate kernel namespace"),
            "{}",
            e.msg
        );
    }
}
