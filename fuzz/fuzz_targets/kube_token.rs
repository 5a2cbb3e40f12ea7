//! Fuzzes `kube_token::Claims::decode`, which reads a pod's service-account
//! token as any caller of the CA may send it (untrusted), before and
//! whatever the API server says of it.
//!
//! Beyond "no panic": a subject read as a service account is exactly
//! `system:serviceaccount:NS:SA` of the two names it gave.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_identity::kube_token::Claims;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(claims) = Claims::decode(s) {
        let _ = claims.audiences();
        if let Ok((ns, sa)) = claims.service_account() {
            assert_eq!(claims.sub, format!("system:serviceaccount:{ns}:{sa}"));
        }
    }
});
