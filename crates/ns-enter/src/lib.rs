//! ns-enter: create the container's namespaces and start its PID 1.
//!
//! Reads `enter` of the state (or its flags), and the v1 cgroups to join from its `runtime`. Creates the namespaces in one unshare, sets the
//! hostname, brings `lo` up in a new network namespace, then forks: the child is PID 1 of the
//! new PID namespace and execs the rest of the chain.
//!
//! Under a monitor (`--sync-fd`), it first waits for the container's cgroups when the state's
//! `runtime` names them (SYNC-0) and joins the v1 ones; the child is cloned with CLONE_PARENT so that it
//! is the monitor's own child; ns-enter reports its pid (SYNC-2) and exits. Alone, ns-enter stays as
//! a minimal monitor: it waits for the child, kills it on SIGTERM/SIGINT/SIGHUP, and exits
//! with its status (128+N for a signal).
#![forbid(unsafe_code)]

pub mod cgroups;

use clap::Parser;
use ns_core::state::{EnterPlan, Namespace};

/// ns-enter [NAMESPACE FLAGS] [--hostname NAME] -- PROGRAM [ARGS...]
///
/// Without namespace flags, creates nspawn's set: mount, uts, ipc, cgroup, pid.
/// `--hostname` implies --uts. `--network-namespace-path` (or `--netns`) joins that network
/// namespace (e.g. /run/netns/NAME) instead of creating one. With --state-fd N, reads `enter` from the state instead, and the next stage (ns-mount)
/// from the state when no PROGRAM is given. fds: --state-fd (state memfd), --sync-fd (sync
/// socket to the monitor).
#[derive(Parser, Debug, Default)]
#[command(
    name = "ns-enter",
    version,
    about = "Create namespaces and run PROGRAM as PID 1"
)]
pub struct Args {
    /// Read the plan from this state fd (ns-run sets it).
    #[arg(long, value_name = "FD", conflicts_with_all = ["user", "mount", "uts", "ipc", "net", "network_namespace_path", "cgroup", "pid", "hostname"])]
    pub state_fd: Option<i32>,
    /// Report to a monitor on this sync socket.
    #[arg(long, value_name = "FD")]
    pub sync_fd: Option<i32>,
    /// New user namespace mapping only your own uid (to root); -U id ranges are ns-run's.
    #[arg(long)]
    pub user: bool,
    /// New mount namespace.
    #[arg(long)]
    pub mount: bool,
    /// New UTS namespace (hostname).
    #[arg(long)]
    pub uts: bool,
    /// New IPC namespace.
    #[arg(long)]
    pub ipc: bool,
    /// New network namespace with only `lo`, up.
    #[arg(long, conflicts_with = "network_namespace_path")]
    pub net: bool,
    /// New cgroup namespace rooted at the current cgroup.
    #[arg(long)]
    pub cgroup: bool,
    /// New PID namespace; PROGRAM becomes its PID 1.
    #[arg(long)]
    pub pid: bool,
    #[command(flatten)]
    pub enter: EnterArgs,
    /// The next program: another stage or the payload.
    #[arg(last = true, value_name = "PROGRAM")]
    pub rest: Vec<String>,
}

/// nspawn's options that ns-enter carries out (a hostname in the new UTS namespace, which
/// implies --uts here; a network namespace to join, `--netns` for short), one declaration
/// flattened into both ns-enter's and ns-run's command lines.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct EnterArgs {
    /// Override the hostname for the container
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Set network namespace to the one represented by the specified kernel namespace file
    #[arg(long, alias = "netns", value_name = "PATH")]
    pub network_namespace_path: Option<String>,
}

/// What the enter plan takes besides its own flags.
#[derive(Debug, Default, Clone)]
pub struct EnterContext {
    /// The namespaces to create (a joined network namespace is not created).
    pub namespaces: Vec<Namespace>,
    /// The hostname without `--hostname` (ns-run: the machine name).
    pub hostname: Option<String>,
    /// The `--network-namespace-path` as checked by the caller (ns-run: absolute, exists);
    /// without it, the path as given.
    pub netns_path: Option<std::path::PathBuf>,
    /// -U's id range (ns-run's monitor maps it).
    pub userns: Option<ns_core::state::UserNs>,
}

