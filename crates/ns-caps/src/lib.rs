//! ns-caps: the last privileged stage. Sets the process attributes (rlimits, OOM score, CPU
//! affinity, personality), becomes the payload's user, builds its environment, drops
//! capabilities, sets no_new_privs, changes directory, then installs the system call filter
//! (seccomp/) as the very last step and execs the payload (or ns-init with `--as-pid2`):
//! after the filter come only the execve calls, so a profile need allow nothing of ours
//! (but with `--fork`, whose child must be born under the filter: see [`Args`]).
//!
//! Reads `exec` of the state (or its flags), and from its `runtime` the notify socket and the
//! start fifo. Runs after pivot_root, so users and groups are resolved from the container's
//! own /etc/passwd and /etc/group without running anything inside. Every fd above stderr is closed at its exec.
#![forbid(unsafe_code)]

pub mod caps_spec;
pub mod identity;
pub mod limits;
pub mod privileges;
pub mod process;
pub mod seccomp;

/// The stage's name, in its error and debug lines.
pub const STAGE: &str = "ns-caps";

use clap::Parser;
use ns_core::state::ExecPlan;
use ns_core::{Error, Result};

/// ns-caps [-u USER] [--capability=CAPS] [--drop-capability=CAPS] [--ambient-capability=CAPS]
///         [--no-new-privileges=BOOL] [-E NAME=VALUE]... [--chdir DIR] [-a] [--fork] [--setsid]
///         [-- PROGRAM [ARGS...]]
///
/// Without PROGRAM, runs the user's login shell. With --state-fd N, reads `exec` from the
/// state. fds: --state-fd, --sync-fd (the monitor sees EOF on it when the exec succeeds).
///
/// `--fork` is for entering a running container (`ns-ctl shell`, `ns-oci exec`) from a
/// process that has joined its namespaces but is itself outside its PID namespace (setns
/// affects only children), where the container's processes cannot see it. Once every
/// privilege is dropped (rlimits, bounding set, ids, capability sets, no_new_privs), every
/// fd above stderr but --sync-fd is closed, the filter installed, and ns-caps forks with
/// CLONE_PARENT: the child, the first process the container can see, is born as
/// unprivileged as the container's own, closes the sync fd and execs PROGRAM; being our
/// parent's child, it is waited for (exit code, signals) by the tool that entered, and
/// reparented to that tool's subreaper if the tool exits (`exec --detach`). ns-caps
/// reports the child's host pid on --sync-fd (SYNC `Pid`) and exits 0. `--setsid`: PROGRAM
/// starts a new session, the terminal on its stdin (if any) its controlling terminal.
#[derive(Parser, Debug, Default)]
#[command(
    name = "ns-caps",
    version,
    about = "Drop privileges as nspawn does and exec PROGRAM"
)]
pub struct Args {
    /// Read the plan from this state fd (ns-run sets it).
    #[arg(long, value_name = "FD", conflicts_with_all = ["user", "capability", "drop_capability", "ambient_capability", "no_new_privileges", "setenv", "chdir", "as_pid2", "uuid", "rlimit", "oom_score_adjust", "cpu_affinity", "personality", "system_call_filter", "seccomp", "selinux_context"])]
    pub state_fd: Option<i32>,
    /// Report failures to a monitor on this sync socket.
    #[arg(long, value_name = "FD")]
    pub sync_fd: Option<i32>,
    #[command(flatten)]
    pub exec: ExecArgs,
    /// The system call filter (default yes)
    #[arg(long, value_name = "BOOL", value_parser = parse_bool_flag)]
    pub seccomp: Option<bool>,
    /// Make /dev/console the payload's stdin, stdout, stderr and controlling terminal.
    #[arg(long)]
    pub console: bool,
    /// Drop privileges, then fork (CLONE_PARENT): the child runs PROGRAM; report its pid on
    /// --sync-fd and exit 0.
    #[arg(long, conflicts_with_all = ["as_pid2", "console"])]
    pub fork: bool,
    /// PROGRAM starts a new session; a terminal on its stdin becomes its controlling one.
    #[arg(long)]
    pub setsid: bool,
    /// Execute PROGRAM with this SELinux context (ns-run's -Z).
    #[arg(long, value_name = "SECLABEL")]
    pub selinux_context: Option<String>,
    /// The payload.
    #[arg(last = true, value_name = "PROGRAM")]
    pub rest: Vec<String>,
}

