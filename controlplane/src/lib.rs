//! `trellis-controlplane`: the Raft-replicated control plane of Trellis.
//!
//! A node holds a replica of the mesh's store ([`raft`]: openraft with its
//! log in a write-ahead log and its state in memory, peers over tonic with
//! mTLS), runs the mesh certificate authority ([`ca`]: root → per-node
//! intermediate → leaf, keys sealed at rest) and checks join tokens
//! ([`tokens`]). It stores the mesh's Istio configuration ([`config`]) and
//! the workloads that register themselves ([`discovery`]), and streams to
//! every agent what concerns it ([`push`]). [`node::Node`] is a running
//! node and the operations its gRPC services ([`api`]) call; [`bootstrap`]
//! starts one (`init`, `join`, `run`).
//!
//! The modules are in three layers, and each uses only those below it:
//!
//! 1. **The store and pure computations.** [`tokens`] and [`ca`] use no
//!    other module; [`raft`] (the log, the state machine, the replicated
//!    state and its pure commands) uses only `tokens`, and tells who
//!    listens which keys each applied batch changed without knowing who
//!    they are; [`config`] (parsing and storing applied resources) uses
//!    `raft`'s state; [`push`] (items, scopes, snapshots and responses,
//!    all pure, and the task that rebuilds the snapshot after a change)
//!    uses `raft` and `config`. None of them knows of a node or a service.
//! 2. **The node's wiring.** [`node`] (Raft, the replica, the CA and the
//!    push state together; operations run on the leader or forwarded to
//!    it; [`node::NodeError`]) uses layer 1; [`discovery`] (the workload
//!    registry, written through the node) uses `node` and layer 1. Neither
//!    knows of the gRPC services.
//! 3. **The services and the start.** [`api`] (every gRPC service, the
//!    agents' `Discovery` stream among them) uses layers 1 and 2;
//!    [`bootstrap`] uses everything, `api` included.
//!
//! Within a module, too, dependencies point one way. A test holds the
//! modules to this order.
#![forbid(unsafe_code)]

pub mod api;
pub mod bootstrap;
pub mod ca;
pub mod config;
pub mod discovery;
pub mod node;
pub mod push;
pub mod raft;
pub mod tokens;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The modules from the bottom up: each may use only those before it.
    const LAYERS: &[&str] = &[
        "tokens",
        "ca",
        "raft",
        "config",
        "push",
        "node",
        "discovery",
        "api",
        "bootstrap",
        // The binary's own (main.rs): on top of the library.
        "systemd",
    ];

    #[test]
    fn every_module_uses_only_the_modules_below_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut wrong = Vec::new();
        for file in rust_files(&src) {
            let rel = file.strip_prefix(&src).expect("under src");
            let mut parts = rel.components();
            let first = parts.next().expect("a path").as_os_str().to_string_lossy();
            let module = match parts.next() {
                Some(_) => first.to_string(),
                None if first == "lib.rs" || first == "main.rs" => continue,
                None => first.trim_end_matches(".rs").to_string(),
            };
            let rank = LAYERS
                .iter()
                .position(|m| *m == module)
                .unwrap_or_else(|| panic!("module {module} is not in LAYERS"));
            let text = std::fs::read_to_string(&file).expect("a source file reads");
            for used in used_modules(&text) {
                let ok = used == module || LAYERS[..rank].contains(&used.as_str());
                if !ok {
                    wrong.push(format!("{} uses {used}", rel.display()));
                }
            }
        }
        assert!(wrong.is_empty(), "against the layers: {wrong:#?}");
    }

    fn rust_files(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).expect("src reads") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                files.extend(rust_files(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
        files
    }

    /// The first segment of every path from the crate root in `text`
    /// (`use` trees, paths in code and in doc links).
    fn used_modules(text: &str) -> Vec<String> {
        let ident = |s: &str| -> String {
            s.trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        let mut used = Vec::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            let Some(group) = rest.strip_prefix('{') else {
                used.push(ident(rest));
                continue;
            };
            // The top-level items of `crate::{a::b, c::{d, e}}`.
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        used.push(ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            used.push(ident(&item));
        }
        used.retain(|m| !m.is_empty());
        used
    }

    #[test]
    fn used_modules_reads_paths_and_use_trees() {
        let text = "use crate::raft::Store;\n\
                    use crate::{config, node::{Node, NodeError}, push::item::Item};\n\
                    /// See [`crate::api`].";
        assert_eq!(
            used_modules(text),
            ["raft", "config", "node", "push", "api"]
        );
    }
}
