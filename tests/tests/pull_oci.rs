//! `ns-ctl pull-oci` and `import-oci`: images the test builds (an OCI layout: a busybox
//! layer in gzip, a zstd layer with a whiteout and an opaque directory, an uncompressed
//! layer, a config with Entrypoint/Cmd/Env/WorkingDir/User, an index with two platforms),
//! pushed with skopeo to Debian's docker-registry on 127.0.0.1, pulled, and run with
//! `ns-run -M NAME`. Bad cases fail with one line and leave nothing in /var/lib/machines;
//! layers that try to write outside the image write nothing there. A tiny fake registry
//! (std's TcpListener) proves the bearer-token flow and a server gone mid-blob.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ns_tests::{run_cmd, s, Output, Tree};
use serde_json::{json, Value};
use sha2::Digest;

const MACHINES: &str = "/var/lib/machines";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn ctl(args: &[&str]) -> Output {
    let mut c = ns_tests::stage("ns-ctl");
    c.args(args);
    run_cmd(c, None)
}

/// A machine name of this test process.
fn name(tag: &str) -> String {
    format!("oci{tag}{}", std::process::id() % 100_000)
}

/// Images of /var/lib/machines this test made (and anything a failed pull left: the
/// hidden directory, the settings file), removed on drop.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for n in &self.0 {
            for p in leftovers(n) {
                if p.is_dir() && !p.is_symlink() {
                    ns_tests::remove_tree(&p);
                } else {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }
}

/// What /var/lib/machines has of the image `n`: itself, its settings file, hidden
/// directories and files of a pull.
fn leftovers(n: &str) -> Vec<PathBuf> {
    std::fs::read_dir(MACHINES)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f == n || *f == format!("{n}.nspawn") || f.starts_with(&format!(".#{n}.")))
        .map(|f| Path::new(MACHINES).join(f))
        .collect()
}

/// A failure of one line with code 125 that left nothing of `n`.
fn assert_failed_cleanly(out: &Output, n: &str, says: &str) {
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(out.stderr.contains(says), "wanted {says:?}: {out}");
    assert!(leftovers(n).is_empty(), "left: {:?}", leftovers(n));
}

// ---------------------------------------------------------------------------------------
// Building image layouts

fn sha256(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An OCI image layout being written in `dir`.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    /// Store `data` as a blob; its descriptor.
    fn blob(&self, media: &str, data: &[u8]) -> Value {
        let hex = sha256(data);
        std::fs::write(self.dir.join("blobs/sha256").join(&hex), data).unwrap();
        json!({"mediaType": media, "digest": format!("sha256:{hex}"), "size": data.len()})
    }

    fn json(&self, media: &str, v: &Value) -> Value {
        self.blob(media, serde_json::to_string(v).unwrap().as_bytes())
    }

    /// A config and a manifest of `layers`; the manifest's descriptor.
    fn image(&self, config: Value, layers: &[Value]) -> Value {
        let c = self.json("application/vnd.oci.image.config.v1+json", &config);
        self.json(
            "application/vnd.oci.image.manifest.v1+json",
            &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": c, "layers": layers}),
        )
    }

    /// index.json naming `top` as `latest`.
    fn finish(&self, mut top: Value) {
        top["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": [top]});
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }

    fn digest_of(d: &Value) -> String {
        d["digest"].as_str().unwrap().to_string()
    }
}

/// Tar entries written by hand (names the tar crate would refuse too).
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    /// A file with cap_net_raw (effective) in its pax `SCHILY.xattr.security.capability`.
    Capped(&'a str),
}

/// VFS capability data, revision 2 (magic 0x02000000 | effective, then permitted and
/// inheritable words, little-endian): cap_net_raw (bit 13) permitted and effective.
#[rustfmt::skip]
const CAP_NET_RAW_XATTR: [u8; 20] = [
    0x01, 0, 0, 0x02,   0, 0x20, 0, 0,   0, 0, 0, 0,   0, 0, 0, 0,   0, 0, 0, 0,
];

