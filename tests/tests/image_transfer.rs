//! ns-ctl import-tar/import-raw/import-fs, export-tar/export-raw and pull-tar/pull-raw:
//! round trips compared file by file (type, owner, mode, size, content, mtime, symlink
//! target, device number, hard links, extended attributes) for each compression, bad
//! archives that must leave nothing (truncated, `..`, a file through a symlink, an
//! absolute path), names refused, and pulls from a small HTTP server this test runs on
//! 127.0.0.1: pulled images run, a wrong checksum or a server that closes early leaves
//! nothing.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ns_tests::{bin, ns_run_registered, run_cmd, unique, Output, Tree};

const POOL: &str = "/var/lib/machines";

fn ctl(args: &[&str]) -> Output {
    let mut c = Command::new(bin("ns-ctl"));
    c.args(args).env_remove("NS_DEBUG");
    run_cmd(c, None)
}

fn ok(args: &[&str]) -> String {
    let o = ctl(args);
    assert_eq!(o.code, 0, "ns-ctl {args:?}: {o}");
    o.stdout
}

fn refused(args: &[&str], needle: &str) {
    let o = ctl(args);
    assert_eq!(o.code, 125, "ns-ctl {args:?}: {o}");
    assert_eq!(o.stderr_lines().len(), 1, "{o}");
    assert!(o.stderr.contains(needle), "wanted {needle:?}: {o}");
}

/// Nothing of image `name` in the pool: no image, no hidden leftover.
fn nothing_of(name: &str) {
    let left: Vec<String> = fs::read_dir(POOL)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n == name || n.starts_with(&format!("{name}.")) || n.starts_with(&format!(".#{name}."))
        })
        .collect();
    assert!(left.is_empty(), "left of {name}: {left:?}");
}

struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for n in &self.0 {
            for p in [
                Path::new(POOL).join(n),
                Path::new(POOL).join(format!("{n}.raw")),
            ] {
                let _ = Command::new("chattr").arg("-i").arg(&p).output();
                let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
            }
        }
    }
}

fn sh(script: &str) {
    let o = Command::new("sh").args(["-ec", script]).output().unwrap();
    assert!(o.status.success(), "{script}: {o:?}");
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    use std::ffi::CString;
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: a NUL-terminated path and a buffer of the length given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 4096];
        // SAFETY: NUL-terminated strings and a buffer of the length given.
        let k = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if k >= 0 {
            v.truncate(k as usize);
            out.insert(String::from_utf8_lossy(name).into_owned(), v);
        }
    }
    out
}

/// Every entry below `root`: its description, and its inode (to compare hard links).
/// Each entry of `root` described (type, content, mode, owner, xattrs), and the inodes of its
/// files. `archived`: only the xattrs an archive's import keeps (`user.*`,
/// `security.capability`).
fn describe(root: &Path, archived: bool) -> (BTreeMap<String, String>, BTreeMap<String, u64>) {
    let mut out = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let what = if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&p)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            names.sort();
            stack.extend(names.into_iter().map(|n| rel.join(n)));
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("symlink {}", fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            let body = fs::read(&p).unwrap();
            inodes.insert(rel.display().to_string(), m.ino());
            format!(
                "file {} {:x} mtime {}",
                m.len(),
                body.iter()
                    .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(*b as u64)),
                m.mtime()
            )
        } else if ft.is_char_device() || ft.is_block_device() {
            format!("dev {:x}", m.rdev())
        } else if ft.is_fifo() {
            "fifo".into()
        } else {
            "other".into()
        };
        let mut x = if ft.is_symlink() {
            BTreeMap::new()
        } else {
            xattrs(&p)
        };
        if archived {
            x.retain(|k, _| k.starts_with("user.") || k == "security.capability");
        }
        out.insert(
            rel.display().to_string(),
            format!(
                "{what} {:o} {}:{} {x:?}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ),
        );
    }
    (out, inodes)
}

