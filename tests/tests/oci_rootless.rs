//! ns-oci without root (`--rootless true`), as a host user the test makes: config.json's
//! uid/gid maps as given. Our own ids alone are mapped by ns-oci itself; several ranges (its
//! subordinate ids from /etc/subuid and /etc/subgid, added for the test with `usermod` and
//! removed again, also when a test fails) go through newuidmap/newgidmap (package uidmap),
//! found in PATH, as runc finds them. Ranges the user does not own, or no newuidmap: one
//! line, exit 1 (as runc), nothing left (no state, no process of the user). Without
//! `--root` (and `--rootless`: auto), the state is in $XDG_RUNTIME_DIR/ns-oci, as runc's.
//!
//! A created container outlives `ns-oci create`: this test process is a subreaper and reaps
//! what ends up here.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ns_tests::{bin, HostUser, Tree};
use serde_json::{json, Value};

/// The stages ns-oci runs, copied where the user can reach them.
const BINS: [&str; 5] = ["ns-oci", "ns-enter", "ns-mount", "ns-caps", "ns-init"];
/// How many subordinate ids the test gives its user (uids and gids alike).
const SUB_COUNT: u32 = 65536;

/// An id map's lines: (container, host, size).
type IdMap = Vec<(u32, u32, u32)>;

fn subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: prctl with integer arguments only.
    ONCE.call_once(|| assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0));
}

/// `usermod --add-subuids/--add-subgids` for `user` (shadow's own locking keeps other
/// entries, and other suites' edits, intact); removed again when dropped.
struct SubIds<'a> {
    user: &'a HostUser,
    uids: u32,
    gids: u32,
}

impl<'a> SubIds<'a> {
    fn new(user: &'a HostUser) -> SubIds<'a> {
        // Above nspawn's pick range and above useradd's own SUB_UID_MAX, per test process.
        let uids = 0x7000_0000 + (std::process::id() % 1000) * 2 * SUB_COUNT;
        let gids = uids + SUB_COUNT;
        let s = SubIds { user, uids, gids };
        s.usermod("--add-subuids", "--add-subgids");
        s
    }

    fn usermod(&self, uid_opt: &str, gid_opt: &str) {
        let range = |start: u32| format!("{start}-{}", start + SUB_COUNT - 1);
        let st = Command::new("usermod")
            .args([uid_opt, &range(self.uids), gid_opt, &range(self.gids)])
            .arg(&self.user.name)
            .status()
            .expect("run usermod");
        assert!(
            st.success() || std::thread::panicking(),
            "usermod {uid_opt}"
        );
    }
}

impl Drop for SubIds<'_> {
    fn drop(&mut self) {
        self.usermod("--del-subuids", "--del-subgids");
    }
}

/// A bundle from `ns-oci spec --rootless` running `sleep`, the binaries and a runtime root
/// the user owns; the user is named after `tag`.
struct Rootless {
    tree: Tree,
    bins: PathBuf,
    root: PathBuf,
    user: HostUser,
    gid: u32,
}

impl Rootless {
    fn new(name: &str, tag: &str) -> Rootless {
        subreaper();
        let tree = Tree::empty(name);
        let spec = tree.host_dir("spec");
        let st = Command::new(bin("ns-oci"))
            .args(["spec", "--rootless", "--bundle"])
            .arg(&spec)
            .status()
            .unwrap();
        assert!(st.success());
        let rootless: Value = serde_json::from_slice(&fs::read(spec.join("config.json")).unwrap())
            .expect("config.json");
        ns_tests::spec_bundle(&tree, &["sleep", "1000"], |v| {
            let process = v["process"].clone();
            *v = rootless;
            v["process"] = process;
        });
        let bins = tree.host_dir("bins");
        for b in BINS {
            fs::copy(bin(b), bins.join(b)).unwrap();
        }
        let user = HostUser::new(tag, &tree.host_dir("home"));
        // The user's $XDG_RUNTIME_DIR, as a session has it, and ns-oci's root in it (where
        // ns-oci keeps its state without root and without --root, as runc).
        let xdg = tree.host_dir("xdg");
        let root = xdg.join("ns-oci");
        fs::create_dir(&root).unwrap();
        let chown = Command::new("chown")
            .args(["-R", &format!("{0}:{0}", user.uid)])
            .args([tree.path(), &xdg])
            .status()
            .unwrap();
        assert!(chown.success());
        for d in [tree.path().parent().unwrap(), &bins] {
            fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        let gid = id(&["-g", &user.name]);
        Rootless {
            tree,
            bins,
            root,
            user,
            gid,
        }
    }

    /// config.json's maps: `uid` and `gid` as (container, host, size).
    fn maps(&self, uid: &[(u32, u32, u32)], gid: &[(u32, u32, u32)]) {
        let path = self.tree.path().join("config.json");
        let mut v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let m = |r: &[(u32, u32, u32)]| {
            let r = r.iter();
            json!(r
                .map(|&(c, h, s)| json!({"containerID": c, "hostID": h, "size": s}))
                .collect::<Vec<_>>())
        };
        v["linux"]["uidMappings"] = m(uid);
        v["linux"]["gidMappings"] = m(gid);
        fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    /// `ns-oci --root R --rootless true ARGS` as the user, with `path` as PATH: exit code and
    /// stderr (stdout and stdin are /dev/null: a created container holds them).
    fn oci(&self, path: &str, args: &[&str]) -> (i32, String) {
        let root = self.root.display().to_string();
        let global = ["--root", &root, "--rootless", "true"];
        self.as_user(&[&format!("PATH={path}")], &[&global, args].concat())
    }

    /// `env ENV ns-oci ARGS` as the user: exit code and stderr.
    fn as_user(&self, env: &[&str], args: &[&str]) -> (i32, String) {
        let err = self.tree.path().join("stderr");
        let mut c = Command::new("runuser");
        c.args(["-u", &self.user.name, "--", "env"])
            .args(env)
            .arg(self.bins.join("ns-oci"))
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err).unwrap());
        let st = c.status().unwrap();
        (st.code().unwrap_or(-1), fs::read_to_string(&err).unwrap())
    }

