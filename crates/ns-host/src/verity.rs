//! dm-verity for `-i` (`--root-hash=`, `--root-hash-sig=`, `--verity-data=`, and the
//! sidecar files nspawn finds beside an image): the root file system is read through a
//! read-only device-mapper `verity` target whose every block the kernel checks against the
//! root hash. Made with the device-mapper ioctls directly (no libcryptsetup, no udev): the
//! hash tree's parameters come from its verity superblock (as `veritysetup format` writes
//! it), the data and the hash tree each through a loop device of their own, the device
//! found in devtmpfs as `/dev/dm-N`, removed deferred once mounted (it goes with its last
//! mount, as the loop devices do).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What verity needs, as given or found beside the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verity {
    /// Lower-case hexadecimal.
    pub root_hash: String,
    /// A PKCS#7 signature of the root hash, for the kernel to check against its keyrings.
    pub signature: Option<Vec<u8>>,
    /// The hash tree: a file of its own (else the image's root-verity partition).
    pub data: Option<PathBuf>,
    /// Where the root hash came from (`--root-hash`, or the sidecar file's path), for
    /// messages.
    pub source: String,
}

/// A verity input file (a sidecar, `--verity-data=`, a signature): opened without waiting
/// (a FIFO there would hang the start) and only if it is a regular file or a block device.
pub fn open_input(p: &Path) -> Result<File, String> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(p)
        .map_err(|e| format!("{}: {}", p.display(), ns_core::error::io_desc(&e)))?;
    let t = f.metadata().map_err(|e| e.to_string())?.file_type();
    if !(t.is_file() || t.is_block_device()) {
        return Err(format!(
            "{}: not a regular file or a block device",
            p.display()
        ));
    }
    Ok(f)
}

/// The content of the small verity input file `p` (at most 64 KiB).
fn read_input(p: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    open_input(p)?
        .take(64 << 10)
        .read_to_end(&mut out)
        .map_err(|e| {
            format!(
                "cannot read {}: {}",
                p.display(),
                ns_core::error::io_desc(&e)
            )
        })?;
    Ok(out)
}

/// The verity inputs for `image`: `--root-hash=` (`root_hash`), `--root-hash-sig=`
/// (`base64:…` or a file), `--verity-data=`, else `NAME.roothash`, `NAME.roothash.p7s`,
/// `NAME.verity` beside it (NAME: the image's path without `.raw`). None without a root
/// hash and nothing else; one line (without the image's name) for inputs that cannot work.
pub fn find(
    image: &Path,
    root_hash: Option<&str>,
    signature: Option<&str>,
    data: Option<&str>,
) -> Result<Option<Verity>, String> {
    let stem = image.to_string_lossy();
    let stem = stem.strip_suffix(".raw").unwrap_or(&stem).to_string();
    let beside =
        |suffix: &str| Some(PathBuf::from(format!("{stem}{suffix}"))).filter(|p| p.exists());
    let mut source = "--root-hash".to_string();
    let root_hash = match root_hash {
        Some(h) => Some(h.to_string()),
        None => match beside(".roothash") {
            Some(p) => {
                source = p.display().to_string();
                Some(String::from_utf8_lossy(&read_input(&p)?).trim().to_string())
            }
            None => None,
        },
    };
    let signature = match signature {
        Some(s) => Some(match s.strip_prefix("base64:") {
            Some(b) => base64(b).ok_or("--root-hash-sig: not valid base64")?,
            None => read_input(Path::new(s)).map_err(|e| format!("--root-hash-sig: {e}"))?,
        }),
        None => match beside(".roothash.p7s") {
            Some(p) => Some(read_input(&p)?),
            None => None,
        },
    };
    let data = data.map(PathBuf::from).or_else(|| beside(".verity"));
    let Some(root_hash) = root_hash else {
        return match (&signature, &data) {
            (None, None) => Ok(None),
            _ => Err(
                "verity data or a signature without a root hash (--root-hash= or \
                      NAME.roothash)"
                    .into(),
            ),
        };
    };
    let h = root_hash.to_ascii_lowercase();
    if h.len() < 32 || h.len() % 2 != 0 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "root hash {root_hash:?} is not hexadecimal of at least 128 bits"
        ));
    }
    Ok(Some(Verity {
        root_hash: h,
        signature,
        data,
        source,
    }))
}

/// Standard base64 (with or without padding); None when it is not.
fn base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
        .collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

/// Whether this kernel has device-mapper (/dev/mapper/control, or `device-mapper` in
/// /proc/misc).
pub fn available() -> bool {
    let misc = std::fs::read_to_string("/proc/misc").unwrap_or_default();
    misc.lines().any(|l| l.ends_with(" device-mapper")) || Path::new("/dev/mapper/control").exists()
}

/// The parameters of a hash tree, from its verity superblock (`veritysetup format`'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub hash_type: u32,
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

/// The verity superblock at `offset` of `f`.
pub fn superblock(f: &impl FileExt, offset: u64) -> Result<Superblock, String> {
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, offset)
        .map_err(|e| format!("cannot read the verity superblock: {e}"))?;
    if &b[..8] != b"verity\0\0" {
        return Err(
            "the verity data has no verity superblock (as `veritysetup format` writes)".into(),
        );
    }
    let le32 = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let version = le32(8);
    let hash_type = le32(12);
    let algorithm: String = b[32..64]
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as char)
        .collect();
    let (dbs, hbs) = (le32(64), le32(68));
    let data_blocks = u64::from_le_bytes(b[72..80].try_into().expect("8 bytes"));
    let salt_size = u16::from_le_bytes([b[80], b[81]]) as usize;
    let ok_size = |s: u32| (512..=65536).contains(&s) && s.is_power_of_two();
    if version != 1
        || hash_type > 1
        || !ok_size(dbs)
        || !ok_size(hbs)
        || salt_size > 256
        || algorithm.is_empty()
        || !algorithm
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
    {
        return Err("the verity superblock is not one this knows (version 1)".into());
    }
    Ok(Superblock {
        hash_type,
        algorithm,
        data_block_size: dbs,
        hash_block_size: hbs,
        data_blocks,
        salt: b[88..88 + salt_size].to_vec(),
    })
}

