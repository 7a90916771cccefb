//! The image verbs on ns-ctl's command line (flattened into its verbs): clap's definitions
//! only, shared by ns-ctl (which parses them, then executes ns-ctl-images) and
//! ns-ctl-images (which runs them).

use clap::Subcommand;

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
    /// Pull an image from an OCI registry into /var/lib/machines/NAME (with NAME.nspawn)
    PullOci {
        /// [REGISTRY/]REPO[:TAG][@sha256:DIGEST] (Docker Hub by default)
        reference: String,
        /// The image's name (default: the repository's last component)
        name: Option<String>,
        /// Check the registry's TLS certificate (yes, no)
        #[arg(long, default_value = "yes")]
        tls_verify: String,
    },
    /// Import an OCI image layout (a directory, or a tar of one) as /var/lib/machines/NAME
    ImportOci {
        /// DIR or ARCHIVE, or DIR:REF / ARCHIVE:REF for one of several images
        path: String,
        name: String,
    },
}
