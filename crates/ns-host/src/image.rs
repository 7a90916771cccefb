//! `-i`/`--image`: a disk image (a file or a block device) run as nspawn runs one, without
//! udev. The image is read here (a GPT partition table following the Discoverable Partitions
//! Specification, or one file system without a partition table), each partition it needs is
//! served by a loop device of its own (LOOP_CONFIGURE with the partition's offset and size,
//! autoclear: no partition scan, no device nodes to wait for), and mounted in a mount
//! namespace that only this process (ns-run, then its monitor) and the chain it forks
//! have: on a tmpfs over /run/ns-run/images, at `/run/ns-run/images/NAME`. The host sees
//! none of it, and nothing of it outlives the container: the namespace goes with the last
//! process in it, the mounts with it, and each loop device detaches itself with its last
//! mount (kill -9 of the monitor included). From there on the image is a directory tree
//! like any other: everything `-D` does works on it.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use ns_core::{Context, Error, Result};

use crate::locks::ImageLock;
pub use crate::verity::Verity;

/// GPT partition type GUIDs of the Discoverable Partitions Specification (x86-64), as
/// nspawn's dissection takes them.
const ROOT: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
const USR: &str = "8484680c-9521-48c6-9c11-b0720656f69e";
const HOME: &str = "933ac7e1-2eb4-4f13-b844-0e14e2aef915";
const SRV: &str = "3b8f8425-20e0-4f3b-907f-1a25a76f98e8";
const VAR: &str = "4d21b016-b534-45c2-a9fb-5c16e091fd2d";
const TMP: &str = "7ec6f557-3bc5-4aca-b293-16ef5df639d1";
const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
const XBOOTLDR: &str = "bc13c2ff-59e6-4262-a352-b275fd6f7172";
/// "Linux filesystem data": the root where an image has no root partition but one of these.
const LINUX_DATA: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
/// The root's verity hash tree (x86-64), used with a root hash.
const ROOT_VERITY: &str = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5";

/// GPT partition attribute bits (the specification's flags).
const FLAG_READ_ONLY: u64 = 1 << 60;
const FLAG_NO_AUTO: u64 = 1 << 63;
const FLAG_GROW_FS: u64 = 1 << 59;

/// Where a partition goes, in mount order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Root,
    Usr,
    Home,
    Srv,
    Var,
    Tmp,
    Xbootldr,
    Esp,
}

impl Role {
    fn of(type_guid: &str) -> Option<Role> {
        Some(match type_guid {
            ROOT => Role::Root,
            USR => Role::Usr,
            HOME => Role::Home,
            SRV => Role::Srv,
            VAR => Role::Var,
            TMP => Role::Tmp,
            XBOOTLDR => Role::Xbootldr,
            ESP => Role::Esp,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Usr => "/usr",
            Role::Home => "/home",
            Role::Srv => "/srv",
            Role::Var => "/var",
            Role::Tmp => "/var/tmp",
            Role::Xbootldr => "XBOOTLDR",
            Role::Esp => "ESP",
        }
    }
}

/// A file system of the image to mount: where, and where it lies in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub role: Role,
    /// Partition number (1-based) in the GPT, 0 without a partition table.
    pub number: u32,
    pub offset: u64,
    /// Bytes; the whole rest of the image without a partition table.
    pub size: u64,
    /// The partition's read-only flag.
    pub read_only: bool,
    /// The partition's grow-fs flag: its file system is grown to the partition's size when
    /// mounted writable.
    pub grow_fs: bool,
    pub fstype: &'static str,
}

impl Part {
    /// Mounted read-only whatever is asked: flagged so, or a file system that is never
    /// written (squashfs, erofs).
    fn always_read_only(&self) -> bool {
        self.read_only || matches!(self.fstype, "squashfs" | "erofs")
    }
}