    /// The PATH with newuidmap and newgidmap (and everything else a user has).
    fn path_with_tools(&self) -> String {
        format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.bins.display())
    }

    /// `create`, the maps of the created container's process, `start`, `delete --force`:
    /// nothing left. Returns the uid and gid maps seen, and /proc/PID/setgroups.
    fn run(&self, path: &str) -> (IdMap, IdMap, String) {
        let id = ns_tests::unique("rl");
        let (code, err) = self.oci(path, &["create", "--bundle", self.tree.arg(), &id]);
        assert_eq!(code, 0, "create: {err}");
        let pid = self.state(&id, "created");
        let setgroups = fs::read_to_string(format!("/proc/{pid}/setgroups")).unwrap();
        let maps = (
            proc_map(pid, "uid_map"),
            proc_map(pid, "gid_map"),
            setgroups.trim().to_string(),
        );
        let (code, err) = self.oci(path, &["start", &id]);
        assert_eq!(code, 0, "start: {err}");
        assert_eq!(self.state(&id, "running"), pid);
        let (code, err) = self.oci(path, &["delete", "--force", &id]);
        assert_eq!(code, 0, "delete: {err}");
        self.assert_nothing_left(&id);
        maps
    }

    /// [`Rootless::run`] with config.json's maps `uids` and `gids`: the container's process
    /// has exactly those, and `setgroups`.
    fn runs_with(
        &self,
        path: &str,
        uids: &[(u32, u32, u32)],
        gids: &[(u32, u32, u32)],
        setgroups: &str,
    ) {
        self.maps(uids, gids);
        let seen = self.run(path);
        assert_eq!((&seen.0[..], &seen.1[..]), (uids, gids));
        assert_eq!(seen.2, setgroups);
    }

    /// `state ID`: its pid, once it has `status`.
    fn state(&self, id: &str, status: &str) -> i32 {
        let o = Command::new("runuser")
            .args(["-u", &self.user.name, "--"])
            .arg(self.bins.join("ns-oci"))
            .arg("--root")
            .arg(&self.root)
            .args(["state", id])
            .current_dir("/")
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).expect("state JSON");
        assert_eq!(v["status"], status, "{v}");
        v["pid"].as_i64().unwrap() as i32
    }

    /// `create` refused: one line naming `needle`, exit 1 (ns-oci's failure, as runc's),
    /// nothing left.
    fn refused(&self, path: &str, needle: &str) -> String {
        let id = ns_tests::unique("rl-bad");
        let (code, err) = self.oci(path, &["create", "--bundle", self.tree.arg(), &id]);
        assert_eq!(code, 1, "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(needle), "{needle} in: {err}");
        self.assert_nothing_left(&id);
        err
    }

    /// No state for `id`, no process of the user (those reparented here are reaped first).
    fn assert_nothing_left(&self, id: &str) {
        assert!(!self.root.join(id).exists(), "state of {id} left");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left = procs_of(self.user.uid);
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            left = procs_of(self.user.uid);
        }
        assert!(left.is_empty(), "processes of the user left: {left:?}");
    }
}

