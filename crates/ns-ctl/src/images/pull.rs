//! pull-tar, pull-raw: an image over HTTP(S) (ureq: blocking, rustls), downloaded under a
//! hidden name in the pool while its SHA-256 is computed, checked against the
//! `SHA256SUMS` beside it (`--verify=checksum`, as importd does), then imported as
//! import-tar/import-raw import a file. A download cut short (the server closes before its
//! Content-Length) or a wrong checksum leaves nothing.

use std::io::{Read, Seek, SeekFrom};

use ns_core::{Context, Error, Result};
use sha2::{Digest, Sha256};

use super::hidden::Hidden;
use super::progress::{Counting, Progress};
use super::transfer::{import_stream, prepare, Format};

/// `--verify=`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verify {
    No,
    Checksum,
}

impl Verify {
    pub fn parse(v: &str) -> Result<Verify> {
        match v {
            "no" => Ok(Verify::No),
            "checksum" => Ok(Verify::Checksum),
            "signature" => Err(Error::invalid(
                "--verify",
                v,
                "ns-ctl checks no GPG signatures (no keyring of its own): use checksum",
            )),
            v => Err(Error::invalid("--verify", v, "not no or checksum")),
        }
    }
}

/// The URL's last path component, without query or fragment.
fn last_component(url: &str) -> &str {
    let u = url.split(['?', '#']).next().unwrap_or(url);
    u.rsplit('/').next().unwrap_or(u)
}

/// machinectl's default name: the file name without its compression and format suffixes.
pub fn default_name(url: &str, format: Format) -> Result<String> {
    let mut n = last_component(url);
    for s in [".gz", ".xz", ".zst", ".bz2"] {
        if let Some(x) = n.strip_suffix(s) {
            n = x;
            break;
        }
    }
    let formats: &[&str] = match format {
        Format::Tar => &[".tar", ".tgz", ".txz", ".tzst"],
        Format::Raw => &[".raw", ".img", ".qcow2"],
    };
    for s in formats {
        if let Some(x) = n.strip_suffix(s) {
            n = x;
            break;
        }
    }
    if n.is_empty() {
        return Err(Error::invalid(
            "URL",
            url,
            "names no file to take an image name from: give NAME",
        ));
    }
    Ok(n.to_string())
}

/// The host's trust store (as importd's curl uses it): `SSL_CERT_FILE`, else the usual
/// bundle of Debian, Fedora or Alpine; None (ureq's bundled Mozilla roots) without one.
fn system_roots() -> Option<ureq::tls::RootCerts> {
    let env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    let bundles = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ];
    let pem = env
        .into_iter()
        .chain(bundles.iter().map(std::path::PathBuf::from))
        .find_map(|p| std::fs::read(p).ok())?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.to_owned()),
            _ => None,
        })
        .collect();
    (!certs.is_empty()).then(|| ureq::tls::RootCerts::new_with_certs(&certs))
}

fn agent() -> ureq::Agent {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(roots) = system_roots() {
        tls = tls.root_certs(roots);
    }
    ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .tls_config(tls.build())
        .build()
        .into()
}

fn get(agent: &ureq::Agent, url: &str) -> Result<ureq::http::Response<ureq::Body>> {
    agent
        .get(url)
        .call()
        .map_err(|e| Error::setup(format!("cannot fetch {url}: {e}")))
}

/// The SHA-256 SHA256SUMS beside `url` gives for its file.
fn expected_sum(agent: &ureq::Agent, url: &str) -> Result<String> {
    let file = last_component(url);
    let base = &url[..url.len()
        - url
            .split(['?', '#'])
            .skip(1)
            .map(|s| s.len() + 1)
            .sum::<usize>()];
    let sums = format!("{}SHA256SUMS", &base[..base.len() - file.len()]);
    let text = get(agent, &sums)?
        .into_body()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(|e| Error::setup(format!("cannot read {sums}: {e}")))?;
    text.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(_, f)| f.trim_start().trim_start_matches('*') == file)
        .map(|(h, _)| h.to_ascii_lowercase())
        .ok_or_else(|| Error::setup(format!("{sums} has no checksum for {file}")))
}

/// A reader hashing what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.hash.update(&buf[..k]);
        Ok(k)
    }
}

/// `pull-tar`/`pull-raw URL [NAME]`.
pub fn pull(
    format: Format,
    url: &str,
    name: Option<&str>,
    verify: Verify,
    read_only: bool,
) -> Result<i32> {
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(Error::invalid("URL", url, "not an http:// or https:// URL"));
    }
    let name = match name {
        Some(n) => n.to_string(),
        None => default_name(url, format)?,
    };
    prepare(&name)?;
    let agent = agent();
    let want = match verify {
        Verify::Checksum => Some(expected_sum(&agent, url)?),
        Verify::No => None,
    };
    let resp = get(&agent, url)?;
    let total = resp.body().content_length();
    let mut dl = Hidden::file(&name)?;
    let p = Progress::new(format!("Downloading {name}"), total);
    let mut r = Hashing {
        inner: Counting {
            inner: resp.into_body().into_reader(),
            n: 0,
            progress: &p,
        },
        hash: Sha256::new(),
    };
    let n = std::io::copy(&mut r, dl.file_mut())
        .map_err(|e| Error::setup(format!("cannot download {url}: {e}")))?;
    if total.is_some_and(|t| t != n) {
        return Err(Error::setup(format!(
            "cannot download {url}: the server sent {n} of {} bytes",
            total.unwrap_or(0)
        )));
    }
    let got: String = r
        .hash
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    p.finish();
    if let Some(w) = want {
        if w != got {
            return Err(Error::setup(format!(
                "{url} has SHA-256 {got}, but SHA256SUMS says {w}"
            )));
        }
    }
    let f = dl.file_mut();
    f.seek(SeekFrom::Start(0))
        .ctx(|| "cannot read the download".into())?;
    let f = f.try_clone().ctx(|| "cannot read the download".into())?;
    import_stream(format, f, url, &name, read_only)?;
    drop(dl);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_drop_suffixes() {
        let n = |u, f| default_name(u, f).unwrap();
        assert_eq!(n("https://x/a/debian-12.tar.xz", Format::Tar), "debian-12");
        assert_eq!(n("https://x/a/fedora.raw.zst?x=1", Format::Raw), "fedora");
        assert_eq!(n("http://h/img.tgz", Format::Tar), "img");
        assert!(default_name("http://h/", Format::Tar).is_err());
    }
}
