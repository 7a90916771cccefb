//! The option parser: NUL-separated arguments go through the getopt-style splitter and clap;
//! an error or a parse, never a panic, and the splitter and clap agree on what is an option.
#![no_main]
use clap::Parser;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let argv: Vec<String> = std::iter::once("ns-run")
        .chain(text.split('\0'))
        .map(str::to_string)
        .collect();
    // Built once for all inputs (as ns-run builds it once per start).
    static CMD: std::sync::OnceLock<clap::Command> = std::sync::OnceLock::new();
    let cmd = CMD.get_or_init(ns_run::cli::command);
    let split = ns_run::cli::split_options(cmd, &argv);
    let parsed = ns_run::cli::Cli::try_parse_from(&argv);
    if let (Ok((given, _)), Ok(_)) = (&split, &parsed) {
        // Every option the splitter found is one clap knows.
        for g in given {
            assert!(cmd.get_arguments().any(|a| a.get_id() == g.id.as_str()));
        }
    }
});