/// A pax record `LEN KEY=VALUE\n` (LEN counts itself).
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while (rest + len.to_string().len()) != len {
        len = rest + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn header(kind: tar::EntryType, path: &str, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    // The raw name: set_path refuses `..`, which the tests need.
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p) => {
                let mut h = header(tar::EntryType::Directory, p, 0o755, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::File(p, data) => {
                let mut h = header(tar::EntryType::Regular, p, 0o644, data.len() as u64);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            E::Capped(p) => {
                let rec = pax_record("SCHILY.xattr.security.capability", &CAP_NET_RAW_XATTR);
                let mut h = header(tar::EntryType::XHeader, "pax", 0o644, rec.len() as u64);
                h.set_cksum();
                b.append(&h, &rec[..]).unwrap();
                let mut h = header(tar::EntryType::Regular, p, 0o755, 1);
                h.set_cksum();
                b.append(&h, &b"x"[..]).unwrap();
            }
            E::Symlink(p, t) | E::Hardlink(p, t) => {
                let kind = match e {
                    E::Symlink(..) => tar::EntryType::Symlink,
                    _ => tar::EntryType::Link,
                };
                let mut h = header(kind, p, 0o777, 0);
                let link = &mut h.as_old_mut().linkname;
                link[..t.len()].copy_from_slice(t.as_bytes());
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// A tar of the tree at `dir` (symlinks kept as symlinks).
fn tar_tree(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// What the test image's command prints (its config's entrypoint and cmd, environment,
/// working directory and user; the whiteouts and the opaque directory applied).
const EXPECTED: &str = "args=first,sec ond\ncwd=/work/dir\nfoo=bar \"q\" 'x' baz\nuid=1000\n\
                        hello\nnew\ngone is gone\nlayer3\n";

/// The test image: busybox (gzip), a zstd layer with a whiteout and an opaque directory, an
/// uncompressed one; for linux/amd64 and (another config) linux/s390x, in an index.
/// Returns the digests of the layers.
fn build_image(dir: &Path, scratch: &Path) -> Vec<String> {
    let l = Layout::new(dir);
    let rootfs = scratch.join("rootfs");
    ns_tests::build_rootfs(&rootfs);
    std::fs::write(rootfs.join("gone"), "lower").unwrap();
    std::fs::create_dir_all(rootfs.join("opq/sub")).unwrap();
    std::fs::write(rootfs.join("opq/lower"), "lower").unwrap();
    std::fs::write(rootfs.join("opq/sub/lower2"), "lower").unwrap();
    let base = tar_tree(&rootfs);
    let mut diff_ids = vec![format!("sha256:{}", sha256(&base))];
    let base = l.blob(&format!("{OCI_LAYER}+gzip"), &gzip(&base));
    let second = tar_of(&[
        E::File(".wh.gone", b""),
        E::File("nodir/.wh.x", b""),
        E::Dir("opq/"),
        E::File("opq/new", b"new"),
        E::File("opq/.wh..wh..opq", b""),
        E::Dir("app/"),
        E::File("app/hello", b"hello\n"),
    ]);
    diff_ids.push(format!("sha256:{}", sha256(&second)));
    let second = l.blob(&format!("{OCI_LAYER}+zstd"), &zstd(&second));
    let third = tar_of(&[E::File("etc/motd", b"layer3\n"), E::Capped("bin/capped")]);
    diff_ids.push(format!("sha256:{}", sha256(&third)));
    let third = l.blob(OCI_LAYER, &third);
    let script = "echo args=$0,$1; echo cwd=$(pwd); echo foo=$FOO; echo uid=$(id -u); \
                  cat /app/hello; ls /opq; test -e /gone || echo gone is gone; cat /etc/motd";
    let config = json!({"architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sh", "-c", script], "Cmd": ["first", "sec ond"],
                   "Env": ["PATH=/usr/bin:/bin", "FOO=bar \"q\" 'x' baz"],
                   "WorkingDir": "/work/dir", "User": "1000",
                   "ExposedPorts": {"8080/tcp": {} } },
        "rootfs": {"type": "layers", "diff_ids": diff_ids} });
    let mut amd = l.image(config, &[base.clone(), second.clone(), third.clone()]);
    amd["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let other = json!({"architecture": "s390x", "os": "linux",
        "config": {"Cmd": ["/bin/echo", "wrong platform"]}, "rootfs": {"type": "layers"} });
    let mut s390 = l.image(other, std::slice::from_ref(&base));
    s390["platform"] = json!({"os": "linux", "architecture": "s390x"});
    let index = l.json(
        "application/vnd.oci.image.index.v1+json",
        &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [s390, amd]}),
    );
    l.finish(index);
    [base, second, third]
        .iter()
        .map(Layout::digest_of)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Registries

/// Debian's docker-registry on 127.0.0.1 with its storage in `dir`, stopped on drop.
struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = free_port();
        let storage = dir.join("storage");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian's docker-registry package)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry {
            child,
            port,
            storage,
        }
    }

    /// Push the layout at `layout` (all its platforms, every blob as it is: the uncompressed
    /// layer too) as `repo:tag`.
    fn push(&self, layout: &Path, repo: &str) {
        let policy = layout.with_extension("policy.json");
        std::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        let out = Command::new("skopeo")
            .arg("--policy")
            .arg(&policy)
            .args([
                "copy",
                "-q",
                "--all",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://127.0.0.1:{}/{repo}", self.port))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo: {out:?}");
    }

    /// The file holding blob `digest` in the registry's storage.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the fake registry misbehaves.
#[derive(Clone, Copy)]
enum Fake {
    /// Every request needs the latest token from /token (a 401 with a Bearer challenge
    /// first), which serves this many requests at most, if given (then it has expired).
    Token(Option<usize>),
    /// The body of this blob stops half way and the connection closes.
    CutBlob(usize),
    /// The body of this blob stops half way and the connection stays open, silent.
    StallBlob(usize),
    /// Every manifest asked for is answered with the tag's (an index).
    Lying,
}

/// A registry in a thread: serves the layout at `dir` (tag `latest` is its index.json's
/// entry), one request per connection. Returns its port and the requests' first lines
/// with their Authorization header.
fn fake_registry(dir: &Path, mode: Fake, cut: Option<String>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (dir, log2) = (dir.to_path_buf(), log.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let _ = serve_one(conn, &dir, port, mode, cut.as_deref(), &log2);
        }
    });
    (port, log)
}

