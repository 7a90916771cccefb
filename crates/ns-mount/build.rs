//! ns-mount is linked static and position-dependent (non-PIE): see build/no_pie.rs. It runs
//! for a few milliseconds per start, before the payload exists; a fixed address saves the
//! self-relocation of a static-pie at every exec.
include!("../../build/no_pie.rs");

fn main() {
    link_no_pie("ns-mount");
    println!("cargo:rerun-if-changed=build.rs");
}
