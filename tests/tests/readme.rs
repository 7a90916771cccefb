//! The README's "Five common tasks": every ```sh task``` block run, in order, each as one
//! bash script (`set -euo pipefail`), with the toolkit first in PATH, inside a throwaway
//! network namespace (the veths of `-n` and `ns-ctl start` land there). `debootstrap` of
//! the block is the suite's cached run of the same command (ns_tests::debian_cache), copied,
//! not a download. The machine `demo` in /var/lib/machines is the test's: refused if it is
//! there before, removed after.

use std::path::Path;
use std::process::Command;

/// The ```sh task``` blocks of the README, in order.
fn task_blocks() -> Vec<String> {
    blocks_tagged("sh task")
}

/// The README's blocks whose fence says ```TAG```, in order.
fn blocks_tagged(tag: &str) -> Vec<String> {
    let fence = format!("```{tag}");
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_end()) {
            (None, l) if l == fence => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unterminated task block");
    blocks
}

struct Demo;

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new(ns_tests::bin("ns-ctl"))
            .args(["terminate", "demo"])
            .output();
        let _ = ns_tests::wait_no_procs_in(
            Path::new("/var/lib/machines/demo"),
            std::time::Duration::from_secs(10),
        );
        ns_tests::remove_tree(Path::new("/var/lib/machines/demo"));
        for f in ["demo.log", "demo.log.1"] {
            let _ = std::fs::remove_file(Path::new("/run/ns-run/logs").join(f));
        }
    }
}

#[test]
fn the_readmes_five_tasks_work_as_written() {
    let blocks = task_blocks();
    assert_eq!(blocks.len(), 5, "task blocks: {blocks:?}");
    let image = Path::new("/var/lib/machines/demo");
    assert!(
        image.symlink_metadata().is_err(),
        "{} exists: not the test's to use",
        image.display()
    );
    let cache = ns_tests::debian_cache("debian-systemd", "systemd,dbus");
    let _demo = Demo;
    // `debootstrap --variant=minbase --include=systemd,dbus bookworm DIR`: the cache, copied.
    let shims = tempdir("readme-shims");
    let shim = shims.join("debootstrap");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\n\
             [ \"$*\" = \"--variant=minbase --include=systemd,dbus bookworm $4\" ] || {{ echo \"unexpected debootstrap $*\" >&2; exit 2; }}\n\
             exec cp -a {} \"$4\"\n",
            cache.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut path = std::ffi::OsString::from(shims.as_os_str());
    path.push(":");
    path.push(ns_tests::path_with_bins());
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ctd = Containerd::start(&top);
    let mut outputs = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let script = format!("set -euo pipefail\nip link set lo up\n{block}");
        let mut c = Command::new("unshare");
        c.args(["--net", "--", "bash", "-c", &script])
            .env("PATH", &path)
            .current_dir(&top)
            .env("CONTAINERD_ADDRESS", ctd.dir.join("containerd.sock"))
            .env("CONTAINERD_SNAPSHOTTER", &ctd.snapshotter)
            .env_remove("CONTAINERD_NAMESPACE");
        let out = ns_tests::run_cmd(c, None);
        assert_eq!(out.code, 0, "task block {i}:\n{block}\n{out}");
        outputs.push(out.stdout);
    }
    let _ = std::fs::remove_dir_all(&shims);
    // What each block shows.
    assert!(outputs[0].trim().starts_with("12."), "{}", outputs[0]);
    let state = outputs[1].trim();
    assert!(state == "running" || state == "degraded", "{state}");
    assert!(
        outputs[2].contains("host0") && outputs[2].contains("lo"),
        "{}",
        outputs[2]
    );
    assert_eq!(outputs[3].trim(), "exit 137", "{}", outputs[3]);
    assert_eq!(
        outputs[4].lines().last(),
        Some("hello from ns-oci"),
        "{}",
        outputs[4]
    );
    let _ = std::fs::remove_file("/tmp/busybox.tar");
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ns-tests-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The README's ```sh example``` blocks (`./rootfs`: a busybox tree in the working
/// directory), each run as one script: in a throwaway network and mount namespace, with a
/// tmpfs on /srv holding /srv/data (a bind source an example names).
#[test]
fn the_readmes_examples_run_as_written() {
    let blocks = blocks_tagged("sh example");
    assert!(blocks.len() >= 3, "{blocks:?}");
    let t = ns_tests::Tree::empty("readme-examples");
    ns_tests::build_rootfs(&t.path().join("rootfs"));
    for (i, block) in blocks.iter().enumerate() {
        let script = format!(
            "set -euo pipefail\nip link set lo up\nmount -t tmpfs tmpfs /srv\nmkdir /srv/data\n{block}"
        );
        let mut c = Command::new("unshare");
        c.args([
            "--net",
            "--mount",
            "--propagation=private",
            "--",
            "bash",
            "-c",
            &script,
        ])
        .current_dir(t.path())
        .env("PATH", ns_tests::path_with_bins());
        let out = ns_tests::run_cmd(c, None);
        assert_eq!(out.code, 0, "example block {i}:\n{block}\n{out}");
    }
}

/// A private containerd (tests/oci/containerd), stopped on drop.
struct Containerd {
    dir: std::path::PathBuf,
    snapshotter: String,
    harness: std::path::PathBuf,
}

impl Containerd {
    fn start(top: &Path) -> Containerd {
        let dir = tempdir("readme-containerd");
        let harness = top.join("tests/oci/containerd");
        let mut c = Command::new(&harness);
        c.arg("start").arg(&dir);
        let out = ns_tests::run_cmd(c, None);
        assert_eq!(out.code, 0, "containerd start: {out}");
        let snapshotter = std::fs::read_to_string(dir.join("snapshotter"))
            .unwrap()
            .trim()
            .to_string();
        Containerd {
            dir,
            snapshotter,
            harness,
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = Command::new(&self.harness)
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}
