//! Fuzzes `JoinToken::parse`, which reads operator-pasted (untrusted) text.
//!
//! Beyond "no panic": any input that parses must re-encode to a token that
//! parses back to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_identity::join_token::JoinToken;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = JoinToken::parse(s) {
        let again = JoinToken::parse(&token.encode()).expect("a parsed token must re-encode");
        assert_eq!(again, token);
    }
});
