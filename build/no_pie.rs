// Shared by the build scripts of the binaries linked at a fixed address (`include!`d).
//
// rustc links a crt-static binary with `-static-pie`; `-no-pie -static` after it turn that
// into a classic static executable (the objects are position-independent code, which links
// as well at a fixed address). A static-pie relocates itself at every start: its start-up
// code writes every relocated pointer of its read-only data (.data.rel.ro, the GOT: vtables,
// string slices, panic locations), a few thousand relocations whose pages become private,
// dirty copies (page faults, ~0.1 ms per exec here). At a fixed address there is nothing to
// relocate and those pages are the file's own, shared through the page cache. The cost is
// ASLR of the image (heap, stack, mmap areas and vdso stay randomized). `NS_RUN_PIE=1` at
// build time keeps the static-pie for all of them.

/// Link `bin` at a fixed address, unless `NS_RUN_PIE=1` or the target is not static glibc.
fn link_no_pie(bin: &str) {
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let gnu = std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    let pie = std::env::var_os("NS_RUN_PIE").is_some_and(|v| v == "1");
    if gnu && !pie && features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bin={bin}=-no-pie");
        println!("cargo:rustc-link-arg-bin={bin}=-static");
    }
    println!("cargo:rerun-if-env-changed=NS_RUN_PIE");
    // Each includer is a crate of crates/: this file is two levels up from its manifest.
    println!("cargo:rerun-if-changed=../../build/no_pie.rs");
}
