//! Fuzzes `ca::check_csr`, which reads certificate signing requests sent by
//! workloads and joining nodes before they are trusted.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use trellis_controlplane::ca::{check_csr, CsrPolicy};

fuzz_target!(|data: &[u8]| {
    let policy = CsrPolicy {
        expected_uri: "spiffe://example.org/ns/default/sa/web".into(),
        requested_ttl: None,
        default_ttl: Duration::from_secs(86400),
        max_ttl: Duration::from_secs(86400),
    };
    // Only panics and hangs matter here; rejections are the expected outcome.
    let _ = check_csr(data, &policy);
});
