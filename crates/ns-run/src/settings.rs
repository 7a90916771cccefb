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

/// nspawn's setting groups (its SETTING_* mask), by the clap ids of our options.
const GROUPS: &[(&str, &[&str])] = &[
    ("start", &["boot", "as_pid2", "command"]),
    ("ephemeral", &["ephemeral"]),
    ("environment", &["setenv"]),
    ("user", &["user"]),
    (
        "capability",
        &["capability", "drop_capability", "ambient_capability"],
    ),
    ("kill-signal", &["kill_signal"]),
    ("personality", &["personality"]),
    ("machine-id", &["uuid"]),
    (
        "network",
        &[
            "private_network",
            "network_namespace_path",
            "network_veth",
            "network_bridge",
            "network_zone",
            "network_veth_extra",
            "network_interface",
            "network_macvlan",
            "network_ipvlan",
        ],
    ),
    ("ports", &["port"]),
    ("read-only", &["read_only"]),
    ("volatile", &["volatile"]),
    (
        "mounts",
        &[
            "bind",
            "bind_ro",
            "tmpfs",
            "inaccessible",
            "overlay",
            "overlay_ro",
        ],
    ),
    ("bind-user", &["bind_user"]),
    ("working-directory", &["chdir"]),
    (
        "userns",
        &[
            "private_users",
            "private_users_ownership",
            "private_users_chown",
            "userns_pick",
        ],
    ),
    ("notify-ready", &["notify_ready"]),
    ("pivot-root", &["pivot_root"]),
    ("syscall-filter", &["system_call_filter"]),
    ("hostname", &["hostname"]),
    ("no-new-privileges", &["no_new_privileges"]),
    ("oom-score-adjust", &["oom_score_adjust"]),
    ("cpu-affinity", &["cpu_affinity"]),
    ("resolv-conf", &["resolv_conf"]),
    ("timezone", &["timezone"]),
    ("link-journal", &["link_journal", "link_journal_try_guest"]),
    ("suppress-sync", &["suppress_sync"]),
    ("rlimit", &["rlimit"]),
];

fn group_of(id: &str) -> Option<&'static str> {
    GROUPS
        .iter()
        .find(|(_, ids)| ids.contains(&id))
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

