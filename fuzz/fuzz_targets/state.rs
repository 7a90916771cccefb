//! The state reader: any bytes in the state memfd are refused with an error or read, never a
//! panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = ns_core::state::State::from_json(data) {
        // What was read is written back and read again the same.
        let again = ns_core::state::State::from_json(s.to_json_pretty().as_bytes()).unwrap();
        assert_eq!(again, s);
    }
});
