//! ns-run is linked static and position-dependent (non-PIE), not static-pie as the stages.
//!
//! The monitor stays resident for each running container. As a static-pie, its start-up
//! code writes every relocated pointer of its read-only data (.data.rel.ro, the GOT: vtables,
//! string slices, panic locations), so those pages (~230 KiB) become private, dirty copies in
//! every monitor. Linked at a fixed address, they are the file's own pages: read from the page
//! cache and shared by all monitors. The cost is ASLR of the monitor's image (its heap, stack
//! and mmap areas stay randomized); bench/density.sh measures the difference. `NS_RUN_PIE=1`
//! at build time keeps the static-pie (ASLR of the image, ~230 KiB more per container).
//!
//! rustc links a crt-static binary with `-static-pie`; `-no-pie -static` after it turn that
//! into a classic static executable (the objects are position-independent code, which links
//! as well at a fixed address).
fn main() {
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let gnu = std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    let pie = std::env::var_os("NS_RUN_PIE").is_some_and(|v| v == "1");
    if gnu && !pie && features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bin=ns-run=-no-pie");
        println!("cargo:rustc-link-arg-bin=ns-run=-static");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NS_RUN_PIE");
}
