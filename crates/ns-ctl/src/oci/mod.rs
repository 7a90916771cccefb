//! `pull-oci` and `import-oci`: an OCI image (from a registry, or an image layout on disk)
//! made into a directory image in /var/lib/machines, with its config as a `.nspawn` file
//! beside it, so that `ns-run -M NAME` runs it as the config says. Every blob is checked
//! against its digest as it streams; the image is built in a hidden directory and renamed
//! into place only when complete ([`staging`]); a layer is applied without ever writing
//! outside it ([`apply`]). These verbs start a thread (the signal watcher): they never
//! call setns, which `shell` and `login` do single-threaded.

mod apply;
mod image;
mod layout;
mod nspawn;
mod reference;
mod registry;
mod staging;

use std::io::{BufRead, BufReader, Read};

use ns_core::{Error, Result};

use crate::images::Progress;
use image::{Descriptor, Source, Verified};

/// `ns-ctl pull-oci REF [NAME]`.
pub fn pull(reference: &str, name: Option<&str>, tls_verify: bool) -> Result<()> {
    let r = reference::Reference::parse(reference)?;
    let name = name.unwrap_or(r.default_name()).to_string();
    let mut src = registry::Registry::new(r, tls_verify);
    install(&mut src, &name)
}

/// `ns-ctl import-oci DIR|ARCHIVE NAME`.
pub fn import(path: &str, name: &str) -> Result<()> {
    staging::check_name(name)?;
    let mut src = layout::Layout::open(path)?;
    install(&mut src, name)
}

pub use crate::images::hidden::interrupted;

/// Build the image NAME from `src`: manifest, config, layers, settings; then put it in
/// place.
fn install(src: &mut dyn Source, name: &str) -> Result<()> {
    let stage = staging::Staging::new(name)?;
    let progress = Progress::new(String::new(), None);
    let what = src.what();
    progress.step(format!("{what}: manifest"), None);
    let m = image::resolve(src)?;
    let config = image::read_config(src, &m.config, &progress)?;
    let n = m.layers.len();
    let diff_ids = image::diff_ids(&config, n).map_err(|e| Error::setup(format!("{what}: {e}")))?;
    for (i, layer) in m.layers.iter().enumerate() {
        let label = format!("{what}: layer {}/{n} {}", i + 1, layer.short());
        progress.step(label.clone(), Some(layer.size));
        if !image::is_layer(&layer.media_type) {
            return Err(Error::setup(format!(
                "{label}: not a layer we can apply ({})",
                layer.media_type
            )));
        }
        let diff_id = diff_ids.as_ref().map(|d| d[i].as_str());
        apply_blob(src, layer, diff_id, &label, &progress, &stage)?;
    }
    progress.finish();
    if let Some(w) = config["config"]["WorkingDir"]
        .as_str()
        .filter(|w| !w.is_empty())
    {
        let comps: Vec<&[u8]> = w
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::as_bytes)
            .collect();
        if !comps.contains(&&b".."[..]) {
            apply::make_dirs(stage.root(), &comps)
                .map_err(|e| Error::setup(format!("{what}: working directory {w}: {e}")))?;
        }
    }
    let settings = nspawn::settings(&config, &what, &m.digest)
        .map_err(|e| Error::setup(format!("{what}: {e}")))?;
    stage.commit(&settings)
}

/// Stream the layer blob `d` through its digest check and decompression (gzip, zstd or
/// none, told by its first bytes) into the image; the tar itself must hash to `diff_id`,
/// when the config gives one.
fn apply_blob(
    src: &mut dyn Source,
    d: &Descriptor,
    diff_id: Option<&str>,
    label: &str,
    progress: &Progress,
    stage: &staging::Staging,
) -> Result<()> {
    let io = |e: std::io::Error| Error::setup(format!("{label}: {}", ns_core::error::io_desc(&e)));
    let mut verified = Verified::new(src.blob(d)?, d, label.to_string(), progress);
    let got = {
        let mut buf = BufReader::with_capacity(1 << 16, &mut verified);
        let magic = buf.fill_buf().map_err(io)?.to_vec();
        let plain: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(buf))
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(zstd::stream::read::Decoder::with_buffer(buf).map_err(io)?)
        } else {
            Box::new(buf)
        };
        let mut tar = image::Hashing::new(plain);
        apply::apply_layer(stage.root(), &mut tar, label)?;
        // What the tar reader left: its end blocks, the compressed stream's trailer.
        std::io::copy(&mut tar, &mut std::io::sink()).map_err(io)?;
        tar.digest()
    };
    // The blob first (what the manifest names), then what it unpacked to.
    verified.finish()?;
    match diff_id {
        Some(want) if want != got => Err(Error::setup(format!(
            "{label}: its tar does not match the config's diff_id: expected {want}, got {got}"
        ))),
        _ => Ok(()),
    }
}
