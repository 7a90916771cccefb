//! The container state: one versioned JSON document that ns-run builds and every stage reads.
//!
//! ns-run writes it into a sealed memfd and passes its number with `--state-fd N`; a stage
//! reads it with pread from offset 0 (so the same fd serves every stage of the chain, and no
//! stage can change what a later one sees). A stage used alone builds its own section from its
//! flags instead. Each section names the stage that reads it.

use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use crate::error::{Context, Error, Result};

/// Bumped on every incompatible change of the schema; stages refuse any other version.
pub const STATE_VERSION: u32 = 2;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// The machine name (nspawn's `-M`, or derived from the directory).
    pub machine: String,
    pub enter: EnterPlan,
    pub net: NetPlan,
    pub mount: MountPlan,
    pub exec: ExecPlan,
    pub monitor: MonitorPlan,
    /// Decided by the host at start (see [`Runtime`]): undecided in a plan.
    #[serde(default)]
    pub runtime: Runtime,
}

/// What only the host decides, at start, just before the fork (ns-run's monitor, `ns-oci
/// create`): an id range reserved, cgroups made, a socket bound, a fifo opened. Written in
/// one place, `ns_host::chain::Chain::start`, into the document the chain gets; a plan not
/// started (`ns-run --print-state`, a stage used alone) has it undecided (`decided: false`,
/// every field null), and the stages run it so: that document is the one they get, less
/// these decisions.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Whether a host made these decisions (true in the document the chain starts with).
    pub decided: bool,
    /// The base of the -U id range the monitor reserved for `enter.userns` (which asks for
    /// `pick` or a base). Read by the host only: the maps, the ownership, `rootidmap`.
    pub userns_base: Option<u32>,
    /// Read by ns-enter: the container's v1 cgroups (possibly none): the `payload` levels
    /// that the monitor creates below every limit and the device policy while ns-enter
    /// starts (ns-oci: the container's cgroups themselves): it waits until the host says
    /// they are ready (`cgroups`, SYNC-0), then joins them first thing (through `tasks`).
    /// None: no cgroups of its own, nothing to wait for.
    pub cgroups: Option<Vec<PathBuf>>,
    /// The monitor's notification socket (host path): ns-mount binds it on
    /// /run/host/notify, ns-caps puts `NOTIFY_SOCKET=/run/host/notify` in the payload's
    /// environment.
    pub notify_socket: Option<PathBuf>,
    /// Read by ns-caps. OCI create/start: an fd (O_PATH) of the runtime's start fifo. The
    /// last stage closes the sync socket (the runtime's `create` returns: the container is
    /// created), then blocks opening the fifo for writing until `start` opens it for
    /// reading, and execs.
    pub start_fd: Option<i32>,
    /// Read by ns-caps. OCI `linux.seccomp.listenerPath`: a socket the runtime connected to
    /// it on the host; ns-caps sends the filter's listener fd there with the container's
    /// process state (`ExecPlan::seccomp_listener`), then closes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_listener_fd: Option<i32>,
}

/// Namespaces in the order they are created: user first, since it must own the others.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    User,
    Mount,
    Uts,
    Ipc,
    Net,
    Cgroup,
    Pid,
}

impl Namespace {
    pub const ALL: [Namespace; 7] = [
        Namespace::User,
        Namespace::Mount,
        Namespace::Uts,
        Namespace::Ipc,
        Namespace::Net,
        Namespace::Cgroup,
        Namespace::Pid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Namespace::User => "user",
            Namespace::Mount => "mount",
            Namespace::Uts => "uts",
            Namespace::Ipc => "ipc",
            Namespace::Net => "net",
            Namespace::Cgroup => "cgroup",
            Namespace::Pid => "pid",
        }
    }
}

/// Read by ns-enter.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct EnterPlan {
    /// Namespaces to create; a new network namespace gets `lo` up.
    pub namespaces: Vec<Namespace>,
    /// Kernel hostname to set in the new UTS namespace.
    pub hostname: Option<String>,
    /// Join this network namespace instead of creating one (`--network-namespace-path`).
    pub netns_path: Option<PathBuf>,
    /// A user namespace, created first; the monitor writes its maps (SYNC-1).
    pub userns: Option<UserNs>,
    /// Namespaces to join (setns) instead of creating them, before the others are created:
    /// an OCI container joining its pod's (`linux.namespaces[].path`).
    #[serde(default)]
    pub join: Vec<JoinNs>,
}

/// A namespace given by path (`/proc/PID/ns/net`, a bind-mounted nsfs file).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JoinNs {
    pub ns: Namespace,
    pub path: PathBuf,
}

