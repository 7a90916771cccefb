//! nspawn's mount option syntax → [`MountOp`]s, and the option values → plan fields.

use std::path::{Path, PathBuf};

use ns_core::state::{EtcFile, Idmap, MountOp, PivotRoot, RootMode, Source};
use ns_core::{Error, Result};

/// Split on unescaped `:`; `\:` is a literal colon.
pub fn split_colons(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&':') => {
                out.last_mut().unwrap().push(':');
                chars.next();
            }
            ':' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

/// A source path: `+/p` inside the image, `` a temporary directory (where allowed), else a
/// host path made absolute against the current directory.
fn source(opt: &str, v: &str, s: &str, temp_ok: bool) -> Result<Source> {
    if s.is_empty() {
        return if temp_ok {
            Ok(Source::Temp)
        } else {
            Err(Error::invalid(opt, v, "empty path"))
        };
    }
    if let Some(p) = s.strip_prefix('+') {
        let p = Path::new(p);
        return if p.is_absolute() {
            Ok(Source::Image(p.to_path_buf()))
        } else {
            Err(Error::invalid(opt, v, "a path after + must be absolute"))
        };
    }
    std::path::absolute(s)
        .map(Source::Host)
        .map_err(|e| Error::invalid(opt, v, &e.to_string()))
}

fn absolute_dest(opt: &str, v: &str, d: &str) -> Result<PathBuf> {
    if Path::new(d)
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(Error::invalid(opt, v, "a path with .. is not allowed"));
    }
    if d.starts_with('/') {
        Ok(PathBuf::from(d))
    } else {
        Err(Error::invalid(
            opt,
            v,
            "destination is not an absolute path",
        ))
    }
}

/// The container path a source names when no destination is given.
fn implied_dest(s: &Source) -> Option<PathBuf> {
    match s {
        Source::Host(p) | Source::Image(p) => Some(p.clone()),
        Source::Temp => None,
    }
}

/// `--bind`/`--bind-ro`: SRC[:DST[:OPTS]]. SRC `+PATH` is inside the image; an empty SRC is a
/// temporary directory (DST required). OPTS: rbind (default), norbind; idmap, rootidmap and
/// noidmap parse but need user namespaces.
pub fn parse_bind(v: &str, read_only: bool) -> Result<MountOp> {
    let opt = if read_only { "--bind-ro" } else { "--bind" };
    let parts = split_colons(v);
    if parts.len() > 3 {
        return Err(Error::invalid(opt, v, "too many colon-separated fields"));
    }
    let src = source(opt, v, &parts[0], true)?;
    let dest = match parts.get(1).filter(|d| !d.is_empty()) {
        Some(d) => absolute_dest(opt, v, d)?,
        None => implied_dest(&src)
            .ok_or_else(|| Error::invalid(opt, v, "a temporary source needs a destination"))?,
    };
    let mut recursive = true;
    let mut idmap = Idmap::No;
    for o in parts
        .get(2)
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .filter(|o| !o.is_empty())
    {
        match o {
            "rbind" => recursive = true,
            "norbind" => recursive = false,
            "idmap" => idmap = Idmap::Container,
            "rootidmap" => idmap = Idmap::Root,
            "noidmap" => idmap = Idmap::No,
            _ => {
                return Err(Error::invalid(
                    opt,
                    v,
                    &format!("invalid bind mount option: {o}"),
                ))
            }
        }
    }
    if idmap != Idmap::No && !matches!(src, Source::Host(_)) {
        return Err(Error::invalid(opt, v, "idmap options need a host source"));
    }
    Ok(MountOp::Bind {
        source: src,
        idmap,
        dest,
        read_only,
        recursive,
    })
}

/// `--tmpfs=PATH[:OPTS]`; without OPTS nspawn's default `mode=0755`.
pub fn parse_tmpfs(v: &str) -> Result<MountOp> {
    // The path ends at the first unescaped colon; the options are passed on as they are.
    let mut path = String::new();
    let mut opts = None;
    let mut chars = v.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if chars.peek().map(|(_, n)| *n) == Some(':') => {
                path.push(':');
                chars.next();
            }
            ':' => {
                opts = Some(v[i + 1..].to_string());
                break;
            }
            c => path.push(c),
        }
    }
    let opts = opts.unwrap_or_else(|| "mode=0755".to_string());
    let path = path.as_str();
    Ok(MountOp::Tmpfs {
        dest: absolute_dest("--tmpfs", v, path)?,
        options: opts,
    })
}

