//! Who the program runs as: the bounding set, the ids and groups, the capability sets and
//! no_new_privs, in the only order the kernel allows.

use caps::CapSet;
use ns_core::stage::debug;
use ns_core::state::{ExecPlan, Runtime};
use ns_core::sync::SyncSocket;
use ns_core::{Context, Error, Result};

use crate::caps_spec::{mask_of_names, names, to_set, upper};
use crate::identity::User;
use crate::STAGE;

/// `cannot {what}: {e}` for a failed call of the caps crate.
fn caps_err(what: &'static str) -> impl Fn(caps::errors::CapsError) -> Error {
    move |e| Error::setup(format!("cannot {what}: {e}"))
}

/// Bounding set, identity, then the capability sets, in the only order the kernel allows:
/// dropping from the bounding set and changing ids both need capabilities we give up last.
/// (`runtime`: whether a start fifo is waited on.)
pub fn drop_privileges(
    plan: &ExecPlan,
    runtime: &Runtime,
    user: &User,
    sync: Option<&SyncSocket>,
) -> Result<()> {
    let bounding = caps::read(None, CapSet::Bounding).map_err(caps_err("read the bounding set"))?;
    let bounding = bounding.iter().fold(0u64, |m, c| m | c.bitmask());
    // nspawn: capabilities missing from the host's bounding set are silently not retained.
    let retain = mask_of_names(&plan.capabilities) & bounding;
    let ambient = mask_of_names(&plan.ambient);
    if ambient & !retain != 0 {
        return Err(Error::invalid(
            "--ambient-capability",
            &upper(&names(ambient & !retain)),
            "not in the bounding set",
        ));
    }
    debug(STAGE, || {
        format!("retain {retain:#x} ambient {ambient:#x} uid {}", user.uid)
    });
    set_groups(user)?;
    // The filter first, while we hold CAP_SYS_ADMIN (it needs that or no_new_privs); what
    // follows here uses only calls it allows (@setuid, capset, prctl of @process).
    if let Some(f) = plan
        .syscall_filter
        .as_ref()
        .filter(|_| runtime.start_fd.is_none() || !plan.no_new_privileges)
    {
        crate::seccomp::install(retain, f, crate::seccomp::Listener::of(plan, runtime))?;
    }
    for c in caps::all() {
        if bounding & c.bitmask() != 0 && retain & c.bitmask() == 0 {
            caps::drop(None, CapSet::Bounding, c)
                .map_err(caps_err("drop from the bounding set"))?;
        }
    }
    let pdeath =
        nix::sys::prctl::get_pdeathsig().ctx(|| "cannot read the parent-death signal".into())?;
    become_user(plan, user, retain, ambient)?;
    // Any change of uid or gid cleared the parent-death signal: set it again.
    if let Some(sig) = pdeath {
        nix::sys::prctl::set_pdeathsig(sig).ctx(|| "cannot set the parent-death signal".into())?;
        check_monitor(sync)?;
    }
    if plan.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().ctx(|| "cannot set no_new_privs".into())?;
    }
    Ok(())
}

/// Supplementary groups before the filter, so that only the user namespace can refuse them: a
/// rootless one with one mapped id denies setgroups, and there is nothing to clear then (never
/// judged from /proc/self: under --fork that is the container's /proc).
fn set_groups(user: &User) -> Result<()> {
    let groups: Vec<nix::unistd::Gid> = user
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    if groups.is_empty() {
        ns_core::sys::clear_groups().ctx(|| "cannot clear supplementary groups".into())
    } else {
        nix::unistd::setgroups(&groups)
            .ctx(|| format!("cannot set supplementary groups {:?}", user.groups))
    }
}

/// The ids, then the capability sets the payload ends with: OCI's as given, else nspawn's
/// rule (root keeps `retain`, another user only `ambient`).
fn become_user(plan: &ExecPlan, user: &User, retain: u64, ambient: u64) -> Result<()> {
    let (effective, permitted, inheritable) = match &plan.cap_sets {
        Some(c) => (
            mask_of_names(&c.effective),
            mask_of_names(&c.permitted),
            mask_of_names(&c.inheritable),
        ),
        None => {
            let keep = if user.uid == 0 { retain } else { ambient };
            (keep, keep, keep)
        }
    };
    if user.uid != 0 && (ambient != 0 || permitted != 0) {
        nix::sys::prctl::set_keepcaps(true).ctx(|| "cannot keep capabilities".into())?;
    }
    let gid = nix::unistd::Gid::from_raw(user.gid);
    let uid = nix::unistd::Uid::from_raw(user.uid);
    nix::unistd::setresgid(gid, gid, gid).ctx(|| format!("cannot set gid {}", user.gid))?;
    nix::unistd::setresuid(uid, uid, uid).ctx(|| format!("cannot set uid {}", user.uid))?;

    caps::set(None, CapSet::Inheritable, &to_set(inheritable))
        .map_err(caps_err("set inheritable capabilities"))?;
    caps::set(None, CapSet::Effective, &to_set(effective))
        .map_err(caps_err("set effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &to_set(permitted))
        .map_err(caps_err("set permitted capabilities"))?;
    for c in to_set(ambient) {
        caps::raise(None, CapSet::Ambient, c).map_err(caps_err("raise ambient capabilities"))?;
    }
    if user.uid != 0 {
        nix::sys::prctl::set_keepcaps(false).ctx(|| "cannot reset keep-capabilities".into())?;
    }
    Ok(())
}

/// After the parent-death signal is set again: make sure the monitor did not die in between
/// (it holds the other end of the sync socket).
fn check_monitor(sync: Option<&SyncSocket>) -> Result<()> {
    let Some(s) = sync else {
        return Ok(());
    };
    let mut p = [nix::poll::PollFd::new(
        s.fd(),
        nix::poll::PollFlags::empty(),
    )];
    let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::ZERO);
    if p[0]
        .revents()
        .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP))
    {
        return Err(Error::setup("monitor went away".into()));
    }
    Ok(())
}

/// OCI `process.user`: the numbers as given; name, home and the groups /etc/group gives the
/// name from the image when it has them (as runc), then `additionalGids`.
pub fn with_ids(mut user: User, ids: &ns_core::state::Ids) -> User {
    user.uid = ids.uid;
    user.gid = ids.gid;
    user.groups.extend(&ids.groups);
    user.groups.sort_unstable();
    user.groups.dedup();
    user
}