/// `b` holds what `a` holds, entry by entry, with the same hard links (`archived`: `b` came
/// through an archive's import, which keeps fewer xattrs).
fn same_tree(a: &Path, b: &Path, archived: bool) {
    let (da, ia) = describe(a, archived);
    let (db, ib) = describe(b, false);
    for (k, v) in &da {
        // The top's mtime changes as entries are made in it: compared below it only.
        assert_eq!(
            db.get(k),
            Some(v),
            "{k} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
    assert_eq!(
        da.len(),
        db.len(),
        "{:?}",
        db.keys()
            .filter(|k| !da.contains_key(*k))
            .collect::<Vec<_>>()
    );
    let linked = |i: &BTreeMap<String, u64>| {
        let mut v: Vec<(String, String)> = Vec::new();
        for (p, n) in i {
            for (q, m) in i {
                if p < q && n == m {
                    v.push((p.clone(), q.clone()));
                }
            }
        }
        v
    };
    assert_eq!(linked(&ia), linked(&ib));
    assert!(!linked(&ia).is_empty(), "the source has hard links");
}

/// A tree with what a round trip must keep.
fn source_tree(t: &Tree) {
    let r = t.arg();
    sh(&format!(
        "cd {r}; mkdir -p etc sub/deep; echo hello > etc/hostname; echo secret > etc/shadow; chmod 600 etc/shadow; \
         printf 'x%.0s' $(seq 1 5000) > big; chown 1234:5678 big; cp /bin/busybox sub/suid; chmod 4755 sub/suid; \
         ln etc/hostname sub/deep/hard; ln -s /etc/passwd abs-link; ln -s ../etc/hostname sub/rel-link; \
         mknod null c 1 3; mknod blk b 7 200; mkfifo fifo; touch -d '2001-02-03 04:05:06' etc/hostname; \
         mkdir -m 0750 private; chown 42:43 private"
    ));
    // Extended attributes where the file system has them (user.* on ext4, tmpfs >= 6.6).
    let set = Command::new("python3")
        .args(["-c", "import os,sys; os.setxattr(sys.argv[1], 'user.ns', b'tested'); os.setxattr(sys.argv[2], 'trusted.ns', b'dir')"])
        .arg(t.path().join("big"))
        .arg(t.path().join("sub"))
        .output()
        .unwrap();
    if set.status.success() {
        assert!(
            describe(t.path(), false).0["big"].contains("user.ns"),
            "the comparison sees xattrs"
        );
    }
}

#[test]
fn tar_round_trips_keep_owners_modes_links_nodes_and_xattrs() {
    let t = Tree::empty("src");
    source_tree(&t);
    let base = unique("it-rt");
    let names: Vec<String> = (0..6).map(|i| format!("{base}-{i}")).collect();
    let _gone = Images(names.clone());
    // import-fs copies it.
    ok(&["import-fs", t.arg(), &names[0]]);
    let img = Path::new(POOL).join(&names[0]);
    same_tree(t.path(), &img, false);
    let out = t.host_dir("out");
    let magic: [(&str, &[u8]); 4] = [
        ("tar", b""),
        ("tar.gz", b"\x1f\x8b"),
        ("tar.xz", b"\xfd7zXZ"),
        ("tar.zst", b"\x28\xb5\x2f\xfd"),
    ];
    for (i, (ext, m)) in magic.iter().enumerate() {
        let f = out.join(format!("x.{ext}"));
        ok(&["export-tar", &names[0], f.to_str().unwrap()]);
        assert!(
            fs::read(&f).unwrap().starts_with(m),
            "{ext} not compressed so"
        );
        ok(&["import-tar", f.to_str().unwrap(), &names[i + 1]]);
        let imported = Path::new(POOL).join(&names[i + 1]);
        same_tree(t.path(), &imported, true);
        // trusted.* (overlayfs's among them) is never set from an archive.
        if xattrs(&t.path().join("sub")).contains_key("trusted.ns") {
            assert!(!xattrs(&imported.join("sub")).contains_key("trusted.ns"));
        }
    }
    // Through pipes: export to stdout, import from stdin.
    let o = Command::new(bin("ns-ctl"))
        .args(["export-tar", &names[0], "-", "--format=zstd"])
        .output()
        .unwrap();
    assert!(o.status.success() && o.stdout.starts_with(b"\x28\xb5\x2f\xfd"));
    let mut c = Command::new(bin("ns-ctl"));
    c.args(["import-tar", "-", &names[5]]);
    let r = run_cmd(c, Some(&o.stdout));
    assert_eq!(r.code, 0, "{r}");
    same_tree(t.path(), &Path::new(POOL).join(&names[5]), true);
    // Nothing hidden left behind, and no progress line without a terminal.
    assert!(r.stderr.is_empty(), "{r}");
    for n in &names {
        assert!(!fs::read_dir(POOL).unwrap().flatten().any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with(&format!(".#{n}."))));
    }
}

fn raw_fs(t: &Tree) -> PathBuf {
    let f = t.host_dir("out").join("fs.raw");
    fs::File::create(&f).unwrap().set_len(32 << 20).unwrap();
    sh(&format!("mkfs.ext4 -q -F -d {} {}", t.arg(), f.display()));
    f
}

fn sha256(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn raw_round_trips_for_each_compression() {
    let t = Tree::rootfs("raw-src");
    let f = raw_fs(&t);
    let base = unique("it-raw");
    let names: Vec<String> = (0..5).map(|i| format!("{base}-{i}")).collect();
    let _gone = Images(names.clone());
    ok(&["import-raw", f.to_str().unwrap(), &names[0]]);
    let img = Path::new(POOL).join(format!("{}.raw", names[0]));
    assert_eq!(sha256(&img), sha256(&f));
    // Written sparse: the zeros of the file system are holes.
    assert!(fs::metadata(&img).unwrap().blocks() * 512 < fs::metadata(&img).unwrap().len());
    let out = t.host_dir("exp");
    for (i, ext) in ["raw", "raw.gz", "raw.xz", "raw.zst"].iter().enumerate() {
        let e = out.join(format!("x.{ext}"));
        ok(&["export-raw", &names[0], e.to_str().unwrap()]);
        ok(&["import-raw", e.to_str().unwrap(), &names[i + 1]]);
        assert_eq!(
            sha256(&Path::new(POOL).join(format!("{}.raw", names[i + 1]))),
            sha256(&f),
            "{ext}"
        );
    }
    // A raw image runs.
    let mut c = ns_run_registered();
    c.args(["-q", "-M", &names[4], "cat", "/etc/passwd"]);
    let o = run_cmd(c, None);
    assert_eq!(o.code, 0, "{o}");
    assert!(o.stdout.starts_with("root:"), "{o}");
    refused(
        &["export-tar", &names[0], "/tmp/x.tar"],
        "export-raw exports it",
    );
}

/// An archive entry: name, kind (f, l, h, d), data or link target.
type Entry<'a> = (&'a str, &'a str, &'a str);

/// A tar archive made by Python's tarfile (which writes what the tar crate refuses to):
/// entries as (name, kind, data or link target).
fn evil_tar(path: &Path, entries: &[Entry]) {
    let mut script = String::from("import tarfile, io, sys\nt = tarfile.open(sys.argv[1], 'w')\n");
    for (name, kind, data) in entries {
        script.push_str(&format!(
            "i = tarfile.TarInfo({name:?}); i.type = {{'f': tarfile.REGTYPE, 'l': tarfile.SYMTYPE, 'h': tarfile.LNKTYPE, 'd': tarfile.DIRTYPE}}[{kind:?}]\n\
             d = {data:?}.encode()\nif i.type == tarfile.REGTYPE:\n    i.size = len(d); t.addfile(i, io.BytesIO(d))\nelse:\n    i.linkname = {data:?}; t.addfile(i)\n"
        ));
    }
    script.push_str("t.close()\n");
    let o = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn hostile_archives_write_nothing_outside_and_leave_nothing() {
    let t = Tree::empty("evil");
    let outside = t.host_dir("outside");
    let o = outside.to_str().unwrap();
    let name = unique("it-evil");
    let _gone = Images(vec![name.clone()]);
    let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
        (
            "dotdot",
            vec![("ok", "f", "fine"), ("../escape", "f", "bad")],
            "'..'",
        ),
        ("deep-dotdot", vec![("a/../../escape", "f", "bad")], "'..'"),
        (
            "abs-symlink",
            vec![("lnk", "l", o), ("lnk/escape", "f", "bad")],
            "a symlink",
        ),
        (
            "rel-symlink",
            vec![
                ("d", "d", ""),
                ("d/up", "l", "../.."),
                ("d/up/escape", "f", "bad"),
            ],
            "a symlink",
        ),
        (
            "hardlink-out",
            vec![("h", "h", "../../../../etc/passwd")],
            "'..'",
        ),
        (
            "hardlink-through",
            vec![("lnk", "l", o), ("h", "h", "lnk/x")],
            "a symlink",
        ),
    ];
    fs::write(outside.join("x"), "outside").unwrap();
    for (tag, entries, why) in &cases {
        let a = t.host_dir("archives").join(format!("{tag}.tar"));
        evil_tar(&a, entries);
        refused(&["import-tar", a.to_str().unwrap(), &name], why);
        nothing_of(&name);
        let there: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(there.len(), 1, "{tag}: written outside: {there:?}");
        assert!(
            !t.base().join("escape").exists()
                && !Path::new("/var/lib/escape").exists()
                && !Path::new("/var/escape").exists(),
            "{tag}"
        );
    }
    // An absolute path is made relative to the image, as GNU tar does; a killed import's
    // leftover of the name goes with the next import; a top without a `./` entry is 0755.
    let a = t.host_dir("archives").join("abs.tar");
    evil_tar(&a, &[("/abs-file", "f", "in")]);
    let leftover = Path::new(POOL).join(format!(".#{name}.0badf00d"));
    fs::create_dir_all(leftover.join("etc")).unwrap();
    ok(&["import-tar", a.to_str().unwrap(), &name]);
    assert!(!leftover.exists());
    assert_eq!(
        fs::metadata(Path::new(POOL).join(&name)).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        fs::read_to_string(Path::new(POOL).join(&name).join("abs-file")).unwrap(),
        "in"
    );
    // An existing name: refused, the image unchanged.
    refused(
        &["import-tar", a.to_str().unwrap(), &name],
        "already exists",
    );
    refused(&["import-fs", t.arg(), &name], "already exists");
    assert_eq!(
        fs::read_dir(Path::new(POOL).join(&name)).unwrap().count(),
        1
    );
    ok(&["remove", &name]);
    for bad in [".hidden", "a/b", ""] {
        refused(
            &["import-tar", a.to_str().unwrap(), bad],
            "not a valid image name",
        );
    }
}

#[test]
fn truncated_and_foreign_archives_leave_nothing() {
    let t = Tree::rootfs("trunc");
    let out = t.host_dir("out");
    let name = unique("it-trunc");
    let _gone = Images(vec![name.clone()]);
    let tar = out.join("a.tar");
    sh(&format!("tar -C {} -cf {} .", t.arg(), tar.display()));
    let whole = fs::read(&tar).unwrap();
    // Cut mid-file, and cut at an entry's boundary (without the end-of-archive block).
    let boundary = {
        let mut a = whole.clone();
        a.truncate(whole.len() / 2 / 512 * 512);
        a
    };
    for (tag, bytes) in [
        ("mid", whole[..whole.len() / 2 + 100].to_vec()),
        ("boundary", boundary),
    ] {
        let f = out.join(format!("{tag}.tar"));
        fs::write(&f, &bytes).unwrap();
        refused(&["import-tar", f.to_str().unwrap(), &name], "cannot import");
        nothing_of(&name);
    }
    sh(&format!(
        "gzip -k {} && head -c 30000 {}.gz > {}/cut.tar.gz",
        tar.display(),
        tar.display(),
        out.display()
    ));
    refused(
        &[
            "import-tar",
            out.join("cut.tar.gz").to_str().unwrap(),
            &name,
        ],
        "cannot import",
    );
    nothing_of(&name);
    sh(&format!(
        "head -c 1000000 {} | gzip > {}/short.raw.gz",
        tar.display(),
        out.display()
    ));
    let mut gz = fs::read(out.join("short.raw.gz")).unwrap();
    gz.truncate(gz.len() - 20);
    fs::write(out.join("short.raw.gz"), &gz).unwrap();
    refused(
        &[
            "import-raw",
            out.join("short.raw.gz").to_str().unwrap(),
            &name,
        ],
        "cannot import",
    );
    nothing_of(&name);
    fs::write(out.join("b.tar.bz2"), b"BZh91AY&SY").unwrap();
    refused(
        &["import-tar", out.join("b.tar.bz2").to_str().unwrap(), &name],
        "bzip2",
    );
    nothing_of(&name);
    refused(
        &[
            "import-tar",
            out.join("missing.tar").to_str().unwrap(),
            &name,
        ],
        "cannot open",
    );
    nothing_of(&name);
}

/// A static HTTP server on 127.0.0.1 serving `dir`, one connection at a time, each closed
/// after its answer; a path starting with /short/ answers with a Content-Length larger
/// than what it sends before closing.
fn serve(dir: PathBuf) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let mut req = Vec::new();
            let mut b = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                req.push(b[0]);
            }
            let line = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let path = line.split(' ').nth(1).unwrap_or("/").to_string();
            let (short, file) = match path.strip_prefix("/short/") {
                Some(p) => (true, dir.join(p)),
                None => (false, dir.join(path.trim_start_matches('/'))),
            };
            let _ = match fs::read(&file) {
                Ok(body) if short => s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|()| s.write_all(&body[..body.len() / 3])),
                Ok(body) => s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|()| s.write_all(&body)),
                Err(_) => s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    port
}

