//! The module-cycle check: which sibling modules of a crate use each
//! other, and the cycles among them, each edge with the file and line of
//! every path that makes it (see [`graph`] for what counts as an edge).
//!
//! Steps, each a plain function over plain data: [`scan::scan`] reads the
//! module declarations and the paths from the crate root or an ancestor
//! out of one file's text; [`tree::load`] follows the declarations from a
//! target's root file to every module; [`graph::graph`] turns paths into
//! edges between siblings; [`graph::Graph::cycles`] finds the strongly
//! connected sets. [`crate_graphs`] runs them over a crate on disk.
//!
//! What it does not see: paths relative to the current module without
//! `self::` (`use pool::Pool` in `proxy/mod.rs`: a child, no edge anyway),
//! modules declared by macros, and targets whose root Cargo does not find
//! by itself (`[lib] path = ...`).
pub mod graph;
pub mod scan;
pub mod tree;

use std::io;
use std::path::{Path, PathBuf};

pub use graph::{Cycle, Graph, Site};

/// Why a crate's modules could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Lex {
        path: PathBuf,
        source: scan::LexError,
    },
    #[error(
        "module {module} declared at {}:{line} has no file: neither {} nor {} exists",
        declared_in.display(), tried[0].display(), tried[1].display()
    )]
    MissingModule {
        module: String,
        declared_in: PathBuf,
        line: usize,
        tried: [PathBuf; 2],
    },
    #[error("{}: no src/lib.rs, src/main.rs or src/bin/: is it a crate?", dir.display())]
    NoTargets { dir: PathBuf },
}

/// The module graph of one target of a crate.
#[derive(Debug, Clone)]
pub struct TargetGraph {
    /// Its root file: `src/lib.rs`, `src/main.rs`, `src/bin/NAME.rs`...
    pub root: PathBuf,
    pub graph: Graph,
}

/// The module graph of each target of the crate in `dir` (the library,
/// the main binary, each of `src/bin/`): each is a tree of its own, in
/// which `crate::` means its root.
pub fn crate_graphs(dir: &Path) -> Result<Vec<TargetGraph>, Error> {
    let roots = target_roots(dir)?;
    if roots.is_empty() {
        return Err(Error::NoTargets {
            dir: dir.to_path_buf(),
        });
    }
    roots
        .into_iter()
        .map(|root| {
            let modules = tree::load(&root, &|p: &Path| std::fs::read_to_string(p))?;
            Ok(TargetGraph {
                graph: graph::graph(&modules),
                root,
            })
        })
        .collect()
}

/// The root files of the targets Cargo finds by itself in `dir`.
fn target_roots(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let src = dir.join("src");
    let mut roots: Vec<PathBuf> = ["lib.rs", "main.rs"]
        .iter()
        .map(|f| src.join(f))
        .filter(|p| p.is_file())
        .collect();
    let bin = src.join("bin");
    if bin.is_dir() {
        let read = |e: io::Error| Error::Read {
            path: bin.clone(),
            source: e,
        };
        let mut bins = Vec::new();
        for entry in std::fs::read_dir(&bin).map_err(read)? {
            let path = entry.map_err(read)?.path();
            if path.extension().is_some_and(|e| e == "rs") && path.is_file() {
                bins.push(path);
            } else if path.join("main.rs").is_file() {
                bins.push(path.join("main.rs"));
            }
        }
        bins.sort();
        roots.extend(bins);
    }
    Ok(roots)
}

/// Reads from `files` (path → text) instead of the disk.
#[cfg(test)]
pub(crate) fn test_files(files: &[(&str, &str)]) -> impl Fn(&Path) -> io::Result<String> {
    let files: std::collections::BTreeMap<PathBuf, String> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    move |p: &Path| {
        files
            .get(p)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, p.display().to_string()))
    }
}