/// `--private-users`: container ids 0..count map to host ids base..base+count.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserNs {
    pub base: IdBase,
    pub count: u32,
    pub ownership: Ownership,
    /// Started without root: the monitor maps our own ids (and the subordinate ranges of
    /// /etc/subuid and /etc/subgid through newuidmap/newgidmap where installed).
    pub rootless: bool,
    /// The maps exactly as given (ns-oci: config.json's `uidMappings`/`gidMappings`), over
    /// `base` and `count`, which then describe container root's range only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maps: Option<IdMaps>,
}

/// A user namespace's uid and gid maps, each a list of ranges.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct IdMaps {
    pub uid: Vec<IdRange>,
    pub gid: Vec<IdRange>,
}

/// Container ids `container..container+size` are host ids `host..host+size`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

impl IdRange {
    /// The line of /proc/PID/uid_map (or gid_map) for this range.
    pub fn line(&self) -> String {
        format!("{} {} {}\n", self.container, self.host, self.size)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IdBase {
    /// Chosen by the monitor at start (`pick`, `-U`): a free 64K-aligned range, whose base
    /// it records in `runtime.userns_base`.
    Pick,
    Fixed(u32),
}

/// How the image's ownership meets the id range (`--private-users-ownership`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Ownership {
    /// Files keep their ids: host root's files are nobody's inside.
    Off,
    /// The root is an idmapped mount: container 0 sees host 0's files as its own; the
    /// image stays owned by 0 on disk.
    Map,
    /// `-U`'s (nspawn's `auto`): `map` where the tree's file system takes an idmapped mount,
    /// else `chown` (or, for a tree that is not rewritten, [`MountPlan::rewrites_tree`],
    /// its ids as they are). Decided by the monitor where it attempts the idmap (SYNC-1).
    Auto,
    /// The tree's ownership is shifted on disk into the range (undone by running with
    /// `--private-users=0 --private-users-ownership=chown`).
    Chown,
}

/// Read by ns-net, which the monitor runs on the host against the container's network
/// namespace once PID 1 exists (between SYNC-2 and SYNC-3).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct NetPlan {
    /// `-n`, `--network-bridge`, `--network-zone`: the main veth pair.
    pub veth: Option<Veth>,
    /// `--network-zone`: the bridge `vz-ZONE`, created on demand.
    pub zone: Option<String>,
    /// `--network-veth-extra`.
    pub veth_extra: Vec<Veth>,
    /// `--network-interface`: host links moved in, and given back at exit.
    pub interfaces: Vec<String>,
    /// `--network-macvlan`, `--network-ipvlan`: created on a host link, inside.
    pub macvlan: Vec<Vlan>,
    pub ipvlan: Vec<Vlan>,
    /// ns-run extensions: addresses (CIDR) for the container end (host0) and the host end,
    /// and a default route in the container. Any of them brings both ends up.
    pub address: Vec<String>,
    pub host_address: Vec<String>,
    pub gateway: Option<String>,
    /// `-p`: forwarded ports (nftables DNAT to the container's address).
    pub ports: Vec<Port>,
}

/// `-p [PROTO:]HOSTPORT[:CONTAINERPORT]`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// "tcp" or "udp".
    pub proto: String,
    pub host: u16,
    pub container: u16,
}

impl NetPlan {
    pub fn is_empty(&self) -> bool {
        *self == NetPlan::default()
    }
}

/// A veth pair: the host end (`ve-NAME`, `vb-NAME` when bridged), the container end.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Veth {
    pub host: String,
    /// The unshortened host name, set as altname when `host` had to be shortened.
    pub host_altname: Option<String>,
    pub container: String,
    pub host_mac: Option<[u8; 6]>,
    pub container_mac: Option<[u8; 6]>,
    /// Enslave the host end to this bridge (and bring it up).
    pub bridge: Option<String>,
}

/// A macvlan or ipvlan link on `parent`, named `name` in the container.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Vlan {
    pub parent: String,
    pub name: String,
    pub altname: Option<String>,
    pub mac: Option<[u8; 6]>,
}

/// An OCI hook: the program, its argv (argv\[0\] first) and environment, a timeout in
/// seconds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub path: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// OCI hooks a stage runs inside the container, and the container's state they get on
/// stdin (JSON; the stage puts in its pid and the status).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct StageHooks {
    pub hooks: Vec<Hook>,
    pub state: String,
}

