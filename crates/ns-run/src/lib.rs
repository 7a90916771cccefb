//! ns-run's command line as a library: nspawn's options (cli.rs), .nspawn settings files
//! (settings.rs) and the state they make (plan.rs). The binary (main.rs) adds the monitor;
//! the fuzz targets (fuzz/) drive these parsers directly.
#![forbid(unsafe_code)]

pub mod cli;
pub mod oci;
pub mod oci_mounts;
pub mod plan;
pub mod settings;