#[test]
fn pulls_from_a_local_server_run_and_bad_ones_leave_nothing() {
    let t = Tree::rootfs("pull-src");
    let www = t.host_dir("www");
    let base = unique("it-pull");
    let (tar_name, raw_name) = (format!("{base}-t"), format!("{base}-r"));
    let _gone = Images(vec![tar_name.clone(), raw_name.clone(), base.clone()]);
    sh(&format!(
        "tar -C {} -cf - . | xz > {}/{tar_name}.tar.xz",
        t.arg(),
        www.display()
    ));
    let raw = raw_fs(&t);
    sh(&format!(
        "zstd -q {} -o {}/{raw_name}.raw.zst",
        raw.display(),
        www.display()
    ));
    sh(&format!(
        "cd {} && sha256sum {tar_name}.tar.xz {raw_name}.raw.zst > SHA256SUMS",
        www.display()
    ));
    // A second directory whose SHA256SUMS is wrong.
    let bad = www.join("bad");
    fs::create_dir(&bad).unwrap();
    fs::copy(
        www.join(format!("{tar_name}.tar.xz")),
        bad.join("img.tar.xz"),
    )
    .unwrap();
    fs::write(
        bad.join("SHA256SUMS"),
        format!("{}  img.tar.xz\n", "0".repeat(64)),
    )
    .unwrap();
    fs::copy(
        www.join(format!("{tar_name}.tar.xz")),
        www.join("unlisted.tar.xz"),
    )
    .unwrap();
    let port = serve(www.clone());
    let url = |p: &str| format!("http://127.0.0.1:{port}/{p}");
    // The name from the URL (suffixes dropped), checksum verified by default.
    ok(&["pull-tar", &url(&format!("{tar_name}.tar.xz"))]);
    ok(&[
        "pull-raw",
        &url(&format!("{raw_name}.raw.zst")),
        &raw_name,
        "--verify=checksum",
    ]);
    assert_eq!(
        sha256(&Path::new(POOL).join(format!("{raw_name}.raw"))),
        sha256(&raw)
    );
    for n in [&tar_name, &raw_name] {
        let mut c = ns_run_registered();
        c.args(["-q", "-M", n, "sh", "-c", "echo ran"]);
        let o = run_cmd(c, None);
        assert_eq!(o.stdout, "ran\n", "{n}: {o}");
    }
    refused(
        &["pull-tar", &url("bad/img.tar.xz"), &base],
        "SHA256SUMS says",
    );
    nothing_of(&base);
    refused(
        &[
            "pull-tar",
            &url("unlisted.tar.xz"),
            &base,
            "--verify=checksum",
        ],
        "no checksum",
    );
    nothing_of(&base);
    // The server closes before its Content-Length: one line, nothing left.
    refused(
        &[
            "pull-tar",
            &url(&format!("short/{tar_name}.tar.xz")),
            &base,
            "--verify=no",
        ],
        "cannot download",
    );
    nothing_of(&base);
    refused(
        &["pull-raw", &url("missing.raw"), &base, "--verify=no"],
        "404",
    );
    nothing_of(&base);
    refused(
        &["pull-tar", &url("x.tar"), &base, "--verify=signature"],
        "GPG",
    );
    refused(
        &["pull-tar", "ftp://example.com/x.tar", &base],
        "not an http",
    );
}

