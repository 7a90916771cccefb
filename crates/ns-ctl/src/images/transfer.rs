//! import-tar, import-raw, import-fs, export-tar, export-raw. Imports are written under a
//! hidden name in the pool and renamed into place when complete (see [`super::hidden::Hidden`]);
//! compression is found by magic on import, chosen by the file's suffix (or `--format`)
//! on export: gzip, xz, zstd.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::Path;

use ns_core::{Context, Error, Result};

use super::hidden::Hidden;
use super::ops::sweep;
use super::progress::{Counting, Progress};
use super::{check_name, find, open_dir, open_pool, taken, Kind};

/// What an image travels as.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Tar,
    Raw,
}

/// A stream's compression.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// By a file name's suffix (machinectl's export rule).
    pub fn by_suffix(name: &str) -> Compression {
        if name.ends_with(".gz") || name.ends_with(".tgz") {
            Compression::Gzip
        } else if name.ends_with(".xz") || name.ends_with(".txz") {
            Compression::Xz
        } else if name.ends_with(".zst") || name.ends_with(".tzst") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// `--format=`: uncompressed, gzip, xz, zstd.
    pub fn parse(v: &str) -> Result<Compression> {
        Ok(match v {
            "uncompressed" => Compression::None,
            "gzip" => Compression::Gzip,
            "xz" => Compression::Xz,
            "zstd" => Compression::Zstd,
            v => {
                return Err(Error::invalid(
                    "--format",
                    v,
                    "not uncompressed, gzip, xz or zstd",
                ))
            }
        })
    }
}

/// The stream `r` decompressed, by its magic. bzip2 and qcow2 are refused by name.
pub fn decompress<'a>(r: impl Read + 'a, what: &str) -> Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(256 << 10, r);
    let head = r.fill_buf().ctx(|| format!("cannot read {what}"))?.to_vec();
    let has = |m: &[u8]| head.starts_with(m);
    Ok(if has(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else if has(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(r))
    } else if has(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(r).ctx(|| format!("cannot read {what}"))?)
    } else if has(b"BZh") {
        return Err(Error::setup(format!("{what} is compressed with bzip2, which ns-ctl does not read (gzip, xz and zstd it does)")));
    } else if has(b"QFI\xfb") {
        return Err(Error::setup(format!("{what} is a qcow2 image, which ns-ctl does not convert (qemu-img convert -O raw makes a raw one)")));
    } else {
        Box::new(r)
    })
}

/// A writer compressing (or not) into `W`; `finish` ends the stream.
pub enum Compressor<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Xz(liblzma::write::XzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    pub fn new(w: W, c: Compression) -> std::io::Result<Compressor<W>> {
        Ok(match c {
            Compression::None => Compressor::Plain(w),
            Compression::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::default(),
            )),
            Compression::Xz => Compressor::Xz(liblzma::write::XzEncoder::new(w, 6)),
            Compression::Zstd => Compressor::Zstd(zstd::stream::write::Encoder::new(w, 3)?),
        })
    }

    pub fn finish(self) -> std::io::Result<W> {
        let mut w = match self {
            Compressor::Plain(w) => w,
            Compressor::Gzip(e) => e.finish()?,
            Compressor::Xz(e) => e.finish()?,
            Compressor::Zstd(e) => e.finish()?,
        };
        w.flush()?;
        Ok(w)
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Compressor::Plain(w) => w.write(b),
            Compressor::Gzip(w) => w.write(b),
            Compressor::Xz(w) => w.write(b),
            Compressor::Zstd(w) => w.write(b),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Compressor::Plain(w) => w.flush(),
            Compressor::Gzip(w) => w.flush(),
            Compressor::Xz(w) => w.flush(),
            Compressor::Zstd(w) => w.flush(),
        }
    }
}

/// FILE, or stdin for `-`; with its size when known.
fn open_input(input: &str) -> Result<(Box<dyn Read>, Option<u64>)> {
    if input == "-" {
        return Ok((Box::new(std::io::stdin().lock()), None));
    }
    let f = File::open(input).ctx(|| format!("cannot open {input}"))?;
    let m = f.metadata().ctx(|| format!("cannot stat {input}"))?;
    if m.is_dir() {
        return Err(Error::invalid("FILE", input, "is a directory"));
    }
    let size = m.is_file().then_some(m.len());
    Ok((Box::new(f), size))
}

