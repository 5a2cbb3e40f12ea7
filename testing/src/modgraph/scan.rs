//! What one source file says about modules: the modules it declares
//! (`mod x;`, `mod x { ... }`) and every path it writes from the crate root
//! or from an ancestor (`crate::a::b`, `super::c`, `self::super::d`, and
//! each leaf of a `use crate::{a, b::{c, d}}` group).
//!
//! The file is read with proc-macro2's tokenizer, which skips comments
//! (doc comments become string attributes) and string literals exactly as
//! rustc does, and matches brackets, so that a group is one token. Code
//! under `#[cfg(test)]` and in macro bodies counts like any other: it is
//! compiled into the same module.
use proc_macro2::{Delimiter, Group, Spacing, TokenStream, TokenTree};

/// The modules and paths of one module's text: a file, or the body of an
/// inline `mod x { ... }`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModuleText {
    /// Child modules in the order declared.
    pub children: Vec<ChildModule>,
    /// Paths from the crate root or an ancestor, in the order written.
    pub refs: Vec<PathRef>,
}

/// A `mod NAME` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildModule {
    pub name: String,
    /// Line of the `mod` keyword (1-based).
    pub line: usize,
    pub body: ChildBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildBody {
    /// `mod x;`: its text is in another file; `path` is the value of a
    /// `#[path = "..."]` attribute on it.
    File { path: Option<String> },
    /// `mod x { ... }`.
    Inline(ModuleText),
}

/// A path from the crate root or from an ancestor of the module it is
/// written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRef {
    /// Line of its first token (1-based); in a `use` group, of the leaf's.
    pub line: usize,
    pub anchor: Anchor,
    /// The names after the anchor; they may end in an item's name
    /// (`crate::proxy::Pool`), not only modules'.
    pub segments: Vec<String>,
}

/// Where a path starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// `crate::` (or `$crate::` in a macro).
    Crate,
    /// `self::` (0), `super::` (1), `super::super::` (2), ...
    Up(usize),
}

impl PathRef {
    /// The path as it could be written: `crate::a::b`, `super::super::c`.
    pub fn written(&self) -> String {
        let mut parts: Vec<&str> = match self.anchor {
            Anchor::Crate => vec!["crate"],
            Anchor::Up(0) => vec!["self"],
            Anchor::Up(n) => vec!["super"; n],
        };
        parts.extend(self.segments.iter().map(String::as_str));
        parts.join("::")
    }
}

/// Source text that is not Rust tokens (an unclosed string or bracket).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: not Rust tokens: {message}")]
pub struct LexError {
    pub line: usize,
    pub message: String,
}

/// The modules and paths in `source`, the text of one file.
pub fn scan(source: &str) -> Result<ModuleText, LexError> {
    let tokens: TokenStream = source
        .parse()
        .map_err(|e: proc_macro2::LexError| LexError {
            line: e.span().start().line,
            message: e.to_string(),
        })?;
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut text = ModuleText::default();
    scan_tokens(&tokens, &mut text);
    Ok(text)
}

/// Scans one level of tokens (and the groups in it) into `out`.
fn scan_tokens(tokens: &[TokenTree], out: &mut ModuleText) {
    // A `#[path = "..."]` seen, waiting for the `mod` it belongs to.
    let mut path_attr: Option<String> = None;
    let mut i = 0;
    while i < tokens.len() {
        // Outer attribute: `#[...]`.
        if is_punct(&tokens[i], '#') {
            if let Some(TokenTree::Group(g)) = tokens.get(i + 1) {
                if g.delimiter() == Delimiter::Bracket {
                    if let Some(p) = path_attribute(g) {
                        path_attr = Some(p);
                    }
                    scan_group(g, out);
                    i += 2;
                    continue;
                }
            }
        }
        // Visibility between an attribute and `mod`: `pub`, `pub(crate)`.
        if is_ident(&tokens[i], "pub") {
            i += 1;
            if let Some(TokenTree::Group(g)) = tokens.get(i) {
                if g.delimiter() == Delimiter::Parenthesis {
                    scan_group(g, out);
                    i += 1;
                }
            }
            continue;
        }
        if is_ident(&tokens[i], "mod") {
            if let Some(TokenTree::Ident(name)) = tokens.get(i + 1) {
                let line = tokens[i].span().start().line;
                let name = name.to_string();
                let name = name.strip_prefix("r#").unwrap_or(&name).to_string();
                match tokens.get(i + 2) {
                    Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace => {
                        let mut body = ModuleText::default();
                        let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                        scan_tokens(&inner, &mut body);
                        out.children.push(ChildModule {
                            name,
                            line,
                            body: ChildBody::Inline(body),
                        });
                        path_attr = None;
                        i += 3;
                        continue;
                    }
                    Some(t) if is_punct(t, ';') => {
                        out.children.push(ChildModule {
                            name,
                            line,
                            body: ChildBody::File {
                                path: path_attr.take(),
                            },
                        });
                        i += 3;
                        continue;
                    }
                    _ => {}
                }
            }
        }
        path_attr = None;
        if starts_path(tokens, i) {
            i = scan_path(tokens, i, out);
            continue;
        }
        if let TokenTree::Group(g) = &tokens[i] {
            scan_group(g, out);
        }
        i += 1;
    }
}

