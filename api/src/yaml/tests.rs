//! Where YAML readers disagree, pinned to what Istio's Go YAML
//! (`sigs.k8s.io/yaml` over go-yaml v2) gives.

use serde_json::json;

use super::*;

/// Reads one document, panicking on an error.
#[track_caller]
fn read(text: &str) -> Value {
    let docs = documents(text);
    assert_eq!(docs.len(), 1, "{docs:?}");
    docs.into_iter()
        .next()
        .unwrap()
        .value
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

#[track_caller]
fn refused(text: &str) -> YamlError {
    let docs = documents(text);
    assert_eq!(docs.len(), 1, "{docs:?}");
    match docs.into_iter().next().unwrap().value {
        Ok(v) => panic!("{text:?} read as {v}"),
        Err(e) => e,
    }
}

#[test]
fn scalars_resolve_as_go_yaml_v2_does() {
    for (scalar, expected) in [
        // YAML 1.1 booleans, in go-yaml v2's three casings.
        ("yes", json!(true)),
        ("Yes", json!(true)),
        ("YES", json!(true)),
        ("y", json!(true)),
        ("on", json!(true)),
        ("ON", json!(true)),
        ("true", json!(true)),
        ("no", json!(false)),
        ("n", json!(false)),
        ("off", json!(false)),
        ("Off", json!(false)),
        ("False", json!(false)),
        ("yEs", json!("yEs")),
        ("oN", json!("oN")),
        // Integers: octal with a leading 0, prefixes, underscores, signs.
        ("0777", json!(511)),
        ("0o17", json!(15)),
        ("0x1F", json!(31)),
        ("0b101", json!(5)),
        ("1_000", json!(1000)),
        ("+12", json!(12)),
        ("-12", json!(-12)),
        ("0", json!(0)),
        ("18446744073709551615", json!(18446744073709551615u64)),
        // `08` is no octal number; Go's float parser takes it.
        ("08", json!(8.0)),
        ("012.5", json!(12.5)),
        ("1e3", json!(1000.0)),
        (".5", json!(0.5)),
        ("-.5", json!(-0.5)),
        // Null.
        ("~", json!(null)),
        ("null", json!(null)),
        ("NULL", json!(null)),
        // Strings, though they look like something else.
        ("1.2.3.4", json!("1.2.3.4")),
        ("2001:db8::1", json!("2001:db8::1")),
        ("10:20:30", json!("10:20:30")),
        ("2026-01-02", json!("2026-01-02")),
        ("1.2e", json!("1.2e")),
        (".inf", json!(".inf")),
        ("0x", json!("0x")),
        ("v1", json!("v1")),
        ("1h", json!("1h")),
    ] {
        assert_eq!(read(&format!("a: {scalar}"))["a"], expected, "{scalar}");
    }
}

#[test]
fn quoted_block_and_str_tagged_scalars_stay_strings() {
    for text in [
        "a: 'yes'",
        "a: \"yes\"",
        "a: !!str yes",
        "a: |-\n  yes",
        "a: >-\n  yes",
    ] {
        assert_eq!(read(text)["a"], json!("yes"), "{text}");
    }
    assert_eq!(read("a: '0777'")["a"], json!("0777"));
}

#[test]
fn flow_sequences_take_scalars_ending_in_a_colon() {
    for (text, expected) in [
        (
            "addresses: [1.2.3.4, 001:db8::]",
            json!({"addresses": ["1.2.3.4", "001:db8::"]}),
        ),
        ("a: [001:db8::, b]", json!({"a": ["001:db8::", "b"]})),
        ("a: [x:]", json!({"a": ["x:"]})),
        (
            "a: [2001:db8::1, '::1']",
            json!({"a": ["2001:db8::1", "::1"]}),
        ),
        ("a: [x:y]", json!({"a": ["x:y"]})),
        // With a space after the colon it is a key, in Go too.
        ("a: [x: z]", json!({"a": [{"x": "z"}]})),
        // ... and `y` is YAML 1.1's `true`.
        ("a: [x: y]", json!({"a": [{"x": true}]})),
        ("a: [x: ]", json!({"a": [{"x": null}]})),
        // A flow mapping's value likewise.
        ("a: {k: 001:db8::}", json!({"a": {"k": "001:db8::"}})),
        ("a: {k: x:, j: 1}", json!({"a": {"k": "x:", "j": 1}})),
        // In block context, `:` at the end of a line ends a key.
        ("a:\n- 001:db8::", json!({"a": [{"001:db8:": null}]})),
    ] {
        assert_eq!(read(text), expected, "{text}");
    }
}

#[test]
fn a_block_scalar_ending_in_a_colon_is_an_error_as_in_go() {
    // go-yaml ends a plain scalar at `:` before a line break, then finds a
    // second `:`; so does this reader.
    let e = refused("endpoints:\n- address: 001:db8::\n");
    assert!(e.message.contains("mapping values are not allowed"), "{e}");
    assert_eq!(e.line, 2, "{e}");
}

#[test]
fn duplicate_keys_are_refused() {
    let e = refused("a: 1\nb: 2\na: 3\n");
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("`a` already defined"), "{e}");
    let e = refused("spec:\n  hosts: [a]\n  http: []\n  hosts: [b]\n");
    assert_eq!((e.line, e.column), (4, 3), "{e}");
    assert!(refused("a: {x: 1, x: 2}").message.contains("`x`"));
}

