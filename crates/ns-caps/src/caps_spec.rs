//! Capability names and sets as nspawn reads them: comma-separated, `cap_` prefix required,
//! case-insensitive, numeric indexes accepted, `all` for every capability.

use caps::Capability;
use ns_core::{Error, Result};

/// nspawn's default retained set (26 capabilities), as a bit mask.
pub const DEFAULT_RETAINED: u64 = bit(Capability::CAP_AUDIT_CONTROL)
    | bit(Capability::CAP_AUDIT_WRITE)
    | bit(Capability::CAP_CHOWN)
    | bit(Capability::CAP_DAC_OVERRIDE)
    | bit(Capability::CAP_DAC_READ_SEARCH)
    | bit(Capability::CAP_FOWNER)
    | bit(Capability::CAP_FSETID)
    | bit(Capability::CAP_IPC_OWNER)
    | bit(Capability::CAP_KILL)
    | bit(Capability::CAP_LEASE)
    | bit(Capability::CAP_LINUX_IMMUTABLE)
    | bit(Capability::CAP_MKNOD)
    | bit(Capability::CAP_NET_BIND_SERVICE)
    | bit(Capability::CAP_NET_BROADCAST)
    | bit(Capability::CAP_NET_RAW)
    | bit(Capability::CAP_SETFCAP)
    | bit(Capability::CAP_SETGID)
    | bit(Capability::CAP_SETPCAP)
    | bit(Capability::CAP_SETUID)
    | bit(Capability::CAP_SYS_ADMIN)
    | bit(Capability::CAP_SYS_BOOT)
    | bit(Capability::CAP_SYS_CHROOT)
    | bit(Capability::CAP_SYS_NICE)
    | bit(Capability::CAP_SYS_PTRACE)
    | bit(Capability::CAP_SYS_RESOURCE)
    | bit(Capability::CAP_SYS_TTY_CONFIG);

const fn bit(c: Capability) -> u64 {
    1u64 << (c as u8)
}

/// Every capability this build knows.
pub fn all_mask() -> u64 {
    caps::all().iter().fold(0, |m, c| m | c.bitmask())
}

fn by_index(i: u8) -> Option<Capability> {
    caps::all().into_iter().find(|c| c.index() == i)
}

/// One word: `CAP_SYS_ADMIN` (any case), a number, or `all`.
fn parse_word(option: &str, list: &str, w: &str) -> Result<u64> {
    if w == "all" {
        return Ok(all_mask());
    }
    let cap = if let Ok(n) = w.parse::<u8>() {
        by_index(n)
    } else {
        w.to_ascii_uppercase().parse::<Capability>().ok()
    };
    cap.map(|c| c.bitmask())
        .ok_or_else(|| Error::invalid(option, list, &format!("unknown capability {w}")))
}

/// Several occurrences of a comma-separated option, OR-ed together.
pub fn parse_list(option: &str, values: &[String]) -> Result<u64> {
    let mut m = 0;
    for v in values {
        for w in v.split(',').filter(|w| !w.is_empty()) {
            m |= parse_word(option, v, w)?;
        }
    }
    Ok(m)
}

/// (defaults | --capability | NET_ADMIN with a private network) & !--drop-capability; with
/// a user namespace but the host's network, nspawn also drops NET_BIND_SERVICE.
pub fn retained(
    add: &[String],
    drop: &[String],
    private_network: bool,
    userns: bool,
) -> Result<u64> {
    let mut m = DEFAULT_RETAINED | parse_list("--capability", add)?;
    if private_network {
        m |= bit(Capability::CAP_NET_ADMIN);
    } else if userns {
        m &= !bit(Capability::CAP_NET_BIND_SERVICE);
    }
    Ok(m & !parse_list("--drop-capability", drop)?)
}