/// A request's path and Authorization header (lower case).
fn read_request(conn: &TcpStream) -> std::io::Result<(String, String)> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    r.read_line(&mut first)?;
    let mut auth = String::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 || l == "\r\n" {
            break;
        }
        if let Some(v) = l.to_ascii_lowercase().strip_prefix("authorization:") {
            auth = v.trim().to_string();
        }
    }
    Ok((first.split(' ').nth(1).unwrap_or("").to_string(), auth))
}

fn serve_one(
    mut conn: TcpStream,
    dir: &Path,
    port: u16,
    mode: Fake,
    cut: Option<&str>,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let (path, auth) = read_request(&conn)?;
    log.lock().unwrap().push(format!("{path} [{auth}]"));
    let send = |conn: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes())?;
        conn.write_all(body)
    };
    // Tokens are tok-1, tok-2...: the latest one is good (for its first uses if they expire).
    let (issued, uses) = {
        let log = log.lock().unwrap();
        let issued = log.iter().filter(|l| l.starts_with("/token?")).count();
        let tail = format!("[bearer tok-{issued}]");
        (issued, log.iter().filter(|l| l.ends_with(&tail)).count())
    };
    if path.starts_with("/token?") {
        let ok = path.contains("service=fake") && path.contains("scope=repository");
        let body = match ok {
            true => format!(r#"{{"token":"tok-{issued}"}}"#),
            false => "{}".to_string(),
        };
        return send(
            &mut conn,
            "200 OK",
            "Content-Type: application/json\r\n",
            body.as_bytes(),
        );
    }
    let good = auth == format!("bearer tok-{issued}")
        && !matches!(mode, Fake::Token(Some(max)) if uses > max);
    if matches!(mode, Fake::Token(_)) && !good {
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\",\
             scope=\"repository:test/app:pull\"\r\n"
        );
        return send(&mut conn, "401 Unauthorized", &challenge, b"{}");
    }
    let digest = match mode {
        Fake::Lying if path.contains("/manifests/") => "latest",
        _ => path.rsplit('/').next().unwrap_or(""),
    };
    let file = if digest == "latest" {
        let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?).unwrap();
        let d = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        dir.join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    } else {
        dir.join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap_or("x"))
    };
    let Ok(body) = std::fs::read(&file) else {
        return send(
            &mut conn,
            "404 Not Found",
            "",
            br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#,
        );
    };
    let ctype = if path.contains("/manifests/") {
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        format!(
            "Content-Type: {}\r\n",
            v["mediaType"].as_str().unwrap_or("")
        )
    } else {
        String::new()
    };
    if let (Fake::CutBlob(at) | Fake::StallBlob(at), Some(c)) = (mode, cut) {
        if digest == c {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes())?;
            conn.write_all(&body[..at.min(body.len())])?;
            if matches!(mode, Fake::StallBlob(_)) {
                std::thread::sleep(Duration::from_secs(30));
            }
            return conn.shutdown(std::net::Shutdown::Both);
        }
    }
    send(&mut conn, "200 OK", &ctype, &body)
}

// ---------------------------------------------------------------------------------------
// Tests

/// The file's security.capability attribute.
fn security_capability(p: &Path) -> Vec<u8> {
    let path = std::ffi::CString::new(s(p)).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated; buf is valid for its length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(n >= 0, "{}: no security.capability", p.display());
    buf[..n as usize].to_vec()
}

/// Run the image `n` as its settings say; its output.
fn run_image(n: &str) -> Output {
    let mut c = ns_tests::ns_run();
    c.args(["-q", "-M", n]);
    run_cmd(c, None)
}

