// ns-oci's command line: clap's definitions only. main.rs includes this file (`include!`, so
// that nothing changes for ns-oci), and so does ns-doc, which generates the man page and the
// shell completions from it.

#[derive(Parser, Debug)]
#[command(
    name = "ns-oci",
    version,
    about = "OCI runtime (runc's command line) composed from the ns-* stages"
)]
struct Cli {
    /// Directory of the containers' state [default: /run/ns-oci; without root,
    /// $XDG_RUNTIME_DIR/ns-oci when set]
    #[arg(long)]
    root: Option<PathBuf>,
    /// Append errors to this file
    #[arg(long)]
    log: Option<PathBuf>,
    /// text or json
    #[arg(long = "log-format", default_value = "text")]
    log_format: String,
    /// cgroupsPath is slice:prefix:name
    #[arg(long = "systemd-cgroup")]
    systemd_cgroup: bool,
    /// Trace what the stages do on stderr (NS_DEBUG=1)
    #[arg(long)]
    debug: bool,
    /// true, false or auto: without root, no cgroups
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    rootless: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a container from a bundle; it waits for `start`
    Create {
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        #[command(flatten)]
        io: Handles,
        /// Accepted: the root is always entered with pivot_root
        #[arg(long = "no-pivot")]
        no_pivot: bool,
        /// Accepted: no session keyring is made
        #[arg(long = "no-new-keyring")]
        no_new_keyring: bool,
        id: String,
    },
    /// Create and start a container, wait for its process, delete it; exit with its status
    Run {
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        id: String,
    },
    /// Start a created container's process
    Start { id: String },
    /// Print a container's state as JSON
    State { id: String },
    /// Send a signal (default SIGTERM) to the container's process, or to all its processes
    Kill {
        #[arg(long, short = 'a')]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Delete a stopped (or, with --force, any) container
    Delete {
        #[arg(long, short = 'f')]
        force: bool,
        id: String,
    },
    /// Run a process (described by --process) in a running container
    Exec {
        #[arg(long, short = 'p')]
        process: PathBuf,
        #[arg(long, short = 'd')]
        detach: bool,
        #[command(flatten)]
        io: Handles,
        id: String,
    },
    /// List the container's processes
    Ps {
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        id: String,
    },
    /// Freeze every process of the container
    Pause { id: String },
    /// Thaw a paused container
    Resume { id: String },
    /// Change the container's resources (linux.resources JSON, from a file or - for stdin)
    Update {
        #[arg(long, short = 'r')]
        resources: String,
        id: String,
    },
    /// Print what this runtime supports (JSON)
    Features,
    /// Write runc's default config.json
    Spec {
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        /// For a container run without root: a user namespace mapping root to the caller
        #[arg(long)]
        rootless: bool,
    },
}

/// What `create` and `exec` hand back to their caller: a pid file, the console's master on a
/// socket; extra fds are refused.
#[derive(clap::Args, Debug)]
struct Handles {
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
}