/// The image's layout: what to mount, or why it cannot be run (one line, without the
/// image's name). `size`: the image's size in bytes.
pub fn dissect(img: &impl FileExt, size: u64) -> std::result::Result<Layout, String> {
    let gpt = match gpt(img, size)? {
        Some(entries) => entries,
        None => {
            let Some(fstype) = probe_fs(img, 0, size) else {
                return Err(no_layout(img));
            };
            let root = Part {
                role: Role::Root,
                number: 0,
                offset: 0,
                size: 0,
                read_only: false,
                grow_fs: false,
                fstype,
            };
            return Ok(Layout {
                parts: vec![root],
                root_verity: None,
            });
        }
    };
    let mut parts: Vec<(Part, bool, String)> = Vec::new();
    for e in &gpt {
        // (A Linux data partition is taken as the root only where nothing else is: below.)
        let Some(role) = Role::of(&e.type_guid) else {
            continue;
        };
        parts.push((
            part_of(img, e, role)?,
            e.attrs & FLAG_NO_AUTO != 0,
            e.label.clone(),
        ));
    }
    if !parts.iter().any(|(p, _, _)| p.role == Role::Root) {
        let data: Vec<&Entry> = gpt.iter().filter(|e| e.type_guid == LINUX_DATA).collect();
        match data.as_slice() {
            [one] if one.attrs & FLAG_NO_AUTO == 0 => {
                parts.push((part_of(img, one, Role::Root)?, false, one.label.clone()))
            }
            _ => {
                return Err(format!(
                    "no root partition for x86-64 in its GPT (type {ROOT}), nor a single \
                     Linux data partition"
                ))
            }
        }
    }
    // The root's hash tree, for a root hash (the first, as nspawn's dissection takes it).
    let root_verity = gpt
        .iter()
        .find(|e| e.type_guid == ROOT_VERITY)
        .map(|e| Part {
            role: Role::Root,
            number: e.number,
            offset: e.offset,
            size: e.size,
            read_only: true,
            grow_fs: false,
            fstype: "verity",
        });
    Ok(Layout {
        parts: choose(parts),
        root_verity,
    })
}

/// What [`dissect`] found: the file systems to mount, and the root's verity hash tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub parts: Vec<Part>,
    pub root_verity: Option<Part>,
}

/// One partition per role: for root and /usr the one whose label has the highest version
/// (as nspawn's dissection compares them), for the others the first; partitions flagged
/// no-auto are left alone (root and /usr always count).
fn choose(parts: Vec<(Part, bool, String)>) -> Vec<Part> {
    let mut chosen: Vec<(Part, String)> = Vec::new();
    for (p, no_auto, label) in parts {
        if no_auto && !matches!(p.role, Role::Root | Role::Usr) {
            continue;
        }
        match chosen.iter_mut().find(|(c, _)| c.role == p.role) {
            None => chosen.push((p, label)),
            Some(c) => {
                let newer = matches!(p.role, Role::Root | Role::Usr)
                    && version_cmp(&label, &c.1) == std::cmp::Ordering::Greater;
                if newer {
                    *c = (p, label);
                }
            }
        }
    }
    let mut out: Vec<Part> = chosen.into_iter().map(|(p, _)| p).collect();
    out.sort_by_key(|p| p.role);
    out
}

/// Compare two labels as versions: runs of digits by value, the rest byte by byte.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let o = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    ca.len().cmp(&cb.len())
}

fn part_of(img: &impl FileExt, e: &Entry, role: Role) -> std::result::Result<Part, String> {
    let fstype = probe_fs(img, e.offset, e.size).ok_or_else(|| {
        format!(
            "partition {} ({}) holds no known file system (ext4, btrfs, xfs, erofs, \
             squashfs, vfat)",
            e.number,
            role.name()
        )
    })?;
    Ok(Part {
        role,
        number: e.number,
        offset: e.offset,
        size: e.size,
        read_only: e.attrs & FLAG_READ_ONLY != 0,
        grow_fs: e.attrs & FLAG_GROW_FS != 0,
        fstype,
    })
}

/// Why an image without a GPT and without a file system at its start cannot be run.
fn no_layout(img: &impl FileExt) -> String {
    let mut mbr = [0u8; 512];
    if img.read_exact_at(&mut mbr, 0).is_ok() && mbr[510..512] == [0x55, 0xaa] {
        return "its MBR partition table is not supported (use a GPT image, as nspawn's \
                Discoverable Partitions, or a plain file system)"
            .into();
    }
    "neither a GPT partition table nor a known file system (ext4, btrfs, xfs, erofs, \
     squashfs, vfat)"
        .into()
}

/// A GPT partition entry in use.
#[derive(Debug, Clone)]
struct Entry {
    number: u32,
    type_guid: String,
    offset: u64,
    size: u64,
    attrs: u64,
    label: String,
}

