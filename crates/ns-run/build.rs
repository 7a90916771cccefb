//! ns-run is linked static and position-dependent (non-PIE): see build/no_pie.rs.
//!
//! The monitor stays resident for each running container. As a static-pie, its relocated
//! read-only data (~230 KiB) would be private, dirty copies in every monitor; at a fixed
//! address they are shared by all monitors. bench/density.sh measures the difference.
include!("../../build/no_pie.rs");

fn main() {
    link_no_pie("ns-run");
    println!("cargo:rerun-if-changed=build.rs");
}
