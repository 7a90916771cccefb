//! Interface names and MAC addresses exactly as nspawn 252 derives them, so that a host's
//! configuration written for nspawn (firewall rules naming `ve-…`, DHCP leases keyed on MACs)
//! keeps working.

use siphasher::sip::SipHasher24;
use std::hash::Hasher;

/// IFNAMSIZ - 1.
const IFNAME_MAX: usize = 15;
/// nspawn's SHORTEN_IFNAME_HASH_KEY.
const SHORTEN_KEY: [u8; 16] = [
    0xe1, 0x90, 0xa4, 0x04, 0xa8, 0xef, 0x4b, 0x51, 0x8c, 0xcc, 0xc3, 0x3a, 0x9f, 0x11, 0xfc, 0xa2,
];
const URLSAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn siphash24(key: &[u8; 16], parts: &[&[u8]]) -> u64 {
    let mut h = SipHasher24::new_with_key(key);
    for p in parts {
        h.write(p);
    }
    h.finish()
}

/// A name of 16 characters or more keeps its first 11 and gets 4 characters of the
/// siphash24 of the whole name (URL-safe base64 of its low 24 bits).
pub fn shorten_ifname(name: &str) -> String {
    if name.len() <= IFNAME_MAX {
        return name.to_string();
    }
    let h = siphash24(&SHORTEN_KEY, &[name.as_bytes()]);
    let mut out: String = name.chars().take(IFNAME_MAX - 4).collect();
    for shift in [18, 12, 6, 0] {
        out.push(URLSAFE[((h >> shift) & 63) as usize] as char);
    }
    out
}

/// The kernel's rules for a link name: 1 to 15 bytes, no `/`, `:` or white space, not `.`
/// or `..`.
pub fn ifname_valid(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= IFNAME_MAX
        && n != "."
        && n != ".."
        && !n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// Which of nspawn's MAC keys.
#[derive(Clone, Copy)]
pub enum MacKey {
    Host,
    Container,
    VethExtraHost,
    VethExtraContainer,
    Macvlan,
}

impl MacKey {
    fn key(self) -> [u8; 16] {
        match self {
            MacKey::Host => [
                0x1a, 0x37, 0x6f, 0xc7, 0x46, 0xec, 0x45, 0x0b, 0xad, 0xa3, 0xd5, 0x31, 0x06, 0x60,
                0x5d, 0xb1,
            ],
            MacKey::Container => [
                0xc3, 0xc4, 0xf9, 0x19, 0xb5, 0x57, 0xb2, 0x1c, 0xe6, 0xcf, 0x14, 0x27, 0x03, 0x9c,
                0xee, 0xa2,
            ],
            MacKey::VethExtraHost => [
                0x48, 0xc7, 0xf6, 0xb7, 0xea, 0x9d, 0x4c, 0x9e, 0xb7, 0x28, 0xd4, 0xde, 0x91, 0xd5,
                0xbf, 0x66,
            ],
            MacKey::VethExtraContainer => [
                0xaf, 0x50, 0x17, 0x61, 0xce, 0xf9, 0x4d, 0x35, 0x84, 0x0d, 0x2b, 0x20, 0x54, 0xbe,
                0xce, 0x59,
            ],
            MacKey::Macvlan => [
                0x00, 0x13, 0x6d, 0xbc, 0x66, 0x83, 0x44, 0x81, 0xbb, 0x0c, 0xf9, 0x51, 0x1f, 0x24,
                0xa6, 0x6f,
            ],
        }
    }
}

/// The host's machine id, as 16 bytes.
fn host_machine_id() -> Option<[u8; 16]> {
    let s = std::fs::read_to_string("/etc/machine-id").ok()?;
    parse_machine_id(s.trim())
}

fn parse_machine_id(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(b)
}

/// nspawn's stable MAC: siphash24(machine id ‖ machine name [‖ index as u64 LE when > 0]),
/// first 6 bytes, unicast and locally administered. None without a host machine id (the
/// kernel then picks a random one).
pub fn generate_mac(machine: &str, key: MacKey, index: u64) -> Option<[u8; 6]> {
    mac_for(&host_machine_id()?, machine, key, index)
}

fn mac_for(machine_id: &[u8; 16], machine: &str, key: MacKey, index: u64) -> Option<[u8; 6]> {
    let idx = index.to_le_bytes();
    let mut parts: Vec<&[u8]> = vec![machine_id, machine.as_bytes()];
    if index > 0 {
        parts.push(&idx);
    }
    let h = siphash24(&key.key(), &parts).to_le_bytes();
    let mut mac = [h[0], h[1], h[2], h[3], h[4], h[5]];
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_nspawn_252() {
        assert_eq!(shorten_ifname("ve-abcdefghijkl"), "ve-abcdefghijkl");
        assert_eq!(shorten_ifname("ve-abcdefghijklm"), "ve-abcdefghyhe5");
        assert_eq!(shorten_ifname("ve-abcdefghijklmnopqrst"), "ve-abcdefghq1-A");
        assert_eq!(shorten_ifname("vb-abcdefghijklmnop"), "vb-abcdefgh3JDR");
    }

    #[test]
    fn macs_match_nspawn_252() {
        let fmt = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let zero = [0u8; 16];
        assert_eq!(
            fmt(mac_for(&zero, "test", MacKey::Host, 0).unwrap()),
            "36:8c:79:f3:25:01"
        );
        assert_eq!(
            fmt(mac_for(&zero, "test", MacKey::Container, 0).unwrap()),
            "4e:39:4f:82:c7:28"
        );
        let id = parse_machine_id("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            fmt(mac_for(&id, "test", MacKey::Host, 0).unwrap()),
            "06:ea:20:21:fb:64"
        );
        assert_eq!(
            fmt(mac_for(&id, "test", MacKey::Container, 0).unwrap()),
            "a2:ba:79:09:93:69"
        );
    }

    #[test]
    fn ifnames() {
        assert!(ifname_valid("eth0"));
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert!(!ifname_valid(bad), "{bad}");
        }
    }
}