/// The GPT's entries (None: the image has no GPT). The primary header, else the backup at
/// the image's end; a table whose checksums fail in both is refused, as is one whose
/// partitions lie outside the image.
fn gpt(img: &impl FileExt, size: u64) -> std::result::Result<Option<Vec<Entry>>, String> {
    for sector in [512u64, 4096] {
        let mut hdr = [0u8; 512];
        if size < 2 * sector || img.read_exact_at(&mut hdr, sector).is_err() {
            continue;
        }
        if &hdr[..8] != b"EFI PART" {
            continue;
        }
        let primary = table(img, &hdr, sector, size);
        let backup = || {
            let mut b = [0u8; 512];
            let at = (size / sector - 1) * sector;
            img.read_exact_at(&mut b, at).ok()?;
            (&b[..8] == b"EFI PART").then_some(())?;
            table(img, &b, sector, size).ok()
        };
        return match (primary, backup) {
            (Ok(t), _) => Ok(Some(t)),
            (Err(e), backup) => backup().map(Some).ok_or(e),
        };
    }
    Ok(None)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The entries of the GPT whose header is `hdr`, checked.
fn table(
    img: &impl FileExt,
    hdr: &[u8; 512],
    sector: u64,
    size: u64,
) -> std::result::Result<Vec<Entry>, String> {
    let corrupt = |what: &str| format!("its GPT partition table is corrupt ({what})");
    let hsize = le32(hdr, 12) as usize;
    if !(92..=512).contains(&hsize) {
        return Err(corrupt("header size"));
    }
    let mut h = hdr[..hsize].to_vec();
    h[16..20].fill(0);
    if crc32(&h) != le32(hdr, 16) {
        return Err(corrupt("header checksum mismatch"));
    }
    let (entries_lba, count, esize) = (le64(hdr, 72), le32(hdr, 80) as u64, le32(hdr, 84) as u64);
    if count > 1024 || !(128..=4096).contains(&esize) || esize % 8 != 0 {
        return Err(corrupt("entry count or size"));
    }
    let mut raw = vec![0u8; (count * esize) as usize];
    let at = entries_lba
        .checked_mul(sector)
        .filter(|a| a.saturating_add(raw.len() as u64) <= size)
        .ok_or_else(|| corrupt("entries outside the image"))?;
    img.read_exact_at(&mut raw, at)
        .map_err(|e| format!("cannot read its GPT entries: {e}"))?;
    if crc32(&raw) != le32(hdr, 88) {
        return Err(corrupt("entries checksum mismatch"));
    }
    // Partitions lie between the first and last usable LBA (never over the table), inside
    // the image, and apart from each other.
    let (first_usable, last_usable) = (le64(hdr, 40), le64(hdr, 48));
    let mut out: Vec<Entry> = Vec::new();
    let mut spans: Vec<(u64, u64, usize)> = Vec::new();
    for (i, e) in raw.chunks(esize as usize).enumerate() {
        if e[..16].iter().all(|b| *b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let end = last.checked_add(1).and_then(|l| l.checked_mul(sector));
        if first > last
            || first < first_usable
            || last > last_usable
            || end.is_none_or(|end| end > size)
        {
            return Err(corrupt(&format!("partition {} outside the image", i + 1)));
        }
        if let Some((_, _, other)) = spans.iter().find(|(f, l, _)| first <= *l && *f <= last) {
            return Err(corrupt(&format!(
                "partitions {} and {} overlap",
                other + 1,
                i + 1
            )));
        }
        spans.push((first, last, i));
        let label: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|c| *c != 0)
            .collect();
        out.push(Entry {
            number: i as u32 + 1,
            type_guid: guid(&e[..16]),
            offset: first * sector,
            size: (last - first + 1) * sector,
            attrs: le64(e, 48),
            label: String::from_utf16_lossy(&label),
        });
    }
    Ok(out)
}

/// A GUID as text (its first three fields are little-endian on disk).
fn guid(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}

/// CRC-32 (IEEE 802.3, reflected), as GPT checksums its header and entries.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// The file system starting at `offset`, by its superblock's magic (the kernel's type
/// names); None for anything else.
fn probe_fs(img: &impl FileExt, offset: u64, limit: u64) -> Option<&'static str> {
    let mut b = vec![0u8; 0x10048];
    let n = read_some(img, &mut b, offset).min(usize::try_from(limit).unwrap_or(usize::MAX));
    let has = |at: usize, magic: &[u8]| n >= at + magic.len() && &b[at..at + magic.len()] == magic;
    if has(0, b"hsqs") {
        Some("squashfs")
    } else if has(0, b"XFSB") {
        Some("xfs")
    } else if has(1024, &0xE0F5_E1E2u32.to_le_bytes()) {
        Some("erofs")
    } else if has(1080, &0xEF53u16.to_le_bytes()) {
        Some("ext4")
    } else if has(0x10040, b"_BHRfS_M") {
        Some("btrfs")
    } else if has(510, &[0x55, 0xaa]) && (has(54, b"FAT") || has(82, b"FAT32")) {
        Some("vfat")
    } else {
        None
    }
}