/// nspawn's execution options (ns-caps's share of them), one declaration flattened into
/// both ns-caps's and ns-run's command lines. [`ExecArgs::plan`] turns them into the
/// state's `exec` section, [`plan_to_flags`] back.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ExecArgs {
    /// Maintain a stub init as PID1, invoke binary as PID2
    #[arg(short = 'a', long)]
    pub as_pid2: bool,
    /// Boot up full system (i.e. invoke init)
    #[arg(short = 'b', long)]
    pub boot: bool,
    /// Set working directory in the container
    #[arg(long, value_name = "PATH")]
    pub chdir: Option<String>,
    /// Pass an environment variable to PID 1
    #[arg(short = 'E', long, value_name = "NAME[=VALUE]")]
    pub setenv: Vec<String>,
    /// Run the command under specified user or UID
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Set a specific machine UUID for the container
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<String>,
    /// In addition to the default, retain specified capability
    #[arg(long, value_name = "CAP")]
    pub capability: Vec<String>,
    /// Drop the specified capability from the default set
    #[arg(long, value_name = "CAP")]
    pub drop_capability: Vec<String>,
    /// Sets the specified capability for the started process
    #[arg(long, value_name = "CAP")]
    pub ambient_capability: Vec<String>,
    /// Set PR_SET_NO_NEW_PRIVS flag for container payload
    #[arg(long, value_name = "BOOLEAN")]
    pub no_new_privileges: Option<String>,
    /// Permit/prohibit specific system calls
    #[arg(long, value_name = "LIST|~LIST")]
    pub system_call_filter: Vec<String>,
    /// Suppress any form of disk data synchronization
    #[arg(long, value_name = "BOOLEAN")]
    pub suppress_sync: Option<String>,
    /// Set a resource limit for the payload
    #[arg(long, value_name = "NAME=LIMIT")]
    pub rlimit: Vec<String>,
    /// Adjust the OOM score value for the payload
    #[arg(long, value_name = "VALUE", allow_hyphen_values = true)]
    pub oom_score_adjust: Option<String>,
    /// Adjust the CPU affinity of the container
    #[arg(long, value_name = "CPUS")]
    pub cpu_affinity: Option<String>,
    /// Pick personality for this container
    #[arg(long, value_name = "ARCH")]
    pub personality: Option<String>,
}

fn parse_bool_flag(v: &str) -> std::result::Result<bool, String> {
    parse_boolean(v).ok_or_else(|| format!("not a boolean: {v}"))
}

pub use ns_core::parse_boolean;

/// What the exec plan takes besides its own flags: the command, what other stages' options
/// decided, and the host's facts (read before planning, so that planning reads nothing).
#[derive(Debug, Clone, Default)]
pub struct ExecContext {
    pub argv: Vec<String>,
    /// The container has its own network namespace.
    pub private_network: bool,
    /// The container has its own user namespace.
    pub userns: bool,
    /// Use /dev/console (a pty) as stdio and controlling terminal.
    pub console: bool,
    /// `false`: no system call filter at all.
    pub seccomp: bool,
    /// The image's machine id (read only when no `--uuid` is given; without one the uuid
    /// is random).
    pub machine_id: Option<String>,
    /// The container manager's name (`container=`).
    pub manager: String,
    /// `ID` and `VERSION_ID` of the host's os-release.
    pub host_os_release: (Option<String>, Option<String>),
}