/// What every import checks first: a valid, free name; its own leftovers swept away.
pub fn prepare(name: &str) -> Result<()> {
    check_name("NAME", name)?;
    if taken(name) {
        return Err(Error::setup(format!(
            "an image called {name} already exists"
        )));
    }
    let pool = open_pool()?;
    sweep(pool.as_fd(), Some(name));
    Ok(())
}

/// `import-tar`/`import-raw FILE|- NAME`.
pub fn import(format: Format, input: &str, name: &str, read_only: bool) -> Result<i32> {
    prepare(name)?;
    let (r, size) = open_input(input)?;
    let shown = if input == "-" { "stdin" } else { input };
    let p = Progress::new(format!("Importing {name}"), size);
    let counted = Counting {
        inner: r,
        n: 0,
        progress: &p,
    };
    import_stream(format, counted, shown, name, read_only)
}

/// Import a (compressed) stream already open.
pub fn import_stream(
    format: Format,
    r: impl Read,
    shown: &str,
    name: &str,
    read_only: bool,
) -> Result<i32> {
    let data = decompress(r, shown)?;
    match format {
        Format::Tar => {
            let h = Hidden::dir(name)?;
            super::tarball::unpack(data, h.fd())
                .map_err(|m| Error::setup(format!("cannot import {shown}: {m}")))?;
            if read_only {
                set_top_immutable(&h)?;
            }
            h.commit(name)?;
        }
        Format::Raw => {
            let mut h = Hidden::file(name)?;
            write_sparse(data, h.file_mut())
                .map_err(|e| Error::setup(format!("cannot import {shown}: {e}")))?;
            let mode = if read_only { 0o444 } else { 0o644 };
            nix::sys::stat::fchmod(
                h.fd().as_fd(),
                nix::sys::stat::Mode::from_bits_truncate(mode),
            )
            .ctx(|| "cannot chmod the image".into())?;
            h.commit(&format!("{name}.raw"))?;
        }
    }
    Ok(0)
}

fn set_top_immutable(h: &Hidden) -> Result<()> {
    let f = ns_core::sys::inode_flags(h.fd()).ctx(|| "cannot read the new image's flags".into())?;
    ns_core::sys::set_inode_flags(h.fd(), f | super::FS_IMMUTABLE_FL)
        .ctx(|| "cannot make the new image immutable".into())
}