#[test]
fn pull_from_a_registry_runs_as_the_config_says_and_import_gives_the_same_tree() {
    let t = Tree::empty("pull");
    let layout = t.host_dir("layout");
    build_image(&layout, &t.host_dir("scratch"));
    let reg = Registry::start(&t.host_dir("registry"));
    reg.push(&layout, "test/app:v1");
    let (a, b, c, d) = (name("p"), name("d"), name("t"), name("g"));
    let _images = Images(vec![a.clone(), b.clone(), c.clone(), d.clone()]);

    let out = ctl(&[
        "pull-oci",
        &format!("127.0.0.1:{}/test/app:v1", reg.port),
        &a,
    ]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out}");
    let settings = std::fs::read_to_string(format!("{MACHINES}/{a}.nspawn")).unwrap();
    assert!(
        settings.contains("\nUser=1000\nWorkingDirectory=/work/dir\n"),
        "{settings}"
    );
    assert!(
        settings.contains("# Exposed ports: 8080/tcp\n"),
        "{settings}"
    );
    let out = run_image(&a);
    // (No warning: every key written is one ns-run takes from an untrusted file.)
    assert_eq!(out.ok(), EXPECTED);
    // The whiteouts: gone, and the lower layer's opq/sub with it.
    let root = Path::new(MACHINES).join(&a);
    assert!(!root.join("gone").exists() && !root.join("opq/sub").exists());
    assert!(!root.join("opq/lower").exists() && root.join("opq/new").exists());
    assert!(
        !root.join("nodir").exists(),
        "a whiteout made its directory"
    );
    assert_eq!(
        security_capability(&root.join("bin/capped")),
        CAP_NET_RAW_XATTR
    );
    let mode = std::fs::metadata(&root).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o7777,
        0o755
    );
    // A command on the command line wins over the image's.
    let mut cmd = ns_tests::ns_run();
    cmd.args(["-q", "-M", &a, "/bin/echo", "mine"]);
    assert_eq!(run_cmd(cmd, None).stdout, "mine\n");

    // import-oci of the same layout, as a directory and as a tar of it: the same tree.
    assert_eq!(ctl(&["import-oci", s(&layout), &b]).code, 0);
    let archive = t.host_dir("archive").join("layout.tar");
    std::fs::write(&archive, tar_tree(&layout)).unwrap();
    let out = ctl(&["import-oci", s(&archive), &c]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out}");
    let pulled = ns_tests::snapshot(&root);
    assert_eq!(pulled, ns_tests::snapshot(&Path::new(MACHINES).join(&b)));
    assert_eq!(pulled, ns_tests::snapshot(&Path::new(MACHINES).join(&c)));
    assert_eq!(run_image(&c).stdout, EXPECTED);
    // By digest (the index's; with a tag too, which is then ignored).
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let r = format!("127.0.0.1:{}/test/app:nope@{digest}", reg.port);
    let out = ctl(&["pull-oci", &r, &d]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out}");
    assert_eq!(pulled, ns_tests::snapshot(&Path::new(MACHINES).join(&d)));

    // A name already taken: refused, the image untouched.
    let before = ns_tests::snapshot(&root);
    let out = ctl(&[
        "pull-oci",
        &format!("127.0.0.1:{}/test/app:v1", reg.port),
        &a,
    ]);
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(
        out.stderr.trim(),
        format!("ns-ctl: image {a} already exists: {MACHINES}/{a}")
    );
    ns_tests::assert_snapshot_unchanged(&root, &before);
    assert!(std::fs::read_dir(MACHINES).unwrap().flatten().all(|e| !e
        .file_name()
        .to_string_lossy()
        .starts_with(&format!(".#{a}."))));
}

