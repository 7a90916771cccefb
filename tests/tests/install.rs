//! scripts/install and scripts/deb, from the binaries this test run built (`--from`, so no
//! release build): the files land where they should (and only those: no ns-probe, no ns-doc,
//! no build files), the installed ns-run runs a container with the installed stages, each
//! man page renders without a warning and `man -M` finds it, the completions complete
//! options and, through `ns-ctl list` / `list-images`, machine and image names; uninstall
//! removes exactly what was installed. The .deb holds the same files (man pages gzipped)
//! and installs and removes with dpkg in a private root (`dpkg --root`, scripts run
//! chrootless): never into the host's own dpkg database.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ns_tests::{
    bin, bin_dir, registered_sleeper, run_cmd, s, spawn, spawn_until, unique, Defer, Output,
    Stopping, Tree,
};

const TOOLS: [&str; 8] = [
    "ns-run", "ns-ctl", "ns-oci", "ns-enter", "ns-mount", "ns-caps", "ns-init", "ns-net",
];
const BINS: [&str; 9] = [
    "ns-run",
    "ns-enter",
    "ns-mount",
    "ns-caps",
    "ns-init",
    "ns-net",
    "ns-ctl",
    "ns-ctl-images",
    "ns-oci",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A script of the repository with `args`; copying some 400 MiB of debug binaries can take
/// longer than the usual timeout.
fn script(name: &str, args: &[&str]) -> Output {
    let mut c = Command::new(repo().join("scripts").join(name));
    c.args(args).env_remove("DESTDIR");
    spawn(c, None)
        .wait_for(Duration::from_secs(600))
        .unwrap_or_else(|o| panic!("scripts/{name} {args:?} timed out: {o}"))
}

/// Every file under `dir` (symlinks included), relative to it.
fn files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.insert(s(p.strip_prefix(dir).unwrap()).to_string());
            }
        }
    }
    out
}

/// What an install puts under its prefix (`man` is the man pages' suffix: `` or `.gz`).
fn expected(man: &str) -> BTreeSet<String> {
    let mut v: BTreeSet<String> = BINS.iter().map(|b| format!("bin/{b}")).collect();
    for t in TOOLS {
        v.insert(format!("share/man/man1/{t}.1{man}"));
        v.insert(format!("share/bash-completion/completions/{t}"));
        v.insert(format!("share/zsh/site-functions/_{t}"));
        v.insert(format!("share/fish/vendor_completions.d/{t}.fish"));
    }
    v.insert("lib/systemd/system/ns-run@.service".into());
    v
}

fn from() -> String {
    format!("--from={}", s(&bin_dir()))
}

/// The installed ns-run (found through a PATH with nothing of ours but `bindir`) runs a
/// busybox container: the stages it needs are the installed ones.
fn installed_ns_run_runs(bindir: &Path) {
    let t = Tree::rootfs("installed");
    let mut c = Command::new(bindir.join("ns-run"));
    t.tag(&mut c)
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", s(bindir)),
        )
        .env_remove("NS_DEBUG")
        .args([
            "-q",
            "--register=no",
            "-D",
            t.arg(),
            "-a",
            "sh",
            "-c",
            "echo in $container",
        ]);
    let out = run_cmd(c, None);
    assert_eq!(out.ok(), "in systemd-nspawn\n");
}

/// Each page renders without a groff warning, with the hand-written sections and the
/// options clap knows; `man -M` finds ns-run's page where the install put it.
fn man_pages_render(mandir: &Path, suffix: &str) {
    for t in TOOLS {
        let page = mandir.join(format!("man1/{t}.1{suffix}"));
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&page)
            .env("MANWIDTH", "100")
            .env("MAN_DISABLE_SECCOMP", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.is_empty(),
            "man -l {page:?}: {err}"
        );
        for heading in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS"] {
            assert!(text.contains(heading), "{t}: no {heading}:\n{text}");
        }
    }
    let out = Command::new("man")
        .arg("-M")
        .arg(mandir)
        .args(["-P", "cat", "ns-run"])
        .env("MANWIDTH", "100")
        .env("MAN_DISABLE_SECCOMP", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "man ns-run: {out:?}");
    assert!(
        text.contains("--directory") && text.contains("--machine"),
        "{text}"
    );
}

/// A directory image of /var/lib/machines named `name` (imported by ns-ctl, which makes the
/// directory as machined does when it is missing), removed at the end.
fn image(t: &Tree, name: &str) -> Defer<impl FnOnce()> {
    let src = t.host_dir("image");
    std::fs::create_dir_all(src.join("usr")).unwrap();
    let mut c = Command::new(bin("ns-ctl"));
    c.args(["import-fs", s(&src), name]);
    run_cmd(c, None).ok();
    let p = Path::new("/var/lib/machines").join(name);
    Defer::new(move || {
        let _ = std::fs::remove_dir_all(&p);
    })
}

