//! A crate target's module tree, from its root file down the `mod`
//! declarations, with the file of each module found as rustc finds it:
//! `mod x;` in a crate root or a `mod.rs` is `x.rs` or `x/mod.rs` beside
//! it; in `a.rs` it is `a/x.rs` or `a/x/mod.rs`; `#[path = "..."]` names
//! the file; `mod x { ... }` is a module in the same file. Files are read
//! through a function, so that tests can give a tree of their own.
use std::io;
use std::path::{Path, PathBuf};

use super::scan::{scan, ChildBody, ModuleText, PathRef};
use super::Error;

/// One module of a target: its path from the crate root (empty for the
/// root), the file it is written in and the paths it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub path: Vec<String>,
    pub file: PathBuf,
    pub refs: Vec<PathRef>,
}

/// Every module of the target whose root file is `root`, parents before
/// their children. `read` returns a file's text; `NotFound` tells that a
/// candidate file for a module does not exist.
pub fn load(root: &Path, read: &dyn Fn(&Path) -> io::Result<String>) -> Result<Vec<Module>, Error> {
    let text = read_scan(root, read)?;
    let dir = root.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut modules = Vec::new();
    visit(
        Vec::new(),
        root,
        text,
        &Dirs {
            children: dir.clone(),
            path_attr: dir,
        },
        read,
        &mut modules,
    )?;
    Ok(modules)
}

/// Where the files of a module's children are.
struct Dirs {
    /// `mod x;` without a `#[path]`: `CHILDREN/x.rs` or `CHILDREN/x/mod.rs`.
    children: PathBuf,
    /// A `#[path = "p"]` is relative to this directory.
    path_attr: PathBuf,
}

fn visit(
    path: Vec<String>,
    file: &Path,
    text: ModuleText,
    dirs: &Dirs,
    read: &dyn Fn(&Path) -> io::Result<String>,
    modules: &mut Vec<Module>,
) -> Result<(), Error> {
    let ModuleText { children, refs } = text;
    modules.push(Module {
        path: path.clone(),
        file: file.to_path_buf(),
        refs,
    });
    for child in children {
        let mut child_path = path.clone();
        child_path.push(child.name.clone());
        match child.body {
            ChildBody::Inline(body) => {
                // Inside `mod x { }`, paths to files go through `x/`.
                let inner = dirs.children.join(&child.name);
                let child_dirs = Dirs {
                    children: inner.clone(),
                    path_attr: inner,
                };
                visit(child_path, file, body, &child_dirs, read, modules)?;
            }
            ChildBody::File { path: Some(p) } => {
                let child_file = dirs.path_attr.join(p);
                let text = read_scan(&child_file, read)?;
                // A file named by `#[path]` holds its children beside it,
                // as a `mod.rs` does.
                let dir = child_file.parent().unwrap_or(Path::new("")).to_path_buf();
                let child_dirs = Dirs {
                    children: dir.clone(),
                    path_attr: dir,
                };
                visit(child_path, &child_file, text, &child_dirs, read, modules)?;
            }
            ChildBody::File { path: None } => {
                let flat = dirs.children.join(format!("{}.rs", child.name));
                let nested = dirs.children.join(&child.name).join("mod.rs");
                let (child_file, source) = match read(&flat) {
                    Ok(s) => (flat, s),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => match read(&nested) {
                        Ok(s) => (nested, s),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            return Err(Error::MissingModule {
                                module: child_path.join("::"),
                                declared_in: file.to_path_buf(),
                                line: child.line,
                                tried: [flat, nested],
                            })
                        }
                        Err(source) => {
                            return Err(Error::Read {
                                path: nested,
                                source,
                            })
                        }
                    },
                    Err(source) => return Err(Error::Read { path: flat, source }),
                };
                let text = scan(&source).map_err(|source| Error::Lex {
                    path: child_file.clone(),
                    source,
                })?;
                // `x.rs` keeps its children in `x/`, `x/mod.rs` beside it.
                let child_dirs = Dirs {
                    children: dirs.children.join(&child.name),
                    path_attr: child_file.parent().unwrap_or(Path::new("")).to_path_buf(),
                };
                visit(child_path, &child_file, text, &child_dirs, read, modules)?;
            }
        }
    }
    Ok(())
}

fn read_scan(file: &Path, read: &dyn Fn(&Path) -> io::Result<String>) -> Result<ModuleText, Error> {
    let source = read(file).map_err(|source| Error::Read {
        path: file.to_path_buf(),
        source,
    })?;
    scan(&source).map_err(|source| Error::Lex {
        path: file.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_files;
    use super::*;

    fn tree(files: &[(&str, &str)]) -> Vec<(String, String)> {
        load(Path::new("src/lib.rs"), &test_files(files))
            .unwrap()
            .into_iter()
            .map(|m| (m.path.join("::"), m.file.display().to_string()))
            .collect()
    }

    #[test]
    fn finds_each_module_file_as_rustc_does() {
        let files = [
            ("src/lib.rs", "mod a; pub mod b; mod c { mod d; }"),
            ("src/a.rs", "mod x;"),
            ("src/a/x.rs", ""),
            ("src/b/mod.rs", "mod y;"),
            ("src/b/y.rs", "#[path = \"y_tests.rs\"] mod tests;"),
            ("src/b/y_tests.rs", ""),
            ("src/c/d.rs", ""),
        ];
        let want = [
            ("", "src/lib.rs"),
            ("a", "src/a.rs"),
            ("a::x", "src/a/x.rs"),
            ("b", "src/b/mod.rs"),
            ("b::y", "src/b/y.rs"),
            ("b::y::tests", "src/b/y_tests.rs"),
            ("c", "src/lib.rs"),
            ("c::d", "src/c/d.rs"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(m, f)| (m.to_string(), f.to_string()))
            .collect();
        assert_eq!(tree(&files), want);
    }

    #[test]
    fn a_declared_module_without_a_file_is_an_error_naming_both_candidates() {
        let err = load(
            Path::new("src/lib.rs"),
            &test_files(&[("src/lib.rs", "\nmod gone;")]),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("gone") && msg.contains("src/lib.rs:2") && msg.contains("src/gone/mod.rs"),
            "{msg}"
        );
    }
}