#[test]
fn progress_is_one_line_rewritten_on_a_terminal_only() {
    let name = unique("it-prog");
    let _gone = Images(vec![name.clone()]);
    // Under script(1) stderr is a pty; the input takes more than a second.
    let cmd = format!(
        "(head -c 8M /dev/urandom; sleep 1.5; head -c 8M /dev/urandom) | {} import-raw - {name}",
        bin("ns-ctl").display()
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("\rImporting {name}: ")),
        "no progress line: {out:?}"
    );
    assert!(out.contains("\r\x1b[K"), "not erased: {out:?}");
    assert!(!out.contains('\n'), "more than one line: {out:?}");
    assert_eq!(
        fs::metadata(Path::new(POOL).join(format!("{name}.raw")))
            .unwrap()
            .len(),
        16 << 20
    );
}

#[test]
fn a_full_disk_or_a_killed_import_leaves_nothing_under_the_name() {
    let name = unique("it-full");
    let _gone = Images(vec![name.clone()]);
    let t = Tree::rootfs("full-src");
    sh(&format!("head -c 8M /dev/urandom > {}/big", t.arg()));
    let f = raw_fs(&t);
    // A 4 MiB tmpfs over /var/lib/machines in a mount namespace of its own: the 32 MiB
    // image (8 MiB of it data) does not fit.
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs -o size=4M,mode=0700 tmpfs {POOL} && \
         {ctl} import-raw {img} {name}; echo rc=$?; \
         {ctl} import-tar {tar} {name}; echo rc=$?; ls -A {POOL}",
        ctl = bin("ns-ctl").display(),
        img = f.display(),
        tar = {
            let tar = t.host_dir("out").join("a.tar");
            sh(&format!("tar -C {} -cf {} .", t.arg(), tar.display()));
            tar
        }
        .display(),
    );
    let o = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(out, "rc=125\nrc=125\n", "{out} / {err}");
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    // Killed mid-import: only the hidden entry is left, and clean takes it.
    let mut child = Command::new(bin("ns-ctl"))
        .args(["import-raw", "-", &name])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&vec![1u8; 1 << 20]).unwrap();
    let hidden = || {
        fs::read_dir(POOL)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!(".#{name}.")))
            .collect::<Vec<_>>()
    };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while hidden().is_empty() && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    assert_eq!(hidden().len(), 1);
    assert!(!Path::new(POOL).join(format!("{name}.raw")).exists());
    let cleaned = ok(&["clean"]);
    assert!(cleaned.contains(&format!(".#{name}.")), "{cleaned}");
    nothing_of(&name);
}