/// Read what there is at `offset` (up to `buf`'s size); the number of bytes read.
fn read_some(img: &impl FileExt, buf: &mut [u8], offset: u64) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match img.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// A mounted image: its tree's path (in this process's own mount namespace) and the lock
/// that keeps other containers off the image while it runs.
pub struct Mounted {
    pub root: PathBuf,
    /// The image was opened read-only (asked for, or not writable).
    pub read_only: bool,
    /// None when only printing ([`Use::Print`]).
    pub lock: Option<ImageLock>,
}

/// How a container uses its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// It may write to it (opened read-write where it can be, locked exclusively unless
    /// everything mounted is read-only).
    Write,
    /// It never writes (`--read-only`, `-x`, `--volatile`): opened and mounted read-only,
    /// the lock shared.
    Read,
    /// Only to print the state or the chain: read-only, not locked (a running container
    /// keeps its image; printing takes nothing from it).
    Print,
}

/// Lock the image at `path`, read it, and mount its file systems in a mount namespace of
/// this process's own, as `how` says (read-only besides where the image cannot be
/// written, a partition is flagged so or its file system is never written). Every error
/// is one line naming the image; nothing is left: the loop devices are attached only once
/// the layout is known, each detaches itself with its last user.
pub fn mount_image(path: &Path, how: Use, verity: Option<&Verity>) -> Result<Mounted> {
    let shown = path.to_string_lossy();
    let bad = |why: &str| Error::invalid("--image", &shown, why);
    if !nix::unistd::geteuid().is_root() {
        return Err(bad("needs root (loop devices and mounts are made for it)"));
    }
    if let Some(v) = verity.filter(|_| !crate::verity::available()) {
        return Err(bad(&format!(
            "{}: verity needs the kernel's device-mapper (dm-verity), which this kernel does \
             not have (no device-mapper in /proc/misc)",
            v.source
        )));
    }
    // Verity is read-only by nature.
    let how = match (how, verity) {
        (Use::Write, Some(_)) => Use::Read,
        (h, _) => h,
    };
    let (file, read_only) = open_image(path, how != Use::Write).map_err(|e| bad(&e))?;
    let size = image_size(&file).map_err(|e| bad(&e))?;
    let Layout { parts, root_verity } = dissect(&file, size).map_err(|e| bad(&e))?;
    // Only the root is verified: another partition of the image (a /usr, /var…) would put
    // unchecked content over it, which is what verity is there to prevent.
    if let (Some(_), Some(other)) = (verity, parts.iter().find(|p| p.role != Role::Root)) {
        return Err(bad(&format!(
            "with a root hash only the root partition is verified, and its {} partition ({}) \
             would not be: refused",
            other.role.name(),
            part_label(other)
        )));
    }
    let root_read_only = parts
        .iter()
        .any(|p| p.role == Role::Root && p.always_read_only());
    // Shared only where nothing is written: every partition mounted read-only.
    let never_written = read_only || parts.iter().all(Part::always_read_only);
    let lock = match how {
        Use::Print => None,
        _ => Some(ImageLock::acquire_image(path, &file, never_written)?),
    };
    private_mount_namespace()?;
    let dir = ns_core::paths::runtime_subdir("images")?;
    mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700,size=64k"),
    )
    .ctx(|| format!("cannot mount a tmpfs on {}", dir.display()))?;
    // Named by our pid too: a cleanup journal naming a path in it can never name another
    // container's image (each ns-run sees only its own tmpfs here).
    let own = dir.join(std::process::id().to_string());
    let root = own.join(tree_name(path));
    std::fs::create_dir(&own).ctx(|| format!("cannot create {}", own.display()))?;
    std::fs::create_dir(&root).ctx(|| format!("cannot create {}", root.display()))?;
    let control = loop_control().map_err(|e| bad(&e))?;
    let at = Place {
        file: &file,
        size,
        path,
        root: &root,
        control: &control,
        root_verity: root_verity.as_ref(),
    };
    for p in &parts {
        let verity = verity.filter(|_| p.role == Role::Root);
        mount_part(&at, p, read_only, how == Use::Print, verity).map_err(|e| bad(&e))?;
    }
    Ok(Mounted {
        root,
        read_only: read_only || root_read_only,
        lock,
    })
}

