//! Who the payload runs as and what environment it sees, computed as nspawn does.

use std::path::Path;

use ns_core::{Error, Result};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// None for a number that has no passwd entry.
    pub name: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: Option<String>,
    pub shell: Option<String>,
}

impl User {
    pub fn root() -> User {
        User {
            name: Some("root".into()),
            uid: 0,
            gid: 0,
            groups: vec![],
            home: Some("/root".into()),
            shell: None,
        }
    }
}

/// Resolve `spec` (a name, or a number) from passwd and group text (the container's own
/// files: minimal images have no getent to ask). A number without an entry runs with
/// gid = uid and no HOME/USER/LOGNAME. Every id must be one a payload may take
/// ([`ns_core::check_id`]), from the number given or from the files.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<User> {
    let numeric = match spec.parse::<u64>() {
        Ok(n) => Some(ns_core::check_id("--user", n)?),
        Err(_) => None,
    };
    // An id from the files, checked: the error names the file and the entry.
    let from_file = |file: &str, entry: &str, what: &str, id: u64| {
        ns_core::check_id("", id).map_err(|_| {
            Error::invalid(
                "--user",
                spec,
                &format!(
                    "{file}: {entry} has {what} {id}: uids and gids must be in range 0-{}",
                    ns_core::MAX_ID
                ),
            )
        })
    };
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let uid = f[2].parse::<u64>().ok()?;
        let hit = f[0] == spec || numeric.map(u64::from) == Some(uid);
        hit.then(|| {
            (
                f[0].to_string(),
                uid,
                f[3].parse::<u64>().ok(),
                f[5].to_string(),
                f[6].to_string(),
            )
        })
    });
    let Some((name, uid, gid, home, shell)) = entry else {
        return match numeric {
            Some(uid) => Ok(User {
                name: None,
                uid,
                gid: uid,
                groups: vec![],
                home: None,
                shell: None,
            }),
            None => Err(Error::invalid(
                "--user",
                spec,
                "no such user in the container's /etc/passwd",
            )),
        };
    };
    let uid = from_file("/etc/passwd", &name, "uid", uid)?;
    let gid = gid.ok_or_else(|| Error::invalid("--user", spec, "bad group id in /etc/passwd"))?;
    let gid = from_file("/etc/passwd", &name, "gid", gid)?;
    let groups = group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[3].split(',').any(|m| m == name))
                .then(|| f[2].parse::<u64>().ok().map(|g| (f[0], g)))?
        })
        .map(|(g, id)| from_file("/etc/group", g, "gid", id))
        .collect::<Result<Vec<u32>>>()?;
    Ok(User {
        name: Some(name),
        uid,
        gid,
        groups,
        home: (!home.is_empty()).then_some(home),
        shell: (!shell.is_empty()).then_some(shell),
    })
}

/// Read the current root's passwd/group (empty when absent) and resolve `spec`.
pub fn lookup_user(spec: Option<&str>) -> Result<User> {
    match spec {
        None => Ok(User::root()),
        Some(s) => {
            let passwd = read_accounts_file("etc/passwd").unwrap_or_default();
            let group = read_accounts_file("etc/group").unwrap_or_default();
            resolve_user(s, &passwd, &group)
        }
    }
}

/// The largest passwd or group file read.
const MAX_ACCOUNTS_FILE: u64 = 4 << 20;

/// The container's passwd or group file, read by a process that may still hold the host's
/// privileges outside the container's PID namespace (ns-caps --fork, which nothing in there
/// can kill): only a regular file, opened without blocking (a FIFO would hold us forever),
/// at most [`MAX_ACCOUNTS_FILE`] bytes (/dev/zero would fill memory); None otherwise.
fn read_accounts_file(rel: &str) -> Option<String> {
    let b = ns_core::paths::read_in_root(Path::new("/"), rel, MAX_ACCOUNTS_FILE + 1)?;
    (b.len() as u64 <= MAX_ACCOUNTS_FILE)
        .then(|| String::from_utf8(b).ok())
        .flatten()
}

