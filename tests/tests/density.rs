//! Density (issue 19's memory goal): what a running container keeps resident on the host,
//! its monitor. Figures for release builds come from bench/density.sh; these tests check the
//! mechanisms that keep them small, on the build under test.

use ns_tests::{registered_sleeper, spawn_until, unique, Stopping, Tree};

/// One mapping of /proc/PID/smaps: (permissions, path, KiB by field).
struct Mapping {
    perms: String,
    path: String,
    fields: Vec<(String, u64)>,
}

impl Mapping {
    fn kib(&self, field: &str) -> u64 {
        self.fields
            .iter()
            .filter(|(f, _)| f == field)
            .map(|(_, v)| v)
            .sum()
    }

    fn private(&self) -> u64 {
        self.kib("Private_Clean") + self.kib("Private_Dirty")
    }
}

fn smaps(pid: i32) -> Vec<Mapping> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let head = words.first().copied().unwrap_or_default();
        if head.contains('-') && !head.ends_with(':') {
            maps.push(Mapping {
                perms: words.get(1).copied().unwrap_or_default().to_string(),
                path: words.get(5).copied().unwrap_or_default().to_string(),
                fields: Vec::new(),
            });
        } else if let (Some(m), Some(v)) = (maps.last_mut(), words.get(1)) {
            if let Ok(v) = v.parse() {
                m.fields.push((head.trim_end_matches(':').to_string(), v));
            }
        }
    }
    maps
}

/// A registered container (as users run it) whose payload sleeps; its monitor's smaps.
fn monitor_maps(tag: &str) -> Vec<Mapping> {
    let t = Tree::rootfs(tag);
    let name = unique(tag);
    let r = Stopping::new(spawn_until(registered_sleeper(&t, &name, &[]), "ready"));
    let maps = smaps(r.pid());
    let out = r.stop();
    assert!(out.stderr_lines().is_empty(), "{out}");
    maps
}

fn describe(maps: &[Mapping]) -> String {
    maps.iter()
        .filter(|m| m.private() > 0)
        .map(|m| format!("{} KiB {} {}\n", m.private(), m.perms, m.path))
        .collect()
}

#[test]
fn the_monitors_read_only_image_is_shared_not_relocated() {
    // A static-pie monitor relocates its read-only data at start: ~230 KiB of private dirty
    // pages in its read-only mapping of ns-run, in every container. Linked at a fixed
    // address, those pages are the file's, shared by all monitors; glibc's ifunc slots
    // (IRELATIVE, in .got.plt) are still written at start: a few pages.
    let maps = monitor_maps("relro");
    let own: Vec<&Mapping> = maps
        .iter()
        .filter(|m| m.path.ends_with("/ns-run"))
        .collect();
    assert!(
        !own.is_empty(),
        "no mapping of ns-run:\n{}",
        describe(&maps)
    );
    let dirty: u64 = own
        .iter()
        .filter(|m| !m.perms.contains('w'))
        .map(|m| m.kib("Private_Dirty"))
        .sum();
    assert!(
        dirty <= 16,
        "relocated read-only pages:\n{}",
        describe(&maps)
    );
}
