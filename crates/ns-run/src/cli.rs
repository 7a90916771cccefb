//! systemd-nspawn 252's command line, option for option (same names, short forms, argument
//! kinds), plus ns-run's own `--print-state` and `--print-chain`.

use clap::Parser;

/// ns-run [OPTIONS...] [--] [COMMAND [ARGS...]]
///
/// Spawn a command or OS in a light-weight container, as systemd-nspawn does.
#[derive(Parser, Debug, Default)]
#[command(
    name = "ns-run",
    version,
    about = "Run a command in a container: systemd-nspawn's options, composed from ns-* stages",
    disable_help_flag = true,
    mut_args(in_nspawn_order)
)]
pub struct Cli {
    /// Show this help
    #[arg(short = 'h', long)]
    pub help: bool,
    /// Show every option (--help shows the ones used most), grouped as nspawn's man page
    #[arg(long)]
    pub help_all: bool,
    /// Do not show status information
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Do not pipe output into a pager (accepted; ns-run has no pager)
    #[arg(long)]
    pub no_pager: bool,
    /// Load additional settings from .nspawn file
    #[arg(long, value_name = "BOOLEAN")]
    pub settings: Option<String>,

    // Image (and the mount options: ns-mount's, shared)
    #[command(flatten)]
    pub mount: ns_mount::MountArgs,
    /// Initialize root directory from template directory, if missing
    #[arg(long, value_name = "PATH")]
    pub template: Option<String>,
    /// Root file system disk image (or device node) for the container
    #[arg(short = 'i', long, value_name = "PATH")]
    pub image: Option<String>,
    /// Not an option: `-i`'s image is mounted and `directory` is its tree (set by ns-run
    /// before planning).
    #[arg(skip)]
    pub image_mounted: bool,
    /// OCI bundle directory
    #[arg(long, value_name = "PATH")]
    pub oci_bundle: Option<String>,
    /// Specify verity root hash for root disk image
    #[arg(long, value_name = "HASH")]
    pub root_hash: Option<String>,
    /// Specify pkcs7 signature of root hash for verity
    #[arg(long, value_name = "SIG")]
    pub root_hash_sig: Option<String>,
    /// Specify hash device for verity
    #[arg(long, value_name = "PATH")]
    pub verity_data: Option<String>,

    // Execution (and --uuid, the capability, system call filter and resource options:
    // ns-caps's, shared)
    #[command(flatten)]
    pub exec: ns_caps::ExecArgs,
    /// Select signal to use for shutting down PID 1
    #[arg(long, value_name = "SIGNAL")]
    pub kill_signal: Option<String>,
    /// Receive notifications from the child init process
    #[arg(long, value_name = "BOOLEAN")]
    pub notify_ready: Option<String>,

    // System identity (and --hostname, --network-namespace-path: ns-enter's, shared)
    #[command(flatten)]
    pub enter: ns_enter::EnterArgs,
    /// Set the machine name for the container
    #[arg(short = 'M', long, value_name = "NAME")]
    pub machine: Option<String>,

    // Properties
    /// Place the container in the specified slice
    #[arg(short = 'S', long, value_name = "SLICE")]
    pub slice: Option<String>,
    /// Set scope unit property
    #[arg(long, value_name = "NAME=VALUE")]
    pub property: Vec<String>,
    /// Register container as machine
    #[arg(long, value_name = "BOOLEAN")]
    pub register: Option<String>,
    /// Do not register a scope for the machine (with machined: use the unit ns-run runs in)
    #[arg(long)]
    pub keep_unit: bool,

    // User namespacing
    /// Run within user namespace (no|yes|pick|identity|UIDBASE[:NUIDS])
    #[arg(long, value_name = "MODE", num_args = 0..=1, require_equals = true, default_missing_value = "yes")]
    pub private_users: Option<String>,
    /// Adjust ('chown') or map ('map') OS tree ownership to private UID/GID range
    #[arg(long, value_name = "MODE")]
    pub private_users_ownership: Option<String>,
    /// Obsolete alias of --private-users-ownership=chown
    #[arg(long, hide = true, value_name = "BOOLEAN", num_args = 0..=1, require_equals = true, default_missing_value = "yes")]
    pub private_users_chown: Option<String>,
    /// Equivalent to --private-users=pick and --private-users-ownership=auto
    #[arg(short = 'U')]
    pub userns_pick: bool,

