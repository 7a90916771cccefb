//! What an image is made of (OCI image-spec and Docker's v2 schema 2, which differ only in
//! media types): an index (manifest list) that points at one manifest per platform, a
//! manifest that names a config and layers, each by a descriptor (media type, digest,
//! size). Every blob is checked against its descriptor while it is read.

use std::io::Read;

use ns_core::{Error, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::reference::check_digest;
use crate::images::Progress;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// What the registry is asked for (every manifest and index type we read).
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest, index or config read (registries refuse manifests over 4 MiB).
pub const MAX_JSON: u64 = 8 << 20;

/// Where an image comes from: a registry or an image layout on disk.
pub trait Source {
    /// The manifest or index the user named, with its media type when the source says it,
    /// and the digest it must have, if known.
    fn top(&mut self) -> Result<(Vec<u8>, Option<String>)>;
    /// The manifest or index `d` describes (not yet checked).
    fn manifest(&mut self, d: &Descriptor) -> Result<(Vec<u8>, Option<String>)>;
    /// A reader of the blob `d` describes, as stored (not yet checked).
    fn blob(&mut self, d: &Descriptor) -> Result<Box<dyn Read + '_>>;
    /// How to name the image in messages.
    fn what(&self) -> String;
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    pub fn parse(v: &Value, what: &str) -> Result<Descriptor> {
        let bad = |f: &str| Error::setup(format!("{what}: a descriptor without a valid {f}"));
        let digest = v["digest"].as_str().ok_or_else(|| bad("digest"))?;
        check_digest(digest).map_err(|e| Error::setup(format!("{what}: {e}")))?;
        Ok(Descriptor {
            media_type: v["mediaType"].as_str().unwrap_or("").to_string(),
            digest: digest.to_string(),
            size: v["size"].as_u64().ok_or_else(|| bad("size"))?,
        })
    }

    /// `sha256:0123456789ab` (for messages).
    pub fn short(&self) -> &str {
        &self.digest[..self.digest.len().min(19)]
    }
}

/// An image: its manifest's digest, its config and its layers, in order (lowest first).
#[derive(Debug)]
pub struct Manifest {
    pub digest: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The platform we run images of: the host's, in Go's names as indexes use them.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        a => a,
    }
}

/// The hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Check a manifest or index against the digest (and size) it must have.
pub fn check_bytes(data: &[u8], digest: &str, size: Option<u64>, what: &str) -> Result<()> {
    let got = format!("sha256:{}", sha256_hex(data));
    if got != digest {
        return Err(Error::setup(format!(
            "{what}: digest mismatch: expected {digest}, got {got}"
        )));
    }
    match size {
        Some(s) if s != data.len() as u64 => Err(Error::setup(format!(
            "{what}: size mismatch: expected {s} bytes, got {}",
            data.len()
        ))),
        _ => Ok(()),
    }
}

/// Follow the user's manifest or index down to the host platform's image manifest, every
/// step checked against its digest.
pub fn resolve(src: &mut dyn Source) -> Result<Manifest> {
    let what = src.what();
    let (mut bytes, mut media) = src.top()?;
    let mut digest = format!("sha256:{}", sha256_hex(&bytes));
    for _ in 0..4 {
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::setup(format!("{what}: manifest is not JSON: {e}")))?;
        let mt = v["mediaType"]
            .as_str()
            .map(String::from)
            .or(media.take())
            .unwrap_or_default();
        let mt = mt.split(';').next().unwrap_or("").trim();
        let is_index =
            mt == OCI_INDEX || mt == DOCKER_LIST || (mt.is_empty() && v.get("manifests").is_some());
        if is_index {
            let d = pick_platform(&v, &what)?;
            let (b, m) = src.manifest(&d)?;
            check_bytes(
                &b,
                &d.digest,
                Some(d.size),
                &format!("{what}: manifest {}", d.short()),
            )?;
            (bytes, media, digest) = (b, m.or(Some(d.media_type)), d.digest);
            continue;
        }
        if !(mt == OCI_MANIFEST
            || mt == DOCKER_MANIFEST
            || (mt.is_empty() && v.get("layers").is_some()))
        {
            return Err(Error::setup(format!(
                "{what}: unsupported manifest type {}",
                if mt.is_empty() { "(none)" } else { mt }
            )));
        }
        let config = Descriptor::parse(&v["config"], &what)?;
        if !(config.media_type == OCI_CONFIG || config.media_type == DOCKER_CONFIG) {
            return Err(Error::setup(format!(
                "{what}: not a container image (config type {})",
                config.media_type
            )));
        }
        let layers = v["layers"]
            .as_array()
            .ok_or_else(|| Error::setup(format!("{what}: manifest without layers")))?
            .iter()
            .map(|l| Descriptor::parse(l, &what))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Manifest {
            digest,
            config,
            layers,
        });
    }
    Err(Error::setup(format!("{what}: indexes nested too deep")))
}