/// Ctrl-C (SIGINT), SIGTERM or SIGHUP while an import runs: it stops, exits 128+N with one
/// line, and its hidden entry in the pool is gone (as pull-oci's); only a SIGKILL leaves
/// one, for `clean`.
#[test]
fn an_interrupted_import_leaves_nothing() {
    let name = unique("it-int");
    let _gone = Images(vec![name.clone()]);
    for (verb, sig) in [
        ("import-raw", libc::SIGINT),
        ("import-tar", libc::SIGTERM),
        ("import-raw", libc::SIGHUP),
    ] {
        let mut child = Command::new(bin("ns-ctl"))
            .args([verb, "-", &name])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // A tar's first entry (a 1 MiB file), then nothing more for now.
        let mut h = tar::Header::new_gnu();
        h.set_path("f").unwrap();
        h.set_size(1 << 21);
        h.set_mode(0o644);
        h.set_cksum();
        stdin.write_all(h.as_bytes()).unwrap();
        stdin.write_all(&vec![1u8; 1 << 20]).unwrap();
        let hidden = || {
            fs::read_dir(POOL)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!(".#{name}.")))
                .collect::<Vec<_>>()
        };
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while hidden().is_empty() && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(hidden().len(), 1, "{verb}: no hidden entry made");
        // SAFETY: a plain kill of our child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let start = std::time::Instant::now();
        let status = child.wait().unwrap();
        drop(stdin);
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{verb}: took {:?}",
            start.elapsed()
        );
        assert_eq!(
            status.code(),
            Some(128 + sig),
            "{verb} {sig}: {status:?} {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(hidden().is_empty(), "{verb} {sig}: left {:?}", hidden());
        nothing_of(&name);
    }
}