/// A group's tokens belong to the same module (a function body, an impl,
/// an attribute's arguments): scanned into the same `out`.
fn scan_group(g: &Group, out: &mut ModuleText) {
    let inner: Vec<TokenTree> = g.stream().into_iter().collect();
    scan_tokens(&inner, out);
}

/// The value of `path = "..."` (the inside of `#[...]`).
fn path_attribute(attr: &Group) -> Option<String> {
    let t: Vec<TokenTree> = attr.stream().into_iter().collect();
    match &t[..] {
        [name, eq, TokenTree::Literal(lit)] if is_ident(name, "path") && is_punct(eq, '=') => {
            let s = lit.to_string();
            // A plain string literal; a raw one (r"...") would need more.
            Some(s.strip_prefix('"')?.strip_suffix('"')?.to_string())
        }
        _ => None,
    }
}

/// Whether a path from the crate root or an ancestor starts at `i`:
/// `crate`, `self` or `super` followed by `::`, and not itself after `::`
/// (`a::self` is no anchor).
fn starts_path(tokens: &[TokenTree], i: usize) -> bool {
    let anchor = ["crate", "self", "super"]
        .iter()
        .any(|k| is_ident(&tokens[i], k));
    anchor && is_path_sep(tokens, i + 1) && !(i >= 2 && is_path_sep(tokens, i - 2))
}

/// Reads the path starting at `i` into `out` (several, for a `use`
/// group); returns the index after it.
fn scan_path(tokens: &[TokenTree], mut i: usize, out: &mut ModuleText) -> usize {
    let line = tokens[i].span().start().line;
    let mut anchor = if is_ident(&tokens[i], "crate") {
        Anchor::Crate
    } else if is_ident(&tokens[i], "super") {
        Anchor::Up(1)
    } else {
        Anchor::Up(0)
    };
    i += 1;
    // `super::super::`, `self::super::`.
    while is_path_sep(tokens, i) && tokens.get(i + 2).is_some_and(|t| is_ident(t, "super")) {
        if let Anchor::Up(n) = &mut anchor {
            *n += 1;
        }
        i += 3;
    }
    let mut segments = Vec::new();
    while is_path_sep(tokens, i) {
        match tokens.get(i + 2) {
            Some(TokenTree::Ident(id)) => {
                segments.push(id.to_string());
                i += 3;
            }
            Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace => {
                let mut leaves = Vec::new();
                use_group(g, &mut Vec::new(), &mut leaves);
                for (leaf_line, rest) in leaves {
                    let mut s = segments.clone();
                    s.extend(rest);
                    out.refs.push(PathRef {
                        line: leaf_line,
                        anchor,
                        segments: s,
                    });
                }
                return i + 3;
            }
            // `*`, `<T>`: the path's names end here.
            _ => break,
        }
    }
    out.refs.push(PathRef {
        line,
        anchor,
        segments,
    });
    i
}

/// The leaves of a `use` group `{a, b::c, d::{self, e}, f as g, *}`:
/// each one's line and names after the group's prefix (`self` adds none).
fn use_group(g: &Group, prefix: &mut Vec<String>, leaves: &mut Vec<(usize, Vec<String>)>) {
    let tokens: Vec<TokenTree> = g.stream().into_iter().collect();
    for entry in tokens.split(|t| is_punct(t, ',')) {
        let Some(first) = entry.first() else { continue };
        let line = first.span().start().line;
        let depth = prefix.len();
        let mut i = 0;
        let mut nested = false;
        while i < entry.len() {
            match &entry[i] {
                TokenTree::Ident(id) if id == "self" => {}
                TokenTree::Ident(id) if id == "as" => break,
                TokenTree::Ident(id) => prefix.push(id.to_string()),
                TokenTree::Group(inner) if inner.delimiter() == Delimiter::Brace => {
                    use_group(inner, prefix, leaves);
                    nested = true;
                    break;
                }
                _ => {}
            }
            // Past the name, and the `::` after it if any.
            i += if is_path_sep(entry, i + 1) { 3 } else { 1 };
        }
        if !nested {
            leaves.push((line, prefix.clone()));
        }
        prefix.truncate(depth);
    }
}

/// `::` at `i`: a joint `:` and another `:`.
fn is_path_sep(tokens: &[TokenTree], i: usize) -> bool {
    matches!(
        (tokens.get(i), tokens.get(i + 1)),
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
            if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':'
    )
}

fn is_punct(t: &TokenTree, c: char) -> bool {
    matches!(t, TokenTree::Punct(p) if p.as_char() == c)
}