/// `--overlay`/`--overlay-ro`: LOWER…:UPPER:DEST, or LOWER:UPPER where UPPER is also the
/// mount point. Lowers are listed bottom first (the last one is on top). An empty UPPER is a
/// temporary directory.
pub fn parse_overlay(v: &str, read_only: bool) -> Result<MountOp> {
    let opt = if read_only {
        "--overlay-ro"
    } else {
        "--overlay"
    };
    let parts = split_colons(v);
    if parts.len() < 2 {
        return Err(Error::invalid(
            opt,
            v,
            "needs at least two colon-separated directories",
        ));
    }
    let (lowers, upper, dest) = if parts.len() == 2 {
        let dest = parts[1].strip_prefix('+').unwrap_or(&parts[1]).to_string();
        (&parts[..1], &parts[1], dest)
    } else {
        let n = parts.len();
        (&parts[..n - 2], &parts[n - 2], parts[n - 1].clone())
    };
    let lower = lowers
        .iter()
        .map(|l| source(opt, v, l, false))
        .collect::<Result<Vec<_>>>()?;
    Ok(MountOp::Overlay {
        lower,
        upper: source(opt, v, upper, true)?,
        dest: absolute_dest(opt, v, &dest)?,
        read_only,
    })
}

/// `--inaccessible=PATH`.
pub fn parse_inaccessible(v: &str) -> Result<MountOp> {
    Ok(MountOp::Inaccessible {
        dest: absolute_dest("--inaccessible", v, v)?,
    })
}

/// `--volatile[=MODE]`: a boolean, `state` or `overlay`.
pub fn parse_volatile(v: &str) -> Result<RootMode> {
    match (ns_core::parse_boolean(v), v) {
        (Some(true), _) => Ok(RootMode::Volatile),
        (Some(false), _) => Ok(RootMode::Directory),
        (None, "state") => Ok(RootMode::State),
        (None, "overlay") => Ok(RootMode::Overlay),
        _ => Err(Error::invalid(
            "--volatile",
            v,
            "not one of no, yes, state, overlay",
        )),
    }
}

/// `--pivot-root=NEW[:OLD]`, both absolute.
pub fn parse_pivot_root(v: &str) -> Result<PivotRoot> {
    let parts = split_colons(v);
    if parts.len() > 2 {
        return Err(Error::invalid(
            "--pivot-root",
            v,
            "too many colon-separated fields",
        ));
    }
    Ok(PivotRoot {
        new: absolute_dest("--pivot-root", v, &parts[0])?,
        old: parts
            .get(1)
            .map(|o| absolute_dest("--pivot-root", v, o))
            .transpose()?,
    })
}

const HOST_RESOLV: &str = "/etc/resolv.conf";
const STATIC_RESOLV: &str = "/usr/lib/systemd/resolv.conf";
const UPLINK_RESOLV: &str = "/run/systemd/resolve/resolv.conf";
const STUB_RESOLV: &str = "/run/systemd/resolve/stub-resolv.conf";

fn existing(opt: &str, mode: &str, p: &str) -> Result<PathBuf> {
    std::fs::canonicalize(p)
        .map_err(|e| Error::invalid(opt, mode, &format!("{p}: {}", ns_core::error::io_desc(&e))))
}

/// `auto`: bind the host's file over one the image has; nothing if the host has none.
fn auto_bind(host: &str) -> EtcFile {
    std::fs::canonicalize(host)
        .map(|source| EtcFile::Bind {
            source,
            create: false,
        })
        .unwrap_or(EtcFile::Off)
}

