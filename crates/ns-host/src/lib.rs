//! ns-host: the objects the host side owns, one module each, as nspawn has nspawn-cgroup.c,
//! nspawn-network.c…: the container's cgroups ([`cgroups`]), the limits written to them
//! ([`resources`]), the device policy ([`devices`]), user namespace id maps, ranges and the
//! ownership shift ([`userns`]), and joining a running container ([`attach`]). The monitor in
//! ns-run, ns-oci and ns-ctl use it; no chain stage does (a stage crate holds only what its
//! binary runs).
#![forbid(unsafe_code)]

pub mod attach;
pub mod cgroups;
pub mod devices;
pub mod resources;
pub mod userns;
