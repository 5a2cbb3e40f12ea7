//! From a target's modules to the dependencies between sibling modules,
//! and the cycles among them.
//!
//! A path written in module `M` that names something in module `T` is an
//! edge between the two children of their closest common ancestor that
//! lead to `M` and to `T`: `crate::proxy::pool::Pool` written in
//! `proxy::outbound::http` is `outbound → pool` among the children of
//! `proxy`; written in `mesh::cluster`, `mesh → proxy` among the crate
//! root's. A path to an ancestor of `M` (`super::*` in a `tests` module,
//! `crate::Error`) or to a descendant is no edge: a parent and its child
//! are one part of the design, siblings are two.
//!
//! `T` is the longest prefix of the path that is a module of the target:
//! what follows names an item. An item re-exported by a parent
//! (`crate::proxy::Pool` for `proxy::pool::Pool`) counts as the parent's.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use super::scan::Anchor;
use super::tree::Module;

/// A module's path from the crate root (empty: the root).
pub type ModPath = Vec<String>;

/// Where a path is written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Site {
    pub file: PathBuf,
    pub line: usize,
    /// The path as written (a leaf of a `use` group written out whole).
    pub written: String,
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.written)
    }
}

/// The dependencies between sibling modules of one target: `(from, to)`,
/// both full paths of children of the same parent, with every site that
/// makes the edge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    pub edges: BTreeMap<(ModPath, ModPath), Vec<Site>>,
}

/// A strongly connected set of sibling modules: each reaches every other
/// through the edges among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// Their common parent.
    pub parent: ModPath,
    /// Their names, sorted.
    pub members: Vec<String>,
    /// Every edge between two members, with its sites.
    pub edges: Vec<(String, String, Vec<Site>)>,
}

/// The graph of the modules of one target.
pub fn graph(modules: &[Module]) -> Graph {
    let known: BTreeSet<&[String]> = modules.iter().map(|m| m.path.as_slice()).collect();
    let mut g = Graph::default();
    for m in modules {
        for r in &m.refs {
            let target: ModPath = match r.anchor {
                Anchor::Crate => r.segments.clone(),
                // Above the crate root: not compiled code (a macro's
                // pattern, say), nothing to learn from.
                Anchor::Up(n) if n > m.path.len() => continue,
                Anchor::Up(n) => {
                    let mut t = m.path[..m.path.len() - n].to_vec();
                    t.extend(r.segments.iter().cloned());
                    t
                }
            };
            let Some((from, to)) = edge(&m.path, &module_prefix(&target, &known)) else {
                continue;
            };
            g.edges.entry((from, to)).or_default().push(Site {
                file: m.file.clone(),
                line: r.line,
                written: r.written(),
            });
        }
    }
    g
}

/// The longest prefix of `path` that is a module (the root at least).
fn module_prefix(path: &[String], known: &BTreeSet<&[String]>) -> ModPath {
    (0..=path.len())
        .rev()
        .map(|n| &path[..n])
        .find(|p| known.contains(p))
        .unwrap_or_default()
        .to_vec()
}

/// The edge that module `from` referring to module `to` makes: the two
/// children of their closest common ancestor on the way to each; none
/// when one is the other's ancestor (or they are the same).
pub fn edge(from: &[String], to: &[String]) -> Option<(ModPath, ModPath)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None;
    }
    Some((from[..=common].to_vec(), to[..=common].to_vec()))
}

impl Graph {
    /// Every set of two or more sibling modules that depend on each other
    /// in a circle, by parent then names.
    pub fn cycles(&self) -> Vec<Cycle> {
        let mut out: Vec<Cycle> = strongly_connected(&self.edges)
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|members| {
                let parent = members[0][..members[0].len() - 1].to_vec();
                let set: BTreeSet<&ModPath> = members.iter().collect();
                let edges = self
                    .edges
                    .iter()
                    .filter(|((a, b), _)| set.contains(a) && set.contains(b))
                    .map(|((a, b), sites)| (last(a), last(b), sites.clone()))
                    .collect();
                let mut names: Vec<String> = members.iter().map(last).collect();
                names.sort();
                Cycle {
                    parent,
                    members: names,
                    edges,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.parent, &a.members).cmp(&(&b.parent, &b.members)));
        out
    }
}

