//! `.nspawn` settings files, as nspawn reads them (systemd.nspawn(5)): `NAME.nspawn` in
//! /etc/systemd/nspawn or /run/systemd/nspawn (trusted), else next to the image directory
//! (untrusted, unless `--settings=trusted`). From an untrusted file nspawn 252 ignores, with a
//! warning, every key that could give the container more than the command line did:
//! `Ephemeral=`, `Capability=`, `AmbientCapability=`, `MachineID=`, `PrivateUsers=`,
//! `PrivateUsersChown=`/`PrivateUsersOwnership=`, `SystemCallFilter=` with an allow list (a
//! deny-only `~...` list is kept), `Limit*=`, `OOMScoreAdjust=`, `CPUAffinity=`,
//! `LinkJournal=`, the [Files] mounts, `BindUser=`, all of [Network] and `Port=`.
//!
//! Every setting becomes the command-line option that means the same, and the merged command
//! line is parsed as usual, so a setting and its option cannot drift apart. Settings come in
//! nspawn's groups (all mounts, all network options, the start mode...): a group the command
//! line sets wins over the file's, except with `--settings=override`, where the file's wins
//! and the command line's options of that group are dropped. `Parameters=` counts only with
//! `Boot=` or `ProcessTwo=` in the same file (nspawn's quirk).

use std::path::{Path, PathBuf};

use crate::cli::{split_options, Given};
use ns_core::{Context, Error, Result};

/// nspawn's setting groups (its SETTING_* mask): each with the clap ids of our options,
/// space-separated.
const GROUPS: &[(&str, &str)] = &[
    ("start", "boot as_pid2 command"),
    ("ephemeral", "ephemeral"),
    ("environment", "setenv"),
    ("user", "user"),
    (
        "capability",
        "capability drop_capability ambient_capability",
    ),
    ("kill-signal", "kill_signal"),
    ("personality", "personality"),
    ("machine-id", "uuid"),
    (
        "network",
        "private_network network_namespace_path network_veth network_bridge network_zone \
         network_veth_extra network_interface network_macvlan network_ipvlan",
    ),
    ("ports", "port"),
    ("read-only", "read_only"),
    ("volatile", "volatile"),
    (
        "mounts",
        "bind bind_ro tmpfs inaccessible overlay overlay_ro",
    ),
    ("bind-user", "bind_user"),
    ("working-directory", "chdir"),
    (
        "userns",
        "private_users private_users_ownership private_users_chown userns_pick",
    ),
    ("notify-ready", "notify_ready"),
    ("pivot-root", "pivot_root"),
    ("syscall-filter", "system_call_filter"),
    ("hostname", "hostname"),
    ("no-new-privileges", "no_new_privileges"),
    ("oom-score-adjust", "oom_score_adjust"),
    ("cpu-affinity", "cpu_affinity"),
    ("resolv-conf", "resolv_conf"),
    ("timezone", "timezone"),
    ("link-journal", "link_journal link_journal_try_guest"),
    ("suppress-sync", "suppress_sync"),
    ("rlimit", "rlimit"),
];

fn group_of(id: &str) -> Option<&'static str> {
    GROUPS
        .iter()
        .find(|(_, ids)| ids.split_whitespace().any(|i| i == id))
        .map(|(g, _)| *g)
}

/// One setting turned into options: its group, the options, and whether an untrusted file
/// may set it (else what the warning names: "Ignoring {untrusted}, file F is not trusted.").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub group: &'static str,
    pub args: Vec<String>,
    pub untrusted: Option<String>,
}

/// Words as nspawn splits list values: whitespace-separated, with "" or '' quoting.
fn words(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quote, mut any) = (None, false);
    for c in v.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn boolean(file: &str, key: &str, v: &str) -> Result<bool> {
    ns_core::parse_boolean(v)
        .ok_or_else(|| Error::setup(format!("{file}: {key}={v}: not a boolean")))
}

/// How a key's value becomes options.
#[derive(Clone, Copy)]
enum Form {
    /// `--OPT=VALUE`.
    Value,
    /// A boolean: `--OPT` when true, nothing when false.
    Flag,
    /// One `--OPT=WORD` per word of the value.
    Each,
    /// A capability list: space-separated in files, comma-separated on the command line.
    Caps,
}

/// One key of nspawn's settings files: its section and name, the option it becomes (whose
/// nspawn group, [`GROUPS`], is the key's) and how, and, for a key only a trusted file may
/// set, what nspawn 252 names when it ignores it.
struct Key {
    section: &'static str,
    key: &'static str,
    option: &'static str,
    form: Form,
    untrusted: Option<&'static str>,
}