/// The entry of an index for linux on the host's architecture (an index without any
/// platform and only one entry, as image layouts often are: that one).
fn pick_platform(v: &Value, what: &str) -> Result<Descriptor> {
    let entries = v["manifests"]
        .as_array()
        .ok_or_else(|| Error::setup(format!("{what}: index without manifests")))?;
    let arch = host_arch();
    let matches = |e: &Value| {
        e["platform"]["os"].as_str() == Some("linux")
            && e["platform"]["architecture"].as_str() == Some(arch)
    };
    if let Some(e) = entries.iter().find(|e| matches(e)) {
        return Descriptor::parse(e, what);
    }
    if entries.len() == 1 && entries[0].get("platform").is_none() {
        return Descriptor::parse(&entries[0], what);
    }
    let have: Vec<String> = entries
        .iter()
        .filter_map(|e| {
            let p = &e["platform"];
            Some(format!(
                "{}/{}",
                p["os"].as_str()?,
                p["architecture"].as_str()?
            ))
        })
        .collect();
    Err(Error::setup(format!(
        "{what}: no image for linux/{arch} (it has: {})",
        if have.is_empty() {
            "none".to_string()
        } else {
            have.join(", ")
        }
    )))
}

/// The config blob, read whole (at most [`MAX_JSON`]) and checked.
pub fn read_config(src: &mut dyn Source, d: &Descriptor, progress: &Progress) -> Result<Value> {
    let what = format!("{}: config {}", src.what(), d.short());
    if d.size > MAX_JSON {
        return Err(Error::setup(format!(
            "{what}: {} bytes is too large",
            d.size
        )));
    }
    let mut r = Verified::new(src.blob(d)?, d, what.clone(), progress);
    let mut buf = Vec::new();
    r.read_to_end(&mut buf)
        .map_err(|e| Error::setup(format!("{what}: {}", ns_core::error::io_desc(&e))))?;
    r.finish()?;
    serde_json::from_slice(&buf).map_err(|e| Error::setup(format!("{what}: not JSON: {e}")))
}

/// A reader that hashes and counts what passes through it, refuses to read past the
/// descriptor's size, and at [`Verified::finish`] checks digest and size.
pub struct Verified<'a, R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    want: &'a Descriptor,
    what: String,
    progress: &'a Progress,
}

impl<'a, R: Read> Verified<'a, R> {
    pub fn new(inner: R, want: &'a Descriptor, what: String, progress: &'a Progress) -> Self {
        Verified {
            inner,
            hasher: Sha256::new(),
            read: 0,
            want,
            what,
            progress,
        }
    }

    /// Read what is left (the compressed stream's trailer, the tar's padding) and check
    /// size and digest.
    pub fn finish(mut self) -> Result<()> {
        std::io::copy(&mut self, &mut std::io::sink())
            .map_err(|e| Error::setup(format!("{}: {}", self.what, ns_core::error::io_desc(&e))))?;
        if self.read != self.want.size {
            return Err(Error::setup(format!(
                "{}: size mismatch: expected {} bytes, got {}",
                self.what, self.want.size, self.read
            )));
        }
        let got = format!("sha256:{}", hex(&self.hasher.finalize_reset()));
        if got != self.want.digest {
            return Err(Error::setup(format!(
                "{}: digest mismatch: expected {}, got {got}",
                self.what, self.want.digest
            )));
        }
        Ok(())
    }
}