#[test]
fn bad_pulls_fail_in_one_line_and_leave_nothing() {
    let t = Tree::empty("bad");
    let layout = t.host_dir("layout");
    let layers = build_image(&layout, &t.host_dir("scratch"));
    let reg = Registry::start(&t.host_dir("registry"));
    reg.push(&layout, "test/good:v1");
    reg.push(&layout, "test/corrupt:v1");
    let n = name("b");
    let _images = Images(vec![n.clone()]);
    let reference = |r: &str| format!("127.0.0.1:{}/{r}", reg.port);

    let out = ctl(&["pull-oci", &reference("test/good:nope"), &n]);
    assert_failed_cleanly(&out, &n, "manifest unknown");
    let out = ctl(&["pull-oci", &reference("test/none:v1"), &n]);
    assert_failed_cleanly(&out, &n, "test/none:v1: manifest v1: manifest unknown");
    let out = ctl(&["pull-oci", &reference("test/good:v1"), "bad_name"]);
    assert_failed_cleanly(&out, "bad_name", "not a valid machine name: bad_name");

    // The uncompressed layer's content changed in the registry's storage (same size, a
    // tar that still reads well): only its digest tells.
    let file = reg.blob_file(&layers[2]);
    let good = std::fs::read(&file).unwrap();
    let mut data = good.clone();
    data[512] ^= 0x20;
    std::fs::write(&file, &data).unwrap();
    let out = ctl(&["pull-oci", &reference("test/corrupt:v1"), &n]);
    assert_failed_cleanly(
        &out,
        &n,
        &format!("layer 3/3 {}: digest mismatch", &layers[2][..19]),
    );
    std::fs::write(&file, &good).unwrap();
    // A layer missing from the storage.
    std::fs::remove_file(reg.blob_file(&layers[2])).unwrap();
    let out = ctl(&["pull-oci", &reference("test/good:v1"), &n]);
    assert_failed_cleanly(&out, &n, &layers[2]);

    // A layout whose blob does not match its digest, imported.
    let l = layout
        .join("blobs/sha256")
        .join(layers[2].strip_prefix("sha256:").unwrap());
    let mut data = std::fs::read(&l).unwrap();
    data[512] ^= 0x20;
    std::fs::write(&l, &data).unwrap();
    let out = ctl(&["import-oci", s(&layout), &n]);
    assert_failed_cleanly(&out, &n, "digest mismatch");
    let out = ctl(&["import-oci", "/nonexistent", &n]);
    assert_failed_cleanly(&out, &n, "cannot open /nonexistent");

    // A layer whose tar is not what the config's diff_ids say (its blob's digest is right).
    let dir = t.host_dir("layout-diff-id");
    let l = Layout::new(&dir);
    let tar = tar_of(&[E::File("a", b"a")]);
    let layer = l.blob(&format!("{OCI_LAYER}+gzip"), &gzip(&tar));
    let wrong = format!("sha256:{}", sha256(b"another tar"));
    let config = json!({"architecture": "amd64", "os": "linux", "config": {},
                        "rootfs": {"type": "layers", "diff_ids": [wrong]} });
    let m = l.image(config, &[layer]);
    l.finish(m);
    let out = ctl(&["import-oci", s(&dir), &n]);
    assert_failed_cleanly(&out, &n, "its tar does not match the config's diff_id");
}

#[test]
fn bearer_token_flow_and_a_server_gone_mid_blob() {
    let t = Tree::empty("fake");
    let layout = t.host_dir("layout");
    let layers = build_image(&layout, &t.host_dir("scratch"));
    let n = name("f");
    let _images = Images(vec![n.clone()]);

    // (A proxy in the environment is not used for a registry on this host.)
    let (port, log) = fake_registry(&layout, Fake::Token(None), None);
    let mut c = ns_tests::stage("ns-ctl");
    c.args(["pull-oci", &format!("127.0.0.1:{port}/test/app"), &n])
        .env("ALL_PROXY", "http://192.0.2.1:9")
        .env("HTTP_PROXY", "http://192.0.2.1:9");
    let out = run_cmd(c, None);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out}");
    let log = log.lock().unwrap().clone();
    assert!(
        log[0].starts_with("/v2/test/app/manifests/latest []"),
        "{log:?}"
    );
    assert!(log[1].starts_with("/token?"), "{log:?}");
    assert!(
        log[2..].iter().all(|l| l.ends_with("[bearer tok-1]")),
        "{log:?}"
    );
    assert_eq!(run_image(&n).stdout, EXPECTED);
    let remove = || {
        ns_tests::remove_tree(&Path::new(MACHINES).join(&n));
        std::fs::remove_file(format!("{MACHINES}/{n}.nspawn")).unwrap();
    };
    remove();

    // Tokens that expire after two requests: a 401 on the way gets a new one.
    let (port, log) = fake_registry(&layout, Fake::Token(Some(2)), None);
    let out = ctl(&["pull-oci", &format!("127.0.0.1:{port}/test/app"), &n]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out}");
    let tokens = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("/token?"))
        .count();
    assert!(tokens >= 3, "{:?}", log.lock().unwrap());
    remove();

    // The busybox layer's body stops half way: the connection closes under the pull.
    let size = std::fs::metadata(
        layout
            .join("blobs/sha256")
            .join(layers[0].strip_prefix("sha256:").unwrap()),
    )
    .unwrap()
    .len() as usize;
    let (port, _) = fake_registry(&layout, Fake::CutBlob(size / 2), Some(layers[0].clone()));
    let out = ctl(&["pull-oci", &format!("127.0.0.1:{port}/test/app"), &n]);
    assert_failed_cleanly(&out, &n, "layer 1/3");
}