fn last(p: &ModPath) -> String {
    p.last().cloned().unwrap_or_default()
}

/// Tarjan's algorithm: the strongly connected components of the graph
/// whose edges are the keys of `edges`.
fn strongly_connected<V>(edges: &BTreeMap<(ModPath, ModPath), V>) -> Vec<Vec<ModPath>> {
    let mut next: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        next.entry(a).or_default().push(b);
        next.entry(b).or_default();
    }
    struct State<'a> {
        next: BTreeMap<&'a ModPath, Vec<&'a ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        out: Vec<Vec<ModPath>>,
    }
    fn connect<'a>(s: &mut State<'a>, v: &'a ModPath) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.next[v].clone() {
            if !s.index.contains_key(w) {
                connect(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            component.sort();
            s.out.push(component);
        }
    }
    let vertices: Vec<&ModPath> = next.keys().copied().collect();
    let mut s = State {
        next,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in vertices {
        if !s.index.contains_key(v) {
            connect(&mut s, v);
        }
    }
    s.out
}

/// `crate::a::b` (`crate` for the root).
pub fn display_path(p: &[String]) -> String {
    std::iter::once("crate")
        .chain(p.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("::")
}

impl fmt::Display for Cycle {
    /// The members, then each edge between them with the line of every
    /// path that makes it: what to change to cut the cycle.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cycle among the children of {}: {}",
            display_path(&self.parent),
            self.members.join(", ")
        )?;
        for (from, to, sites) in &self.edges {
            writeln!(f, "  {from} → {to}:")?;
            for s in sites {
                writeln!(f, "    {s}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Graph {
    /// Each parent's children and what they use, one line each.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut by_parent: BTreeMap<ModPath, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        for ((a, b), sites) in &self.edges {
            let parent = a[..a.len() - 1].to_vec();
            by_parent
                .entry(parent)
                .or_default()
                .entry(last(a))
                .or_default()
                .push(format!("{} ({})", last(b), sites.len()));
        }
        for (parent, children) in by_parent {
            writeln!(f, "{}:", display_path(&parent))?;
            for (child, uses) in children {
                writeln!(f, "  {child} → {}", uses.join(", "))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::test_files;
    use super::super::tree::load;
    use super::*;

    fn p(s: &str) -> ModPath {
        s.split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The graph of the crate whose files are `files` (root `src/lib.rs`):
    /// `from → to` per edge, with the lines of its sites.
    fn edges(files: &[(&str, &str)]) -> Vec<(String, Vec<usize>)> {
        let modules = load(Path::new("src/lib.rs"), &test_files(files)).unwrap();
        graph(&modules)
            .edges
            .into_iter()
            .map(|((a, b), sites)| {
                (
                    format!("{} → {}", a.join("::"), b.join("::")),
                    sites.iter().map(|s| s.line).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn an_edge_joins_the_children_of_the_closest_common_ancestor() {
        type Case<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>);
        let cases: &[Case] = &[
            // The brief's two examples.
            (
                "proxy::outbound::http",
                "proxy::pool",
                Some(("proxy::outbound", "proxy::pool")),
            ),
            ("mesh::cluster", "proxy::pool", Some(("mesh", "proxy"))),
            ("a", "b", Some(("a", "b"))),
            ("a::x::y", "b::z", Some(("a", "b"))),
            // Parent and child, either way, and a module and itself: none.
            ("proxy::pool::tests", "proxy::pool", None),
            ("proxy::pool", "proxy", None),
            ("proxy", "proxy::pool", None),
            ("proxy", "", None),
            ("", "proxy", None),
            ("proxy", "proxy", None),
        ];
        for (from, to, want) in cases {
            let want = want.map(|(a, b)| (p(a), p(b)));
            assert_eq!(edge(&p(from), &p(to)), want, "{from} → {to}");
        }
    }

    #[test]
    fn paths_become_edges_between_siblings_at_every_level() {
        let files = [
            ("src/lib.rs", "mod proxy; mod mesh; pub use crate::mesh::Mesh;"),
            ("src/proxy/mod.rs", "mod outbound; mod pool; pub use pool::Pool;"),
            (
                "src/proxy/outbound.rs",
                "use crate::proxy::pool::Pool;\nuse super::pool::Pooled;\nuse crate::proxy::Pool as P;",
            ),
            ("src/proxy/pool.rs", "#[cfg(test)] mod tests { use super::*; use crate::mesh::Mesh; }"),
            ("src/mesh.rs", "\n\nfn f() -> crate::proxy::pool::Pool { todo!() }"),
        ];
        assert_eq!(
            edges(&files),
            [
                ("mesh → proxy".to_string(), vec![3]),
                // The test module's path counts for its parents: `pool`
                // among proxy's children, `proxy` among the root's.
                ("proxy → mesh".to_string(), vec![1]),
                ("proxy::outbound → proxy::pool".to_string(), vec![1, 2]),
            ]
        );
    }

    #[test]
    fn use_groups_give_one_edge_per_sibling_named() {
        let files = [
            ("src/lib.rs", "mod a; mod b; mod c; mod d;"),
            (
                "src/a.rs",
                "use crate::{\n    b::{self, B},\n    c::C,\n    Root,\n};",
            ),
            ("src/b.rs", ""),
            ("src/c.rs", ""),
            ("src/d.rs", "use super::{a, d};"),
        ];
        assert_eq!(
            edges(&files),
            [
                ("a → b".to_string(), vec![2, 2]),
                ("a → c".to_string(), vec![3]),
                ("d → a".to_string(), vec![1]),
            ]
        );
    }

    #[test]
    fn finds_each_cycle_with_the_sites_of_its_edges() {
        let files = [
            ("src/lib.rs", "mod a; mod b; mod c; mod d; mod e;"),
            // a → b → c → a: one cycle of three; d → a only leads in.
            ("src/a.rs", "use crate::b::B;"),
            ("src/b.rs", "\nuse crate::c::C;"),
            ("src/c.rs", "\n\nuse super::a::A;"),
            ("src/d.rs", "use crate::a::A;"),
            // A cycle one level down, inside e.
            ("src/e/mod.rs", "mod x; mod y;"),
            ("src/e/x.rs", "use super::y::Y;"),
            ("src/e/y.rs", "use crate::e::x::X;"),
        ];
        let modules = load(Path::new("src/lib.rs"), &test_files(&files)).unwrap();
        let cycles = graph(&modules).cycles();
        let summary: Vec<(String, Vec<String>)> = cycles
            .iter()
            .map(|c| (display_path(&c.parent), c.members.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "crate".to_string(),
                    vec!["a".into(), "b".into(), "c".into()]
                ),
                ("crate::e".to_string(), vec!["x".into(), "y".into()]),
            ]
        );
        let report = cycles[0].to_string();
        for want in [
            "cycle among the children of crate: a, b, c",
            "  a → b:\n    src/a.rs:1: crate::b::B",
            "  b → c:\n    src/b.rs:2: crate::c::C",
            "  c → a:\n    src/c.rs:3: super::a::A",
        ] {
            assert!(report.contains(want), "{want:?} not in:\n{report}");
        }
        assert!(!report.contains("src/d.rs"), "{report}");
    }

    #[test]
    fn an_acyclic_tree_has_no_cycles() {
        let files = [
            ("src/lib.rs", "mod a; mod b;"),
            (
                "src/a.rs",
                "use crate::b::B; #[cfg(test)] mod tests { use super::*; use crate::a::A; }",
            ),
            ("src/b.rs", "pub struct B; use crate::Root;"),
        ];
        let modules = load(Path::new("src/lib.rs"), &test_files(&files)).unwrap();
        assert_eq!(graph(&modules).cycles(), []);
    }
}
