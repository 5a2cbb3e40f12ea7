//! Fuzzes the TLS ClientHello reader, which reads the first bytes of every
//! connection a gateway routes by SNI (untrusted input).
//!
//! Beyond "no panic": once a prefix gets a verdict (anything but
//! `NeedMore`), every longer input with that prefix gets the same one, so
//! a gateway may route as soon as it can.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_transport::client_hello::{parse, Peeked};

fuzz_target!(|data: &[u8]| {
    let full = parse(data);
    for end in 0..data.len() {
        let verdict = parse(&data[..end]);
        if verdict != Peeked::NeedMore {
            assert_eq!(verdict, full, "decided on {end} bytes, then changed");
            break;
        }
    }
});
