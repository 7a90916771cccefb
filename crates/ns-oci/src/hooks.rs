//! OCI hooks. Those that run on the host, in the runtime's namespaces, run here:
//! createRuntime and prestart (once the container's process exists, before its setup goes
//! on), poststart (after `start`), poststop (at `delete`). Those of the container go into
//! the plan ([`ns_run::oci`]): createContainer (ns-mount, before pivot_root) and
//! startContainer (ns-caps, after `start`). Each gets the container's state on stdin; a
//! failing hook fails the verb, except poststop ones, which are only reported (as runc
//! does).

use ns_core::{Error, Result};
use oci_spec::runtime::{Hook, Hooks};

/// Refused at create, before anything is made: a timeout of 0 or less (the OCI spec: "If
/// set, timeout MUST be greater than zero"; runc arms a timer that fires at once, so such a
/// hook is killed and the verb fails).
pub fn check(hooks: &Option<Hooks>) -> Result<()> {
    let Some(h) = hooks else { return Ok(()) };
    for (name, list) in [
        ("createRuntime", h.create_runtime()),
        ("createContainer", h.create_container()),
        ("startContainer", h.start_container()),
        ("prestart", h.prestart()),
        ("poststart", h.poststart()),
        ("poststop", h.poststop()),
    ] {
        for (i, hook) in list.iter().flatten().enumerate() {
            if let Some(t) = hook.timeout().filter(|t| *t <= 0) {
                return Err(Error::invalid(
                    &format!("config.json: hooks.{name}[{i}].timeout"),
                    &t.to_string(),
                    "must be greater than zero",
                ));
            }
        }
    }
    Ok(())
}

/// Run the hooks of one kind in order; the first failure stops them.
pub fn run(kind: &str, hooks: &Option<Vec<Hook>>, state: &serde_json::Value) -> Result<()> {
    let hooks = ns_run::oci::hooks_of(hooks.as_deref().unwrap_or_default());
    ns_core::hook::run(kind, &hooks, state)
}
