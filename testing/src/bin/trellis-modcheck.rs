//! `trellis-modcheck CRATE_DIR...`: prints, for each target of each crate,
//! which sibling modules use which (with how many paths), then every
//! cycle with the file and line of each path in it. Exits 1 when there is
//! a cycle, 2 on an error.
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use trellis_testing::modgraph::crate_graphs;

fn main() -> ExitCode {
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    if dirs.is_empty() || dirs.iter().any(|d| d.starts_with('-')) {
        eprintln!("usage: trellis-modcheck CRATE_DIR...");
        return ExitCode::from(2);
    }
    let mut out = String::new();
    let mut cycles = 0;
    for dir in &dirs {
        let targets = match crate_graphs(Path::new(dir)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        for t in targets {
            let _ = writeln!(out, "== {}\n{}", t.root.display(), t.graph);
            for c in t.graph.cycles() {
                cycles += 1;
                let _ = writeln!(out, "{c}");
            }
        }
    }
    let _ = writeln!(out, "{cycles} cycles");
    // A closed pipe (`| head`) is no error worth a panic.
    let _ = std::io::stdout().write_all(out.as_bytes());
    if cycles > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
