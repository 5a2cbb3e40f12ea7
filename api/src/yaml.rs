//! YAML read the way Istio reads it, and written back.
//!
//! Istio's tools read YAML with Go's `sigs.k8s.io/yaml`: the stream is cut
//! into documents at `---` lines (as `k8s.io/apimachinery`'s YAML reader
//! does), each document is decoded by go-yaml v2 (YAML 1.1 scalars) with
//! duplicate keys refused, and the result is turned into JSON before it
//! meets the resource's schema. [`documents`] does the same on top of
//! `saphyr-parser`'s events, so that a document means here what it means
//! to `kubectl` and `istioctl`:
//!
//! - plain scalars resolve by go-yaml v2's rules: `yes`/`no`/`on`/`off`/`y`/`n`
//!   (in the three casings) are booleans; `0777` is octal, `0x1F` hex,
//!   `0b101` binary and `1_000` an integer; `~`, `null` and nothing are
//!   null; anything else (`2001:db8::1`, `1.2.3.4`, `2026-01-02`) is a
//!   string. Quoted and block scalars, and `!!str`, are always strings.
//! - in a flow sequence, a plain scalar may end in `:` (`[1.2.3.4,
//!   001:db8::]` is two strings), where YAML 1.2 would read a mapping;
//! - a key given twice in one mapping is an error;
//! - anchors, aliases and `<<` merge keys work; keys become strings.
//!
//! The value is JSON ([`serde_json::Value`]), as Istio's is.
//! [`to_string`] writes any serializable value as block YAML that reads
//! back to the same value; [`from_str`] reads one document into a type.

use std::collections::BTreeMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Number, Value};

/// Most values one document may expand to through aliases, so that a small
/// document cannot make the reader build a huge one ("billion laughs").
const MAX_NODES: usize = 1_000_000;

/// Most repairs of `x:`-ending flow scalars tried in one document.
const MAX_REPAIRS: usize = 64;

/// A YAML document that could not be read, with where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} at line {line} column {column}")]
pub struct YamlError {
    /// Line in the whole input, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// One document of a YAML stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// Position in the stream, from 1, counting empty documents (a
    /// leading `---` does not start a second one).
    pub index: usize,
    /// Line of the input where the document's text starts, from 1.
    pub line: usize,
    /// The value (`Null` for an empty document), or why it cannot be read.
    pub value: Result<Value, YamlError>,
}

/// Cuts `text` into documents at lines that are `---` (optionally followed
/// by a comment) and reads each one. A document that cannot be read does
/// not stop the others from being read.
pub fn documents(text: &str) -> Vec<Document> {
    let mut out = Vec::new();
    let mut chunk = String::new();
    let mut chunk_line = 1;
    let mut separators = 0;
    let mut bad_separator: Option<YamlError> = None;
    let flush = |chunk: &str, line: usize, bad: Option<YamlError>, out: &mut Vec<Document>| {
        let value = match bad {
            Some(e) => Err(e),
            None => read_document(chunk, line),
        };
        out.push(Document {
            index: out.len() + 1,
            line,
            value,
        });
    };
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if let Some(rest) = line.strip_prefix("---") {
            if rest.is_empty() || rest.starts_with(char::is_whitespace) {
                // Text before the first separator is a document only if it
                // has content, as an editor would count.
                if separators > 0 || has_content(&chunk) || bad_separator.is_some() {
                    flush(&chunk, chunk_line, bad_separator.take(), &mut out);
                }
                separators += 1;
                chunk.clear();
                chunk_line = i + 2;
                let rest = rest.trim();
                if !rest.is_empty() && !rest.starts_with('#') {
                    // As the Kubernetes reader, which refuses `--- value`.
                    bad_separator = Some(YamlError {
                        line: i + 1,
                        column: 5,
                        message: format!(
                            "only a comment may follow the document separator `---`, found `{rest}`"
                        ),
                    });
                }
                continue;
            }
        }
        chunk.push_str(line);
    }
    if has_content(&chunk) || bad_separator.is_some() {
        flush(&chunk, chunk_line, bad_separator.take(), &mut out);
    }
    out
}