/// Parse the text of a settings file into settings, in file order. Unknown sections and keys
/// are warned about and skipped, as nspawn does.
pub fn parse(file: &str, text: &str) -> Result<Vec<Setting>> {
    // What nspawn 252 names when it ignores a key of an untrusted file.
    const CAPS: &str = "Capability= setting";
    const AMBIENT: &str = "AmbientCapability= setting";
    const MOUNTS: &str = "TemporaryFileSystem=, Bind= and BindReadOnly= settings";
    const NET: &str = "network settings";
    const PORT: &str = "Port= setting";
    const USERNS: &str = "PrivateUsers= and PrivateUsersChown= settings";
    const SYSCALLS: &str = "SystemCallFilter= settings";
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
        let opt = |o: &str| vec![format!("--{o}={v}")];
        let flag = |o: &str| -> Result<Vec<String>> {
            Ok(if boolean(file, key, v)? {
                vec![format!("--{o}")]
            } else {
                vec![]
            })
        };
        let each = |o: &str| words(v).iter().map(|w| format!("--{o}={w}")).collect();
        // Capability lists: space-separated in files, comma-separated on the command line.
        let caps = |o: &str| vec![format!("--{o}={}", words(v).join(","))];
        let s = |group, args| {
            Some(Setting {
                group,
                args,
                untrusted: None,
            })
        };
        // A setting that only a trusted file may make.
        let t = |group, args, what: &str| {
            Some(Setting {
                group,
                args,
                untrusted: Some(what.to_string()),
            })
        };
        let setting = match (section.as_str(), key) {
            ("Exec", "Boot") => {
                boot_or_pid2 = true;
                s("start", flag("boot")?)
            }
            ("Exec", "ProcessTwo") => {
                boot_or_pid2 = true;
                s("start", flag("as-pid2")?)
            }
            ("Exec", "Parameters") => {
                parameters = Some(words(v));
                None
            }
            ("Exec", "Ephemeral") => t("ephemeral", flag("ephemeral")?, "ephemeral setting"),
            ("Exec", "Environment") => s("environment", each("setenv")),
            ("Exec", "User") => s("user", opt("user")),
            ("Exec", "WorkingDirectory") => s("working-directory", opt("chdir")),
            ("Exec", "PivotRoot") => s("pivot-root", opt("pivot-root")),
            ("Exec", "Capability") => t("capability", caps("capability"), CAPS),
            ("Exec", "AmbientCapability") => t("capability", caps("ambient-capability"), AMBIENT),
            ("Exec", "DropCapability") => s("capability", caps("drop-capability")),
            ("Exec", "NoNewPrivileges") => s("no-new-privileges", opt("no-new-privileges")),
            ("Exec", "KillSignal") => s("kill-signal", opt("kill-signal")),
            ("Exec", "Personality") => s("personality", opt("personality")),
            ("Exec", "MachineID") => t("machine-id", opt("uuid"), "MachineID= setting"),
            ("Exec", "PrivateUsers") => t("userns", opt("private-users"), USERNS),
            ("Exec", "NotifyReady") => s("notify-ready", opt("notify-ready")),
            // A deny list only takes away; an allow list may add what the default denies.
            ("Exec", "SystemCallFilter") if v.starts_with('~') => {
                s("syscall-filter", opt("system-call-filter"))
            }
            ("Exec", "SystemCallFilter") => {
                t("syscall-filter", opt("system-call-filter"), SYSCALLS)
            }
            ("Exec", "OOMScoreAdjust") => t(
                "oom-score-adjust",
                opt("oom-score-adjust"),
                "OOMScoreAdjust= setting",
            ),
            ("Exec", "CPUAffinity") => {
                t("cpu-affinity", opt("cpu-affinity"), "CPUAffinity= setting")
            }
            ("Exec", "Hostname") => s("hostname", opt("hostname")),
            ("Exec", "ResolvConf") => s("resolv-conf", opt("resolv-conf")),
            ("Exec", "Timezone") => s("timezone", opt("timezone")),
            ("Exec", "LinkJournal") => {
                t("link-journal", opt("link-journal"), "journal link setting")
            }
            ("Exec", "SuppressSync") => s("suppress-sync", opt("suppress-sync")),
            ("Exec", k) if k.starts_with("Limit") => t(
                "rlimit",
                vec![format!("--rlimit={}={v}", &k[5..])],
                &format!("{k}= setting"),
            ),
            ("Files", "ReadOnly") => s("read-only", flag("read-only")?),
            ("Files", "Volatile") => s("volatile", opt("volatile")),
            ("Files", "PrivateUsersOwnership") => {
                t("userns", opt("private-users-ownership"), USERNS)
            }
            ("Files", "PrivateUsersChown") => t(
                "userns",
                vec![format!(
                    "--private-users-ownership={}",
                    if boolean(file, key, v)? {
                        "chown"
                    } else {
                        "off"
                    }
                )],
                USERNS,
            ),
            ("Files", "BindUser") => t("bind-user", each("bind-user"), "bind user setting"),
            (
                "Files",
                k @ ("Bind"
                | "BindReadOnly"
                | "TemporaryFileSystem"
                | "Inaccessible"
                | "Overlay"
                | "OverlayReadOnly"),
            ) => {
                let o = match k {
                    "Bind" => "bind",
                    "BindReadOnly" => "bind-ro",
                    "TemporaryFileSystem" => "tmpfs",
                    "Inaccessible" => "inaccessible",
                    "Overlay" => "overlay",
                    _ => "overlay-ro",
                };
                t("mounts", each(o), MOUNTS)
            }
            ("Network", "Port") => t("ports", opt("port"), PORT),
            ("Network", k) => {
                let args = match k {
                    "Private" => flag("private-network")?,
                    "VirtualEthernet" => flag("network-veth")?,
                    "VirtualEthernetExtra" => opt("network-veth-extra"),
                    "Interface" => each("network-interface"),
                    "MACVLAN" => each("network-macvlan"),
                    "IPVLAN" => each("network-ipvlan"),
                    "Bridge" => opt("network-bridge"),
                    "Zone" => opt("network-zone"),
                    _ => {
                        eprintln!("{file}:{}: unknown key {key} in [Network], ignoring", n + 1);
                        continue;
                    }
                };
                t("network", args, NET)
            }
            (sec, _) => {
                eprintln!("{file}:{}: unknown key {key} in [{sec}], ignoring", n + 1);
                None
            }
        };
        out.extend(setting);
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
/// machine name to look one up by, as for `-x` without `-M`).
pub fn merge(argv: &[String], cli: &crate::cli::Cli) -> Result<Vec<String>> {
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
    let directory = match (&cli.directory, &cli.machine) {
        (Some(d), _) => std::path::absolute(d).ok(),
        (None, Some(m)) => ns_core::paths::find_image(m),
        (None, None) => std::env::current_dir().ok(),
    };
    let machine = match (&cli.machine, &directory) {
        (Some(m), _) => m.clone(),
        (None, _) if cli.ephemeral => return Ok(argv.to_vec()),
        (None, Some(d)) => match d.file_name() {
            Some(b) => crate::plan::hostname_cleanup(&b.to_string_lossy()),
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
    let (given, rest) = split_options(argv)?;
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
            for id in *ids {
                assert!(
                    cmd.get_arguments().any(|a| a.get_id() == *id),
                    "{g}: no option {id}"
                );
            }
        }
    }
}