/// The image opened for its loop devices: read-write unless `read_only`, or where it
/// cannot be written (then read-only, as nspawn does).
fn open_image(path: &Path, read_only: bool) -> std::result::Result<(File, bool), String> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_EXCL: a block device opened for writing is refused while it is mounted or claimed
    // elsewhere (the host's disk behind a symlink, say); regular files ignore it.
    let open = |write: bool| {
        let excl = if write { libc::O_EXCL } else { 0 };
        File::options()
            .read(true)
            .write(write)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | excl)
            .open(path)
    };
    let (file, ro) = match open(!read_only) {
        Ok(f) => (f, read_only),
        Err(e)
            if !read_only
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EROFS | libc::EACCES | libc::EPERM)
                ) =>
        {
            (open(false).map_err(|e| ns_core::error::io_desc(&e))?, true)
        }
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
            return Err("not a regular file or a block device (a directory: use -D)".into())
        }
        Err(e) => return Err(ns_core::error::io_desc(&e)),
    };
    let ft = file.metadata().map_err(|e| e.to_string())?.file_type();
    if !(ft.is_file() || ft.is_block_device()) {
        return Err("not a regular file or a block device".into());
    }
    Ok((file, ro))
}

/// The image's size: a file's length, a block device's size.
fn image_size(file: &File) -> std::result::Result<u64, String> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::End(0))
        .map_err(|e| ns_core::error::io_desc(&e))
}

/// The tree's directory name: the image's file name without `.raw` (the machine name
/// nspawn derives from an image), `image` where that leaves nothing.
fn tree_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.strip_suffix(".raw").unwrap_or(&name).to_string();
    match name.as_str() {
        "" | "." | ".." => "image".into(),
        _ => name,
    }
}

/// A mount namespace of this process's own whose mounts never reach the host (slave to
/// it, as the container's own namespace is).
fn private_mount_namespace() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .ctx(|| "cannot create a mount namespace for the image".into())?;
    ns_core::sys::make_rslave()
        .ctx(|| "cannot make the image's mount namespace a slave of the host's".into())
}

/// The image being mounted: its file, size and path, and the tree's root.
struct Place<'a> {
    file: &'a File,
    size: u64,
    path: &'a Path,
    root: &'a Path,
    /// /dev/loop-control, opened once for all the loop devices.
    control: &'a File,
    /// The GPT's root-verity partition.
    root_verity: Option<&'a Part>,
}

/// Attach partition `p` to a loop device (through dm-verity with `verity`) and mount it at
/// its place under the tree's root.
fn mount_part(
    at: &Place,
    p: &Part,
    read_only: bool,
    print: bool,
    verity: Option<&Verity>,
) -> std::result::Result<(), String> {
    let (file, path) = (at.file, at.path);
    let ro = read_only || p.always_read_only();
    let Some(target) = target_of(at.root, p)? else {
        return Ok(());
    };
    let dev = attach_loop(at.control, file, path, p, ro)?;
    let checked = match verity {
        Some(v) => Some(verity_device(at, p, &dev.0, v)?),
        None => None,
    };
    let mut flags = MsFlags::empty();
    if ro || checked.is_some() {
        flags |= MsFlags::MS_RDONLY;
    }
    if let Some(c) = &checked {
        ns_core::stage::fault("ns-run:verity");
        return mount_checked(c, &target, p, flags);
    }
    let data = match p.fstype {
        "vfat" => Some("fmask=0177,dmask=0077"),
        // Printing only, next to a container that has the image mounted read-write (its
        // journal not yet replayed): read it as it is.
        "ext4" if print => Some("noload"),
        _ => None,
    };
    let what = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dev.1));
    mount(Some(dev.0.as_str()), &target, Some(p.fstype), flags, data)
        .or_else(|_| mount(Some(what.as_str()), &target, Some(p.fstype), flags, data))
        .map_err(|e| {
            let why = match e {
                nix::errno::Errno::ENODEV => {
                    format!("this kernel has no {} file system", p.fstype)
                }
                e => e.desc().to_string(),
            };
            format!(
                "cannot mount its {} partition ({}, {}): {why}",
                p.role.name(),
                p.fstype,
                part_label(p),
            )
        })?;
    if p.grow_fs && !ro {
        // As nspawn: a file system that cannot grow is used as it is.
        if let Err(e) = grow(&target, p) {
            ns_core::stage::debug("ns-run", || {
                format!("cannot grow the {} partition: {}", p.role.name(), e.desc())
            });
        }
    }
    Ok(())
}

