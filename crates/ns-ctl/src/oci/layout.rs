//! An OCI image layout on disk (image-spec's image-layout.md): a directory with
//! `oci-layout`, `index.json` and `blobs/sha256/HEX`, or an uncompressed tar of one
//! (`skopeo copy … oci-archive:`), whose members are found by one pass over it and then
//! read in place. `PATH:REF` names one of several images by its
//! `org.opencontainers.image.ref.name`, as skopeo's `oci:PATH:REF` does.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ns_core::{Context, Error, Result};

use super::image::{check_bytes, Descriptor, Source, MAX_JSON, OCI_INDEX};
use super::reference::check_digest;

pub struct Layout {
    store: Store,
    /// The image's ref name, when `PATH:REF` named one.
    reference: Option<String>,
}

enum Store {
    Dir(PathBuf),
    /// The archive and where each member's data is: name → (offset, size).
    Tar(PathBuf, HashMap<String, (u64, u64)>),
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

impl Layout {
    /// The layout at `arg`: a directory or an archive, or `PATH:REF`.
    pub fn open(arg: &str) -> Result<Layout> {
        let (path, reference) = match arg.rsplit_once(':') {
            Some((p, r)) if !Path::new(arg).exists() && Path::new(p).exists() => {
                (Path::new(p), Some(r.to_string()))
            }
            _ => (Path::new(arg), None),
        };
        let shown = path.display();
        let meta = std::fs::metadata(path).ctx(|| format!("cannot open {shown}"))?;
        let store = if meta.is_dir() {
            Store::Dir(path.to_path_buf())
        } else {
            Store::Tar(path.to_path_buf(), tar_members(path)?)
        };
        let layout = Layout { store, reference };
        let marker = layout.read("oci-layout", 4096).map_err(|_| {
            Error::setup(format!(
                "{shown}: not an OCI image layout (no oci-layout file)"
            ))
        })?;
        let v: serde_json::Value = serde_json::from_slice(&marker).unwrap_or_default();
        if v["imageLayoutVersion"].as_str().is_none() {
            return Err(Error::setup(format!(
                "{shown}: oci-layout without imageLayoutVersion"
            )));
        }
        Ok(layout)
    }

    fn path(&self) -> &Path {
        match &self.store {
            Store::Dir(p) | Store::Tar(p, _) => p,
        }
    }

    /// A reader of the member `name` (a relative path we made) and its size.
    fn member(&self, name: &str) -> Result<(Box<dyn Read + '_>, u64)> {
        let shown = format!("{}: {name}", self.path().display());
        match &self.store {
            Store::Dir(d) => {
                let f = File::open(d.join(name)).ctx(|| format!("cannot open {shown}"))?;
                let size = f.metadata().ctx(|| format!("cannot stat {shown}"))?.len();
                Ok((Box::new(f), size))
            }
            Store::Tar(p, members) => {
                let &(offset, size) = members
                    .get(name)
                    .ok_or_else(|| Error::setup(format!("{shown}: missing from the archive")))?;
                let mut f = File::open(p).ctx(|| format!("cannot open {}", p.display()))?;
                f.seek(SeekFrom::Start(offset))
                    .ctx(|| format!("cannot seek {shown}"))?;
                Ok((Box::new(f.take(size)), size))
            }
        }
    }

    fn read(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        let (r, size) = self.member(name)?;
        if size > max {
            return Err(Error::setup(format!(
                "{}: {name}: too large",
                self.path().display()
            )));
        }
        let mut buf = Vec::new();
        r.take(max)
            .read_to_end(&mut buf)
            .ctx(|| format!("cannot read {}: {name}", self.path().display()))?;
        Ok(buf)
    }
}

/// The regular files of a tar archive: their names (without a leading `./`) and where
/// their data starts.
fn tar_members(path: &Path) -> Result<HashMap<String, (u64, u64)>> {
    let shown = path.display();
    let f = File::open(path).ctx(|| format!("cannot open {shown}"))?;
    let mut a = tar::Archive::new(f);
    let mut out = HashMap::new();
    let bad = |e: std::io::Error| {
        Error::setup(format!(
            "{shown}: not a tar archive of an OCI layout: {}",
            ns_core::error::io_desc(&e)
        ))
    };
    for e in a.entries_with_seek().map_err(bad)? {
        let e = e.map_err(bad)?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let name = name.trim_start_matches("./").to_string();
        out.insert(name, (e.raw_file_position(), e.size()));
    }
    if out.is_empty() {
        return Err(Error::setup(format!(
            "{shown}: not a tar archive of an OCI layout"
        )));
    }
    Ok(out)
}

fn blob_name(d: &Descriptor) -> Result<String> {
    Ok(format!("blobs/sha256/{}", check_digest(&d.digest)?))
}

impl Source for Layout {
    /// index.json; with a ref name, the entry of that name (checked against its digest).
    /// Several images without a name asked for (and not one per platform) are refused,
    /// naming them.
    fn top(&mut self) -> Result<(Vec<u8>, Option<String>)> {
        let index = self.read("index.json", MAX_JSON)?;
        let what = self.what();
        let v: serde_json::Value = serde_json::from_slice(&index)
            .map_err(|e| Error::setup(format!("{what}: index.json is not JSON: {e}")))?;
        let entries = v["manifests"].as_array().cloned().unwrap_or_default();
        let names: Vec<&str> = entries
            .iter()
            .filter_map(|e| e["annotations"][REF_NAME].as_str())
            .collect();
        let Some(r) = self.reference.clone() else {
            if entries.len() > 1 && entries.iter().all(|e| e.get("platform").is_none()) {
                return Err(Error::setup(format!(
                    "{what} holds {} images ({}): name one as {what}:REF",
                    entries.len(),
                    names.join(", ")
                )));
            }
            return Ok((index, Some(OCI_INDEX.to_string())));
        };
        let Some(e) = entries
            .iter()
            .find(|e| e["annotations"][REF_NAME].as_str() == Some(r.as_str()))
        else {
            let have = match names.is_empty() {
                true => "none with a name".to_string(),
                false => names.join(", "),
            };
            return Err(Error::setup(format!(
                "{what} has no image {r} (it has: {have})"
            )));
        };
        let d = Descriptor::parse(e, &what)?;
        let (bytes, _) = self.manifest(&d)?;
        check_bytes(&bytes, &d.digest, Some(d.size), &format!("{what}:{r}"))?;
        Ok((bytes, Some(d.media_type)))
    }

    fn manifest(&mut self, d: &Descriptor) -> Result<(Vec<u8>, Option<String>)> {
        Ok((self.read(&blob_name(d)?, MAX_JSON)?, None))
    }

    fn blob(&mut self, d: &Descriptor) -> Result<Box<dyn Read + '_>> {
        Ok(self.member(&blob_name(d)?)?.0)
    }

    fn what(&self) -> String {
        self.path().display().to_string()
    }
}