/// Read by ns-mount.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct MountPlan {
    /// Absolute host path of the container's root directory.
    pub root: PathBuf,
    /// How the root is assembled from `root`.
    pub root_mode: RootMode,
    /// Use `root` through a mount the monitor idmaps for the user namespace on the host
    /// (SYNC-1), so that its files keep their ids on disk: ownership `map`, and `auto`, where
    /// the monitor may hand it down as it is (not idmapped) instead.
    pub idmapped_root: bool,
    /// Host paths arrive from the monitor as detached mounts instead of being resolved here:
    /// the root (SYNC-1), host-sourced binds and overlays (SYNC-5). A stage inside a user
    /// namespace cannot enter directories only host root may (-U, root on the host).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_by_fd: bool,
    /// Mount the root read-only.
    pub read_only: bool,
    /// The container has its own network namespace: /proc/sys/net stays writable.
    pub private_network: bool,
    /// `--pivot-root`: which directory of the image becomes `/`, and where the image's own
    /// root goes (unmounted when none).
    pub pivot_root: Option<PivotRoot>,
    /// User mounts, applied in order after the API file systems.
    pub ops: Vec<MountOp>,
    /// Where ns-mount mounts its scratch tmpfs (in the container's mount namespace only).
    pub scratch: PathBuf,
    /// Make a pty in the container's devpts, bind its slave on /dev/console, and send the
    /// master to the monitor (SYNC-6); ns-caps then makes it the payload's terminal.
    pub console: bool,
    /// systemd's container interface: /run/host/{os-release,container-manager,container-uuid}.
    pub run_host: RunHost,
    /// `-b`: a transient /etc/machine-id (from the uuid) when the image has none.
    pub machine_id: Option<String>,
    /// `-b`: the cgroup file systems for the guest's init under /sys/fs/cgroup.
    pub cgroups: Option<CgroupMounts>,
    /// `--bind-user`: host users whose home and records appear in the container, each with
    /// one extra id mapping (the monitor maps them; ns-mount binds homes, writes records).
    pub bind_users: Vec<BoundUser>,
    /// `--resolv-conf` and `--timezone`, resolved to what to do.
    pub resolv_conf: EtcFile,
    pub timezone: EtcFile,
    /// `--set-credential=`/`--load-credential=`: files in a read-only ramfs at
    /// /run/host/credentials (ns-mount), named by `$CREDENTIALS_DIRECTORY` (ns-caps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
    /// OCI createContainer hooks: run once the mounts are made, before pivot_root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_hooks: Option<StageHooks>,
    /// An OCI runtime's mounts (ns-oci): config.json's, done instead of nspawn's API file
    /// systems, /run, /tmp, /run/host and masks (`ops` and the rest above stay empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciMounts>,
    /// `-L`/`--selinux-apifs-context=`: the SELinux context of the API file systems ns-mount
    /// makes (the tmpfs mounts and devpts get `context="LABEL"`, as nspawn's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux_apifs_context: Option<String>,
}

impl MountPlan {
    /// Whether the container's tree is changed on disk as it runs (not `-x`, `--read-only`
    /// or `--volatile`): only such a tree may have its ownership shifted (`chown`).
    pub fn rewrites_tree(&self) -> bool {
        self.root_mode == RootMode::Directory && !self.read_only
    }

    /// Where the container sees the tree read-only (`--read-only`, `--volatile=state`, the
    /// /usr of `--volatile=yes`), the mount points ns-mount mounts on in it (made on the
    /// host before the tree is handed down read-only: ns-mount cannot create them there).
    /// `None`: the tree is seen writable, or only through an overlay (`-x`).
    pub fn read_only_tree(&self) -> Option<&'static [&'static str]> {
        const API: [&str; 5] = ["dev", "proc", "run", "sys", "tmp"];
        const STATE: [&str; 6] = ["dev", "proc", "run", "sys", "tmp", "var"];
        match self.root_mode {
            RootMode::Directory if self.read_only => Some(&API),
            RootMode::State => Some(&STATE),
            RootMode::Volatile => Some(&[]),
            RootMode::Directory | RootMode::Overlay => None,
        }
    }
}

/// config.json's mounts and what runc does around them, in runc's order: the root's
/// propagation, the mounts as listed, /dev's nodes and links, (the console), the root
/// read-only, then after pivot_root the sysctls, read-only paths and masked paths.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct OciMounts {
    /// `mounts`, in order.
    pub mounts: Vec<OciMount>,
    /// runc's default nodes (null zero full random urandom tty), /dev/ptmx and the
    /// /dev/fd, stdin, stdout, stderr links (unless /dev is a bind mount).
    pub setup_dev: bool,
    /// `linux.devices` (and the default nodes with `setup_dev`), made in order.
    pub devices: Vec<DeviceNode>,
    /// `linux.rootfsPropagation` (MS_* bits), else rslave.
    pub root_propagation: Option<u64>,
    /// `linux.sysctl`, checked: key (dotted) and value.
    pub sysctl: Vec<(String, String)>,
    pub readonly_paths: Vec<PathBuf>,
    pub masked_paths: Vec<PathBuf>,
    /// No mount namespace (`linux.namespaces` lists none): the mounts are made in the
    /// caller's, on the rootfs, and the container chroots into it (as runc).
    #[serde(default)]
    pub chroot: bool,
}