/// A valid environment name: not empty, no leading digit, only [A-Za-z0-9_].
pub fn env_name_is_valid(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `-E NAME=VALUE`, or `-E NAME` to copy our own value (empty when unset), as nspawn.
pub fn parse_setenv(v: &str) -> Result<String> {
    let name = v.split('=').next().unwrap_or("");
    if !env_name_is_valid(name) {
        return Err(Error::invalid(
            "--setenv",
            v,
            "invalid environment variable name",
        ));
    }
    if v.contains('=') {
        Ok(v.to_string())
    } else {
        Ok(format!(
            "{name}={}",
            std::env::var(name).unwrap_or_default()
        ))
    }
}

/// Replace `NAME=` in place, or append.
fn env_set(env: &mut Vec<String>, kv: String) {
    let name = kv.split('=').next().unwrap_or("").to_string();
    let prefix = format!("{name}=");
    match env.iter().position(|e| e.starts_with(&prefix)) {
        Some(i) => {
            env[i] = kv;
            // Later duplicates go.
            let mut j = i + 1;
            while j < env.len() {
                if env[j].starts_with(&prefix) {
                    env.remove(j);
                } else {
                    j += 1;
                }
            }
        }
        None => env.push(kv),
    }
}

/// The payload's environment in nspawn's order: PATH, container, TERM (if ours is set),
/// HOME/USER/LOGNAME, container_uuid, NOTIFY_SOCKET (when the host bound one: `runtime`),
/// CREDENTIALS_DIRECTORY (with credentials), LANG, container_host_*, then -E over all of it.
pub fn build_env(
    plan: &ns_core::state::ExecPlan,
    runtime: &ns_core::state::Runtime,
    user: &User,
    term: Option<String>,
) -> Vec<String> {
    let mut env = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("container={}", plan.container),
    ];
    if let Some(t) = term {
        env.push(format!("TERM={t}"));
    }
    if let Some(home) = &user.home {
        env.push(format!("HOME={home}"));
    }
    if let Some(n) = &user.name {
        env.push(format!("USER={n}"));
        env.push(format!("LOGNAME={n}"));
    }
    env.push(format!("container_uuid={}", plan.uuid));
    if runtime.notify_socket.is_some() {
        env.push("NOTIFY_SOCKET=/run/host/notify".into());
    }
    if plan.credentials {
        env.push("CREDENTIALS_DIRECTORY=/run/host/credentials".into());
    }
    if !plan.boot {
        // nspawn sets LANG for a command, not for a booted init.
        env.push("LANG=C.UTF-8".into());
    }
    if let Some(v) = &plan.host_version_id {
        env.push(format!("container_host_version_id={v}"));
    }
    if let Some(v) = &plan.host_id {
        env.push(format!("container_host_id={v}"));
    }
    for kv in &plan.setenv {
        env_set(&mut env, kv.clone());
    }
    env
}

/// An OCI process's environment: exactly what it gives, with HOME from the user's entry
/// when it gives none (as runc does).
pub fn exact_env(given: &[String], user: &User) -> Vec<String> {
    let mut env = given.to_vec();
    if !env.iter().any(|kv| kv.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home.as_deref().unwrap_or("/")));
    }
    env
}

/// `$container`: nspawn's value, so that software in the guest (systemd's detect-virt, for
/// one) treats us as it treats nspawn. `SYSTEMD_NSPAWN_CONTAINER_SERVICE` overrides it there.
pub fn container_manager() -> String {
    std::env::var("SYSTEMD_NSPAWN_CONTAINER_SERVICE").unwrap_or_else(|_| "systemd-nspawn".into())
}

/// `ID` and `VERSION_ID` of the host's os-release.
pub fn host_os_release() -> (Option<String>, Option<String>) {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix('=')?;
            Some(v.trim_matches(|c| c == '"' || c == '\'').to_string())
        })
    };
    (get("ID"), get("VERSION_ID"))
}

/// 32 hex digits as 8-4-4-4-12, lower case.
fn format_uuid(hex: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `--uuid`: accepts 32 hex digits with or without dashes.
pub fn parse_uuid(v: &str) -> Result<String> {
    let hex: String = v
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 32
        || !hex.chars().all(|c| c.is_ascii_hexdigit())
        || hex.chars().all(|c| c == '0')
    {
        return Err(Error::invalid("--uuid", v, "not a valid UUID"));
    }
    Ok(format_uuid(&hex))
}

/// container_uuid: the image's /etc/machine-id when it has one, else a random v4 UUID.
pub fn machine_uuid(root: &Path) -> String {
    read_image_file(root, "etc/machine-id", 64)
        .and_then(|id| parse_uuid(id.trim()).ok())
        .unwrap_or_else(random_uuid)
}

/// A small regular file of the image, read without leaving it (see
/// [`ns_core::paths::read_in_root`]), at most `max` bytes of it.
fn read_image_file(root: &Path, rel: &str, max: usize) -> Option<String> {
    ns_core::paths::read_in_root(root, rel, max as u64).and_then(|b| String::from_utf8(b).ok())
}

pub fn random_uuid() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format_uuid(&hex)
}

/// `-b`: the inits nspawn tries, in order.
pub const INITS: [&str; 3] = [
    "/usr/lib/systemd/systemd",
    "/lib/systemd/systemd",
    "/sbin/init",
];