/// `--resolv-conf=MODE`, resolved against this host. Unlike nspawn, `auto` never writes into
/// the image: it binds the host's file read-only (nothing with a private network).
pub fn parse_resolv_conf(mode: &str, private_network: bool) -> Result<EtcFile> {
    const OPT: &str = "--resolv-conf";
    let (how, which) = match mode {
        "off" => return Ok(EtcFile::Off),
        "delete" => return Ok(EtcFile::Delete),
        "auto" if private_network => return Ok(EtcFile::Off),
        "auto" => {
            return Ok(auto_bind(HOST_RESOLV));
        }
        m => m
            .split_once('-')
            .ok_or_else(|| Error::invalid(OPT, mode, "unknown mode"))?,
    };
    let src = match which {
        "host" => HOST_RESOLV,
        "static" => STATIC_RESOLV,
        "uplink" => UPLINK_RESOLV,
        "stub" => STUB_RESOLV,
        _ => return Err(Error::invalid(OPT, mode, "unknown mode")),
    };
    let source = existing(OPT, mode, src)?;
    match how {
        "bind" => Ok(EtcFile::Bind {
            source,
            create: true,
        }),
        "copy" => Ok(EtcFile::Copy {
            source,
            replace: false,
        }),
        "replace" => Ok(EtcFile::Copy {
            source,
            replace: true,
        }),
        _ => Err(Error::invalid(OPT, mode, "unknown mode")),
    }
}

/// `--timezone=MODE`. `auto` binds the host's zone file read-only unless the image manages
/// its own /etc/localtime (a symlink, left alone); it never writes into the image.
pub fn parse_timezone(mode: &str) -> Result<EtcFile> {
    const OPT: &str = "--timezone";
    match mode {
        "off" => Ok(EtcFile::Off),
        "delete" => Ok(EtcFile::Delete),
        "auto" => Ok(auto_bind("/etc/localtime")),
        "bind" => Ok(EtcFile::Bind {
            source: existing(OPT, mode, "/etc/localtime")?,
            create: true,
        }),
        "copy" => Ok(EtcFile::Copy {
            source: existing(OPT, mode, "/etc/localtime")?,
            replace: false,
        }),
        "symlink" => {
            // The host's zone, as a path inside the image's own zoneinfo.
            let zone = std::fs::canonicalize("/etc/localtime")
                .unwrap_or_else(|_| "/usr/share/zoneinfo/Etc/UTC".into());
            let rel = zone.strip_prefix("/usr/share/zoneinfo").map_err(|_| {
                Error::invalid(
                    OPT,
                    mode,
                    "the host's /etc/localtime is not in /usr/share/zoneinfo",
                )
            })?;
            Ok(EtcFile::Symlink(
                Path::new("../usr/share/zoneinfo").join(rel),
            ))
        }
        _ => Err(Error::invalid(
            OPT,
            mode,
            "not one of off, auto, copy, bind, symlink, delete",
        )),
    }
}

/// The flag form of a mount op (for `--print-chain`).
pub fn op_to_flag(op: &MountOp) -> String {
    fn src(s: &Source) -> String {
        match s {
            Source::Host(p) => escape(p),
            Source::Image(p) => format!("+{}", escape(p)),
            Source::Temp => String::new(),
        }
    }
    match op {
        MountOp::Bind {
            source,
            dest,
            read_only,
            recursive,
            idmap,
        } => format!(
            "--bind{}={}:{}:{}{}",
            if *read_only { "-ro" } else { "" },
            src(source),
            escape(dest),
            if *recursive { "rbind" } else { "norbind" },
            match idmap {
                Idmap::No => "",
                Idmap::Container => ",idmap",
                Idmap::Root => ",rootidmap",
            }
        ),
        MountOp::Tmpfs { dest, options } => format!("--tmpfs={}:{options}", dest.display()),
        MountOp::Overlay {
            lower,
            upper,
            dest,
            read_only,
        } => {
            let mut parts: Vec<String> = lower.iter().map(src).collect();
            parts.push(src(upper));
            parts.push(escape(dest));
            format!(
                "--overlay{}={}",
                if *read_only { "-ro" } else { "" },
                parts.join(":")
            )
        }
        MountOp::Inaccessible { dest } => format!("--inaccessible={}", dest.display()),
    }
}