/// One of config.json's mounts, its options parsed as runc parses them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OciMount {
    /// The file system type (`bind` for a bind mount).
    pub fstype: String,
    /// The source as given (a host path, absolute, for a bind).
    pub source: String,
    pub dest: PathBuf,
    /// MS_* bits (no propagation).
    pub flags: u64,
    /// Propagation changes after the mount (MS_* bits each).
    pub propagation: Vec<u64>,
    /// The file-system specific options.
    pub data: String,
}

/// A device node to create (mknod; bound from the host's node of the same path in a user
/// namespace, as runc does).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceNode {
    pub path: PathBuf,
    /// `c`, `b` or `p`.
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A host user bound into the container (`--bind-user`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BoundUser {
    pub name: String,
    pub host_uid: u32,
    pub host_gid: u32,
    /// Its ids in the container (nspawn's 60514 and up).
    pub uid: u32,
    pub gid: u32,
    /// Host home directory, bound at /run/host/home/NAME.
    pub home: PathBuf,
    pub shell: String,
    pub real_name: String,
}

/// The guest's cgroup layout, as nspawn chooses it for the host's.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CgroupLayout {
    /// cgroup2 only, writable, at /sys/fs/cgroup.
    Unified,
    /// v1 controllers read-only, name=systemd writable, cgroup2 writable at .../unified.
    Hybrid,
    /// v1 only: controllers read-only, name=systemd writable.
    Legacy,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CgroupMounts {
    pub layout: CgroupLayout,
    /// The host's v1 controller hierarchies (mount options such as `cpu` or `cpu,cpuacct`).
    pub controllers: Vec<String>,
    /// The v1 controllers and the tmpfs under them mounted writable (nspawn's choice in a
    /// user namespace, where container root owns nothing there); else read-only.
    #[serde(default)]
    pub controllers_writable: bool,
}

/// What /run/host says about the container (systemd's container interface); none is made
/// when `uuid` is empty (an OCI container).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct RunHost {
    /// `container-manager`: the value of `$container`.
    pub manager: String,
    /// `container-uuid`.
    pub uuid: String,
}

/// One systemd credential handed to the container: its name and contents (any bytes, in
/// the state as a hex string: a JSON array of numbers took up to 4.6 bytes per byte, and
/// every stage parses the state).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: String,
    #[serde(with = "hex_bytes")]
    pub value: Vec<u8>,
}

/// Bytes as a string of hex digits, two per byte.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let hex: String = v
            .iter()
            .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
            .map(char::from)
            .collect();
        s.serialize_str(&hex)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || serde::de::Error::custom("not a string of hex digit pairs");
        if s.len() % 2 != 0 {
            return Err(bad());
        }
        (0..s.len())
            .step_by(2)
            .map(|i| {
                s.get(i..i + 2)
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    .ok_or_else(bad)
            })
            .collect()
    }
}

/// How ns-mount assembles the root.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RootMode {
    /// The directory itself (bound on itself).
    #[default]
    Directory,
    /// An overlay: the directory as the lower layer, a tmpfs that lives and dies with the
    /// container's mount namespace as the upper (`-x`, `--volatile=overlay`).
    Overlay,
    /// A tmpfs root holding only the directory's /usr, read-only (`--volatile=yes`).
    Volatile,
    /// The directory read-only with a tmpfs /var (`--volatile=state`).
    State,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PivotRoot {
    pub new: PathBuf,
    pub old: Option<PathBuf>,
}

/// Where the content of a mount comes from.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A host path (absolute).
    Host(PathBuf),
    /// A path inside the image (nspawn's `+` prefix).
    Image(PathBuf),
    /// A new empty directory that disappears with the container.
    Temp,
}

/// One user-requested mount, in command-line order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MountOp {
    /// `--bind` / `--bind-ro`.
    Bind {
        source: Source,
        dest: PathBuf,
        read_only: bool,
        recursive: bool,
        /// With a user namespace: show the source through an id mapping.
        idmap: Idmap,
    },
    /// `--tmpfs`: a tmpfs on `dest` with kernel mount options.
    Tmpfs { dest: PathBuf, options: String },
    /// `--overlay` / `--overlay-ro`: `lower` bottom first; `upper` receives writes (with
    /// `read_only` it is only the top layer).
    Overlay {
        lower: Vec<Source>,
        upper: Source,
        dest: PathBuf,
        read_only: bool,
    },
    /// `--inaccessible`: cover `dest` with an inaccessible node of the same type.
    Inaccessible { dest: PathBuf },
}

impl MountOp {
    /// Whether the monitor makes this mount on the host and hands it down (SYNC-5): an
    /// idmapped bind always; with `host_by_fd` every bind of a host path, and every overlay
    /// of host layers (a temporary upper included; one with a layer inside the image stays
    /// ns-mount's, which resolves it in the root).
    pub fn made_on_host(&self, host_by_fd: bool) -> bool {
        match self {
            MountOp::Bind {
                source: Source::Host(_),
                idmap,
                ..
            } => host_by_fd || *idmap != Idmap::No,
            MountOp::Overlay { lower, upper, .. } => {
                host_by_fd
                    && lower
                        .iter()
                        .chain([upper])
                        .any(|s| matches!(s, Source::Host(_)))
                    && !lower
                        .iter()
                        .chain([upper])
                        .any(|s| matches!(s, Source::Image(_)))
            }
            _ => false,
        }
    }
}