const CAPS: &str = "Capability= setting";
const MOUNTS: &str = "TemporaryFileSystem=, Bind= and BindReadOnly= settings";
const NET: &str = "network settings";
const USERNS: &str = "PrivateUsers= and PrivateUsersChown= settings";
const SYSCALLS: &str = "SystemCallFilter= settings";

const fn key(
    section: &'static str,
    key: &'static str,
    option: &'static str,
    form: Form,
    untrusted: Option<&'static str>,
) -> Key {
    Key {
        section,
        key,
        option,
        form,
        untrusted,
    }
}

use Form::{Caps, Each, Flag, Value};

impl Key {
    /// nspawn's group of the key: its option's (what a command line option of the same
    /// group overrides).
    fn group(&self) -> &'static str {
        group_of(&self.option.replace('-', "_")).expect("every key's option has a group")
    }
}

/// Every key but the few with rules of their own (Parameters=, Limit*=, PrivateUsersChown=;
/// a SystemCallFilter= deny list is trusted from any file), see [`parse`].
#[rustfmt::skip]
const KEYS: &[Key] = &[
    key("Exec", "Boot", "boot", Flag, None),
    key("Exec", "ProcessTwo", "as-pid2", Flag, None),
    key("Exec", "Ephemeral", "ephemeral", Flag, Some("ephemeral setting")),
    key("Exec", "Environment", "setenv", Each, None),
    key("Exec", "User", "user", Value, None),
    key("Exec", "WorkingDirectory", "chdir", Value, None),
    key("Exec", "PivotRoot", "pivot-root", Value, None),
    key("Exec", "Capability", "capability", Caps, Some(CAPS)),
    key("Exec", "AmbientCapability", "ambient-capability", Caps, Some("AmbientCapability= setting")),
    key("Exec", "DropCapability", "drop-capability", Caps, None),
    key("Exec", "NoNewPrivileges", "no-new-privileges", Value, None),
    key("Exec", "KillSignal", "kill-signal", Value, None),
    key("Exec", "Personality", "personality", Value, None),
    key("Exec", "MachineID", "uuid", Value, Some("MachineID= setting")),
    key("Exec", "PrivateUsers", "private-users", Value, Some(USERNS)),
    key("Exec", "NotifyReady", "notify-ready", Value, None),
    key("Exec", "SystemCallFilter", "system-call-filter", Value, Some(SYSCALLS)),
    key("Exec", "OOMScoreAdjust", "oom-score-adjust", Value, Some("OOMScoreAdjust= setting")),
    key("Exec", "CPUAffinity", "cpu-affinity", Value, Some("CPUAffinity= setting")),
    key("Exec", "Hostname", "hostname", Value, None),
    key("Exec", "ResolvConf", "resolv-conf", Value, None),
    key("Exec", "Timezone", "timezone", Value, None),
    key("Exec", "LinkJournal", "link-journal", Value, Some("journal link setting")),
    key("Exec", "SuppressSync", "suppress-sync", Value, None),
    key("Files", "ReadOnly", "read-only", Flag, None),
    key("Files", "Volatile", "volatile", Value, None),
    key("Files", "PrivateUsersOwnership", "private-users-ownership", Value, Some(USERNS)),
    key("Files", "BindUser", "bind-user", Each, Some("bind user setting")),
    key("Files", "Bind", "bind", Each, Some(MOUNTS)),
    key("Files", "BindReadOnly", "bind-ro", Each, Some(MOUNTS)),
    key("Files", "TemporaryFileSystem", "tmpfs", Each, Some(MOUNTS)),
    key("Files", "Inaccessible", "inaccessible", Each, Some(MOUNTS)),
    key("Files", "Overlay", "overlay", Each, Some(MOUNTS)),
    key("Files", "OverlayReadOnly", "overlay-ro", Each, Some(MOUNTS)),
    key("Network", "Private", "private-network", Flag, Some(NET)),
    key("Network", "VirtualEthernet", "network-veth", Flag, Some(NET)),
    key("Network", "VirtualEthernetExtra", "network-veth-extra", Value, Some(NET)),
    key("Network", "Interface", "network-interface", Each, Some(NET)),
    key("Network", "MACVLAN", "network-macvlan", Each, Some(NET)),
    key("Network", "IPVLAN", "network-ipvlan", Each, Some(NET)),
    key("Network", "Bridge", "network-bridge", Value, Some(NET)),
    key("Network", "Zone", "network-zone", Value, Some(NET)),
    key("Network", "Port", "port", Value, Some("Port= setting")),
];