fn is_ident(t: &TokenTree, name: &str) -> bool {
    matches!(t, TokenTree::Ident(id) if id == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths in `source` as written, with their lines.
    fn refs(source: &str) -> Vec<(usize, String)> {
        scan(source)
            .unwrap()
            .refs
            .iter()
            .map(|r| (r.line, r.written()))
            .collect()
    }

    #[test]
    fn finds_paths_from_the_crate_root_and_from_ancestors() {
        let cases: &[(&str, &[(usize, &str)])] = &[
            (
                "use crate::proxy::pool::Pool;",
                &[(1, "crate::proxy::pool::Pool")],
            ),
            (
                "fn f() { crate::dns::answer(1) }",
                &[(1, "crate::dns::answer")],
            ),
            ("use super::*;", &[(1, "super")]),
            ("use super::super::pool;", &[(1, "super::super::pool")]),
            ("let x = self::super::y::Z;", &[(1, "super::y::Z")]),
            ("let x = self::child::f();", &[(1, "self::child::f")]),
            (
                "let v: Vec<crate::a::B<crate::c::D>> = crate::e::F::<u8>::new();",
                &[(1, "crate::a::B"), (1, "crate::c::D"), (1, "crate::e::F")],
            ),
            (
                "macro_rules! m { () => { $crate::a::b!() } }",
                &[(1, "crate::a::b")],
            ),
            // Not paths from the crate root or an ancestor.
            ("pub(crate) fn f() {}", &[]),
            ("pub(super) struct S;", &[]),
            ("use std::sync::Arc; let c = Self::new();", &[]),
            ("let x = foo::crate_name::y;", &[]),
        ];
        for (source, want) in cases {
            let want: Vec<(usize, String)> =
                want.iter().map(|(l, p)| (*l, p.to_string())).collect();
            assert_eq!(refs(source), want, "{source}");
        }
    }

    #[test]
    fn expands_use_groups_leaf_by_leaf_with_their_lines() {
        let source =
            "use crate::{\n    a,\n    b::c,\n    d::{self, e::{f, g as h}},\n    i::*,\n};";
        assert_eq!(
            refs(source),
            [
                (2, "crate::a".to_string()),
                (3, "crate::b::c".to_string()),
                (4, "crate::d".to_string()),
                (4, "crate::d::e::f".to_string()),
                (4, "crate::d::e::g".to_string()),
                (5, "crate::i".to_string()),
            ]
        );
        assert_eq!(
            refs("use super::{pool::{Pool, Pooled}, Config};"),
            [
                (1, "super::pool::Pool".to_string()),
                (1, "super::pool::Pooled".to_string()),
                (1, "super::Config".to_string()),
            ]
        );
    }

    #[test]
    fn skips_comments_strings_and_doc_comments() {
        let source = r##"
            // use crate::commented::out;
            /* crate::block::comment /* nested crate::x::y */ */
            /// Uses [`crate::doc::link`].
            //! crate::inner::doc
            let s = "crate::in::a::string";
            let r = r#"super::raw::string"#;
            let c = ':';
            let l: &'static str = crate::real::one;
        "##;
        assert_eq!(refs(source), [(9, "crate::real::one".to_string())]);
    }

    #[test]
    fn reads_module_declarations_inline_and_in_files() {
        let source = r#"
            pub mod proxy;
            #[cfg(test)]
            #[path = "join_token_tests.rs"]
            mod tests;
            pub(crate) mod r#type;
            mod inline {
                use crate::proxy::Pool;
                mod deeper;
            }
            use crate::top::Level;
        "#;
        let text = scan(source).unwrap();
        let file = |path: Option<&str>| ChildBody::File {
            path: path.map(str::to_string),
        };
        let names: Vec<(&str, usize)> = text
            .children
            .iter()
            .map(|c| (c.name.as_str(), c.line))
            .collect();
        assert_eq!(
            names,
            [("proxy", 2), ("tests", 5), ("type", 6), ("inline", 7)]
        );
        assert_eq!(text.children[0].body, file(None));
        assert_eq!(text.children[1].body, file(Some("join_token_tests.rs")));
        assert_eq!(text.children[2].body, file(None));
        let ChildBody::Inline(inline) = &text.children[3].body else {
            panic!("not inline: {:?}", text.children[3]);
        };
        assert_eq!(inline.children[0].name, "deeper");
        assert_eq!(inline.refs[0].written(), "crate::proxy::Pool");
        // The inline module's paths are its own, not the file's.
        let top: Vec<String> = text.refs.iter().map(PathRef::written).collect();
        assert_eq!(top, ["crate::top::Level"]);
    }

    #[test]
    fn a_path_attribute_belongs_only_to_the_mod_right_after_it() {
        let source = "#[path = \"x.rs\"] fn f() {}\nmod a;";
        let text = scan(source).unwrap();
        assert_eq!(text.children[0].body, ChildBody::File { path: None });
    }

    #[test]
    fn text_that_is_not_rust_tokens_is_an_error_with_its_line() {
        let err = scan("fn f() {\n    let s = \"unclosed;\n}\n").unwrap_err();
        assert!(err.line >= 1, "{err}");
        assert!(scan("fn f() { (] }").is_err());
    }
}