/// Bind options `idmap`, `rootidmap`, `noidmap` (nspawn's semantics).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Idmap {
    /// `noidmap` (default): ids as they are on disk.
    #[default]
    No,
    /// `idmap`: through the container's mapping (on-disk 0 is container root).
    Container,
    /// `rootidmap`: the source directory's owner is container root; other ids are nobody.
    Root,
}

/// What to do with /etc/resolv.conf or /etc/localtime in the container.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum EtcFile {
    /// Leave the image's file alone.
    #[default]
    Off,
    /// Bind this host file read-only over the image's. With `create` false (`auto`), only
    /// over a file the image already has: nothing is created or written in the image.
    Bind { source: PathBuf, create: bool },
    /// Write a copy of this host file into the image (persistent; `replace` also replaces a
    /// symlink or a file that is not a regular one).
    Copy { source: PathBuf, replace: bool },
    /// Make the image's file a symlink to this target (persistent).
    Symlink(PathBuf),
    /// Remove the image's file (persistent).
    Delete,
}

/// Read by ns-caps (identity, environment, capabilities) and, for `as_pid2`, by ns-init.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ExecPlan {
    /// The payload; empty means the user's login shell.
    pub argv: Vec<String>,
    /// `-u`: a user name or number, resolved from the container's own /etc/passwd.
    pub user: Option<String>,
    /// `--chdir`: absolute working directory inside the container.
    pub chdir: Option<String>,
    /// `-E` assignments (`NAME=VALUE`), applied over the default environment in order.
    pub setenv: Vec<String>,
    /// `container_uuid`, formatted 8-4-4-4-12.
    pub uuid: String,
    /// Value of `$container`.
    pub container: String,
    /// `ID=` and `VERSION_ID=` of the host's os-release, for `container_host_*`.
    pub host_id: Option<String>,
    pub host_version_id: Option<String>,
    /// Capabilities to retain (lower-case names without `cap_`), limited at run time by the
    /// bounding set ns-caps finds.
    pub capabilities: Vec<String>,
    /// Ambient capabilities for the payload.
    pub ambient: Vec<String>,
    pub no_new_privileges: bool,
    /// Run ns-init as PID 1 and the payload as PID 2.
    pub as_pid2: bool,
    /// stdin, stdout and stderr are /dev/console, the controlling terminal.
    pub console: bool,
    /// `-b`: exec the image's init (systemd, else /sbin/init) with `argv` as its arguments.
    pub boot: bool,
    /// Credentials are in /run/host/credentials: `$CREDENTIALS_DIRECTORY` names it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub credentials: bool,
    /// `--rlimit=`, applied in order (the last one of a resource wins).
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// `--oom-score-adjust=` (-1000..=1000).
    #[serde(default)]
    pub oom_score_adjust: Option<i32>,
    /// `--cpu-affinity=`: the CPUs the payload may run on; empty leaves it as it is.
    #[serde(default)]
    pub cpu_affinity: Vec<usize>,
    /// `--personality=`: `x86` or `x86-64`.
    #[serde(default)]
    pub personality: Option<String>,
    /// The system call filter (nspawn's allow-list and `--system-call-filter=`); None: no
    /// filter (`SYSTEMD_SECCOMP=0`).
    #[serde(default)]
    pub syscall_filter: Option<SyscallFilter>,
    /// Numeric identity (OCI `process.user`): uid, gid and supplementary groups as given,
    /// instead of resolving `user` in the container's /etc/passwd.
    #[serde(default)]
    pub ids: Option<Ids>,
    /// The environment is exactly `setenv` (OCI `process.env`), not nspawn's.
    #[serde(default)]
    pub exact_env: bool,
    #[serde(default)]
    pub umask: Option<u32>,
    /// OCI `process.capabilities`: the effective, permitted and inheritable sets as given
    /// (`capabilities` is then the bounding set), instead of nspawn's rule (all of the
    /// bounding set for root, the ambient set for others).
    #[serde(default)]
    pub cap_sets: Option<CapSets>,
    /// OCI startContainer hooks: run in the container once `start` comes, before the
    /// payload (and its seccomp filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_hooks: Option<StageHooks>,
    /// OCI seccomp notify: the container process state (JSON) sent with the filter's
    /// listener fd to `Runtime::seccomp_listener_fd` (ns-caps puts in its pid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_listener: Option<String>,
    /// `-Z`/`--selinux-context=`: the SELinux context the payload (or the init, or ns-init
    /// with `--as-pid2`) is executed with: ns-caps writes it to
    /// /proc/thread-self/attr/exec right before the exec (nspawn's setexeccon()).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux_context: Option<String>,
}