/// A layout of the layers given, its config running /bin/true.
fn layout_of(dir: &Path, layers: &[Vec<u8>]) {
    let l = Layout::new(dir);
    let descs: Vec<Value> = layers.iter().map(|t| l.blob(OCI_LAYER, t)).collect();
    let m = l.image(
        json!({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers"} }),
        &descs,
    );
    l.finish(m);
}

#[test]
fn layers_never_write_outside_the_image() {
    let t = Tree::empty("escape");
    let outside = t.host_dir("outside");
    std::fs::write(outside.join("file"), "host").unwrap();
    let host_passwd = std::fs::read("/etc/passwd").unwrap();
    let n = name("e");
    let _images = Images(vec![n.clone()]);
    let o = s(&outside);
    let rel = o.trim_start_matches('/');
    let dotdot = format!("../../../../../../{rel}/pwned");
    let abs_target = format!("{o}/file");
    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        // A symlink to a host directory, then a file through it: resolved in the image,
        // where that directory does not exist.
        (
            "symlink",
            vec![
                tar_of(&[E::Symlink("d", o)]),
                tar_of(&[E::File("d/pwned", b"x")]),
            ],
            "d/pwned: cannot open its directory",
        ),
        (
            "dotdot",
            vec![tar_of(&[E::File(&dotdot, b"x")])],
            "a .. component: refused",
        ),
        (
            "hard link",
            vec![tar_of(&[E::Hardlink("h", &abs_target)])],
            "hard link target",
        ),
        (
            "hard link dotdot",
            vec![tar_of(&[E::Hardlink("h", "../../../etc/passwd")])],
            "a .. component: refused",
        ),
    ];
    for (i, (what, layers, says)) in cases.iter().enumerate() {
        let dir = t.host_dir(&format!("layout{i}"));
        layout_of(&dir, layers);
        let out = ctl(&["import-oci", s(&dir), &n]);
        assert_failed_cleanly(&out, &n, says);
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            1,
            "{what}: written outside"
        );
        let st = std::fs::metadata(outside.join("file")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&st), 1, "{what}");
    }

    // `etc -> /` then etc/passwd, `up -> ../../..` then up/pwned: the links are resolved
    // in the image, as the container will see them, so the files land in the image's root;
    // the host's are untouched.
    let dir = t.host_dir("layout-etc");
    layout_of(
        &dir,
        &[
            tar_of(&[
                E::Symlink("etc", "/"),
                E::Symlink("up", "../../../../../.."),
            ]),
            tar_of(&[E::File("etc/passwd", b"pwned\n"), E::File("up/pwned", b"x")]),
        ],
    );
    let out = ctl(&["import-oci", s(&dir), &n]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out}");
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), host_passwd);
    let root = Path::new(MACHINES).join(&n);
    assert_eq!(std::fs::read(root.join("passwd")).unwrap(), b"pwned\n");
    assert!(root.join("etc").is_symlink());
    assert_eq!(std::fs::read(root.join("pwned")).unwrap(), b"x");
}

/// Whiteouts naming `.` or `..` (`.wh..`, `.wh...`) hide nothing of a lower layer: they
/// name the directory itself or its parent (outside the image at its top), and are
/// refused; what the layers below wrote stays as it was until then.
#[test]
fn whiteouts_of_dot_and_dotdot_are_refused() {
    let t = Tree::empty("whdot");
    let n = name("w");
    let canary = format!("{n}-canary");
    let _images = Images(vec![n.clone(), canary.clone()]);
    let keep = Path::new(MACHINES).join(&canary).join("keep");
    std::fs::create_dir_all(keep.parent().unwrap()).unwrap();
    std::fs::write(&keep, "k").unwrap();
    for (i, wh) in ["a/.wh...", "a/b/.wh...", "a/.wh..", ".wh...", ".wh.."]
        .iter()
        .enumerate()
    {
        let dir = t.host_dir(&format!("layout{i}"));
        layout_of(
            &dir,
            &[
                tar_of(&[E::Dir("a"), E::Dir("a/b"), E::File("keep", b"k")]),
                tar_of(&[E::File(wh, b"")]),
            ],
        );
        let out = ctl(&["import-oci", s(&dir), &n]);
        assert_failed_cleanly(&out, &n, "a whiteout of . or ..: refused");
        assert!(keep.exists(), "{wh}: another image of the pool is gone");
    }
}