fn escape(p: &Path) -> String {
    p.to_string_lossy().replace(':', "\\:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(source: Source, dest: &str, read_only: bool, recursive: bool) -> MountOp {
        MountOp::Bind {
            source,
            dest: dest.into(),
            read_only,
            recursive,
            idmap: Idmap::No,
        }
    }

    #[test]
    fn bind_syntax_matches_nspawn() {
        assert_eq!(
            parse_bind("/a", false).unwrap(),
            bind(Source::Host("/a".into()), "/a", false, true)
        );
        assert_eq!(
            parse_bind("/a\\:b:/c:norbind", true).unwrap(),
            bind(Source::Host("/a:b".into()), "/c", true, false)
        );
        assert_eq!(
            parse_bind("+/etc:/x", false).unwrap(),
            bind(Source::Image("/etc".into()), "/x", false, true)
        );
        assert_eq!(
            parse_bind(":/tmpdir", false).unwrap(),
            bind(Source::Temp, "/tmpdir", false, true)
        );
        let e = parse_bind("/a:relative", false).unwrap_err();
        assert_eq!(
            e.msg,
            "--bind=/a:relative: destination is not an absolute path"
        );
        let e = parse_bind("/a:/b:bogus", true).unwrap_err();
        assert_eq!(
            e.msg,
            "--bind-ro=/a:/b:bogus: invalid bind mount option: bogus"
        );
        assert!(parse_bind("/a:/b:rbind:extra", false).is_err());
        assert!(parse_bind(":", false).is_err());
        assert!(matches!(
            parse_bind("/a:/b:norbind,idmap", false).unwrap(),
            MountOp::Bind {
                idmap: Idmap::Container,
                recursive: false,
                ..
            }
        ));
        assert!(matches!(
            parse_bind("/a:/b:rootidmap", false).unwrap(),
            MountOp::Bind {
                idmap: Idmap::Root,
                ..
            }
        ));
        assert!(parse_bind(":/b:idmap", false).is_err());
    }

    #[test]
    fn overlay_syntax_matches_nspawn() {
        assert_eq!(
            parse_overlay("/l1:/l2:/u:/d", false).unwrap(),
            MountOp::Overlay {
                lower: vec![Source::Host("/l1".into()), Source::Host("/l2".into())],
                upper: Source::Host("/u".into()),
                dest: "/d".into(),
                read_only: false
            }
        );
        assert_eq!(
            parse_overlay("/l:/u", true).unwrap(),
            MountOp::Overlay {
                lower: vec![Source::Host("/l".into())],
                upper: Source::Host("/u".into()),
                dest: "/u".into(),
                read_only: true
            }
        );
        assert_eq!(
            parse_overlay("+/etc::/etc", false).unwrap(),
            MountOp::Overlay {
                lower: vec![Source::Image("/etc".into())],
                upper: Source::Temp,
                dest: "/etc".into(),
                read_only: false
            }
        );
        assert!(parse_overlay("/one", false)
            .unwrap_err()
            .msg
            .contains("at least two"));
        assert!(parse_overlay(":/u:/d", false).is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_volatile("yes").unwrap(), RootMode::Volatile);
        assert_eq!(parse_volatile("0").unwrap(), RootMode::Directory);
        assert_eq!(parse_volatile("overlay").unwrap(), RootMode::Overlay);
        assert!(parse_volatile("bogus")
            .unwrap_err()
            .msg
            .starts_with("--volatile=bogus"));
        assert_eq!(
            parse_pivot_root("/a:/b").unwrap(),
            PivotRoot {
                new: "/a".into(),
                old: Some("/b".into())
            }
        );
        assert!(parse_pivot_root("a").is_err());
        assert_eq!(parse_resolv_conf("auto", true).unwrap(), EtcFile::Off);
        assert_eq!(parse_resolv_conf("delete", false).unwrap(), EtcFile::Delete);
        assert!(parse_resolv_conf("bogus", false).is_err());
        assert!(parse_resolv_conf("copy-bogus", false).is_err());
        assert!(parse_timezone("bogus").is_err());
    }

    #[test]
    fn flags_round_trip() {
        for (v, ro) in [("/l1:+/l2::/d", false), ("/a\\:b:/u", true)] {
            let op = parse_overlay(v, ro).unwrap();
            let f = op_to_flag(&op);
            let val = f.split_once('=').unwrap().1;
            assert_eq!(parse_overlay(val, ro).unwrap(), op, "{f}");
        }
        let op = parse_bind("+/x:/y:norbind", true).unwrap();
        assert_eq!(
            parse_bind(op_to_flag(&op).split_once('=').unwrap().1, true).unwrap(),
            op
        );
    }
}