    // Networking
    /// Disable network in container
    #[arg(long)]
    pub private_network: bool,
    /// -n, --network-bridge, --network-zone, ... (shared with ns-net)
    #[command(flatten)]
    pub net: ns_net::NetArgs,

    // Security
    /// Set the SELinux security context to be used by processes in the container
    #[arg(short = 'Z', long, value_name = "SECLABEL")]
    pub selinux_context: Option<String>,
    /// Set the SELinux security context to be used by API/tmpfs file systems
    #[arg(short = 'L', long, value_name = "SECLABEL")]
    pub selinux_apifs_context: Option<String>,

    // Resources

    // Integration
    /// Link up guest journal, one of no, auto, guest, host, try-guest, try-host
    #[arg(long, value_name = "MODE")]
    pub link_journal: Option<String>,
    /// Equivalent to --link-journal=try-guest
    #[arg(short = 'j')]
    pub link_journal_try_guest: bool,

    // Mounts
    /// Bind user from host to container
    #[arg(long, value_name = "NAME")]
    pub bind_user: Vec<String>,

    // Input/Output
    /// Select how stdin/stdout/stderr and /dev/console are set up for the container
    #[arg(long, value_name = "MODE")]
    pub console: Option<String>,
    /// Equivalent to --console=pipe
    #[arg(short = 'P', long)]
    pub pipe: bool,

    // Credentials
    /// Pass a credential with literal value to container
    #[arg(long, value_name = "ID:VALUE")]
    pub set_credential: Vec<String>,
    /// Load credential to pass to container from file or AF_UNIX stream socket
    #[arg(long, value_name = "ID:PATH")]
    pub load_credential: Vec<String>,

    /// Obsolete nspawn option (refused)
    #[arg(long, hide = true)]
    pub share_system: bool,

    // ns-run's own
    /// Print the JSON state that would be passed to the stages, and exit
    #[arg(long)]
    pub print_state: bool,
    /// Print the equivalent shell chain of ns-* stages, and exit
    #[arg(long)]
    pub print_chain: bool,
    /// Write the console and ns-run's messages to PATH (appended), kept to 1 MiB: PATH and
    /// PATH.1, rotated at 512 KiB; the console is read-only unless --console says otherwise
    /// (how ns-ctl start keeps a machine's log for ns-ctl log)
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<String>,