/// Start the image `n` with `ns-ctl start` in a network namespace of its own (start gives
/// it a veth); whether it booted and its PID 1's command line; then terminate it.
fn start_and_look(n: &str) -> (bool, String) {
    let mut c = Command::new("unshare");
    c.args(["--net", "--"])
        .arg(ns_tests::bin("ns-ctl"))
        .args(["start", n]);
    let out = run_cmd(c, None);
    assert_eq!(out.code, 0, "{out}");
    let status = ctl(&["status", n, "-o", "json"]);
    let v: Value = serde_json::from_str(&status.stdout).expect(&status.stdout);
    let out = ctl(&[
        "shell",
        n,
        "--",
        "sh",
        "-c",
        "tr '\\0' ' ' </proc/1/cmdline",
    ]);
    assert_eq!(ctl(&["terminate", n]).code, 0);
    let root = Path::new(MACHINES).join(n);
    let left = ns_tests::wait_no_procs_in(&root, Duration::from_secs(10));
    assert!(left.is_empty(), "{left:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/run/ns-run/machines/{n}.json")).exists() {
        assert!(Instant::now() < deadline, "{n} still registered");
        std::thread::sleep(Duration::from_millis(50));
    }
    (v["boot"] == true, out.stdout.trim().to_string())
}

#[test]
fn ns_ctl_start_boots_an_image_whose_command_is_an_init_and_runs_another_s_command() {
    let t = Tree::empty("init");
    let rootfs = t.host_dir("rootfs");
    ns_tests::build_rootfs(&rootfs);
    std::fs::create_dir_all(rootfs.join("sbin")).unwrap();
    std::os::unix::fs::symlink("/bin/busybox", rootfs.join("sbin/init")).unwrap();
    let tar = gzip(&tar_tree(&rootfs));
    let (a, b) = (name("i"), name("a"));
    let _images = Images(vec![a.clone(), b.clone()]);
    for (n, cmd, setting) in [
        (&a, json!(["/sbin/init"]), "\nBoot=yes\n"),
        (
            &b,
            json!(["/bin/sleep", "100"]),
            "\nBoot=no\nParameters=\"/bin/sleep\" \"100\"\n",
        ),
    ] {
        let dir = t.host_dir(&format!("layout-{n}"));
        let l = Layout::new(&dir);
        let layer = l.blob(&format!("{OCI_LAYER}+gzip"), &tar);
        let config = json!({"architecture": "amd64", "os": "linux",
            "config": {"Cmd": cmd}, "rootfs": {"type": "layers"} });
        let m = l.image(config, &[layer]);
        l.finish(m);
        let out = ctl(&["import-oci", s(&dir), n]);
        assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out}");
        let settings = std::fs::read_to_string(format!("{MACHINES}/{n}.nspawn")).unwrap();
        assert!(settings.contains(setting), "{settings}");
    }
    assert_eq!(start_and_look(&a), (true, "init".to_string()));
    assert_eq!(start_and_look(&b), (false, "/bin/sleep 100".to_string()));
}

