//! Fuzzes the agent's protocol sniffing, which reads the first bytes of
//! every connection on a port of undeclared protocol (untrusted input).
//!
//! Beyond "no panic": once a prefix is classified (anything but `NeedMore`),
//! every longer input with that prefix gets the same verdict, so the proxy
//! may decide as soon as it can.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_transport::sniff::{sniff, Sniffed};

fuzz_target!(|data: &[u8]| {
    let full = sniff(data);
    for end in 0..data.len() {
        let verdict = sniff(&data[..end]);
        if verdict != Sniffed::NeedMore {
            assert_eq!(verdict, full, "decided on {end} bytes, then changed");
            break;
        }
    }
});