/// Capability names as in `ExecPlan::capabilities` (lower case, no `cap_`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct CapSets {
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Ids {
    /// Every id one a payload may take ([`crate::check_id`]); the error names the OCI field.
    pub fn check(&self) -> crate::Result<()> {
        crate::check_id("process.user.uid", self.uid.into())?;
        crate::check_id("process.user.gid", self.gid.into())?;
        for g in &self.groups {
            crate::check_id("process.user.additionalGids", (*g).into())?;
        }
        Ok(())
    }
}

/// `--system-call-filter=`: calls and @groups added to nspawn's allow-list, and removed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct SyscallFilter {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// What `allow` and `deny` change: nspawn's allow-list, nothing, or everything.
    #[serde(default)]
    pub base: FilterBase,
    /// What a denied call gets (OCI's default action): EPERM when None.
    #[serde(default)]
    pub denied: Option<SeccompAction>,
    /// OCI rules that look at arguments, or give a call its own outcome: tried in order
    /// before the call's number decides; the first whose arguments all match wins.
    #[serde(default)]
    pub rules: Vec<SeccompRule>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SeccompAction {
    Allow,
    Errno(u32),
    /// The whole process is killed.
    Kill,
    /// The call waits for the answer of the seccomp agent that holds the filter's listener
    /// (OCI SCMP_ACT_NOTIFY; see `ExecPlan::seccomp_listener`).
    Notify,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SeccompRule {
    pub names: Vec<String>,
    /// All must hold.
    pub args: Vec<ArgCmp>,
    pub action: SeccompAction,
}

/// `args[index] OP value` on the whole 64-bit argument; `masked_eq` is
/// `args[index] & value == value_two`, as OCI (libseccomp) spells it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ArgCmp {
    pub index: u32,
    pub op: CmpOp,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    MaskedEq,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FilterBase {
    #[default]
    Nspawn,
    /// OCI profiles with a denying default action: only `allow` passes.
    Nothing,
    /// OCI profiles with an allowing default action: all but `deny` passes.
    Everything,
}

/// One `--rlimit=`: a resource by its name without `RLIMIT_`; None is infinity.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    pub resource: String,
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Read by the monitor in ns-run.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct MonitorPlan {
    /// Signal sent to PID 1 on the first SIGTERM/SIGINT/SIGHUP; none means SIGKILL at once.
    pub kill_signal: Option<i32>,
    pub quiet: bool,
    /// How the monitor relays the container's pty (`console` of the mount plan).
    pub console: Console,
    /// `-b`: PID 1 killed by SIGHUP means reboot (exit 133), by SIGINT poweroff or halt (0).
    pub boot: bool,
    /// `--notify-ready=yes`: pass the guest's READY=1 on to our own NOTIFY_SOCKET.
    pub notify_ready: bool,
    /// `--property=`: written into the container's cgroups before it starts.
    #[serde(default)]
    pub properties: Vec<Property>,
    /// `-S/--slice=`: the container's cgroup goes under this path (`a.slice/a-b.slice`) from
    /// each hierarchy's root, instead of beside the monitor's cgroup.
    #[serde(default)]
    pub slice: Option<String>,
    /// `--register=` (default yes): list the machine in the registry for ns-ctl, and refuse a
    /// second container of the same name.
    #[serde(default)]
    pub register: bool,
    /// `--keep-unit`: registered with systemd-machined, the container goes into the unit
    /// ns-run runs in, instead of a scope of its own.
    #[serde(default)]
    pub keep_unit: bool,
    /// `--link-journal=`: what is set up on the host for the guest's journal before the
    /// container starts (host mode's bind is an op of the mount plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_journal: Option<JournalLink>,
    /// `--log-file`: where the console's output and the monitor's messages go (appended),
    /// rotated to `PATH.1` at 512 KiB by the monitor's console relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<std::path::PathBuf>,
}

/// `--link-journal=`, decided: the guest's journal directory `/var/log/journal/ID` (ID: the
/// container's machine id) linked with the host's of the same name, as nspawn does.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum JournalLink {
    /// `guest`: the journal stays in the tree (`dir`, relative to the root, made if
    /// missing); the host's `link` is a symlink to it. `try_`: a link that cannot be made is
    /// skipped.
    Guest {
        link: PathBuf,
        dir: PathBuf,
        #[serde(rename = "try")]
        try_: bool,
    },
    /// `host`: the journal lives on the host in `dir` (made if missing, its parent never),
    /// bound over the guest's directory.
    Host { dir: PathBuf },
}