/// nspawn's checks on --ambient-capability.
pub fn check_ambient(ambient: u64, retained: u64, boot: bool) -> Result<()> {
    if ambient == 0 {
        return Ok(());
    }
    let list = upper(&names(ambient));
    if ambient == all_mask() {
        return Err(Error::invalid(
            "--ambient-capability",
            "all",
            "not supported",
        ));
    }
    if ambient & !retained != 0 {
        return Err(Error::invalid(
            "--ambient-capability",
            &list,
            "not fully covered by the retained capability set",
        ));
    }
    if boot {
        return Err(Error::invalid(
            "--ambient-capability",
            &list,
            "not useful for boot mode",
        ));
    }
    Ok(())
}

/// Lower-case names without `cap_`, in index order: `["chown", "sys_admin"]`.
pub fn names(mask: u64) -> Vec<String> {
    let mut v: Vec<Capability> = caps::all()
        .into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .collect();
    v.sort_by_key(|c| c.index());
    v.iter()
        .map(|c| {
            c.to_string()
                .trim_start_matches("CAP_")
                .to_ascii_lowercase()
        })
        .collect()
}

pub fn mask_of_names(names: &[String]) -> u64 {
    names
        .iter()
        .filter_map(|n| {
            format!("CAP_{}", n.to_ascii_uppercase())
                .parse::<Capability>()
                .ok()
        })
        .fold(0, |m, c| m | c.bitmask())
}

/// `CAP_CHOWN,CAP_SYS_ADMIN` for flags and messages.
pub fn upper(names: &[String]) -> String {
    let v: Vec<String> = names
        .iter()
        .map(|n| format!("CAP_{}", n.to_ascii_uppercase()))
        .collect();
    v.join(",")
}

pub fn to_set(mask: u64) -> caps::CapsHashSet {
    caps::all()
        .into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn default_set_is_nspawns() {
        assert_eq!(DEFAULT_RETAINED, 0xfdecafff);
        assert_eq!(DEFAULT_RETAINED.count_ones(), 26);
    }

    #[test]
    fn names_parse_like_nspawn() {
        assert_eq!(
            parse_list("--capability", &s(&["Cap_Sys_Admin"])).unwrap(),
            1 << 21
        );
        assert_eq!(parse_list("--capability", &s(&["21"])).unwrap(), 1 << 21);
        assert_eq!(
            parse_list("--capability", &s(&["CAP_NET_ADMIN,CAP_SYS_TIME"])).unwrap(),
            (1 << 12) | (1 << 25)
        );
        let e = parse_list("--capability", &s(&["SYS_ADMIN"])).unwrap_err();
        assert_eq!(
            e.msg,
            "--capability=SYS_ADMIN: unknown capability SYS_ADMIN"
        );
        assert!(parse_list("--drop-capability", &s(&["CAP_FOO"])).is_err());
        assert_eq!(
            parse_list("--capability", &s(&["all"])).unwrap(),
            all_mask()
        );
    }

    #[test]
    fn retained_sets_match_the_reference() {
        assert_eq!(retained(&[], &[], true, false).unwrap(), 0xfdecbfff);
        assert_eq!(
            retained(&[], &s(&["CAP_SYS_ADMIN,CAP_MKNOD"]), false, false).unwrap(),
            0xfdecafff & !(1 << 21) & !(1 << 27)
        );
        assert_eq!(retained(&[], &s(&["all"]), false, false).unwrap(), 0);
        // -U: NET_BIND_SERVICE dropped without a private network (nspawn's 0xfdecabff).
        assert_eq!(retained(&[], &[], false, true).unwrap(), 0xfdecabff);
        assert_eq!(retained(&[], &[], true, true).unwrap(), 0xfdecbfff);
    }

    #[test]
    fn ambient_must_be_retained() {
        assert!(check_ambient(1 << 13, DEFAULT_RETAINED, false).is_ok());
        let e = check_ambient(1 << 25, DEFAULT_RETAINED, false).unwrap_err();
        assert!(e.msg.contains("CAP_SYS_TIME"), "{}", e.msg);
        assert!(check_ambient(1 << 13, DEFAULT_RETAINED, true).is_err());
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(mask_of_names(&names(DEFAULT_RETAINED)), DEFAULT_RETAINED);
    }
}