/// Reads a single YAML document into `T` (JSON semantics, as
/// `sigs.k8s.io/yaml` gives Go code). An empty input reads as `null`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, FromStrError> {
    let docs = documents(text);
    let value = match docs.len() {
        0 => Value::Null,
        1 => docs.into_iter().next().expect("one").value?,
        n => return Err(FromStrError::Documents(n)),
    };
    Ok(serde_json::from_value(value)?)
}

/// Why [`from_str`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FromStrError {
    /// Not readable YAML.
    #[error(transparent)]
    Yaml(#[from] YamlError),
    /// Readable, but not the shape of the type.
    #[error(transparent)]
    Shape(#[from] serde_json::Error),
    /// More than one document where one was expected.
    #[error("expected one YAML document, found {0}")]
    Documents(usize),
}

/// Writes `value` as a block-style YAML document ending in a newline.
/// Mapping keys come out sorted. Strings that would read back as something
/// else (`yes`, `0777`, `''`) are quoted.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    let mut out = String::new();
    write_node(&mut out, &value, 0, Position::Document);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

fn has_content(chunk: &str) -> bool {
    chunk.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    })
}

/// Reads one document's text; `first_line` is where it starts in the input.
fn read_document(text: &str, first_line: usize) -> Result<Value, YamlError> {
    let mut text = std::borrow::Cow::Borrowed(text);
    for _ in 0..MAX_REPAIRS {
        match build(&text) {
            Ok(value) => return Ok(value),
            Err(Failure::Repair { start, colon }) => {
                text = std::borrow::Cow::Owned(quote_flow_scalar(&text, start, colon));
            }
            Err(Failure::Error {
                line,
                column,
                message,
            }) => {
                return Err(YamlError {
                    line: first_line + line - 1,
                    column,
                    message,
                })
            }
        }
    }
    Err(YamlError {
        line: first_line,
        column: 1,
        message: "too many plain scalars ending in `:` in flow collections; quote them".into(),
    })
}

/// Rewrites the plain scalar at chars `start..colon` plus the `:` at
/// `colon` as a double-quoted scalar, which is how go-yaml reads it.
fn quote_flow_scalar(text: &str, start: usize, colon: usize) -> String {
    let byte = |char_index: usize| {
        text.char_indices()
            .nth(char_index)
            .map_or(text.len(), |(b, _)| b)
    };
    let (from, to) = (byte(start), byte(colon) + 1);
    let mut out = String::with_capacity(text.len() + 4);
    out.push_str(&text[..from]);
    out.push('"');
    for c in text[from..to].chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out.push_str(&text[to..]);
    out
}

enum Failure {
    /// A plain scalar in a flow collection, starting at char `start`, is
    /// followed by `:` at char `colon` and then a flow indicator: go-yaml
    /// takes the `:` into the scalar; quote it and read again.
    Repair { start: usize, colon: usize },
    /// `line` within the document, from 1; `column` from 1.
    Error {
        line: usize,
        column: usize,
        message: String,
    },
}

impl Failure {
    fn at(span: &Span, message: impl Into<String>) -> Failure {
        Failure::Error {
            line: span.start.line(),
            column: span.start.col() + 1,
            message: message.into(),
        }
    }
}

/// A node being built: a collection still open, with where it started.
enum Open {
    Sequence {
        items: Vec<Value>,
        anchor: usize,
        flow: bool,
    },
    Mapping {
        entries: Map<String, Value>,
        /// Keys merged in by `<<`, which explicit keys may override.
        merged: Vec<String>,
        key: Option<(String, Span)>,
        /// The key's last scalar, for the flow repair.
        key_scalar: Option<(Span, bool)>,
        anchor: usize,
        /// An implicit single-pair mapping inside a flow sequence (`[a: b]`).
        implicit_pair: bool,
        /// Written `{...}`, or an implicit pair: flow context.
        flow: bool,
    },
}

struct Builder<'t> {
    chars: Vec<char>,
    text: &'t str,
    stack: Vec<Open>,
    anchors: BTreeMap<usize, Value>,
    nodes: usize,
    root: Option<Value>,
}