/// A test that fails leaves no container behind: whatever the runtime root still holds is
/// deleted with --force (before the user goes).
impl Drop for Rootless {
    fn drop(&mut self) {
        let ids = fs::read_dir(&self.root).into_iter().flatten().flatten();
        for id in ids.filter(|e| e.path().is_dir()) {
            let id = id.file_name().to_string_lossy().into_owned();
            let _ = self.oci(&self.path_with_tools(), &["delete", "--force", &id]);
        }
        let _ = procs_of(self.user.uid);
    }
}

fn id(args: &[&str]) -> u32 {
    let o = Command::new("id").args(args).output().expect("run id");
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .expect("id")
}

fn proc_map(pid: i32, file: &str) -> IdMap {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    let n = |s: &str| s.parse().unwrap();
    let lines = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    lines.map(|f| (n(f[0]), n(f[1]), n(f[2]))).collect()
}

/// Live processes of `uid`, host-wide; a zombie child of ours (a container reparented to
/// this subreaper) is reaped.
fn procs_of(uid: u32) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut left = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            let l = status.lines().find(|l| l.starts_with(k));
            l.and_then(|l| l.split_whitespace().nth(1)).unwrap_or("")
        };
        if field("Uid:") != uid.to_string() {
            continue;
        }
        let pid: i32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
        if field("State:") == "Z" {
            // A zombie holds nothing but its pid; ours are reaped.
            if field("PPid:") == me {
                // SAFETY: waitpid on one pid, no status wanted.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
            continue;
        }
        left.push(format!("{pid} {}", field("Name:")));
    }
    left
}

#[test]
fn rootless_own_ids_are_mapped_without_newuidmap() {
    let r = Rootless::new("ns-oci-rl-own", "ro");
    let (u, g) = (r.user.uid, r.gid);
    // Only the binaries in PATH: no newuidmap, none needed. The kernel lets a user map its
    // own gid only with setgroups denied (so does runc).
    let path = r.bins.display().to_string();
    r.runs_with(&path, &[(0, u, 1)], &[(0, g, 1)], "deny");
}

#[test]
fn rootless_several_ranges_go_through_newuidmap() {
    let r = Rootless::new("ns-oci-rl-ranges", "rr");
    let sub = SubIds::new(&r.user);
    let (u, g) = (r.user.uid, r.gid);
    let uids = [(0, u, 1), (1, sub.uids, 1000), (5000, sub.uids + 2000, 10)];
    let gids = [(0, g, 1), (1, sub.gids + 500, 2000)];
    // newgidmap's maps leave setgroups allowed, as under runc.
    r.runs_with(&r.path_with_tools(), &uids, &gids, "allow");
}

#[test]
fn rootless_ranges_without_newuidmap_or_not_owned_are_refused() {
    let r = Rootless::new("ns-oci-rl-refused", "rf");
    let sub = SubIds::new(&r.user);
    let (u, g) = (r.user.uid, r.gid);
    // The user's own subordinate ids, but no newuidmap in PATH.
    r.maps(
        &[(0, u, 1), (1, sub.uids, 1000)],
        &[(0, g, 1), (1, sub.gids, 1000)],
    );
    let err = r.refused(&r.bins.display().to_string(), "newuidmap");
    assert!(err.contains("not installed"), "{err}");
    // Host uids 1..=1000 are nobody's to give (the gids are the user's own): newuidmap
    // refuses; the ranges asked for and its own reason are in ns-oci's one line.
    r.maps(
        &[(0, u, 1), (1, 1, 1000)],
        &[(0, g, 1), (1, sub.gids, 1000)],
    );
    let err = r.refused(&r.path_with_tools(), "newuidmap");
    let asked = format!("0 {u} 1 1 1 1000");
    assert!(err.contains(&asked) && err.contains("not allowed"), "{err}");
}

#[test]
fn rootless_state_defaults_to_xdg_runtime_dir() {
    let r = Rootless::new("ns-oci-rl-xdg", "rx");
    r.maps(&[(0, r.user.uid, 1)], &[(0, r.gid, 1)]);
    let env = format!("XDG_RUNTIME_DIR={}", r.root.parent().unwrap().display());
    let id = ns_tests::unique("rl-xdg");
    let (code, err) = r.as_user(&[&env], &["create", "--bundle", r.tree.arg(), &id]);
    assert_eq!(code, 0, "create: {err}");
    assert!(
        r.root.join(&id).is_dir(),
        "state not in $XDG_RUNTIME_DIR/ns-oci"
    );
    let (code, err) = r.as_user(&[&env], &["delete", "--force", &id]);
    assert_eq!(code, 0, "delete: {err}");
    r.assert_nothing_left(&id);
}
