// ns-ctl's command line: clap's definitions only. main.rs includes this file (`include!`, so
// that nothing changes for ns-ctl), and so does ns-doc, which generates the man page and the
// shell completions from it; `image_cli` must be in scope where it is included.

/// Manage running ns-run containers and machine images (machinectl's verbs, without systemd)
#[derive(Parser, Debug)]
#[command(name = "ns-ctl", version)]
struct Args {
    /// Output format of list and status: text or json
    #[arg(short = 'o', long, default_value = "text", global = true)]
    output: String,
    /// The verb (default: list, as machinectl)
    #[command(subcommand)]
    verb: Option<Verb>,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// List running containers
    List,
    /// Show a running container
    Status { names: Vec<String> },
    /// Run a command (default: the user's login shell) inside a running container
    Shell {
        /// NAME or USER@NAME
        name: String,
        /// The user to run as (default root)
        user: Option<String>,
        /// The user to run as (machinectl's spelling)
        #[arg(long = "uid")]
        uid: Option<String>,
        /// Set an environment variable
        #[arg(short = 'E', long, value_name = "NAME=VALUE")]
        setenv: Vec<String>,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Log in to a running container (its /bin/login)
    Login { name: String },
    /// Power a container off (a booted one cleanly; others are stopped)
    Poweroff { names: Vec<String> },
    /// Same as poweroff
    Stop { names: Vec<String> },
    /// Reboot a booted container
    Reboot { names: Vec<String> },
    /// Kill a container at once
    Terminate { names: Vec<String> },
    /// Send a signal to a container's processes
    Kill {
        names: Vec<String>,
        /// Which processes: leader or all
        #[arg(long, default_value = "all")]
        kill_whom: String,
        /// The signal (name or number)
        #[arg(short = 's', long, default_value = "SIGTERM")]
        signal: String,
    },
    /// Boot an image of /var/lib/machines in the background
    Start { names: Vec<String> },
    /// Show the console of a machine (started by start, or with --log-file)
    Log {
        name: String,
        /// Keep showing what comes, until the machine is gone
        #[arg(short = 'f', long)]
        follow: bool,
    },
    #[command(flatten)]
    Image(image_cli::ImageVerb),
}