fn build(text: &str) -> Result<Value, Failure> {
    let mut b = Builder {
        chars: Vec::new(),
        text,
        stack: Vec::new(),
        anchors: BTreeMap::new(),
        nodes: 0,
        root: None,
    };
    let mut documents = 0;
    let mut last_flow_plain: Option<Span> = None;
    for event in Parser::new_from_str(text) {
        let (event, span) = match event {
            Ok(e) => e,
            Err(e) => return Err(b.scan_error(&e, last_flow_plain)),
        };
        match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(Failure::at(
                        &span,
                        "a second document without a `---` line before it",
                    ));
                }
            }
            Event::Alias(id) => {
                let value = b
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| Failure::at(&span, "alias to an unknown anchor"))?;
                b.nodes += count(&value);
                b.value(value, span, None)?;
            }
            Event::Scalar(s, style, anchor, tag) => {
                let is_str_tag = tag.as_ref().is_some_and(|t| {
                    t.is_yaml_core_schema() && (t.suffix == "str" || t.suffix == "binary")
                });
                let plain = style == ScalarStyle::Plain && !is_str_tag;
                last_flow_plain = (plain && b.in_flow()).then_some(span);
                let value = if plain {
                    resolve(&s)
                } else {
                    Value::String(s.into_owned())
                };
                if anchor > 0 {
                    b.anchors.insert(anchor, value.clone());
                }
                b.value(value, span, Some(plain))?;
            }
            Event::SequenceStart(anchor, _) => {
                let flow = b.char_at(span.start.index()) == Some('[');
                b.stack.push(Open::Sequence {
                    items: Vec::new(),
                    anchor,
                    flow,
                });
            }
            Event::MappingStart(anchor, _) => {
                let in_flow_seq = matches!(b.stack.last(), Some(Open::Sequence { flow: true, .. }));
                let implicit_pair = in_flow_seq && span.start.index() == span.end.index();
                let flow = implicit_pair || b.char_at(span.start.index()) == Some('{');
                b.stack.push(Open::Mapping {
                    entries: Map::new(),
                    merged: Vec::new(),
                    key: None,
                    key_scalar: None,
                    anchor,
                    implicit_pair,
                    flow,
                });
            }
            Event::SequenceEnd => match b.stack.pop() {
                Some(Open::Sequence { items, anchor, .. }) => {
                    let value = Value::Array(items);
                    if anchor > 0 {
                        b.anchors.insert(anchor, value.clone());
                    }
                    b.value(value, span, None)?;
                }
                _ => return Err(Failure::at(&span, "unbalanced sequence")),
            },
            Event::MappingEnd => match b.stack.pop() {
                Some(Open::Mapping {
                    entries,
                    anchor,
                    implicit_pair,
                    key_scalar,
                    ..
                }) => {
                    if implicit_pair {
                        if let Some(repair) = b.flow_key_repair(&entries, key_scalar) {
                            return Err(repair);
                        }
                    }
                    let value = Value::Object(entries);
                    if anchor > 0 {
                        b.anchors.insert(anchor, value.clone());
                    }
                    b.value(value, span, None)?;
                }
                _ => return Err(Failure::at(&span, "unbalanced mapping")),
            },
        }
        if b.nodes > MAX_NODES {
            return Err(Failure::at(
                &span,
                format!("the document expands to more than {MAX_NODES} values through aliases"),
            ));
        }
    }
    Ok(b.root.unwrap_or(Value::Null))
}