impl<R: Read> Read for Verified<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        super::interrupted()?;
        // One byte more than the size may be asked for, to see a blob that is too long.
        let left = (self.want.size + 1).saturating_sub(self.read);
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if max == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..max])?;
        self.read += n as u64;
        if self.read > self.want.size {
            return Err(std::io::Error::other(format!(
                "more than the {} bytes its descriptor says",
                self.want.size
            )));
        }
        self.hasher.update(&buf[..n]);
        if n > 0 {
            self.progress.update_of(self.read, self.want.size);
        }
        Ok(n)
    }
}

/// The config's `rootfs.diff_ids` (each layer's tar digest), if it lists them: one per
/// layer, each a sha256 digest.
pub fn diff_ids(config: &Value, layers: usize) -> Result<Option<Vec<String>>> {
    let Some(ids) = config["rootfs"]["diff_ids"]
        .as_array()
        .filter(|a| !a.is_empty())
    else {
        return Ok(None);
    };
    if ids.len() != layers {
        return Err(Error::setup(format!(
            "the config lists {} diff_ids for {layers} layers",
            ids.len()
        )));
    }
    ids.iter()
        .map(|d| {
            let d = d.as_str().unwrap_or("");
            check_digest(d).map(|_| Some(d.to_string()))
        })
        .collect::<Result<Option<Vec<_>>>>()
}

/// A reader that hashes what passes through it (a layer's tar, for its diff_id).
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// `sha256:HEX` of all that was read.
    pub fn digest(&mut self) -> String {
        format!("sha256:{}", hex(&self.hasher.finalize_reset()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Would `mt` be a layer we can apply (tar, gzip or zstd; Docker's and OCI's names,
/// non-distributable ones too)?
pub fn is_layer(mt: &str) -> bool {
    mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
        || mt.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_checks_size_and_digest() {
        let data = b"hello";
        let d = Descriptor {
            media_type: String::new(),
            digest: format!("sha256:{}", sha256_hex(data)),
            size: 5,
        };
        let p = Progress::none();
        let mut r = Verified::new(&data[..], &d, "x".into(), &p);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        r.finish().unwrap();
        let short = Descriptor {
            size: 6,
            ..d.clone()
        };
        let e = Verified::new(&data[..], &short, "x".into(), &p)
            .finish()
            .unwrap_err();
        assert_eq!(e.msg, "x: size mismatch: expected 6 bytes, got 5");
        let long = Descriptor {
            size: 4,
            ..d.clone()
        };
        let e = Verified::new(&data[..], &long, "x".into(), &p)
            .finish()
            .unwrap_err();
        assert_eq!(e.msg, "x: more than the 4 bytes its descriptor says");
        let wrong = Descriptor {
            digest: format!("sha256:{}", "0".repeat(64)),
            ..d
        };
        let e = Verified::new(&data[..], &wrong, "x".into(), &p)
            .finish()
            .unwrap_err();
        assert!(
            e.msg.starts_with("x: digest mismatch: expected sha256:000"),
            "{e}"
        );
    }

    #[test]
    fn picks_the_host_platform() {
        let dg = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let v = serde_json::json!({"manifests": [
            {"digest": dg('a'), "size": 1, "platform": {"os": "linux", "architecture": "s390x"}},
            {"digest": dg('b'), "size": 2, "platform": {"os": "linux", "architecture": host_arch()}},
        ]});
        assert_eq!(pick_platform(&v, "x").unwrap().digest, dg('b'));
        let v = serde_json::json!({"manifests": [{"digest": dg('c'), "size": 3}]});
        assert_eq!(pick_platform(&v, "x").unwrap().digest, dg('c'));
        let v = serde_json::json!({"manifests": [
            {"digest": dg('a'), "size": 1, "platform": {"os": "linux", "architecture": "s390x"}},
        ]});
        assert_eq!(
            pick_platform(&v, "x").unwrap_err().msg,
            format!(
                "x: no image for linux/{} (it has: linux/s390x)",
                host_arch()
            )
        );
    }
}