impl ExecArgs {
    /// The host facts the plan of these options needs, for a container whose tree is at
    /// `root`.
    pub fn facts(&self, root: &std::path::Path) -> ExecContext {
        ExecContext {
            machine_id: self.uuid.is_none().then(|| identity::machine_uuid(root)),
            manager: identity::container_manager(),
            host_os_release: identity::host_os_release(),
            seccomp: true,
            ..Default::default()
        }
    }
}

impl ExecArgs {
    /// Check the options and compute the plan (nspawn's capability arithmetic, environment
    /// rules and uuid choice).
    pub fn plan(&self, cx: &ExecContext) -> Result<ExecPlan> {
        let no_new_privileges = match &self.no_new_privileges {
            Some(v) => parse_boolean(v)
                .ok_or_else(|| Error::invalid("--no-new-privileges", v, "not a boolean"))?,
            None => false,
        };
        let retained = caps_spec::retained(
            &self.capability,
            &self.drop_capability,
            cx.private_network,
            cx.userns,
        )?;
        let ambient = caps_spec::parse_list("--ambient-capability", &self.ambient_capability)?;
        caps_spec::check_ambient(ambient, retained, self.boot)?;
        self.check()?;
        let setenv = self
            .setenv
            .iter()
            .map(|e| identity::parse_setenv(e))
            .collect::<Result<Vec<_>>>()?;
        let uuid = self.uuid(cx)?;
        let (host_id, host_version_id) = cx.host_os_release.clone();
        let plan = self.limits_into(ExecPlan {
            argv: cx.argv.clone(),
            user: self.user.clone(),
            chdir: self.chdir.clone(),
            setenv,
            uuid,
            container: cx.manager.clone(),
            host_id,
            host_version_id,
            capabilities: caps_spec::names(retained),
            ambient: caps_spec::names(ambient),
            no_new_privileges,
            as_pid2: self.as_pid2,
            console: cx.console,
            boot: self.boot,
            ..Default::default()
        })?;
        Ok(ExecPlan {
            syscall_filter: self.syscall_filter(cx.seccomp)?,
            ..plan
        })
    }

    /// The container's uuid: `--uuid`, else the image's machine id, else a random one.
    pub fn uuid(&self, cx: &ExecContext) -> Result<String> {
        match &self.uuid {
            Some(u) => identity::parse_uuid(u),
            None => Ok(cx.machine_id.clone().unwrap_or_else(identity::random_uuid)),
        }
    }

    /// The checks that need nothing but the options.
    fn check(&self) -> Result<()> {
        if let Some(d) = &self.chdir {
            check_chdir(d)?;
        }
        if self.boot && self.as_pid2 {
            return Err(Error::setup(
                "--boot and --as-pid2 may not be combined".into(),
            ));
        }
        if self.user.as_deref() == Some("") {
            return Err(Error::invalid("--user", "", "empty user name"));
        }
        // A number is checked now, before anything runs; names are checked by ns-caps, which
        // reads the container's /etc/passwd.
        if let Some(n) = self.user.as_ref().and_then(|u| u.parse::<u64>().ok()) {
            ns_core::check_id("--user", n)?;
        }
        Ok(())
    }

    fn syscall_filter(&self, enabled: bool) -> Result<Option<ns_core::state::SyscallFilter>> {
        let suppress_sync = match self.suppress_sync.as_deref() {
            Some(v) => parse_boolean(v)
                .ok_or_else(|| Error::invalid("--suppress-sync", v, "not a boolean"))?,
            None => false,
        };
        // Without a filter (SYSTEMD_SECCOMP=0), --suppress-sync=yes does nothing, as in nspawn.
        if !enabled {
            return Ok(None);
        }
        let (allow, deny) = seccomp::parse_filter(&self.system_call_filter)?;
        Ok(Some(ns_core::state::SyscallFilter {
            allow,
            deny,
            rules: if suppress_sync {
                seccomp::suppress_sync()
            } else {
                Vec::new()
            },
            ..Default::default()
        }))
    }