impl Builder<'_> {
    fn char_at(&mut self, index: usize) -> Option<char> {
        if self.chars.is_empty() {
            self.chars = self.text.chars().collect();
        }
        self.chars.get(index).copied()
    }

    /// Whether the innermost open collection is a flow one (`[`, `{`).
    fn in_flow(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Open::Sequence { flow: true, .. } | Open::Mapping { flow: true, .. })
        )
    }

    /// `[x:]`: a one-pair mapping whose key is a plain scalar followed
    /// directly by `:` and a flow indicator, and whose value is empty.
    fn flow_key_repair(
        &mut self,
        entries: &Map<String, Value>,
        key_scalar: Option<(Span, bool)>,
    ) -> Option<Failure> {
        let (span, plain) = key_scalar?;
        if !plain || entries.len() != 1 || !entries.values().all(Value::is_null) {
            return None;
        }
        let end = span.end.index();
        let next = self.char_at(end + 1);
        (self.char_at(end) == Some(':') && matches!(next, Some(',' | ']' | '}'))).then_some(
            Failure::Repair {
                start: span.start.index(),
                colon: end,
            },
        )
    }

    /// A scan error right after a plain scalar in flow context, at `:`
    /// followed by a flow indicator, is go-yaml's `x:` scalar too.
    fn scan_error(&mut self, e: &ScanError, last_flow_plain: Option<Span>) -> Failure {
        if let Some(span) = last_flow_plain {
            let end = span.end.index();
            if self.char_at(end) == Some(':')
                && matches!(self.char_at(end + 1), Some(',' | ']' | '}'))
            {
                return Failure::Repair {
                    start: span.start.index(),
                    colon: end,
                };
            }
        }
        Failure::Error {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_string(),
        }
    }

    /// Places a finished node in its parent. `plain` is set for scalars:
    /// whether they were plain (for the flow repair of keys).
    fn value(&mut self, value: Value, span: Span, plain: Option<bool>) -> Result<(), Failure> {
        self.nodes += 1;
        match self.stack.last_mut() {
            None => {
                self.root = Some(value);
                Ok(())
            }
            Some(Open::Sequence { items, .. }) => {
                items.push(value);
                Ok(())
            }
            Some(Open::Mapping {
                entries,
                merged,
                key,
                key_scalar,
                ..
            }) => match key.take() {
                None => {
                    let name = key_string(&value)
                        .ok_or_else(|| Failure::at(&span, "a mapping key must be a scalar"))?;
                    *key_scalar = plain.map(|p| (span, p));
                    *key = Some((name, span));
                    Ok(())
                }
                Some((name, key_span)) => {
                    if name == "<<" && plain.is_none_or(|p| p) && is_merge(&value) {
                        merge(entries, merged, value);
                        return Ok(());
                    }
                    if let Some(i) = merged.iter().position(|m| *m == name) {
                        merged.remove(i);
                    } else if entries.contains_key(&name) {
                        return Err(Failure::at(
                            &key_span,
                            format!("mapping key `{name}` already defined"),
                        ));
                    }
                    entries.insert(name, value);
                    Ok(())
                }
            },
        }
    }
}

fn is_merge(value: &Value) -> bool {
    match value {
        Value::Object(_) => true,
        Value::Array(items) => items.iter().all(Value::is_object),
        _ => false,
    }
}

/// `<<: *base` (or a list of them): the entries not set yet are copied.
fn merge(entries: &mut Map<String, Value>, merged: &mut Vec<String>, value: Value) {
    let maps = match value {
        Value::Array(items) => items,
        one => vec![one],
    };
    for map in maps {
        if let Value::Object(map) = map {
            for (k, v) in map {
                if !entries.contains_key(&k) {
                    merged.push(k.clone());
                    entries.insert(k, v);
                }
            }
        }
    }
}

fn count(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(count).sum::<usize>(),
        Value::Object(map) => 1 + map.values().map(count).sum::<usize>(),
        _ => 1,
    }
}

/// A key as `sigs.k8s.io/yaml` turns it into a JSON object key.
fn key_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some("null".to_string()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// A plain scalar's value by go-yaml v2's resolver (YAML 1.1).
pub fn resolve(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Value::Bool(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Value::Bool(false)
        }
        // NaN and infinities have no JSON form; sigs.k8s.io/yaml fails on
        // them, and a string keeps the text for the schema to refuse.
        _ => {}
    }
    let first = s.as_bytes()[0];
    if first == b'.' {
        return float(s).unwrap_or_else(|| Value::String(s.to_string()));
    }
    if !(first.is_ascii_digit() || first == b'+' || first == b'-') {
        return Value::String(s.to_string());
    }
    let plain = s.replace('_', "");
    if let Some(n) = go_int(&plain) {
        return n;
    }
    if is_yaml_float(&plain) {
        if let Some(f) = float(&plain) {
            return f;
        }
    }
    Value::String(s.to_string())
}