/// Where partition `p` goes under the tree's `root` (made if missing, but for the ESP and
/// XBOOTLDR: None when their place is not there).
fn target_of(root: &Path, p: &Part) -> std::result::Result<Option<PathBuf>, String> {
    let target = match p.role {
        Role::Root => return Ok(Some(root.to_path_buf())),
        Role::Usr => root.join("usr"),
        Role::Home => root.join("home"),
        Role::Srv => root.join("srv"),
        Role::Var => root.join("var"),
        Role::Tmp => root.join("var/tmp"),
        Role::Xbootldr => root.join("boot"),
        Role::Esp => {
            // /efi where the image has it, else /boot unless XBOOTLDR takes it.
            let (efi, boot) = (root.join("efi"), root.join("boot"));
            if efi.is_dir() {
                efi
            } else if boot.is_dir() && !boot_taken(root) {
                boot
            } else {
                return Ok(None);
            }
        }
    };
    if !target.is_dir() {
        if matches!(p.role, Role::Esp | Role::Xbootldr) {
            return Ok(None);
        }
        std::fs::create_dir_all(&target).map_err(|e| {
            format!(
                "cannot create {} in the image for its {} partition: {}",
                target.strip_prefix(root).unwrap_or(&target).display(),
                p.role.name(),
                ns_core::error::io_desc(&e)
            )
        })?;
    }
    Ok(Some(target))
}

/// Mount partition `p` at `target` through its verity device `c`; the device is removed
/// (deferred once mounted: it goes with its last user).
fn mount_checked(
    c: &crate::verity::Device,
    target: &Path,
    p: &Part,
    flags: MsFlags,
) -> std::result::Result<(), String> {
    let node = c.node.to_string_lossy().into_owned();
    let r = mount(
        Some(node.as_str()),
        target,
        Some(p.fstype),
        flags,
        None::<&str>,
    );
    crate::verity::remove(&c.name, r.is_ok());
    r.map_err(|e| {
        let hint = match e {
            nix::errno::Errno::EIO | nix::errno::Errno::EINVAL => {
                " (the data does not match the root hash)"
            }
            _ => "",
        };
        format!(
            "cannot mount its {} partition through dm-verity ({}, {}): {}{hint}",
            p.role.name(),
            p.fstype,
            part_label(p),
            e.desc()
        )
    })
}

/// Grow the file system mounted at `target` to its partition's size (ext4, btrfs; xfs
/// and others are left as they are).
fn grow(target: &Path, p: &Part) -> nix::Result<()> {
    let dir = nix::fcntl::open(
        target,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    match p.fstype {
        "ext4" => {
            let bsize = nix::sys::statfs::fstatfs(&dir)?.block_size() as u64;
            if bsize == 0 {
                return Err(nix::errno::Errno::EINVAL);
            }
            ns_core::sys::ext4_resize(dir.as_fd(), p.size / bsize)
        }
        "btrfs" => ns_core::sys::btrfs_resize_max(dir.as_fd()),
        _ => Ok(()),
    }
}

/// The dm-verity device over partition `p` (served by the loop device `data_dev`): the hash
/// tree from `v.data`, else from the image's root-verity partition.
fn verity_device(
    at: &Place,
    p: &Part,
    data_dev: &str,
    v: &Verity,
) -> std::result::Result<crate::verity::Device, String> {
    let (hash_file, hash_part) = match &v.data {
        Some(d) => {
            let f = crate::verity::open_input(d).map_err(|e| format!("--verity-data={e}"))?;
            let len = image_size(&f)?;
            let part = Part {
                role: Role::Root,
                number: 0,
                offset: 0,
                size: len,
                read_only: true,
                grow_fs: false,
                fstype: "verity",
            };
            (f, part)
        }
        None => {
            let part = at.root_verity.cloned().ok_or(
                "a root hash, but no verity data: no root-verity partition in its GPT, \
                 no --verity-data, no NAME.verity beside it",
            )?;
            (at.file.try_clone().map_err(|e| e.to_string())?, part)
        }
    };
    let sb = crate::verity::superblock(&hash_file, hash_part.offset)?;
    let data_bytes = sb.data_blocks.saturating_mul(sb.data_block_size as u64);
    // A plain image's root is the whole image.
    let room = match p.size {
        0 => at.size.saturating_sub(p.offset),
        n => n,
    };
    if data_bytes > room {
        return Err("the verity data describes more blocks than the partition has".into());
    }
    let hash_dev = attach_loop(at.control, &hash_file, at.path, &hash_part, true)?;
    crate::verity::collect_stale();
    let name = format!("ns-run-{}-verity-{}", std::process::id(), p.number);
    // The loop devices stay while the verity device uses them (it holds them open).
    let made = crate::verity::make(&name, data_dev, &hash_dev.0, &sb, v);
    drop(hash_dev);
    made
}

/// Whether an XBOOTLDR partition is mounted at the image's /boot.
fn boot_taken(root: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(root),
        std::fs::metadata(root.join("boot")),
    ) {
        (Ok(r), Ok(b)) => r.dev() != b.dev(),
        _ => false,
    }
}