    /// `plan` with the process attributes (rlimits, OOM score, CPUs, personality).
    fn limits_into(&self, plan: ExecPlan) -> Result<ExecPlan> {
        Ok(ExecPlan {
            rlimits: self
                .rlimit
                .iter()
                .map(|r| limits::parse_rlimit(r))
                .collect::<Result<_>>()?,
            oom_score_adjust: self
                .oom_score_adjust
                .as_deref()
                .map(limits::parse_oom_score_adjust)
                .transpose()?,
            cpu_affinity: self
                .cpu_affinity
                .as_deref()
                .map(limits::parse_cpu_list)
                .transpose()?
                .unwrap_or_default(),
            personality: self
                .personality
                .as_deref()
                .map(limits::parse_personality)
                .transpose()?,
            ..plan
        })
    }
}

impl Args {
    /// The chain's command line, `--state-fd N [--sync-fd M]` ([`ns_core::stage::stage_args`]).
    pub fn set_fds(&mut self, state_fd: i32, sync_fd: Option<i32>) {
        self.state_fd = Some(state_fd);
        self.sync_fd = sync_fd;
    }

    /// The plan these flags describe; relative to nspawn's defaults, as ns-run computes it.
    pub fn to_plan(&self) -> Result<ExecPlan> {
        let plan = self.exec.plan(&ExecContext {
            argv: self.rest.clone(),
            console: self.console,
            seccomp: self.seccomp.unwrap_or(true),
            ..self.exec.facts(std::path::Path::new("/"))
        })?;
        Ok(ExecPlan {
            selinux_context: self.selinux_context.clone(),
            ..plan
        })
    }
}

/// `--chdir` must be absolute (existence is checked inside the container).
pub fn check_chdir(d: &str) -> Result<()> {
    if d.starts_with('/') {
        Ok(())
    } else {
        Err(Error::invalid("--chdir", d, "not an absolute path"))
    }
}

/// The flags that reproduce `plan` (for `ns-run --print-chain`). Capabilities are written
/// relative to nspawn's default set, as a user would type them.
pub fn plan_to_flags(plan: &ExecPlan) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(u) = &plan.user {
        out.push(format!("--user={u}"));
    }
    let retained = caps_spec::mask_of_names(&plan.capabilities);
    let default = caps_spec::DEFAULT_RETAINED;
    let added = caps_spec::names(retained & !default);
    let dropped = caps_spec::names(default & !retained);
    if !added.is_empty() {
        out.push(format!("--capability={}", caps_spec::upper(&added)));
    }
    if !dropped.is_empty() {
        out.push(format!("--drop-capability={}", caps_spec::upper(&dropped)));
    }
    if !plan.ambient.is_empty() {
        out.push(format!(
            "--ambient-capability={}",
            caps_spec::upper(&plan.ambient)
        ));
    }
    if plan.no_new_privileges {
        out.push("--no-new-privileges=yes".into());
    }
    for e in &plan.setenv {
        out.push(format!("--setenv={e}"));
    }
    if let Some(d) = &plan.chdir {
        out.push(format!("--chdir={d}"));
    }
    out.extend(limits::to_flags(plan));
    match &plan.syscall_filter {
        None => out.push("--seccomp=no".into()),
        Some(f) => {
            if !f.allow.is_empty() {
                out.push(format!("--system-call-filter={}", f.allow.join(" ")));
            }
            if !f.deny.is_empty() {
                out.push(format!("--system-call-filter=~{}", f.deny.join(" ")));
            }
        }
    }
    if let Some(l) = &plan.selinux_context {
        out.push(format!("--selinux-context={l}"));
    }
    out.push(format!("--uuid={}", plan.uuid));
    if plan.as_pid2 {
        out.push("--as-pid2".into());
    }
    if plan.console {
        out.push("--console".into());
    }
    if plan.boot {
        out.push("--boot".into());
    }
    out
}