/// bash: run `words` through the installed completion of `words[0]` (completing the last
/// word), as bash calls a completion function; the candidates.
fn bash_complete(prefix: &Path, words: &[&str]) -> Vec<String> {
    let tool = words[0];
    let file = prefix.join("share/bash-completion/completions").join(tool);
    let func = format!("_{}_dynamic", tool.replace('-', "_"));
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE=\"${{COMP_WORDS[*]}}\"; \
         {func} {tool} \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        s(&file),
        quoted.join(" "),
        words.len() - 1
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &script])
        .env("PATH", format!("{}:/usr/bin:/bin", s(&prefix.join("bin"))))
        .output()
        .unwrap();
    assert!(out.status.success(), "bash: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// fish: `complete -C LINE` with the installed completions; the candidates.
fn fish_complete(prefix: &Path, line: &str) -> Vec<String> {
    let dir = prefix.join("share/fish/vendor_completions.d");
    let tool = line.split(' ').next().unwrap();
    let script = format!("source '{}/{tool}.fish'; complete -C '{line}'", s(&dir));
    let out = Command::new("fish")
        .args(["--no-config", "-c", &script])
        .env("PATH", format!("{}:/usr/bin:/bin", s(&prefix.join("bin"))))
        .output()
        .unwrap();
    assert!(out.status.success(), "fish: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect()
}

/// Completions: options from clap, running machines for ns-ctl's container verbs, images
/// for its image verbs and for ns-run's -M, in bash and fish; every script parses in its
/// shell (zsh: `zsh -n`).
fn completions_complete(prefix: &Path) {
    let t = Tree::rootfs("complete");
    let (machine, img) = (unique("cpl"), unique("cpl-img"));
    let _img = image(&t, &img);
    let _c = Stopping::new(spawn_until(registered_sleeper(&t, &machine, &[]), "ready"));

    assert!(bash_complete(prefix, &["ns-ctl", "pow"]).contains(&"poweroff".into()));
    assert!(bash_complete(prefix, &["ns-ctl", "status", ""]).contains(&machine));
    assert!(bash_complete(prefix, &["ns-ctl", "-o", "json", "shell", ""]).contains(&machine));
    let words = [
        "ns-ctl", "--output", "=", "json", "kill", "-s", "=", "TERM", "",
    ];
    assert!(bash_complete(prefix, &words).contains(&machine));
    assert!(!bash_complete(prefix, &["ns-ctl", "shell", "x", ""]).contains(&machine));
    assert!(bash_complete(prefix, &["ns-ctl", "remove", ""]).contains(&img));
    assert!(!bash_complete(prefix, &["ns-ctl", "remove", ""]).contains(&machine));
    assert!(bash_complete(prefix, &["ns-run", "-M", ""]).contains(&img));
    assert!(bash_complete(prefix, &["ns-run", "--machine", "=", ""]).contains(&img));
    assert!(bash_complete(prefix, &["ns-run", "--private-u"]).contains(&"--private-users".into()));

    assert!(fish_complete(prefix, "ns-ctl status ").contains(&machine));
    assert!(fish_complete(prefix, "ns-ctl clone ").contains(&img));
    assert!(fish_complete(prefix, "ns-run -M ").contains(&img));
    assert!(fish_complete(prefix, "ns-ctl pow").contains(&"poweroff".into()));

    for t in TOOLS {
        let zsh = prefix.join(format!("share/zsh/site-functions/_{t}"));
        let out = Command::new("zsh").arg("-n").arg(&zsh).output().unwrap();
        assert!(out.status.success(), "zsh -n {zsh:?}: {out:?}");
    }
}

#[test]
fn install_places_the_tools_pages_and_completions_and_uninstall_removes_exactly_them() {
    let t = Tree::empty("install");
    let prefix = t.path().join("usr-local");
    let p = format!("--prefix={}", s(&prefix));
    let out = script("install", &[&from(), &p]);
    assert_eq!(out.code, 0, "{out}");
    let mut want = expected("");
    want.insert("share/ns-run/install-manifest".into());
    assert_eq!(files(&prefix), want);
    let unit = std::fs::read_to_string(prefix.join("lib/systemd/system/ns-run@.service")).unwrap();
    let exec = format!("\nExecStart={}/bin/ns-run --quiet", s(&prefix));
    assert!(unit.contains(&exec), "{unit}");

    installed_ns_run_runs(&prefix.join("bin"));
    man_pages_render(&prefix.join("share/man"), "");
    completions_complete(&prefix);

    // A file changed since the install stays (and is named); everything else goes, with
    // the directories the install made.
    let page = prefix.join("share/man/man1/ns-oci.1");
    std::fs::write(&page, "mine\n").unwrap();
    let out = script("install", &[&p, "--uninstall"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stderr
            .contains("ns-oci.1 changed since it was installed"),
        "{out}"
    );
    assert_eq!(
        files(&prefix),
        BTreeSet::from(["share/man/man1/ns-oci.1".to_string()])
    );
    std::fs::remove_file(&page).unwrap();
    for d in [
        "bin",
        "lib",
        "share/bash-completion",
        "share/zsh",
        "share/fish",
        "share/ns-run",
    ] {
        assert!(!prefix.join(d).exists(), "{d} left");
    }
    let again = script("install", &[&p, "--uninstall"]);
    assert_eq!(again.code, 1, "{again}");
}

#[test]
fn reinstall_into_a_destdir_keeps_one_manifest_and_uninstalls_to_nothing() {
    let t = Tree::empty("destdir");
    let dest = t.path().join("stage");
    let d = format!("--destdir={}", s(&dest));
    for _ in 0..2 {
        let out = script("install", &[&from(), &d, "--prefix=/opt/ns"]);
        assert_eq!(out.code, 0, "{out}");
    }
    let prefix = dest.join("opt/ns");
    let mut want = expected("");
    want.insert("share/ns-run/install-manifest".into());
    assert_eq!(files(&prefix), want);
    let manifest = std::fs::read_to_string(prefix.join("share/ns-run/install-manifest")).unwrap();
    assert_eq!(
        manifest.lines().filter(|l| l.starts_with("f ")).count(),
        want.len() - 1
    );
    assert!(manifest.lines().any(|l| l == "d /opt"), "{manifest}");
    let out = script("install", &[&d, "--prefix=/opt/ns", "--uninstall"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(!dest.join("opt").exists(), "{:?}", files(&dest));
    // Bad arguments change nothing.
    let out = script("install", &[&d, "--prefix=relative"]);
    assert_eq!(out.code, 2, "{out}");
    assert!(!dest.join("relative").exists() && !Path::new("relative").exists());
}

/// `dpkg ARGS` on the private root `root` (its own database and log; maintainer scripts run
/// outside a chroot, seeing DPKG_ROOT; every path included whatever the host's dpkg
/// excludes).
fn dpkg(root: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("dpkg");
    c.arg(format!("--root={}", s(root)))
        .arg(format!("--log={}", s(&root.join("dpkg.log"))))
        .args(["--force-script-chrootless", "--path-include=*"])
        .args(args);
    spawn(c, None)
        .wait_for(Duration::from_secs(300))
        .unwrap_or_else(|o| panic!("dpkg {args:?} timed out: {o}"))
}

#[test]
fn deb_holds_the_installed_files_and_installs_and_removes_with_dpkg() {
    let t = Tree::empty("deb");
    let out_dir = t.path().join("out");
    let o = format!("--out={}", s(&out_dir));
    let out = script("deb", &[&from(), &o, "--compress=none"]);
    assert_eq!(out.code, 0, "{out}");
    let deb = PathBuf::from(out.stdout.trim());
    let name = deb.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("ns-run_") && name.ends_with("_amd64.deb"),
        "{name}"
    );

    let mut want: BTreeSet<String> = expected(".gz").iter().map(|f| format!("usr/{f}")).collect();
    want.insert("usr/share/doc/ns-run/copyright".into());
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    assert!(listing.status.success(), "{listing:?}");
    let listed: BTreeSet<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .unwrap()
                .trim_start_matches("./")
                .to_string()
        })
        .collect();
    assert_eq!(listed, want);
    let owners = String::from_utf8_lossy(&listing.stdout).to_string();
    assert!(
        owners.lines().all(|l| l.contains(" root/root ")),
        "{owners}"
    );
    // apt takes it as it is (a simulation: nothing is installed).
    let sim = Command::new("apt-get")
        .args(["install", "-s"])
        .arg(&deb)
        .output()
        .unwrap();
    let sim_out = String::from_utf8_lossy(&sim.stdout);
    assert!(
        sim.status.success() && sim_out.contains("Inst ns-run"),
        "{sim:?}"
    );

    let root = t.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let out = dpkg(&root, &["-i", s(&deb)]);
    assert_eq!(out.code, 0, "{out}");
    let usr = root.join("usr");
    let installed: BTreeSet<String> = files(&usr).iter().map(|f| format!("usr/{f}")).collect();
    assert_eq!(installed, want);
    installed_ns_run_runs(&usr.join("bin"));
    man_pages_render(&usr.join("share/man"), ".gz");
    let unit = std::fs::read_to_string(usr.join("lib/systemd/system/ns-run@.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/ns-run --quiet"),
        "{unit}"
    );

    let out = dpkg(&root, &["-r", "ns-run"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(files(&usr).is_empty(), "{:?}", files(&usr));
}
