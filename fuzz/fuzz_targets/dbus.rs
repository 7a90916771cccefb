//! The D-Bus message reader (what the bus, or anyone on it, sends the monitor): any bytes
//! are refused with an error or read, never a panic, a stack overflow or an endless loop.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ns_host::dbus::Message::decode(data) {
        // What was read is written back (little-endian) and read again the same.
        let again = ns_host::dbus::Message::decode(&m.encode(m.serial)).unwrap();
        assert_eq!(again, m);
    }
});
