//! Density (issue 19's memory goal): what a running container keeps resident on the host,
//! its monitor. Figures for release builds come from bench/density.sh; these tests check the
//! mechanisms that keep them small, on the build under test.

use ns_tests::{registered_sleeper, spawn_until, unique, Stopping, Tree};

/// One mapping of /proc/PID/smaps: (address range, permissions, path, KiB by field).
struct Mapping {
    range: String,
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
                range: head.to_string(),
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
        .map(|m| {
            let anon = m.kib("Anonymous");
            format!(
                "{} KiB ({anon} copied) {} {}\n",
                m.private(),
                m.perms,
                m.path
            )
        })
        .collect()
}

#[test]
fn the_monitors_read_only_image_is_shared_not_relocated() {
    // A static-pie monitor relocates its read-only data at start: ~230 KiB of copied
    // (anonymous) pages in its read-only mapping of ns-run, in every container. Linked at a
    // fixed address, those pages are the file's, shared by all monitors; glibc's ifunc
    // slots (IRELATIVE, in .got.plt) are still written at start: a few pages.
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
    // Copied (anonymous) pages: those the monitor wrote; not the page cache's own dirty
    // pages (of a binary just built), which Private_Dirty counts too.
    let copied: u64 = own
        .iter()
        .filter(|m| !m.perms.contains('w'))
        .map(|m| m.kib("Anonymous"))
        .sum();
    assert!(
        copied <= 16,
        "relocated read-only pages:\n{}",
        describe(&maps)
    );
}

/// Private KiB of the monitor's mappings named `name` ([heap], [stack]).
fn private_of(pid: i32, name: &str) -> u64 {
    smaps(pid)
        .iter()
        .filter(|m| m.path == name)
        .map(Mapping::private)
        .sum()
}

#[test]
fn the_monitor_gives_back_its_start_up_heap_and_stack_once_the_payload_runs() {
    // Start-up (parsing, planning, the chain's setup) touches far more heap and stack than
    // the monitor's loop needs; once the payload runs they go back to the kernel: the heap's
    // free pages (musl's allocator unmaps them as they empty; glibc's needed malloc_trim),
    // the stack below the loop (MADV_DONTNEED). Without that, the monitor of a debug build
    // keeps ~128 KiB of heap and ~480 KiB of stack; keeping clap's command line (~90 KiB)
    // also fails this. musl's heap is mostly anonymous mappings, so those count too.
    const LIMIT_KIB: u64 = 96;
    let t = Tree::rootfs("shed");
    let name = unique("shed");
    let mut r = Stopping::new(spawn_until(registered_sleeper(&t, &name, &[]), "ready"));
    let pid = r.pid();
    // The payload printed `ready`: the monitor sheds when it sees the chain's end (at once).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let sizes = || {
        let heap = private_of(pid, "[heap]") + private_of(pid, "");
        (heap, private_of(pid, "[stack]"))
    };
    while sizes().0.max(sizes().1) > LIMIT_KIB && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (heap, stack) = sizes();
    let all = describe(&smaps(pid));
    assert!(r.is_running(), "the container ended early");
    let out = r.stop();
    assert!(out.stderr_lines().is_empty(), "{out}");
    assert!(heap <= LIMIT_KIB, "heap {heap} KiB kept:\n{all}");
    assert!(stack <= LIMIT_KIB, "stack {stack} KiB kept:\n{all}");
}

#[test]
fn the_monitor_keeps_a_random_heap_and_stack() {
    // Linked at a fixed address, the monitor's image has no ASLR; its heap (brk), stack and
    // mmap areas must still move from one monitor to the next.
    let t = Tree::rootfs("aslr");
    let places = |tag: &str| {
        let name = unique(tag);
        let r = Stopping::new(spawn_until(registered_sleeper(&t, &name, &["-x"]), "ready"));
        let maps = smaps(r.pid());
        r.stop();
        let at = |path: &str| {
            maps.iter()
                .find(|m| m.path == path)
                .map(|m| m.range.clone())
        };
        (at("[heap]"), at("[stack]"), at("[vdso]"))
    };
    let (a, b) = (places("aslr1"), places("aslr2"));
    assert!(a.0.is_some() && a.1.is_some() && a.2.is_some(), "{a:?}");
    assert!(a.0 != b.0 && a.1 != b.1 && a.2 != b.2, "{a:?} {b:?}");
}
