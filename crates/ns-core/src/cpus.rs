//! CPU and memory-node lists as the kernel and systemd write them (`0-3,6`; spaces separate
//! too): `--cpu-affinity=`, and `AllowedCPUs=`/`AllowedMemoryNodes=` of `--property=`.

/// The numbers of `v`, sorted and without repeats; the error says what is wrong (the
/// caller names the option and value).
pub fn parse(v: &str) -> Result<Vec<usize>, String> {
    let max = nix::sched::CpuSet::count();
    let mut out = Vec::new();
    for item in v.split([',', ' ']).filter(|s| !s.is_empty()) {
        let num = |s: &str| {
            s.parse::<usize>()
                .ok()
                .filter(|&n| n < max)
                .ok_or_else(|| format!("{s} is not a CPU number below {max}"))
        };
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(item)?, num(item)?),
        };
        if a > b {
            return Err(format!("{item} is an empty range"));
        }
        out.extend(a..=b);
    }
    if out.is_empty() {
        return Err("no CPU given".into());
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `ids` written back with ranges: [0, 1, 3] is `0-1,3`.
pub fn format(ids: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        assert_eq!(super::parse("0-2,5 1").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(super::format(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        for bad in ["", "3-1", "a", "99999"] {
            assert!(super::parse(bad).is_err(), "{bad}");
        }
    }
}