#[test]
fn anchors_aliases_and_merge_keys() {
    let v = read("base: &b {x: 1, z: 2}\nc: *b\nd:\n  <<: *b\n  z: 3\n");
    assert_eq!(v["c"], json!({"x": 1, "z": 2}));
    assert_eq!(v["d"], json!({"x": 1, "z": 3}));
    let v = read("a: &a [1]\nb: *a\n");
    assert_eq!(v["b"], json!([1]));
}

#[test]
fn alias_bombs_are_refused() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..8 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    assert!(refused(&text).message.contains("through aliases"));
}

#[test]
fn keys_become_strings() {
    assert_eq!(
        read("1: a\nyes: b\n~: c"),
        json!({"1": "a", "true": "b", "null": "c"})
    );
    assert!(refused("? [a]\n: b")
        .message
        .contains("key must be a scalar"));
}

#[test]
fn documents_are_cut_at_separator_lines_and_read_alone() {
    let docs = documents("# head\n---\na: 1\n---\n---  # empty\nb: [\n---\nc: 3\n--- x\nd: 4\n");
    let summary: Vec<_> = docs
        .iter()
        .map(|d| {
            (
                d.index,
                d.line,
                d.value.as_ref().map_err(|e| e.line).cloned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, 3, Ok(json!({"a": 1}))),
            (2, 5, Ok(Value::Null)),
            (3, 6, Err(7)),
            (4, 8, Ok(json!({"c": 3}))),
            (5, 10, Err(9)),
        ]
    );
    assert!(docs[2]
        .value
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("line 7 column"));
    assert_eq!(documents("").len(), 0);
    assert_eq!(documents("a: 1\n---\n").len(), 1);
    assert_eq!(documents("---x: 1\n").len(), 1);
}

#[test]
fn from_str_reads_one_document_into_a_type() {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct T {
        a: u32,
        b: String,
    }
    assert_eq!(
        from_str::<T>("a: 0777\nb: x").unwrap(),
        T {
            a: 511,
            b: "x".into()
        }
    );
    assert!(matches!(
        from_str::<T>("a: 1\n---\na: 2"),
        Err(FromStrError::Documents(2))
    ));
    assert!(matches!(from_str::<T>("a: [1"), Err(FromStrError::Yaml(_))));
    assert!(matches!(
        from_str::<T>("a: x\nb: y"),
        Err(FromStrError::Shape(_))
    ));
}

#[test]
fn written_yaml_reads_back_the_same() {
    let tricky = [
        "",
        "yes",
        "No",
        "on",
        "0777",
        "1.5",
        "~",
        "null",
        "a: b",
        "a #b",
        "-x",
        "- x",
        "[x]",
        "{x}",
        "x:",
        "'q'",
        "\"d\"",
        "multi\nline",
        "multi\nline\n",
        "trailing\n\n",
        " lead",
        "tab\there",
        "2001:db8::1",
        "*star",
        "&amp",
        "!bang",
        "%pct",
        "@at",
        "`tick",
        "|pipe",
        ">gt",
        "ünïcode",
        "/path/x",
        "v1",
        "\u{1}ctl",
        "a.*",
        "y",
        "a b",
        "a,b",
        "x: ",
    ];
    let value = json!({
        "strings": tricky.to_vec(),
        "keys": tricky.iter().map(|s| (s.to_string(), json!(1))).collect::<Map<_, _>>(),
        "numbers": [0, -1, 1.5, 18446744073709551615u64],
        "bools": [true, false],
        "null": null,
        "empty": {"map": {}, "seq": []},
        "nested": [[1, [2]], {"a": [{"b": {"c": [3]}}]}, [{"x": 1, "y": 2}]],
        "block": {"pem": "-----BEGIN-----\nAAAA\n-----END-----\n"},
    });
    let text = to_string(&value).unwrap();
    assert_eq!(read(&text), value, "{text}");
    assert!(text.contains("pem: |\n"), "{text}");
    for top in [
        json!("yes"),
        json!(1),
        json!([]),
        json!({}),
        json!(["a", ["b"]]),
    ] {
        let text = to_string(&top).unwrap();
        assert_eq!(read(&text), top, "{text}");
    }
}