/// Copy `r` into `f`, leaving holes where whole 64 KiB blocks are zero.
fn write_sparse(mut r: impl Read, f: &mut File) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut len = 0u64;
    loop {
        let mut k = 0;
        while k < buf.len() {
            match r.read(&mut buf[k..]) {
                Ok(0) => break,
                Ok(n) => k += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if k == 0 {
            break;
        }
        if buf[..k].iter().all(|b| *b == 0) {
            f.seek(SeekFrom::Current(k as i64))?;
        } else {
            f.write_all(&buf[..k])?;
        }
        len += k as u64;
    }
    f.set_len(len)?;
    f.sync_all()
}

/// `import-fs DIR NAME`: a copy of the tree DIR (reflinked where the file system can).
pub fn import_fs(dir: &str, name: &str, read_only: bool) -> Result<i32> {
    prepare(name)?;
    let src = open_dir(Path::new(dir)).ctx(|| format!("cannot open directory {dir}"))?;
    let h = Hidden::dir(name)?;
    let p = Progress::new(format!("Importing {name}"), None);
    super::copy::copy_tree(src.as_fd(), h.fd(), &mut |n| p.update(n)).map_err(|(rel, e)| {
        Error::setup(format!(
            "cannot copy {}: {}",
            Path::new(dir).join(rel).display(),
            e.desc()
        ))
    })?;
    p.finish();
    if read_only {
        set_top_immutable(&h)?;
    }
    h.commit(name)?;
    Ok(0)
}

/// `export-tar`/`export-raw NAME FILE|-`: FILE is written under a hidden name beside it and
/// renamed over FILE when complete.
pub fn export(
    format: Format,
    name: &str,
    output: &str,
    compression: Option<Compression>,
) -> Result<i32> {
    let img = find(name)?;
    match (format, img.kind) {
        (Format::Tar, k) if k.is_tree() => {}
        (Format::Raw, Kind::Raw) => {}
        (Format::Tar, _) => {
            return Err(Error::setup(format!(
                "{name} is a {} image: export-raw exports it",
                img.kind.as_str()
            )))
        }
        (Format::Raw, _) => {
            return Err(Error::setup(format!(
                "{name} is a {} image: export-tar exports it",
                img.kind.as_str()
            )))
        }
    }
    let c = compression.unwrap_or_else(|| Compression::by_suffix(output));
    if output == "-" {
        let out = std::io::stdout().lock();
        let _out = write_image(
            format,
            &img,
            Compressor::new(out, c).ctx(|| "cannot compress".into())?,
        )?;
        return Ok(0);
    }
    let path = Path::new(output);
    let (dir, file) = match (path.parent(), path.file_name()) {
        (Some(d), Some(f)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            f.to_string_lossy(),
        ),
        _ => return Err(Error::invalid("FILE", output, "names no file")),
    };
    let dfd = open_dir(dir).ctx(|| format!("cannot open {}", dir.display()))?;
    let tmp = super::temp_name(&file);
    let f = nix::fcntl::openat(
        dfd.as_fd(),
        tmp.as_str(),
        nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_EXCL
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .ctx(|| format!("cannot create {}/{tmp}", dir.display()))?;
    let done = (|| {
        let w = std::io::BufWriter::with_capacity(256 << 10, File::from(f));
        let w = write_image(
            format,
            &img,
            Compressor::new(w, c).ctx(|| "cannot compress".into())?,
        )?;
        let f = w
            .into_inner()
            .map_err(|e| Error::setup(format!("cannot write {output}: {}", e.error())))?;
        f.sync_all().ctx(|| format!("cannot write {output}"))?;
        std::fs::rename(dir.join(&tmp), path).ctx(|| format!("cannot rename to {output}"))
    })();
    if done.is_err() {
        let _ = nix::unistd::unlinkat(
            dfd.as_fd(),
            tmp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    done.map(|()| 0)
}

fn write_image<W: Write>(format: Format, img: &super::Image, w: Compressor<W>) -> Result<W> {
    let path = img.path();
    let shown = path.display().to_string();
    let p = Progress::new(format!("Exporting {}", img.name), img.usage);
    let w = match format {
        Format::Tar => {
            let top = open_dir(&path).ctx(|| format!("cannot open {shown}"))?;
            super::tarball::pack(top.as_fd(), w, &mut |n| p.update(n))
                .map_err(|m| Error::setup(format!("cannot export {shown}: {m}")))?
        }
        Format::Raw => {
            let mut w = w;
            let mut f = File::open(&path).ctx(|| format!("cannot open {shown}"))?;
            super::progress::copy(&mut f, &mut w, &p).ctx(|| format!("cannot export {shown}"))?;
            w
        }
    };
    p.finish();
    w.finish().ctx(|| format!("cannot export {shown}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_by_suffix_and_by_magic() {
        assert_eq!(Compression::by_suffix("a.tar.gz"), Compression::Gzip);
        assert_eq!(Compression::by_suffix("a.raw.xz"), Compression::Xz);
        assert_eq!(Compression::by_suffix("a.tar.zst"), Compression::Zstd);
        assert_eq!(Compression::by_suffix("a.tar"), Compression::None);
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Xz,
            Compression::Zstd,
        ] {
            let mut w = Compressor::new(Vec::new(), c).unwrap();
            w.write_all(b"hello image").unwrap();
            let bytes = w.finish().unwrap();
            let mut out = String::new();
            decompress(&bytes[..], "test")
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            assert_eq!(out, "hello image", "{c:?}");
        }
        let e = decompress(&b"BZh91AY"[..], "x.bz2").err().unwrap();
        assert!(e.msg.contains("bzip2"), "{}", e.msg);
    }
}