/// A `--property=` (systemd's names), parsed by ns-enter::resources. Limits: None is
/// `infinity`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Property {
    MemoryMax(Option<u64>),
    MemoryHigh(Option<u64>),
    /// `MemoryLow=`, OCI `memory.reservation`: cgroup2's memory.low, v1's soft limit.
    MemoryLow(Option<u64>),
    MemorySwapMax(Option<u64>),
    TasksMax(Option<u64>),
    /// nspawn's unit default `TasksMax=` (16384), which every container of ns-run gets:
    /// written where the container's cgroups have a pids controller (skipped where none
    /// has), unless a `TasksMax` is among the properties.
    DefaultTasksMax(u64),
    /// nspawn's unit device policy (`DevicePolicy=closed` plus these `DeviceAllow=` rules),
    /// which every container root starts gets: applied where a device policy can be (v1
    /// devices or cgroup2 writable here, eBPF allowed), else the container runs under the
    /// policy of the container we run in (a notice says so), unlike one asked for.
    DefaultDevices(Vec<String>),
    /// Percent of one CPU.
    CpuQuota(u64),
    CpuWeight(u64),
    CpuShares(u64),
    AllowedCpus(String),
    AllowedMemoryNodes(String),
    IoWeight(u64),
    /// `IODeviceWeight=`: a whole disk (`MAJ:MIN`) and its weight.
    IoDeviceWeight(String, u64),
    /// `BlockIOWeight=`, OCI `blockIO.weight`: the v1 blkio scale (10 to 1000), converted
    /// for cgroup2's io.weight as runc does.
    BlkioWeight(u64),
    /// `BlockIODeviceWeight=`, OCI `blockIO.weightDevice`: a disk (`MAJ:MIN`), its weight.
    BlkioDeviceWeight(String, u64),
    /// `IOReadBandwidthMax=` and friends: a whole disk (`MAJ:MIN`), the limit and its value
    /// (`None`: no limit).
    IoMax(String, IoLimit, Option<u64>),
    /// `auto`, `closed` or `strict`.
    DevicePolicy(String),
    /// A rule as the v1 devices controller takes it: `c 136:* rw`.
    DeviceAllow(String),
    /// OCI `cpu.quota` and `cpu.period`, in µs, exactly (CPUQuota= is in whole percent).
    CpuMax(u64, u64),
    /// OCI `hugepageLimits`: page size (`2MB`), bytes.
    HugetlbMax(String, u64),
    /// OCI `unified`: a cgroup2 file and its value, written as given.
    Unified(String, String),
    /// OCI memory settings only v1's memory controller has (kernel, kernelTCP, swappiness,
    /// disableOOMKiller): its file and the value, written as given.
    MemoryV1(String, String),
    /// OCI `network.classID`: the v1 net_cls controller's class of the container's packets.
    NetClassId(u32),
    /// OCI `network.priorities`: an interface and the priority of the container's traffic
    /// on it (the v1 net_prio controller).
    NetPriority(String, u32),
}

/// Which I/O limit an `IoMax` property sets.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum IoLimit {
    ReadBytes,
    WriteBytes,
    ReadIops,
    WriteIops,
}

/// `--console=` resolved (autopipe becomes interactive or pipe).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Console {
    /// stdin, stdout, stderr passed to the payload as they are; no /dev/console.
    #[default]
    Pipe,
    /// A pty (also /dev/console): the host terminal in raw mode, both ways.
    Interactive,
    /// The pty's output to stdout; stdin not forwarded.
    ReadOnly,
    /// The pty's output shown only after the container ends.
    Passive,
}

impl State {
    /// The state of a process entering a running container (`ns-ctl shell`, `ns-oci exec`):
    /// ns-caps' section only.
    pub fn exec_only(machine: &str, exec: ExecPlan) -> State {
        State {
            version: STATE_VERSION,
            machine: machine.to_string(),
            enter: Default::default(),
            net: Default::default(),
            mount: Default::default(),
            exec,
            monitor: Default::default(),
            runtime: Default::default(),
        }
    }

    /// Read and check the state behind `fd` (pread from offset 0; the fd is not consumed).
    pub fn read_fd(fd: BorrowedFd<'_>) -> Result<State> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            let n = nix::sys::uio::pread(fd, &mut chunk, buf.len() as i64)
                .ctx(|| "cannot read state fd".into())?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Self::from_json(&buf)
    }

    /// Read the state from an fd number given with `--state-fd`.
    /// The fd stays open: the next stage is handed the same number.
    pub fn from_state_fd(fd: std::os::fd::RawFd) -> Result<State> {
        use std::os::fd::IntoRawFd;
        let owned = crate::sys::adopt_fd(fd, "--state-fd")?;
        let state = Self::read_fd(owned.as_fd())
            .map_err(|e| Error::setup(format!("--state-fd={fd}: {}", e.msg)));
        let _ = owned.into_raw_fd();
        state
    }