/// Parse the text of a settings file into settings, in file order. Unknown sections and keys
/// are warned about and skipped, as nspawn does. Each key becomes the command-line options
/// that mean the same ([`KEYS`]).
pub fn parse(file: &str, text: &str) -> Result<Vec<Setting>> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut boot_or_pid2 = false;
    let mut parameters = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            eprintln!("{file}:{}: line is not KEY=VALUE, ignoring", n + 1);
            continue;
        };
        let (key, v) = (key.trim(), value.trim());
        let setting = |group, args, untrusted: Option<String>| Setting {
            group,
            args,
            untrusted,
        };
        let setting = match (section.as_str(), key) {
            ("Exec", "Parameters") => {
                parameters = Some(words(v));
                continue;
            }
            ("Exec", k) if k.starts_with("Limit") => setting(
                "rlimit",
                vec![format!("--rlimit={}={v}", &k[5..])],
                Some(format!("{k}= setting")),
            ),
            ("Files", "PrivateUsersChown") => {
                let mode = if boolean(file, key, v)? {
                    "chown"
                } else {
                    "off"
                };
                setting(
                    "userns",
                    vec![format!("--private-users-ownership={mode}")],
                    Some(USERNS.into()),
                )
            }
            (sec, k) => {
                let Some(known) = KEYS.iter().find(|e| e.section == sec && e.key == k) else {
                    eprintln!("{file}:{}: unknown key {key} in [{sec}], ignoring", n + 1);
                    continue;
                };
                boot_or_pid2 |= matches!(k, "Boot" | "ProcessTwo");
                let o = known.option;
                let args = match known.form {
                    Value => vec![format!("--{o}={v}")],
                    Flag if boolean(file, key, v)? => vec![format!("--{o}")],
                    Flag => vec![],
                    Each => words(v).iter().map(|w| format!("--{o}={w}")).collect(),
                    Caps => vec![format!("--{o}={}", words(v).join(","))],
                };
                // A deny list only takes away; an allow list may add what the default denies.
                let deny_list = k == "SystemCallFilter" && v.starts_with('~');
                let untrusted = known.untrusted.filter(|_| !deny_list).map(String::from);
                setting(known.group(), args, untrusted)
            }
        };
        out.push(setting);
    }
    // nspawn keeps one allow and one deny list and ignores both when the allow list is not
    // empty: a deny line next to an allow line goes with it.
    if out
        .iter()
        .any(|s| s.group == "syscall-filter" && s.untrusted.is_some())
    {
        for s in out.iter_mut().filter(|s| s.group == "syscall-filter") {
            s.untrusted = Some(SYSCALLS.to_string());
        }
    }
    if let Some(p) = parameters.filter(|_| boot_or_pid2) {
        out.push(Setting {
            group: "start",
            args: std::iter::once("--".to_string()).chain(p).collect(),
            untrusted: None,
        });
    }
    Ok(out)
}

/// The settings file for `machine` and whether it is trusted.
fn find(machine: &str, directory: Option<&Path>) -> Option<(PathBuf, bool)> {
    let name = format!("{machine}.nspawn");
    for d in ["/etc/systemd/nspawn", "/run/systemd/nspawn"] {
        let p = Path::new(d).join(&name);
        if p.is_file() {
            return Some((p, true));
        }
    }
    let p = directory?.parent()?.join(&name);
    p.is_file().then_some((p, false))
}

