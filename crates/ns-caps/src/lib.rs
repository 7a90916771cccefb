//! ns-caps: the last privileged stage. Sets the process attributes (rlimits, OOM score, CPU
//! affinity, personality), installs the system call filter (seccomp/), becomes the payload's
//! user, builds its environment, drops capabilities, sets no_new_privs, changes directory,
//! then execs the payload (or ns-init with `--as-pid2`).
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
/// privilege is dropped (rlimits, filter, bounding set, ids, capability sets,
/// no_new_privs), every fd above stderr but --sync-fd is closed and ns-caps forks with
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
    #[arg(long, value_name = "FD", conflicts_with_all = ["user", "capability", "drop_capability", "ambient_capability", "no_new_privileges", "setenv", "chdir", "as_pid2", "uuid", "rlimit", "oom_score_adjust", "cpu_affinity", "personality", "system_call_filter", "seccomp"])]
    pub state_fd: Option<i32>,
    /// Report failures to a monitor on this sync socket.
    #[arg(long, value_name = "FD")]
    pub sync_fd: Option<i32>,
    /// Run as USER (name or number) from the container's /etc/passwd.
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
    /// Retain these capabilities in addition to nspawn's default set.
    #[arg(long, value_name = "CAPS")]
    pub capability: Vec<String>,
    /// Drop these capabilities from the set.
    #[arg(long, value_name = "CAPS")]
    pub drop_capability: Vec<String>,
    /// Give a non-root payload these capabilities as ambient ones.
    #[arg(long, value_name = "CAPS")]
    pub ambient_capability: Vec<String>,
    /// Set PR_SET_NO_NEW_PRIVS.
    #[arg(long, value_name = "BOOL", value_parser = parse_bool_flag)]
    pub no_new_privileges: Option<bool>,
    /// Environment assignment over the defaults (NAME=VALUE, or NAME to copy ours).
    #[arg(short = 'E', long, value_name = "NAME[=VALUE]")]
    pub setenv: Vec<String>,
    /// Working directory (absolute).
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<String>,
    /// container_uuid (default: /etc/machine-id, else random).
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<String>,
    /// Resource limit NAME=SOFT[:HARD] (`RLIMIT_` optional; a limit may be `infinity`).
    #[arg(long, value_name = "NAME=LIMIT")]
    pub rlimit: Vec<String>,
    /// OOM score adjustment, -1000..1000.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub oom_score_adjust: Option<String>,
    /// CPUs to run on: numbers and ranges, e.g. 0-3,6.
    #[arg(long, value_name = "CPUS")]
    pub cpu_affinity: Option<String>,
    /// Execution domain: x86 or x86-64.
    #[arg(long, value_name = "ARCH")]
    pub personality: Option<String>,
    /// Exec ns-init as PID 1, which runs PROGRAM as PID 2.
    /// Add (or, with ~, remove) system calls and @groups to the filter's allow-list
    #[arg(long, value_name = "LIST", allow_hyphen_values = true)]
    pub system_call_filter: Vec<String>,
    /// The system call filter (default yes)
    #[arg(long, value_name = "BOOL", value_parser = parse_bool_flag)]
    pub seccomp: Option<bool>,
    #[arg(short = 'a', long)]
    pub as_pid2: bool,
    /// Make /dev/console the payload's stdin, stdout, stderr and controlling terminal.
    #[arg(long)]
    pub console: bool,
    /// Exec the image's init (systemd, else /sbin/init); PROGRAM's words are its arguments.
    #[arg(short = 'b', long)]
    pub boot: bool,
    /// Drop privileges, then fork (CLONE_PARENT): the child runs PROGRAM; report its pid on
    /// --sync-fd and exit 0.
    #[arg(long, conflicts_with_all = ["as_pid2", "console"])]
    pub fork: bool,
    /// PROGRAM starts a new session; a terminal on its stdin becomes its controlling one.
    #[arg(long)]
    pub setsid: bool,
    /// The payload.
    #[arg(last = true, value_name = "PROGRAM")]
    pub rest: Vec<String>,
}

fn parse_bool_flag(v: &str) -> std::result::Result<bool, String> {
    parse_boolean(v).ok_or_else(|| format!("not a boolean: {v}"))
}

pub use ns_core::parse_boolean;