    pub fn from_json(bytes: &[u8]) -> Result<State> {
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::setup(format!("invalid state: {e}")))?;
        match v.get("version").and_then(|v| v.as_u64()) {
            Some(n) if n == STATE_VERSION as u64 => {}
            Some(n) => {
                return Err(Error::setup(format!(
                    "state version {n} is not supported (this build reads version {STATE_VERSION})"
                )))
            }
            None => return Err(Error::setup("invalid state: no version".into())),
        }
        serde_json::from_value(v).map_err(|e| Error::setup(format!("invalid state: {e}")))
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("state serializes")
    }

    /// Write the state into a sealed memfd that stages can pread but nobody can change.
    pub fn to_sealed_memfd(&self) -> Result<OwnedFd> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let fd = memfd_create(c"ns-state", MFdFlags::MFD_ALLOW_SEALING)
            .ctx(|| "cannot create state memfd".into())?;
        let json = serde_json::to_vec(self).expect("state serializes");
        let mut off = 0;
        while off < json.len() {
            off += nix::sys::uio::pwrite(fd.as_fd(), &json[off..], off as i64)
                .ctx(|| "cannot write state memfd".into())?;
        }
        let seals = SealFlag::F_SEAL_SEAL
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE;
        fcntl(fd.as_fd(), FcntlArg::F_ADD_SEALS(seals)).ctx(|| "cannot seal state memfd".into())?;
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            version: STATE_VERSION,
            machine: "m".into(),
            enter: EnterPlan {
                namespaces: vec![Namespace::Mount, Namespace::Pid],
                hostname: Some("m".into()),
                netns_path: None,
                userns: Some(UserNs {
                    base: IdBase::Pick,
                    count: 65536,
                    ownership: Ownership::Map,
                    rootless: false,
                    maps: None,
                }),
                join: vec![],
            },
            net: NetPlan::default(),
            mount: MountPlan {
                root: "/r".into(),
                ops: vec![
                    MountOp::Tmpfs {
                        dest: "/x".into(),
                        options: "mode=755".into(),
                    },
                    MountOp::Overlay {
                        lower: vec![Source::Host("/l".into()), Source::Image("/i".into())],
                        upper: Source::Temp,
                        dest: "/o".into(),
                        read_only: false,
                    },
                ],
                resolv_conf: EtcFile::Bind {
                    source: "/etc/resolv.conf".into(),
                    create: false,
                },
                ..Default::default()
            },
            exec: ExecPlan::default(),
            monitor: MonitorPlan::default(),
            runtime: Runtime {
                decided: true,
                cgroups: Some(vec!["/sys/fs/cgroup/pids/ns-run-m-1".into()]),
                ..Default::default()
            },
        }
    }

    #[test]
    fn json_round_trip() {
        let s = sample();
        let back = State::from_json(s.to_json_pretty().as_bytes()).unwrap();
        assert_eq!(s, back);
    }

    #[test]
    fn rejects_other_versions() {
        let mut v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        v["version"] = 99.into();
        let e = State::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(e.msg.contains("version 99 is not supported"), "{}", e.msg);
        let e = State::from_json(b"{}").unwrap_err();
        assert!(e.msg.contains("no version"), "{}", e.msg);
    }

    #[test]
    fn a_plan_has_its_runtime_undecided() {
        let mut v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        v.as_object_mut().unwrap().remove("runtime");
        let s = State::from_json(v.to_string().as_bytes()).unwrap();
        assert_eq!(s.runtime, Runtime::default());
        let printed = serde_json::to_value(&s).unwrap();
        assert_eq!(printed["runtime"]["decided"], false);
        assert!(printed["runtime"]["cgroups"].is_null());
    }

    #[test]
    fn rejects_unknown_fields() {
        let mut v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        v["bogus"] = 1.into();
        assert!(State::from_json(v.to_string().as_bytes()).is_err());
    }

    #[test]
    fn sealed_memfd_reads_back_and_refuses_writes() {
        let s = sample();
        let fd = s.to_sealed_memfd().unwrap();
        assert_eq!(State::read_fd(fd.as_fd()).unwrap(), s);
        // Twice: pread does not move an offset.
        assert_eq!(State::read_fd(fd.as_fd()).unwrap(), s);
        assert!(nix::sys::uio::pwrite(fd.as_fd(), b"x", 0).is_err());
    }
}

#[cfg(test)]
mod credential_tests {
    use super::Credential;

    #[test]
    fn credential_values_travel_as_hex() {
        let c = Credential {
            id: "a".into(),
            value: vec![0, 0x41, 0xff, b'\n'],
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"id":"a","value":"0041ff0a"}"#);
        let back: Credential =
            serde_json::from_value(serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(back, c);
        for bad in [r#"{"id":"a","value":"0"}"#, r#"{"id":"a","value":"zz"}"#] {
            assert!(serde_json::from_str::<Credential>(bad).is_err(), "{bad}");
        }
    }
}
