//! Who the program runs as: the bounding set, the ids and groups, the capability sets and
//! no_new_privs, in the only order the kernel allows.

use caps::CapSet;
use ns_core::stage::debug;
use ns_core::state::ExecPlan;
use ns_core::sync::SyncSocket;
use ns_core::{Context, Error, Result};

use crate::caps_spec::{mask_of_names, names, to_set, upper};
use crate::identity::User;
use crate::STAGE;

/// `cannot {what}: {e}` for a failed call of the caps crate.
fn caps_err(what: &'static str) -> impl Fn(caps::errors::CapsError) -> Error {
    move |e| Error::setup(format!("cannot {what}: {e}"))
}

/// The system call filter, built while privileged and installed as the very last step
/// before exec (as runc does with no_new_privs), so that nothing ns-caps does may need a call
/// the filter denies: the payload's profile need not allow closing fds or waiting for start.
/// Without no_new_privs installing it takes CAP_SYS_ADMIN, which is kept in the permitted set
/// until then (and raised only to install): exec recomputes the payload's sets from the
/// bounding, inheritable and ambient ones and the file, never from ours.
pub struct PendingFilter {
    filter: Option<crate::seccomp::Prepared>,
    /// Where a notifying filter's listener goes.
    listener: crate::seccomp::Listener,
    raise_admin: bool,
    /// The effective and permitted sets the plan asked for (without CAP_SYS_ADMIN kept).
    sets: (u64, u64),
    prepared: bool,
}

impl PendingFilter {
    /// The socket a notifying filter's listener goes to (kept open until it is installed).
    pub fn listener_socket(&self) -> Option<i32> {
        self.listener.socket
    }

    /// Prepare the exec ([`ns_core::exec::prepare_exec`]: fds close-on-exec, signals), then
    /// install the filter (if any); once. The next call must be exec (or `--fork`'s clone).
    pub fn install(&mut self) -> Result<()> {
        if !self.prepared {
            ns_core::exec::prepare_exec()?;
            self.prepared = true;
        }
        let Some(f) = self.filter.take() else {
            return Ok(());
        };
        if self.raise_admin {
            caps::raise(None, CapSet::Effective, caps::Capability::CAP_SYS_ADMIN)
                .map_err(caps_err("raise CAP_SYS_ADMIN to install the filter"))?;
        }
        f.install(&self.listener)
    }

    /// `--fork`: install the filter now, then give back what installing it took, so that
    /// the child, which the container can see (and, as root without a user namespace,
    /// ptrace) before it execs, is born under the filter and as unprivileged as the
    /// container's own processes. After the filter come the fork, the pid report and, with
    /// `--setsid`, the new session: calls a profile that lets `exec` run at all allows
    /// (runc's exec needs many more after its filter without no_new_privs).
    pub fn install_before_fork(&mut self) -> Result<()> {
        let restore = self.raise_admin && self.filter.is_some();
        self.install()?;
        if restore {
            let (effective, permitted) = self.sets;
            caps::set(None, CapSet::Effective, &to_set(effective))
                .map_err(caps_err("set effective capabilities"))?;
            caps::set(None, CapSet::Permitted, &to_set(permitted))
                .map_err(caps_err("set permitted capabilities"))?;
        }
        Ok(())
    }
}

/// Bounding set, identity, then the capability sets, in the only order the kernel allows:
/// dropping from the bounding set and changing ids both need capabilities we give up last.
/// Returns the filter, to be installed right before exec (its listener, if it notifies, to
/// `listener`).
pub fn drop_privileges(
    plan: &ExecPlan,
    user: &User,
    sync: Option<&SyncSocket>,
    listener: crate::seccomp::Listener,
) -> Result<PendingFilter> {
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
    let filter = plan
        .syscall_filter
        .as_ref()
        .map(|f| crate::seccomp::Prepared::new(retain, f))
        .transpose()?;
    let raise_admin = filter.is_some() && !plan.no_new_privileges;
    set_groups(user)?;
    for c in caps::all() {
        if bounding & c.bitmask() != 0 && retain & c.bitmask() == 0 {
            caps::drop(None, CapSet::Bounding, c)
                .map_err(caps_err("drop from the bounding set"))?;
        }
    }
    let pdeath =
        nix::sys::prctl::get_pdeathsig().ctx(|| "cannot read the parent-death signal".into())?;
    let keep = if raise_admin {
        caps::Capability::CAP_SYS_ADMIN.bitmask()
    } else {
        0
    };
    let sets = become_user(plan, user, (retain, ambient), keep)?;
    // Any change of uid or gid cleared the parent-death signal: set it again.
    if let Some(sig) = pdeath {
        nix::sys::prctl::set_pdeathsig(sig).ctx(|| "cannot set the parent-death signal".into())?;
        check_monitor(sync)?;
    }
    if plan.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().ctx(|| "cannot set no_new_privs".into())?;
    }
    Ok(PendingFilter {
        filter,
        listener,
        raise_admin,
        sets,
        prepared: false,
    })
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
/// rule (root keeps `retain`, another user only `ambient`); `keep` stays permitted too (for
/// [`PendingFilter`]). Returns the effective and permitted sets set (without `keep`).
fn become_user(
    plan: &ExecPlan,
    user: &User,
    (retain, ambient): (u64, u64),
    keep: u64,
) -> Result<(u64, u64)> {
    let (effective, permitted, inheritable) = match &plan.cap_sets {
        Some(c) => (
            mask_of_names(&c.effective),
            mask_of_names(&c.permitted),
            mask_of_names(&c.inheritable),
        ),
        None => {
            let k = if user.uid == 0 { retain } else { ambient };
            (k, k, k)
        }
    };
    let sets = (effective, permitted);
    let permitted = permitted | keep;
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
    Ok(sets)
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