/// Go's `strconv.ParseInt(s, 0, 64)`, then `ParseUint`: optional sign,
/// `0x`/`0o`/`0b` prefixes, a leading `0` for octal.
fn go_int(s: &str) -> Option<Value> {
    let (negative, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(b) = lower.strip_prefix("0x") {
        (16, b)
    } else if let Some(b) = lower.strip_prefix("0o") {
        (8, b)
    } else if let Some(b) = lower.strip_prefix("0b") {
        (2, b)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(body, radix).ok()?;
    if negative {
        if magnitude <= i64::MAX as u64 + 1 {
            Some(Value::Number(Number::from(
                (magnitude as i128).wrapping_neg() as i64,
            )))
        } else {
            None
        }
    } else {
        Some(Value::Number(Number::from(magnitude)))
    }
}

/// go-yaml's `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => digits(frac),
        Some((int, frac)) => digits(int) && (frac.is_empty() || digits(frac)),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

fn float(s: &str) -> Option<Value> {
    let f: f64 = s.parse().ok()?;
    Number::from_f64(f).map(Value::Number)
}

/// Where a node is written, for its layout.
#[derive(Clone, Copy, PartialEq)]
enum Position {
    Document,
    /// After `key:`.
    MappingValue,
    /// After `- `.
    SequenceItem,
}

fn write_node(out: &mut String, value: &Value, indent: usize, at: Position) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            let mut first = true;
            if at == Position::MappingValue {
                out.push('\n');
            }
            for (k, v) in map {
                if !(first && at == Position::SequenceItem) {
                    out.push_str(&pad);
                }
                first = false;
                out.push_str(&key_text(k));
                out.push(':');
                write_node(out, v, indent + 2, Position::MappingValue);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            if at == Position::MappingValue {
                out.push('\n');
            }
            // Sequences under a key sit at the key's indentation, as
            // kubectl writes them.
            let indent = if at == Position::MappingValue {
                indent - 2
            } else {
                indent
            };
            let pad = " ".repeat(indent);
            let mut first = true;
            for item in items {
                if !(first && at == Position::SequenceItem) {
                    out.push_str(&pad);
                }
                first = false;
                out.push('-');
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        out.push(' ');
                        write_node(out, item, indent + 2, Position::SequenceItem);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push(' ');
                        write_node(out, item, indent + 2, Position::SequenceItem);
                    }
                    _ => write_node(out, item, indent + 2, Position::MappingValue),
                }
            }
        }
        scalar => {
            if at != Position::Document {
                out.push(' ');
            }
            let text = match scalar {
                Value::Object(_) => "{}".to_string(),
                Value::Array(_) => "[]".to_string(),
                Value::String(s) => scalar_text(s, indent),
                other => other.to_string(),
            };
            out.push_str(&text);
            out.push('\n');
        }
    }
}

/// A mapping key: plain when safe, else double-quoted (never a block).
fn key_text(s: &str) -> String {
    if is_safe_plain(s) {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("a string serializes")
    }
}

/// A string as a YAML scalar that reads back as the same string: plain
/// when that is safe, a literal block for multi-line text, else JSON-style
/// double quotes.
fn scalar_text(s: &str, indent: usize) -> String {
    if is_safe_plain(s) {
        return s.to_string();
    }
    let printable = s.chars().all(|c| c == '\n' || !c.is_control());
    if s.contains('\n')
        && printable
        && !s.starts_with([' ', '\n'])
        && s.lines().all(|l| !l.ends_with(' '))
    {
        let trailing = s.len() - s.trim_end_matches('\n').len();
        let chomp = match trailing {
            0 => "-",
            1 => "",
            _ => "+",
        };
        let pad = " ".repeat(indent.max(2));
        let mut block = format!("|{chomp}");
        for line in s.trim_end_matches('\n').split('\n') {
            block.push('\n');
            if !line.is_empty() {
                block.push_str(&pad);
                block.push_str(line);
            }
        }
        for _ in 1..trailing {
            block.push('\n');
        }
        return block;
    }
    serde_json::to_string(s).expect("a string serializes")
}

/// Whether `s` can be written as a plain scalar in block context and read
/// back as the same string.
fn is_safe_plain(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    !"-?:,[]{}#&*!|>'\"%@`".contains(first)
        && !first.is_whitespace()
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !s.contains(" #")
        && s.chars()
            .all(|c| c == ' ' || !(c.is_whitespace() || c.is_control()))
        && resolve(s) == Value::String(s.to_string())
}

#[cfg(test)]
mod tests;
