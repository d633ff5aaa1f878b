//! The policy parser on arbitrary text: it may refuse, never panic, and an
//! error always has a line and column.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = policy::Policy::parse(text) {
        assert!(e.position.line >= 1 && e.position.column >= 1, "{e}");
    }
});
