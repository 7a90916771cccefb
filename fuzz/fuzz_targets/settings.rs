//! The .nspawn parser: any text gives settings or an error, never a panic; every setting
//! becomes options the command line takes.
#![no_main]
use clap::Parser;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(settings) = ns_run::settings::parse("fuzz.nspawn", text) {
        for s in settings {
            let mut argv = vec!["ns-run".to_string()];
            argv.extend(s.args);
            // May be refused (a bad value), but must not panic.
            let _ = ns_run::cli::Cli::try_parse_from(&argv);
        }
    }
});