    /// The command to run (default: the user's login shell)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// The options by clap id in the order `--help` lists them: nspawn's, whichever stage's
/// flattened struct declares them. One space between names (the test below checks). Every
/// start looks each option up: through a map made once (scanning this text for each option
/// with `split_whitespace` was a third of ns-run's instructions before the container
/// started).
const HELP_ORDER: &str =
    "help help_all quiet no_pager settings directory template ephemeral image \
    oci_bundle read_only volatile root_hash root_hash_sig verity_data pivot_root as_pid2 boot \
    chdir setenv user kill_signal notify_ready suppress_sync machine hostname uuid slice \
    property register keep_unit private_users private_users_ownership private_users_chown \
    userns_pick private_network network_namespace_path network_veth network_bridge \
    network_zone network_veth_extra network_interface network_macvlan network_ipvlan \
    network_address network_host_address network_gateway port capability drop_capability \
    ambient_capability no_new_privileges system_call_filter selinux_context \
    selinux_apifs_context rlimit oom_score_adjust cpu_affinity personality resolv_conf \
    timezone link_journal link_journal_try_guest bind bind_ro inaccessible tmpfs overlay \
    overlay_ro bind_user console pipe set_credential load_credential share_system \
    print_state print_chain log_file command";

fn in_nspawn_order(a: clap::Arg) -> clap::Arg {
    static PLACE: std::sync::OnceLock<std::collections::BTreeMap<&str, usize>> =
        std::sync::OnceLock::new();
    let place = PLACE.get_or_init(|| HELP_ORDER.split(' ').zip(0..).collect());
    match place.get(a.get_id().as_str()) {
        Some(&i) => a.display_order(i),
        None => a,
    }
}

/// systemd-nspawn(1)'s groups of options, in its order, for `--help`: each group's
/// heading and its options (clap's ids).
const HELP_GROUPS: &[(&str, &str)] = &[
    ("Options", "help help_all quiet no_pager settings"),
    (
        "Image Options",
        "directory template ephemeral image oci_bundle read_only volatile root_hash \
         root_hash_sig verity_data pivot_root",
    ),
    (
        "Execution Options",
        "as_pid2 boot chdir setenv user kill_signal notify_ready suppress_sync",
    ),
    ("System Identity Options", "machine hostname uuid"),
    ("Property Options", "slice property register keep_unit"),
    (
        "User Namespacing Options",
        "private_users private_users_ownership userns_pick",
    ),
    (
        "Networking Options",
        "private_network network_namespace_path network_veth network_bridge network_zone \
         network_veth_extra network_interface network_macvlan network_ipvlan network_address \
         network_host_address network_gateway port",
    ),
    (
        "Security Options",
        "capability drop_capability ambient_capability no_new_privileges system_call_filter \
         selinux_context selinux_apifs_context",
    ),
    (
        "Resource Options",
        "rlimit oom_score_adjust cpu_affinity personality",
    ),
    (
        "Integration Options",
        "resolv_conf timezone link_journal link_journal_try_guest",
    ),
    (
        "Mount Options",
        "bind bind_ro inaccessible tmpfs overlay overlay_ro bind_user",
    ),
    ("Input/Output Options", "console pipe"),
    ("Credentials", "set_credential load_credential"),
    ("ns-run's own", "print_state print_chain log_file"),
];

/// What `--help` shows (`--help-all`: everything): the options of nspawn's man page's
/// examples and of the README's tasks.
const HELP_SHORT: &str = "help help_all quiet settings directory template ephemeral image \
    read_only volatile boot chdir setenv user machine hostname property private_users \
    userns_pick private_network network_veth network_bridge network_zone port capability \
    drop_capability bind bind_ro tmpfs overlay console pipe print_state print_chain";

/// Print `--help` (`all`: `--help-all`) on stdout: the options under systemd-nspawn(1)'s
/// headings, in its order. Built only when asked, so that a start does not pay for it.
pub fn print_help(all: bool) {
    use clap::CommandFactory;
    let short: std::collections::BTreeSet<&str> = HELP_SHORT.split_whitespace().collect();
    let group = |id: &str| {
        HELP_GROUPS
            .iter()
            .position(|(_, ids)| ids.split_whitespace().any(|i| i == id))
    };
    let base = Cli::command();
    // clap shows headings in the order their first option was added: the options are
    // added again, group by group.
    let mut args: Vec<clap::Arg> = base.get_arguments().cloned().collect();
    args.sort_by_key(|a| {
        (
            group(a.get_id().as_str()).unwrap_or(usize::MAX),
            a.get_display_order(),
        )
    });
    let mut hidden = 0;
    let args = args.into_iter().map(|a| {
        let id = a.get_id().as_str().to_string();
        let a = match group(&id) {
            Some(g) => a.help_heading(HELP_GROUPS[g].0),
            None => a,
        };
        if !all && !a.is_hide_set() && !a.is_positional() && !short.contains(id.as_str()) {
            hidden += 1;
            return a.hide(true);
        }
        a
    });
    let version = clap::Arg::new("version")
        .short('V')
        .long("version")
        .action(clap::ArgAction::Version)
        .help("Print version")
        .help_heading(HELP_GROUPS[0].0);
    let mut cmd = clap::Command::new("ns-run")
        .about(base.get_about().cloned().unwrap_or_default())
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_flag(true)
        .disable_version_flag(true)
        .args(args)
        .arg(version);
    let more = if all {
        "Every option of systemd-nspawn 252 is here (the README's table says how each behaves); \
         ns-run --help shows the ones used most."
            .to_string()
    } else {
        format!("{hidden} more options: ns-run --help-all, or man ns-run.")
    };
    cmd = cmd.after_help(more);
    println!("{}", cmd.render_help());
}

/// nspawn's command line as clap builds it (every option, built for lookups). Building it
/// is most of the instructions ns-run runs before the container starts: a plan builds it
/// once and hands it to whatever reads options (the split, the .nspawn and bundle merges,
/// the parses), then drops it, so that a resident monitor does not keep it (~84 KiB).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

/// `argv` parsed (after [`normalize`]) with `cmd` from [`command`]; bad input ends the
/// program with one line.
pub fn parse(cmd: &mut clap::Command, argv: &[String]) -> Cli {
    ns_core::stage::parse_args_with("ns-run", cmd, argv)
}

/// One option as given: clap's id of the argument and its tokens (`-D /r`, `--bind=x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    pub id: String,
    pub tokens: Vec<String>,
}