/// `argv` with the settings file merged in (or unchanged: `--settings=no`, no file, or no
/// machine name to look one up by). As nspawn 252, `-x` without `-M` looks the file up by the
/// directory's name, before the machine gets its random suffix.
/// `cmd` is [`crate::cli::command`]'s.
pub fn merge(cmd: &clap::Command, argv: &[String], cli: &crate::cli::Cli) -> Result<Vec<String>> {
    let mode = cli.settings.as_deref().unwrap_or("yes");
    let (trusted_mode, override_mode) = match mode {
        "trusted" => (true, false),
        "override" => (false, true),
        m => match ns_core::parse_boolean(m) {
            Some(true) => (false, false),
            Some(false) => return Ok(argv.to_vec()),
            None => return Ok(argv.to_vec()), // refused with its message by plan::build
        },
    };
    // The tree, or the disk image (`-i`, or `-M NAME` finding NAME.raw): the file is looked
    // up beside it, by its name (an image's without `.raw`).
    let directory = match (&cli.mount.directory, &cli.image, &cli.machine) {
        (Some(d), _, _) => std::path::absolute(d).ok(),
        (None, Some(i), _) => std::path::absolute(i).ok(),
        (None, None, Some(m)) => {
            ns_core::paths::find_image(m).or_else(|| ns_core::paths::find_raw_image(m))
        }
        (None, None, None) => std::env::current_dir().ok(),
    };
    let machine = match (&cli.machine, &directory) {
        (Some(m), _) => m.clone(),
        (None, Some(d)) => match d.file_name() {
            Some(b) => {
                let b = b.to_string_lossy();
                let b = match cli.image.is_some() {
                    true => b.strip_suffix(".raw").unwrap_or(&b),
                    false => &b,
                };
                crate::plan::hostname_cleanup(b)
            }
            None => return Ok(argv.to_vec()),
        },
        (None, None) => return Ok(argv.to_vec()),
    };
    let Some((path, trusted)) = find(&machine, directory.as_deref()) else {
        return Ok(argv.to_vec());
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).ctx(|| format!("cannot read {shown}"))?;
    let settings = parse(&shown, &text)?;
    let (given, rest) = split_options(cmd, argv)?;
    let mut on_cli: Vec<&str> = given.iter().filter_map(|g| group_of(&g.id)).collect();
    if !rest.is_empty() && rest != ["--"] {
        on_cli.push("start");
    }
    let mut taken: Vec<&str> = Vec::new();
    let mut args: Vec<String> = vec![argv[0].clone()];
    let mut params = Vec::new();
    let mut warned: Vec<&str> = Vec::new();
    for s in &settings {
        if let (Some(what), false) = (s.untrusted.as_deref(), trusted || trusted_mode) {
            if !warned.contains(&what) {
                eprintln!("Ignoring {what}, file {shown} is not trusted.");
                warned.push(what);
            }
            continue;
        }
        if !override_mode && on_cli.contains(&s.group) {
            continue;
        }
        taken.push(s.group);
        match s.args.first().map(String::as_str) {
            Some("--") => params = s.args.clone(),
            _ => args.extend(s.args.iter().cloned()),
        }
    }
    // A taken group replaces the command line's options, but for capabilities: nspawn takes
    // the file's away from (and, trusted, adds them to) what the command line left, so a
    // file's DropCapability= never brings back what --drop-capability dropped.
    let keep = |g: &Given| !matches!(group_of(&g.id), Some(grp) if taken.contains(&grp) && grp != "capability");
    args.extend(
        given
            .iter()
            .filter(|g| keep(g))
            .flat_map(|g| g.tokens.iter().cloned()),
    );
    // The command: the file's Parameters= if taken; else the command line's, unless the
    // file's start mode overrides it.
    if !params.is_empty() {
        args.extend(params);
    } else if !(override_mode && taken.contains(&"start")) {
        args.extend(rest);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_its_options_group() {
        for k in KEYS {
            assert!(!k.group().is_empty(), "{}", k.key);
        }
    }

    #[test]
    fn keys_become_options() {
        let text = "[Exec]\nBoot=yes\nParameters=--log-level=debug 'a b'\nEnvironment=A=1 \"B=x y\"\n\
                    Hostname=h\nLimitNOFILE=100\nDropCapability=CAP_NET_RAW CAP_CHOWN\n[Files]\nReadOnly=no\n\
                    Bind=/a:/b /c\n[Network]\nVirtualEthernet=yes\nPort=tcp:80:8080\n[Bogus]\nX=1\n";
        let s = parse("f", text).unwrap();
        let all: Vec<(&str, Vec<String>)> = s.iter().map(|s| (s.group, s.args.clone())).collect();
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            all,
            vec![
                ("start", v(&["--boot"])),
                ("environment", v(&["--setenv=A=1", "--setenv=B=x y"])),
                ("hostname", v(&["--hostname=h"])),
                ("rlimit", v(&["--rlimit=NOFILE=100"])),
                (
                    "capability",
                    v(&["--drop-capability=CAP_NET_RAW,CAP_CHOWN"])
                ),
                ("read-only", v(&[])),
                ("mounts", v(&["--bind=/a:/b", "--bind=/c"])),
                ("network", v(&["--network-veth"])),
                ("ports", v(&["--port=tcp:80:8080"])),
                ("start", v(&["--", "--log-level=debug", "a b"])),
            ]
        );
        // Parameters= alone does not count.
        assert!(parse("f", "[Exec]\nParameters=x\n").unwrap().is_empty());
        assert!(parse("f", "[Exec]\nBoot=maybe\n").is_err());
    }

    #[test]
    fn every_group_names_real_options() {
        use clap::CommandFactory;
        let cmd = crate::cli::Cli::command();
        for (g, ids) in GROUPS {
            for id in ids.split_whitespace() {
                assert!(
                    cmd.get_arguments().any(|a| a.get_id() == id),
                    "{g}: no option {id}"
                );
            }
        }
    }
}