/// A verity device made over the loop devices `data_dev` and `hash_dev` (paths), the
/// superblock `sb` at the hash device's start: its node (`/dev/dm-N`) and name.
pub struct Device {
    pub node: PathBuf,
    pub name: String,
}

/// Make the verity device `name` (read-only, active) for `v`.
pub fn make(
    name: &str,
    data_dev: &str,
    hash_dev: &str,
    sb: &Superblock,
    v: &Verity,
) -> Result<Device, String> {
    let control = File::options()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(|e| format!("cannot open /dev/mapper/control: {e}"))?;
    let salt = match sb.salt.is_empty() {
        true => "-".to_string(),
        false => sb.salt.iter().map(|b| format!("{b:02x}")).collect(),
    };
    let mut params = format!(
        "{} {data_dev} {hash_dev} {} {} {} 1 {} {} {salt}",
        sb.hash_type,
        sb.data_block_size,
        sb.hash_block_size,
        sb.data_blocks,
        sb.algorithm,
        v.root_hash
    );
    let mut key_serial = None;
    if let Some(sig) = &v.signature {
        // The kernel reads the signature from a key of ours (user type), named here.
        let desc = format!("ns-run:{name}");
        let c = std::ffi::CString::new(desc.clone()).map_err(|_| "bad key name".to_string())?;
        let key = ns_core::sys::add_user_key(&c, sig).map_err(|e| {
            format!(
                "cannot hand the root hash signature to the kernel: {}",
                e.desc()
            )
        })?;
        params += &format!(" 2 root_hash_sig_key_desc {desc}");
        key_serial = Some(key);
    }
    let sectors = sb
        .data_blocks
        .checked_mul(sb.data_block_size as u64)
        .ok_or("the verity superblock's data size overflows")?
        / 512;
    let made = ns_core::sys::dm_create_readonly(control.as_fd(), name, "verity", sectors, &params);
    // The kernel checked the signature when the table was loaded: the key goes (it would
    // stay in the caller's session keyring otherwise).
    if let Some(k) = key_serial {
        let _ = ns_core::sys::invalidate_key(k);
    }
    let dev = made.map_err(|e| match e {
        nix::errno::Errno::EKEYREJECTED
        | nix::errno::Errno::ENOKEY
        | nix::errno::Errno::EBADMSG
        | nix::errno::Errno::EKEYREVOKED
        | nix::errno::Errno::EKEYEXPIRED => {
            format!("the kernel refuses the root hash signature: {}", e.desc())
        }
        e => format!("cannot set up dm-verity: {}", e.desc()),
    })?;
    // huge_encode_dev: the minor's low byte, the major, then the minor's upper bits.
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    Ok(Device {
        node: PathBuf::from(format!("/dev/dm-{minor}")),
        name: name.to_string(),
    })
}

/// Remove the verity devices dead ns-runs left (`ns-run-PID-verity-N` of a PID that is no
/// ns-run any more: killed between making the device and mounting it, when it is not yet
/// removed deferred). Their loop devices then detach themselves.
pub fn collect_stale() {
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return;
    };
    for e in dir.flatten() {
        let name = std::fs::read_to_string(e.path().join("dm/name")).unwrap_or_default();
        let name = name.trim();
        let Some(pid) = name
            .strip_prefix("ns-run-")
            .and_then(|r| r.split_once("-verity-"))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if pid != std::process::id() && comm.trim() != "ns-run" {
            remove(name, true);
        }
    }
}

/// Remove the device `name`: now, or (`deferred`) once its last user is gone.
pub fn remove(name: &str, deferred: bool) {
    if let Ok(control) = File::options()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
    {
        let _ = ns_core::sys::dm_remove(control.as_fd(), name, deferred);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64("aGk=").unwrap(), b"hi");
        assert!(base64("a$==").is_none());
    }

    #[test]
    fn a_superblock_is_read_and_a_bad_one_refused() {
        let mut b = [0u8; 512];
        b[..8].copy_from_slice(b"verity\0\0");
        b[8] = 1;
        b[12] = 1;
        b[32..38].copy_from_slice(b"sha256");
        b[64..68].copy_from_slice(&4096u32.to_le_bytes());
        b[68..72].copy_from_slice(&4096u32.to_le_bytes());
        b[72..80].copy_from_slice(&255u64.to_le_bytes());
        b[80] = 2;
        b[88] = 0xab;
        b[89] = 0xcd;
        let f = tmp(&b);
        let sb = superblock(&f, 0).unwrap();
        assert_eq!(sb.algorithm, "sha256");
        assert_eq!(sb.data_blocks, 255);
        assert_eq!(sb.salt, [0xab, 0xcd]);
        b[32..38].copy_from_slice(b"sha 56");
        assert!(superblock(&tmp(&b), 0).is_err());
    }

    fn tmp(data: &[u8]) -> File {
        use std::io::Write;
        let p = std::env::temp_dir().join(format!(
            "ns-verity-test-{}-{}",
            std::process::id(),
            data[32]
        ));
        std::fs::File::create(&p).unwrap().write_all(data).unwrap();
        let f = File::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }
}
