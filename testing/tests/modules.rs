//! The workspace's crates have no import cycles between sibling modules
//! (CONVENTIONS.md: dependencies point one way).
use std::path::Path;

use trellis_testing::modgraph::crate_graphs;

/// The crates checked: every member of the workspace. A cycle shows
/// with `cargo run -p trellis-testing --bin trellis-modcheck -- CRATE`,
/// each edge with the file and line of every path that makes it.
const CHECKED: &[&str] = &[
    "api",
    "identity",
    "transport",
    "dataplane",
    "controlplane",
    "agent",
    "eastwest-gateway",
    "installer",
    "e2e",
    "echo",
    "bench",
    "testing",
];

#[test]
fn workspace_modules_have_no_cycles() {
    // Read when the test runs, not when it was built: a test binary kept
    // in a shared target directory may have been built from another
    // checkout of the workspace.
    let here = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo");
    let root = Path::new(&here)
        .parent()
        .expect("the workspace root above testing/");
    let mut report = String::new();
    for name in CHECKED {
        let targets = crate_graphs(&root.join(name))
            .unwrap_or_else(|e| panic!("reading the modules of {name}: {e}"));
        for t in targets {
            for cycle in t.graph.cycles() {
                report.push_str(&format!("{}: {cycle}\n", t.root.display()));
            }
        }
    }
    assert!(report.is_empty(), "module cycles:\n{report}");
}
