//! ns-run's command line as a library: nspawn's options (cli.rs), .nspawn settings files
//! (settings.rs) and the state they make (plan.rs). The binary (main.rs) adds the monitor;
//! the fuzz targets (fuzz/) drive these parsers directly.
#![forbid(unsafe_code)]

pub mod cli;
pub mod linkjournal;
pub mod oci;
pub mod oci_mounts;
pub mod plan;
pub mod settings;

/// The chain's fast path for a stage's flags ([`ns_core::stage::stage_args`]) gives exactly
/// what clap gives for the same command line.
#[cfg(test)]
mod stage_args_tests {
    use ns_core::exec::state_argv;
    use ns_core::stage::{parse_args, stage_args};

    fn same<T: clap::Parser + Default + std::fmt::Debug>(set: impl Fn(&mut T, i32, Option<i32>)) {
        for sync in [Some(15), None] {
            let argv = state_argv("stage", 13, sync);
            let fast: T = stage_args("stage", &argv, &set);
            let clap: T = parse_args("stage", &argv);
            assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{argv:?}");
        }
    }

    #[test]
    fn each_stage_reads_the_chains_command_line_as_clap_does() {
        same(ns_enter::Args::set_fds);
        same(ns_mount::Args::set_fds);
        same(ns_caps::Args::set_fds);
    }
}