/// The login shell to run when no command is given: the user's passwd shell, then nspawn's
/// /bin/bash and /bin/sh; argv[0] is `-` and the shell's name.
pub fn login_shells(user: &User) -> Vec<(String, String)> {
    let mut v: Vec<String> = Vec::new();
    if let Some(s) = user.shell.as_ref().filter(|s| s.starts_with('/')) {
        v.push(s.clone());
    }
    for s in ["/bin/bash", "/bin/sh"] {
        if !v.iter().any(|x| x == s) {
            v.push(s.to_string());
        }
    }
    v.into_iter()
        .map(|p| {
            let base = p.rsplit('/').next().unwrap_or("sh").to_string();
            (p, format!("-{base}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:alice,bob\naudio:x:29:alice\nalice:x:1000:\n";

    #[test]
    fn users_resolve_by_name_and_number() {
        let a = resolve_user("alice", PASSWD, GROUP).unwrap();
        assert_eq!((a.uid, a.gid, a.groups.clone()), (1000, 1000, vec![10, 29]));
        assert_eq!(a.home.as_deref(), Some("/home/alice"));
        assert_eq!(
            resolve_user("1", PASSWD, GROUP).unwrap().name.as_deref(),
            Some("daemon")
        );
        let n = resolve_user("4242", PASSWD, GROUP).unwrap();
        assert_eq!((n.uid, n.gid, n.name, n.home), (4242, 4242, None, None));
        let e = resolve_user("nosuchuser", PASSWD, GROUP).unwrap_err();
        assert_eq!(
            e.msg,
            "--user=nosuchuser: no such user in the container's /etc/passwd"
        );
    }

    #[test]
    fn ids_past_the_largest_are_refused() {
        let msg = |spec: &str, passwd: &str, group: &str| {
            resolve_user(spec, passwd, group).unwrap_err().msg
        };
        let range = "uids and gids must be in range 0-2147483646";
        for n in ["4294967295", "2147483647", "99999999999"] {
            assert_eq!(msg(n, PASSWD, GROUP), format!("--user={n}: {range}"));
        }
        assert_eq!(
            resolve_user("2147483646", PASSWD, GROUP).unwrap().uid,
            2147483646
        );
        let big = "big:x:4294967295:0::/:/bin/sh\nbigg:x:5:2147483647::/:/bin/sh\n";
        assert_eq!(
            msg("big", big, ""),
            format!("--user=big: /etc/passwd: big has uid 4294967295: {range}")
        );
        assert_eq!(
            msg("bigg", big, ""),
            format!("--user=bigg: /etc/passwd: bigg has gid 2147483647: {range}")
        );
        assert_eq!(
            msg("alice", PASSWD, "huge:x:4294967295:alice\n"),
            format!("--user=alice: /etc/group: huge has gid 4294967295: {range}")
        );
    }

    #[test]
    fn setenv_rules() {
        assert_eq!(parse_setenv("A=b=c").unwrap(), "A=b=c");
        assert!(parse_setenv("1BAD=x").is_err());
        assert!(parse_setenv("=x").is_err());
        assert_eq!(
            parse_setenv("NS_TEST_SURELY_UNSET_VAR").unwrap(),
            "NS_TEST_SURELY_UNSET_VAR="
        );
    }

    #[test]
    fn env_order_and_overrides() {
        let plan = ns_core::state::ExecPlan {
            uuid: "u".into(),
            container: "systemd-nspawn".into(),
            host_id: Some("debian".into()),
            host_version_id: Some("12".into()),
            setenv: vec!["PATH=/x".into(), "FOO=1".into()],
            ..Default::default()
        };
        let env = build_env(
            &plan,
            &Default::default(),
            &User::root(),
            Some("xterm".into()),
        );
        assert_eq!(
            env,
            vec![
                "PATH=/x",
                "container=systemd-nspawn",
                "TERM=xterm",
                "HOME=/root",
                "USER=root",
                "LOGNAME=root",
                "container_uuid=u",
                "LANG=C.UTF-8",
                "container_host_version_id=12",
                "container_host_id=debian",
                "FOO=1"
            ]
        );
    }

    #[test]
    fn uuids() {
        assert_eq!(
            parse_uuid("0123456789ABCDEF0123456789abcdef").unwrap(),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
        assert!(parse_uuid("xyz").is_err());
        let r = random_uuid();
        assert_eq!(r.len(), 36);
        assert_eq!(&r[14..15], "4");
    }

    #[test]
    fn login_shell_order() {
        let mut u = User::root();
        u.shell = Some("/bin/sh".into());
        assert_eq!(
            login_shells(&u),
            vec![
                ("/bin/sh".to_string(), "-sh".to_string()),
                ("/bin/bash".into(), "-bash".into())
            ]
        );
    }
}