#[test]
fn other_registries_are_spoken_to_over_https_their_certificate_checked() {
    let t = Tree::empty("tls");
    let layout = t.host_dir("layout");
    build_image(&layout, &t.host_dir("scratch"));
    let d = t.host_dir("registry");
    // A self-signed certificate for 10.0.0.1, an address of a network namespace's own lo.
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=10.0.0.1",
            "-addext",
            "subjectAltName=IP:10.0.0.1",
        ])
        .arg("-keyout")
        .arg(d.join("key.pem"))
        .arg("-out")
        .arg(d.join("cert.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {out:?}");
    std::fs::write(
        d.join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {0}/storage\n\
             http:\n  addr: 10.0.0.1:5000\n  tls:\n    certificate: {0}/cert.pem\n    key: {0}/key.pem\n",
            d.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("policy.json"),
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let (a, b) = (name("s"), name("n"));
    let _images = Images(vec![a.clone(), b.clone()]);
    let ctl = ns_tests::bin("ns-ctl");
    let script = format!(
        "ip link set lo up && ip addr add 10.0.0.1/32 dev lo || exit 1
         docker-registry serve {d}/config.yml >/dev/null 2>&1 & r=$!
         trap 'kill $r' EXIT
         for i in $(seq 100); do
             skopeo --policy {d}/policy.json copy -q --all --preserve-digests \
                 --dest-tls-verify=false oci:{layout}:latest docker://10.0.0.1:5000/test/app:v1 \
                 2>/dev/null && break
             sleep 0.1
         done
         {ctl} pull-oci 10.0.0.1:5000/test/app:v1 {a}; echo verified=$?
         {ctl} pull-oci --tls-verify=no 10.0.0.1:5000/test/app:v1 {b}; echo unverified=$?",
        d = d.display(),
        layout = layout.display(),
        ctl = ctl.display(),
    );
    let mut c = Command::new("unshare");
    c.args(["--net", "--", "sh", "-c", &script]);
    let out = run_cmd(c, None);
    assert!(out.stdout.contains("verified=125\n"), "{out}");
    assert!(out.stdout.contains("unverified=0\n"), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(
        out.stderr
            .starts_with("ns-ctl: cannot fetch https://10.0.0.1:5000/v2/test/app/manifests/v1: ")
            && out.stderr.contains("certificate"),
        "{out}"
    );
    assert!(leftovers(&a).is_empty(), "{:?}", leftovers(&a));
    assert_eq!(run_image(&b).stdout, EXPECTED);
}

#[test]
fn a_lying_registry_and_a_sigint_while_it_is_silent_leave_nothing() {
    let t = Tree::empty("lying");
    let layout = t.host_dir("layout");
    let layers = build_image(&layout, &t.host_dir("scratch"));
    let n = name("l");
    let _images = Images(vec![n.clone()]);
    let size = std::fs::metadata(
        layout
            .join("blobs/sha256")
            .join(layers[0].strip_prefix("sha256:").unwrap()),
    )
    .unwrap()
    .len() as usize;

    // A registry that answers a digest with another manifest.
    let amd = {
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let top = index["manifests"][0]["digest"].as_str().unwrap();
        let top: Value = serde_json::from_slice(
            &std::fs::read(layout.join("blobs/sha256").join(&top[7..])).unwrap(),
        )
        .unwrap();
        top["manifests"][1]["digest"].as_str().unwrap().to_string()
    };
    let (port, _) = fake_registry(&layout, Fake::Lying, None);
    let out = ctl(&["pull-oci", &format!("127.0.0.1:{port}/test/app@{amd}"), &n]);
    assert_failed_cleanly(
        &out,
        &n,
        &format!("manifest: digest mismatch: expected {amd}"),
    );

    // Interrupted (SIGINT) while the server is silent mid-blob: the pull gives up within
    // seconds and leaves nothing.
    let (port, _) = fake_registry(&layout, Fake::StallBlob(size / 2), Some(layers[0].clone()));
    let mut c = ns_tests::stage("ns-ctl");
    c.args(["pull-oci", &format!("127.0.0.1:{port}/test/app"), &n]);
    let running = ns_tests::spawn(c, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while leftovers(&n).is_empty() {
        assert!(Instant::now() < deadline, "no hidden directory appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // The hidden directory is held (flock) while it is built: `ns-ctl clean` leaves it.
    let hidden = leftovers(&n);
    let held = Command::new("flock")
        .args(["-n", "-E", "99"])
        .arg(&hidden[0])
        .arg("true")
        .status()
        .unwrap();
    assert_eq!(held.code(), Some(99), "{hidden:?} not held");
    running.signal(libc::SIGINT);
    let started = Instant::now();
    let out = running.wait();
    assert_eq!(out.code, 130, "{out}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(leftovers(&n).is_empty(), "left: {:?}", leftovers(&n));
}

#[test]
fn import_oci_takes_one_of_several_images_by_its_ref_name() {
    let t = Tree::empty("refs");
    let rootfs = t.host_dir("rootfs");
    ns_tests::build_rootfs(&rootfs);
    let dir = t.host_dir("layout");
    let l = Layout::new(&dir);
    let layer = l.blob(&format!("{OCI_LAYER}+gzip"), &gzip(&tar_tree(&rootfs)));
    let entries: Vec<Value> = ["one", "two"]
        .iter()
        .map(|n| {
            let config = json!({"architecture": "amd64", "os": "linux",
                "config": {"Cmd": ["/bin/echo", n]}, "rootfs": {"type": "layers"} });
            let mut m = l.image(config, std::slice::from_ref(&layer));
            m["annotations"] = json!({"org.opencontainers.image.ref.name": n});
            m
        })
        .collect();
    let index = json!({"schemaVersion": 2, "manifests": entries});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    let n = name("r");
    let _images = Images(vec![n.clone()]);
    let d = s(&dir);
    let out = ctl(&["import-oci", d, &n]);
    assert_failed_cleanly(
        &out,
        &n,
        &format!("{d} holds 2 images (one, two): name one as {d}:REF"),
    );
    let out = ctl(&["import-oci", &format!("{d}:three"), &n]);
    assert_failed_cleanly(
        &out,
        &n,
        &format!("{d} has no image three (it has: one, two)"),
    );
    let out = ctl(&["import-oci", &format!("{d}:two"), &n]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out}");
    assert_eq!(run_image(&n).stdout, "two\n");
}