/// The options that decide the exec plan, shared by ns-caps's flags and ns-run's nspawn
/// command line so that the two cannot drift apart.
#[derive(Debug)]
pub struct ExecOptions<'a> {
    pub argv: &'a [String],
    pub user: Option<&'a str>,
    pub chdir: Option<&'a str>,
    pub setenv: &'a [String],
    pub uuid: Option<&'a str>,
    /// Where to look for etc/machine-id when no uuid is given.
    pub root: &'a std::path::Path,
    pub capability: &'a [String],
    pub drop_capability: &'a [String],
    pub ambient_capability: &'a [String],
    pub private_network: bool,
    /// The container has its own user namespace.
    pub userns: bool,
    pub boot: bool,
    pub no_new_privileges: bool,
    pub as_pid2: bool,
    /// Use /dev/console (a pty) as stdio and controlling terminal.
    pub console: bool,
    pub rlimit: &'a [String],
    pub oom_score_adjust: Option<&'a str>,
    pub cpu_affinity: Option<&'a str>,
    pub personality: Option<&'a str>,
    /// `--system-call-filter=` values; `seccomp` false: no filter at all.
    pub system_call_filter: &'a [String],
    pub seccomp: bool,
}

/// Check the options and compute the plan (nspawn's capability arithmetic, environment
/// rules and uuid choice).
pub fn exec_plan(o: &ExecOptions) -> Result<ExecPlan> {
    let retained =
        caps_spec::retained(o.capability, o.drop_capability, o.private_network, o.userns)?;
    let ambient = caps_spec::parse_list("--ambient-capability", o.ambient_capability)?;
    caps_spec::check_ambient(ambient, retained, o.boot)?;
    if let Some(d) = o.chdir {
        check_chdir(d)?;
    }
    if o.boot && o.as_pid2 {
        return Err(Error::setup(
            "--boot and --as-pid2 may not be combined".into(),
        ));
    }
    if o.user == Some("") {
        return Err(Error::invalid("--user", "", "empty user name"));
    }
    // A number is checked now, before anything runs; names are checked by ns-caps, which
    // reads the container's /etc/passwd.
    if let Some(n) = o.user.and_then(|u| u.parse::<u64>().ok()) {
        ns_core::check_id("--user", n)?;
    }
    let setenv = o
        .setenv
        .iter()
        .map(|e| identity::parse_setenv(e))
        .collect::<Result<Vec<_>>>()?;
    let uuid = match o.uuid {
        Some(u) => identity::parse_uuid(u)?,
        None => identity::machine_uuid(o.root),
    };
    let (host_id, host_version_id) = identity::host_os_release();
    Ok(ExecPlan {
        argv: o.argv.to_vec(),
        user: o.user.map(str::to_string),
        chdir: o.chdir.map(str::to_string),
        setenv,
        uuid,
        container: identity::container_manager(),
        host_id,
        host_version_id,
        capabilities: caps_spec::names(retained),
        ambient: caps_spec::names(ambient),
        no_new_privileges: o.no_new_privileges,
        as_pid2: o.as_pid2,
        console: o.console,
        boot: o.boot,
        rlimits: o
            .rlimit
            .iter()
            .map(|r| limits::parse_rlimit(r))
            .collect::<Result<_>>()?,
        oom_score_adjust: o
            .oom_score_adjust
            .map(limits::parse_oom_score_adjust)
            .transpose()?,
        cpu_affinity: o
            .cpu_affinity
            .map(limits::parse_cpu_list)
            .transpose()?
            .unwrap_or_default(),
        personality: o.personality.map(limits::parse_personality).transpose()?,
        syscall_filter: if o.seccomp {
            let (allow, deny) = seccomp::parse_filter(o.system_call_filter)?;
            Some(ns_core::state::SyscallFilter {
                allow,
                deny,
                ..Default::default()
            })
        } else {
            None
        },
        ..Default::default()
    })
}

impl Args {
    /// The plan these flags describe; relative to nspawn's defaults, as ns-run computes it.
    pub fn to_plan(&self) -> Result<ExecPlan> {
        exec_plan(&ExecOptions {
            argv: &self.rest,
            user: self.user.as_deref(),
            chdir: self.chdir.as_deref(),
            setenv: &self.setenv,
            uuid: self.uuid.as_deref(),
            root: std::path::Path::new("/"),
            capability: &self.capability,
            drop_capability: &self.drop_capability,
            ambient_capability: &self.ambient_capability,
            no_new_privileges: self.no_new_privileges.unwrap_or(false),
            as_pid2: self.as_pid2,
            console: self.console,
            private_network: false,
            userns: false,
            boot: self.boot,
            rlimit: &self.rlimit,
            oom_score_adjust: self.oom_score_adjust.as_deref(),
            cpu_affinity: self.cpu_affinity.as_deref(),
            personality: self.personality.as_deref(),
            system_call_filter: &self.system_call_filter,
            seccomp: self.seccomp.unwrap_or(true),
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
