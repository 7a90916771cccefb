//! The image verbs on ns-ctl's command line (flattened into its verbs).

use clap::Subcommand;
use ns_core::{Error, Result};

use super::transfer::Compression;
use super::{Format, Verify};

#[derive(Subcommand, Debug)]
pub enum ImageVerb {
    /// List the images of the image directories
    ListImages {
        /// Hidden images too (names starting with '.')
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Show images: type, path, guest, read-only, usage, modification time
    ImageStatus { names: Vec<String> },
    /// Show images' properties, key=value
    ShowImage { names: Vec<String> },
    /// Copy an image to a new one in /var/lib/machines (reflinked where possible)
    Clone {
        name: String,
        new: String,
        /// Make the copy read-only
        #[arg(long)]
        read_only: bool,
    },
    /// Rename an image (with its .nspawn settings)
    Rename { name: String, new: String },
    /// Make an image read-only (or writable again with BOOL=no)
    ReadOnly { name: String, value: Option<String> },
    /// Remove images (refused while a container runs on one)
    Remove { names: Vec<String> },
    /// Remove the hidden leftovers of cut-short imports, clones and removals
    Clean,
    /// Refused: image size limits need btrfs quota groups
    SetLimit { args: Vec<String> },
    /// Import a tar archive (compressed or not; - for stdin) as a directory image
    ImportTar {
        file: String,
        name: String,
        #[arg(long)]
        read_only: bool,
    },
    /// Import a raw disk image (compressed or not; - for stdin) as NAME.raw
    ImportRaw {
        file: String,
        name: String,
        #[arg(long)]
        read_only: bool,
    },
    /// Import a directory tree as a directory image (a copy)
    ImportFs {
        dir: String,
        name: String,
        #[arg(long)]
        read_only: bool,
    },
    /// Export a directory image as a tar archive (compressed by FILE's suffix)
    ExportTar {
        name: String,
        file: String,
        /// uncompressed, gzip, xz or zstd (default: by FILE's suffix)
        #[arg(long)]
        format: Option<String>,
    },
    /// Export a raw image (compressed by FILE's suffix)
    ExportRaw {
        name: String,
        file: String,
        #[arg(long)]
        format: Option<String>,
    },
    /// Download a tar archive over HTTP(S) and import it
    PullTar {
        url: String,
        name: Option<String>,
        /// no or checksum (SHA256SUMS beside the file)
        #[arg(long, default_value = "checksum")]
        verify: String,
        #[arg(long)]
        read_only: bool,
    },
    /// Download a raw disk image over HTTP(S) and import it
    PullRaw {
        url: String,
        name: Option<String>,
        #[arg(long, default_value = "checksum")]
        verify: String,
        #[arg(long)]
        read_only: bool,
    },
}

fn needs(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Err(Error::setup("name an image".into()));
    }
    Ok(())
}

fn format(f: Option<String>) -> Result<Option<Compression>> {
    f.map(|f| Compression::parse(&f)).transpose()
}

impl ImageVerb {
    pub fn run(self, json: bool) -> Result<i32> {
        use ImageVerb as V;
        match self {
            V::ListImages { all } => super::list(json, all),
            V::ImageStatus { names } => needs(&names).and_then(|()| super::status(&names, json)),
            V::ShowImage { names } => needs(&names).and_then(|()| super::show(&names)),
            V::Clone {
                name,
                new,
                read_only,
            } => super::clone(&name, &new, read_only),
            V::Rename { name, new } => super::rename(&name, &new),
            V::ReadOnly { name, value } => {
                let on = match value {
                    None => true,
                    Some(v) => ns_core::parse_boolean(&v)
                        .ok_or_else(|| Error::invalid("BOOL", &v, "not a boolean"))?,
                };
                super::read_only(&name, on)
            }
            V::Remove { names } => needs(&names).and_then(|()| super::remove(&names)),
            V::Clean => super::clean(),
            V::SetLimit { args } => match args.as_slice() {
                [bytes] => super::set_limit(None, bytes),
                [name, bytes] => super::set_limit(Some(name), bytes),
                _ => Err(Error::setup("set-limit takes [NAME] BYTES".into())),
            },
            V::ImportTar {
                file,
                name,
                read_only,
            } => super::import(Format::Tar, &file, &name, read_only),
            V::ImportRaw {
                file,
                name,
                read_only,
            } => super::import(Format::Raw, &file, &name, read_only),
            V::ImportFs {
                dir,
                name,
                read_only,
            } => super::import_fs(&dir, &name, read_only),
            V::ExportTar {
                name,
                file,
                format: f,
            } => super::export(Format::Tar, &name, &file, format(f)?),
            V::ExportRaw {
                name,
                file,
                format: f,
            } => super::export(Format::Raw, &name, &file, format(f)?),
            V::PullTar {
                url,
                name,
                verify,
                read_only,
            } => super::pull(
                Format::Tar,
                &url,
                name.as_deref(),
                Verify::parse(&verify)?,
                read_only,
            ),
            V::PullRaw {
                url,
                name,
                verify,
                read_only,
            } => super::pull(
                Format::Raw,
                &url,
                name.as_deref(),
                Verify::parse(&verify)?,
                read_only,
            ),
        }
    }
}