/// getopt's "+" rule, which clap cannot express next to a free-form trailing command:
/// options end at the first non-option argument (or `--`), and an unknown option before that
/// point is an error rather than the start of the command.
pub fn reject_unknown_options(cmd: &clap::Command, argv: &[String]) -> ns_core::Result<()> {
    split_options(cmd, argv).map(drop)
}

/// `argv` as getopt reads it, spelled so that clap reads it the same: each option's tokens
/// (a short option's attached value, `-D/srv/box` or `-udaemon`, as its own token: clap
/// would take it for the start of the command), then the command. Unknown options refused.
pub fn normalize(cmd: &clap::Command, argv: &[String]) -> ns_core::Result<Vec<String>> {
    let (given, rest) = split_options(cmd, argv)?;
    Ok(argv[..1.min(argv.len())]
        .iter()
        .cloned()
        .chain(given.into_iter().flat_map(|g| g.tokens))
        .chain(rest)
        .collect())
}

/// The options of `argv` (after argv[0]) one by one, bundles of short options split up, and
/// the rest (the command, with its `--` if there was one).
/// `cmd` is [`command`]'s.
pub fn split_options(
    cmd: &clap::Command,
    argv: &[String],
) -> ns_core::Result<(Vec<Given>, Vec<String>)> {
    let takes_value = |a: &clap::Arg| a.get_action().takes_values();
    let mut given = Vec::new();
    let mut i = 1;
    while i < argv.len() {
        let a = argv[i].as_str();
        if a == "--" || a == "-" || !a.starts_with('-') {
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, has_value) = match long.split_once('=') {
                Some((n, _)) => (n, true),
                None => (long, false),
            };
            let arg = cmd
                .get_arguments()
                .find(|x| x.get_long() == Some(name))
                .ok_or_else(|| ns_core::Error::setup(format!("unrecognized option '--{name}'")))?;
            let mut tokens = vec![a.to_string()];
            if takes_value(arg) && !has_value && !arg.is_require_equals_set() {
                i += 1;
                tokens.extend(argv.get(i).cloned());
            }
            given.push(Given {
                id: arg.get_id().to_string(),
                tokens,
            });
        } else {
            let shorts: Vec<char> = a[1..].chars().collect();
            for (j, c) in shorts.iter().enumerate() {
                let arg = cmd
                    .get_arguments()
                    .find(|x| x.get_short() == Some(*c))
                    .ok_or_else(|| ns_core::Error::setup(format!("invalid option -- '{c}'")))?;
                let mut tokens = vec![format!("-{c}")];
                if takes_value(arg) {
                    let attached: String = shorts[j + 1..].iter().collect();
                    if attached.is_empty() {
                        i += 1;
                        tokens.extend(argv.get(i).cloned());
                    } else {
                        tokens.push(attached);
                    }
                    given.push(Given {
                        id: arg.get_id().to_string(),
                        tokens,
                    });
                    break;
                }
                given.push(Given {
                    id: arg.get_id().to_string(),
                    tokens,
                });
            }
        }
        i += 1;
    }
    Ok((given, argv[i.min(argv.len())..].to_vec()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_shown_option_has_an_nspawn_heading_and_the_short_help_names_real_ones() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let grouped: Vec<&str> = HELP_GROUPS
            .iter()
            .flat_map(|(_, ids)| ids.split_whitespace())
            .collect();
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if !a.is_hide_set() && !a.is_positional() {
                assert!(grouped.contains(&id), "{id} has no heading in HELP_GROUPS");
            }
        }
        let ids: Vec<&str> = cmd.get_arguments().map(|a| a.get_id().as_str()).collect();
        for id in HELP_SHORT.split_whitespace().chain(grouped.iter().copied()) {
            assert!(ids.contains(&id), "{id} is not an option");
        }
    }

    use super::*;

    fn check(a: &[&str]) -> Result<(), String> {
        let argv: Vec<String> = std::iter::once("ns-run")
            .chain(a.iter().copied())
            .map(String::from)
            .collect();
        reject_unknown_options(&command(), &argv).map_err(|e| e.msg)
    }

    #[test]
    fn options_stop_at_the_command_like_getopt_plus() {
        assert!(check(&["-D", "/r", "ls", "--frobnicate"]).is_ok());
        assert!(check(&["-qD", "/r", "-E", "A=1", "--volatile", "sh"]).is_ok());
        assert!(check(&["-D/r", "--", "--frobnicate"]).is_ok());
        assert_eq!(
            check(&["-D", "/r", "--frobnicate", "true"]),
            Err("unrecognized option '--frobnicate'".into())
        );
        assert_eq!(
            check(&["--frobnicate", "-D", "/r"]),
            Err("unrecognized option '--frobnicate'".into())
        );
        assert_eq!(check(&["-qK", "x"]), Err("invalid option -- 'K'".into()));
        // A value that looks like an option is still a value.
        assert!(check(&["--setenv", "--x", "true"]).is_ok());
    }

    #[test]
    fn help_order_names_every_option_once() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let listed: Vec<&str> = HELP_ORDER.split(' ').collect();
        let ids: Vec<&str> = cmd
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .filter(|id| *id != "version")
            .collect();
        for id in &ids {
            assert_eq!(listed.iter().filter(|l| *l == id).count(), 1, "{id}");
        }
        assert_eq!(listed.len(), ids.len());
    }

    #[test]
    fn options_are_split_one_by_one() {
        let argv: Vec<String> = [
            "ns-run",
            "-qD/r",
            "--bind",
            "a",
            "-E",
            "X=1",
            "--volatile",
            "sh",
            "-c",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (given, rest) = split_options(&command(), &argv).unwrap();
        let ids: Vec<&str> = given.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(ids, ["quiet", "directory", "bind", "setenv", "volatile"]);
        assert_eq!(given[1].tokens, ["-D", "/r"]);
        assert_eq!(given[2].tokens, ["--bind", "a"]);
        assert_eq!(rest, ["sh", "-c"]);
    }

    #[test]
    fn attached_short_values_are_read_as_getopt_reads_them() {
        use clap::Parser;
        let argv: Vec<String> = ["ns-run", "-D/r", "-udaemon", "-qM", "box", "sh", "-c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let n = normalize(&command(), &argv).unwrap();
        assert_eq!(
            n,
            ["ns-run", "-D", "/r", "-u", "daemon", "-q", "-M", "box", "sh", "-c"]
        );
        let c = Cli::try_parse_from(&n).unwrap();
        assert_eq!(c.mount.directory.as_deref(), Some("/r"));
        assert_eq!(c.exec.user.as_deref(), Some("daemon"));
        assert_eq!(c.command, ["sh", "-c"]);
    }
}