impl EnterArgs {
    /// The plan of these options.
    pub fn plan(&self, cx: EnterContext) -> EnterPlan {
        let netns_path = cx.netns_path.or_else(|| {
            self.network_namespace_path
                .as_ref()
                .map(std::path::PathBuf::from)
        });
        let mut namespaces = cx.namespaces;
        if netns_path.is_some() {
            namespaces.retain(|n| *n != Namespace::Net);
        }
        if cx.userns.is_some() && !namespaces.contains(&Namespace::User) {
            namespaces.insert(0, Namespace::User);
        }
        EnterPlan {
            namespaces,
            hostname: self.hostname.clone().or(cx.hostname),
            netns_path,
            userns: cx.userns,
            join: Vec::new(),
        }
    }
}

impl Args {
    /// The chain's command line, `--state-fd N [--sync-fd M]` ([`ns_core::stage::stage_args`]).
    pub fn set_fds(&mut self, state_fd: i32, sync_fd: Option<i32>) {
        self.state_fd = Some(state_fd);
        self.sync_fd = sync_fd;
    }

    /// The plan these flags describe.
    pub fn to_plan(&self) -> EnterPlan {
        let chosen = [
            (Namespace::User, self.user),
            (Namespace::Mount, self.mount),
            (Namespace::Uts, self.uts || self.enter.hostname.is_some()),
            (Namespace::Ipc, self.ipc),
            (Namespace::Net, self.net),
            (Namespace::Cgroup, self.cgroup),
            (Namespace::Pid, self.pid),
        ];
        let any = [
            self.user,
            self.mount,
            self.uts,
            self.ipc,
            self.net,
            self.cgroup,
            self.pid,
        ]
        .contains(&true);
        let namespaces = if any {
            chosen
                .iter()
                .filter(|(_, on)| *on)
                .map(|(n, _)| *n)
                .collect()
        } else {
            default_namespaces(false)
        };
        self.enter.plan(EnterContext {
            namespaces,
            ..Default::default()
        })
    }
}

/// nspawn's namespaces: mount, UTS, IPC, cgroup and PID, plus network when private.
pub fn default_namespaces(private_network: bool) -> Vec<Namespace> {
    let mut v = vec![Namespace::Mount, Namespace::Uts, Namespace::Ipc];
    if private_network {
        v.push(Namespace::Net);
    }
    v.extend([Namespace::Cgroup, Namespace::Pid]);
    v
}

/// The flags that reproduce `plan` (for `ns-run --print-chain`).
pub fn plan_to_flags(plan: &EnterPlan) -> Vec<String> {
    let mut out: Vec<String> = plan
        .namespaces
        .iter()
        .map(|n| format!("--{}", n.name()))
        .collect();
    if let Some(h) = &plan.hostname {
        out.push(format!("--hostname={h}"));
    }
    if let Some(p) = &plan.netns_path {
        out.push(format!("--netns={}", p.display()));
    }
    out
}

pub fn clone_flags(namespaces: &[Namespace]) -> nix::sched::CloneFlags {
    use nix::sched::CloneFlags;
    namespaces.iter().fold(CloneFlags::empty(), |acc, n| {
        acc | match n {
            Namespace::User => CloneFlags::CLONE_NEWUSER,
            Namespace::Mount => CloneFlags::CLONE_NEWNS,
            Namespace::Uts => CloneFlags::CLONE_NEWUTS,
            Namespace::Ipc => CloneFlags::CLONE_NEWIPC,
            Namespace::Net => CloneFlags::CLONE_NEWNET,
            Namespace::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            Namespace::Pid => CloneFlags::CLONE_NEWPID,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("ns-enter").chain(a.iter().copied())).unwrap()
    }

    #[test]
    fn no_flags_means_nspawns_namespaces() {
        let p = parse(&["--", "sh"]).to_plan();
        assert_eq!(p.namespaces, default_namespaces(false));
        assert_eq!(parse(&["--", "sh"]).rest, vec!["sh"]);
    }

    #[test]
    fn flags_round_trip_through_plan() {
        let p = parse(&["--pid", "--mount", "--net", "--hostname", "box"]).to_plan();
        assert_eq!(
            p.namespaces,
            vec![
                Namespace::Mount,
                Namespace::Uts,
                Namespace::Net,
                Namespace::Pid
            ]
        );
        let flags = plan_to_flags(&p);
        let mut argv = vec!["ns-enter".to_string()];
        argv.extend(flags);
        assert_eq!(Args::try_parse_from(argv).unwrap().to_plan(), p);
    }

    #[test]
    fn state_fd_conflicts_with_flags() {
        assert!(Args::try_parse_from(["ns-enter", "--state-fd", "3", "--pid"]).is_err());
    }
}
