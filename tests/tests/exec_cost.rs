//! The cost of the execs (issue 19's start-up goal): every start execs ns-run, ns-enter,
//! ns-mount and ns-caps. Figures for release builds are in the commits and the README; these
//! tests check the mechanisms that keep each exec cheap, on the build under test.

use ns_tests::bin;

/// The ELF type of a file: 2 (ET_EXEC, linked at a fixed address) or 3 (ET_DYN, PIE).
fn elf_type(name: &str) -> u16 {
    let bytes = std::fs::read(bin(name)).expect("read the binary");
    assert_eq!(&bytes[..4], b"\x7fELF", "{name} is not an ELF file");
    u16::from_le_bytes([bytes[16], bytes[17]])
}

#[test]
fn the_chains_stages_are_linked_at_a_fixed_address() {
    // A static-pie relocates itself at every exec: thousands of relocations written into
    // its read-only data, whose pages are copied (ns-caps: 68 page faults per exec against
    // 45 at a fixed address). The stages run once per start, before the payload exists.
    // (A build with NS_RUN_PIE=1 is a static-pie on purpose and fails this.)
    for name in ["ns-run", "ns-enter", "ns-mount", "ns-caps"] {
        assert_eq!(elf_type(name), 2, "{name} is not linked at a fixed address");
    }
}
