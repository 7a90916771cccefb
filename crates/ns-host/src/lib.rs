//! ns-host: the objects the host side owns, one module each, as nspawn has nspawn-cgroup.c,
//! nspawn-network.c…: the container's cgroups ([`cgroups`]), the limits written to them
//! ([`resources`]) and what the OOM killer did there ([`oom`]), the device policy ([`devices`]), user namespace id maps, ranges and the
//! ownership shift ([`userns`]), joining a running container ([`attach`]), the image and zone
//! locks ([`locks`]), registration with systemd-machined ([`machined`]) over a small D-Bus
//! client ([`dbus`]), the cleanup journal ([`journal`]), the notify socket ([`notify`]), the
//! registry of running machines that ns-ctl reads ([`registry`]), the mounts of an OCI container
//! without a mount namespace ([`hostmounts`]), the mount points the host makes for one and
//! the removal of created paths ([`mountpoints`]), `-a`'s ns-init copy shared between
//! containers ([`initcopy`]); and the chain itself, started and
//! answered through the sync protocol ([`chain`]).
//! The monitor in ns-run, ns-oci and ns-ctl use it; no chain stage does (a stage crate holds
//! only what its binary runs).
#![forbid(unsafe_code)]

pub mod attach;
pub mod cgroups;
pub mod chain;
pub mod dbus;
pub mod devices;
pub mod guestjournal;
pub mod hostmounts;
pub mod hostpaths;
pub mod image;
pub mod initcopy;
pub mod journal;
pub mod locks;
pub mod machined;
pub mod mountpoints;
pub mod notify;
pub mod oom;
pub mod registry;
pub mod resources;
pub mod userns;
pub mod verity;
