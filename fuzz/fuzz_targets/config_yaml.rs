//! Fuzzes the config reader, which reads whatever `trellis apply`,
//! `trellis validate` and the agent's `--config-file` are given (YAML as
//! Istio's Go library reads it, then Istio's schema and validation):
//! any input gets resources or errors, never a panic or a hang.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_api::config::parse_documents;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_documents(text);
    }
});