fn part_label(p: &Part) -> String {
    match p.number {
        0 => "the whole image".into(),
        n => format!("partition {n}"),
    }
}

/// /dev/loop-control.
fn loop_control() -> std::result::Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .map_err(|e| {
            format!(
                "cannot open /dev/loop-control: {}",
                ns_core::error::io_desc(&e)
            )
        })
}

/// A loop device serving partition `p` of the image (autoclear): its path and open fd.
/// Another process may take the free device first (EBUSY): then the next one is tried.
fn attach_loop(
    control: &File,
    file: &File,
    path: &Path,
    p: &Part,
    read_only: bool,
) -> std::result::Result<(String, std::os::fd::OwnedFd), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.as_os_str().as_encoded_bytes();
    for _ in 0..64 {
        let n = ns_core::sys::loop_get_free(control.as_fd())
            .map_err(|e| format!("no free loop device: {}", e.desc()))?;
        let dev = format!("/dev/loop{n}");
        let fd = File::options()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(&dev)
            .map_err(|e| format!("cannot open {dev}: {}", ns_core::error::io_desc(&e)))?;
        match ns_core::sys::loop_configure(
            fd.as_fd(),
            file.as_fd(),
            p.offset,
            p.size,
            read_only,
            name,
        ) {
            Ok(()) => return Ok((dev, fd.into())),
            Err(nix::errno::Errno::EBUSY) => continue,
            Err(e) => return Err(format!("cannot attach {dev} to it: {}", e.desc())),
        }
    }
    Err("no loop device could be attached (all taken while we tried)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_ieee() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn guids_read_mixed_endian() {
        let b = [
            0xe3, 0xbc, 0x68, 0x4f, 0xcd, 0xe8, 0xb1, 0x4d, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84,
            0xb7, 0x09,
        ];
        assert_eq!(guid(&b), ROOT);
    }

    #[test]
    fn labels_compare_as_versions() {
        use std::cmp::Ordering::*;
        assert_eq!(version_cmp("root-10", "root-9"), Greater);
        assert_eq!(version_cmp("root-1.2", "root-1.10"), Less);
        assert_eq!(version_cmp("a", "a"), Equal);
        assert_eq!(version_cmp("root-2", "root-2a"), Less);
    }

    #[test]
    fn tree_names_drop_raw() {
        assert_eq!(tree_name(Path::new("/x/foo.raw")), "foo");
        assert_eq!(tree_name(Path::new("/x/foo.img")), "foo.img");
        assert_eq!(tree_name(Path::new("/x/.raw")), "image");
    }

    #[test]
    fn a_file_of_zeros_has_no_layout() {
        let f = tempfile_of(&[0u8; 8192]);
        let e = dissect(&f, 8192).unwrap_err();
        assert!(e.starts_with("neither a GPT"), "{e}");
    }

    fn tempfile_of(data: &[u8]) -> File {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("ns-image-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("img");
        std::fs::File::create(&p).unwrap().write_all(data).unwrap();
        let f = File::open(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        f
    }
}
