//! Tests for [`JoinToken`]: generation, encoding round trips, every parse
//! error, and robustness against damaged input.

use super::*;

const PIN: [u8; 32] = [0xab; 32];
const PIN_HEX: &str = "abababababababababababababababababababababababababababababababab";
const SECRET: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"; // bytes 0..32

fn sample() -> JoinToken {
    JoinToken {
        id: "abc12345".into(),
        secret: SECRET.into(),
        addrs: vec!["10.0.0.1:7443".into(), "cp.example.org:7443".into()],
        root_pin: PIN,
        trust_domain: None,
        workload: None,
        group: None,
        cluster: None,
    }
}

/// [`sample`] scoped to a VM identity, as the control plane issues VM tokens.
fn vm_sample() -> JoinToken {
    sample().with_workload("example.org", "default/web")
}

/// A token string whose payload is `json`, verbatim.
fn with_payload(json: &str) -> String {
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
}

fn payload(id: &str, secret: &str, addrs: &str, pin: &str) -> String {
    with_payload(&format!(
        r#"{{"i":"{id}","s":"{secret}","a":{addrs},"p":"{pin}"}}"#
    ))
}

/// A token, valid but for its `t` and `w`, which are the JSON values given.
fn scoped(trust_domain: &str, workload: &str) -> String {
    with_payload(&format!(
        r#"{{"i":"abc12345","s":"{SECRET}","a":["10.0.0.1:7443"],"p":"{PIN_HEX}","t":{trust_domain},"w":{workload}}}"#
    ))
}

#[test]
fn generate_makes_valid_distinct_tokens() {
    let a = JoinToken::generate(vec!["10.0.0.1:7443".into()], PIN);
    let b = JoinToken::generate(vec!["10.0.0.1:7443".into()], PIN);
    for t in [&a, &b] {
        t.validate().unwrap();
        assert_eq!(t.id.len(), 8);
        assert!(t
            .id
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_eq!(URL_SAFE_NO_PAD.decode(&t.secret).unwrap().len(), 32);
        assert_eq!(t.root_pin, PIN);
    }
    assert_ne!(a.id, b.id);
    assert_ne!(a.secret, b.secret);
}

#[test]
fn generated_ids_use_the_whole_alphabet() {
    // 8 chars × 200 tokens = 1600 draws over 36 symbols: missing one by
    // chance has probability ~36·(35/36)^1600 ≈ 1e-18.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        seen.extend(JoinToken::generate(vec!["a".into()], PIN).id.into_bytes());
    }
    assert_eq!(seen.len(), 36);
}

#[test]
fn encode_parse_round_trip() {
    let generated = JoinToken::generate(vec!["[fd00::1]:7443".into()], [7; 32]);
    let generated_vm = generated
        .clone()
        .with_workload("mesh.example-1.org", "kube-system/coredns.v2");
    for t in [sample(), vm_sample(), generated, generated_vm] {
        let s = t.encode();
        assert!(s.starts_with("trellis1."), "{s}");
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'),
            "not one shell-safe word: {s}"
        );
        assert_eq!(JoinToken::parse(&s).unwrap(), t);
        // Pasted with surrounding whitespace, or base64 padding put back.
        assert_eq!(JoinToken::parse(&format!("  {s}\r\n")).unwrap(), t);
        let body = &s[TOKEN_PREFIX.len()..];
        let padded = format!("{s}{}", "=".repeat((4 - body.len() % 4) % 4));
        assert_eq!(JoinToken::parse(&padded).unwrap(), t);
    }
}

#[test]
fn encoding_is_the_documented_json() {
    let s = sample().encode();
    let json = URL_SAFE_NO_PAD.decode(&s[TOKEN_PREFIX.len()..]).unwrap();
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        format!(
            r#"{{"i":"abc12345","s":"{SECRET}","a":["10.0.0.1:7443","cp.example.org:7443"],"p":"{PIN_HEX}"}}"#
        )
    );
}

#[test]
fn vm_encoding_adds_t_and_w() {
    let s = vm_sample().encode();
    let json = URL_SAFE_NO_PAD.decode(&s[TOKEN_PREFIX.len()..]).unwrap();
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        format!(
            r#"{{"i":"abc12345","s":"{SECRET}","a":["10.0.0.1:7443","cp.example.org:7443"],"p":"{PIN_HEX}","t":"example.org","w":"default/web"}}"#
        )
    );
}

#[test]
fn old_format_tokens_still_parse() {
    // Encoded before tokens could carry `t` and `w`
    // (fuzz/seeds/token_parse/valid_one_addr).
    let old = "trellis1.eyJpIjoiYWJjMTIzNDUiLCJzIjoiQUFFQ0F3UUZCZ2NJQ1FvTERBME9EeEFSRWhNVUZSWVhHQmthR3h3ZEhoOCIsImEiOlsiMTAuMC4wLjE6NzQ0MyJdLCJwIjoiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYiJ9";
    let t = JoinToken::parse(old).unwrap();
    assert_eq!(
        t,
        JoinToken {
            addrs: vec!["10.0.0.1:7443".into()],
            ..sample()
        }
    );
    assert_eq!((t.trust_domain, t.workload), (None, None));
    // `null` is the same as absent.
    let t = JoinToken::parse(&scoped("null", "null")).unwrap();
    assert_eq!((t.trust_domain, t.workload), (None, None));
}

#[test]
fn workload_id_is_the_vm_spiffe_id() {
    assert_eq!(
        vm_sample().workload_id().unwrap().to_string(),
        "spiffe://example.org/ns/default/sa/web"
    );
    assert_eq!(sample().workload_id(), None);
    // Both halves are needed, and both must be valid.
    let mut t = vm_sample();
    t.trust_domain = None;
    assert_eq!(t.workload_id(), None);
    let mut t = vm_sample();
    t.workload = Some("default".into());
    assert_eq!(t.workload_id(), None);
    let mut t = vm_sample();
    t.trust_domain = Some("Example.org".into());
    assert_eq!(t.workload_id(), None);
}

#[test]
fn parse_accepts_unknown_fields_and_uppercase_pin() {
    let s = with_payload(&format!(
        r#"{{"i":"abc12345","s":"{SECRET}","a":["10.0.0.1:7443","cp.example.org:7443"],"p":"{}","future":1}}"#,
        PIN_HEX.to_uppercase()
    ));
    assert_eq!(JoinToken::parse(&s).unwrap(), sample());
}

#[test]
fn debug_redacts_secret() {
    let t = sample();
    let dbg = format!("{t:?}");
    assert!(!dbg.contains(SECRET), "{dbg}");
    assert!(dbg.contains("<redacted>"), "{dbg}");
    assert!(dbg.contains("abc12345"), "{dbg}");
    let pretty = format!("{t:#?}");
    assert!(!pretty.contains(SECRET), "{pretty}");
}

/// Asserts that parsing `input` fails with an error accepted by `check`
/// whose message contains `words`.
fn case(input: impl AsRef<str>, check: fn(&TokenParseError) -> bool, words: &str) {
    let input = input.as_ref();
    match JoinToken::parse(input) {
        Ok(t) => panic!("{input:?}: expected an error, parsed {t:?}"),
        Err(e) => {
            assert!(check(&e), "{input:?}: wrong variant {e:?}");
            let msg = e.to_string();
            assert!(
                msg.contains(words),
                "{input:?}: message {msg:?} lacks {words:?}"
            );
        }
    }
}

#[test]
fn parse_errors() {
    let addrs = r#"["10.0.0.1:7443"]"#;
    let many: Vec<String> = (0..=MAX_ADDRS)
        .map(|i| format!("\"10.0.0.{i}:1\""))
        .collect();
    let many = format!("[{}]", many.join(","));
    let long_addr = format!(r#"["{}"]"#, "a".repeat(301));
    let ok_id = "abc12345";

    case(
        "",
        |e| matches!(e, TokenParseError::Empty),
        "trellis token create",
    );
    case(
        " \t\n ",
        |e| matches!(e, TokenParseError::Empty),
        "no join token",
    );
    case(
        "x".repeat(MAX_TOKEN_LEN + 1),
        |e| matches!(e, TokenParseError::TooLong { .. }),
        "4097 bytes",
    );
    case(
        "hello",
        |e| matches!(e, TokenParseError::NotATrellisToken),
        "tokens start with `trellis1.`",
    );
    // A kubeadm token pasted by mistake.
    case(
        "abcdef.0123456789abcdef",
        |e| matches!(e, TokenParseError::NotATrellisToken),
        "not a Trellis join token",
    );
    case(
        "trellis1",
        |e| matches!(e, TokenParseError::NotATrellisToken),
        "trellis1.",
    );
    case(
        "Trellis1.abc",
        |e| matches!(e, TokenParseError::NotATrellisToken),
        "trellis1.",
    );
    case(
        "trellis.abc",
        |e| matches!(e, TokenParseError::NotATrellisToken),
        "trellis1.",
    );
    case(
        "trellis2.eyJ9",
        |e| matches!(e, TokenParseError::UnsupportedVersion { .. }),
        "`trellis2` is not supported",
    );
    case(
        "trellis10.x",
        |e| matches!(e, TokenParseError::UnsupportedVersion { .. }),
        "same release",
    );
    case(
        "trellis1.",
        |e| matches!(e, TokenParseError::BadJson { .. }),
        "copy the whole token",
    );
    case(
        "trellis1.!!!!",
        |e| matches!(e, TokenParseError::BadBase64 { .. }),
        "not valid base64url",
    );
    case(
        "trellis1.a",
        |e| matches!(e, TokenParseError::BadBase64 { .. }),
        "one word",
    );
    case(
        "trellis1.eyJp Ijoi",
        |e| matches!(e, TokenParseError::BadBase64 { .. }),
        "spaces or line breaks",
    );
    case(
        "trellis1.eyJp\nIjoi",
        |e| matches!(e, TokenParseError::BadBase64 { .. }),
        "spaces or line breaks",
    );
    case(
        with_payload("not json"),
        |e| matches!(e, TokenParseError::BadJson { .. }),
        "do not decode",
    );
    case(
        with_payload("{}"),
        |e| matches!(e, TokenParseError::BadJson { .. }),
        "missing field",
    );
    case(
        with_payload(r#"{"i":1,"s":"","p":""}"#),
        |e| matches!(e, TokenParseError::BadJson { .. }),
        "invalid type",
    );
    case(
        payload("ABC12345", SECRET, addrs, PIN_HEX),
        |e| matches!(e, TokenParseError::BadId { .. }),
        "8 lowercase letters or digits",
    );
    case(
        payload("abc1234", SECRET, addrs, PIN_HEX),
        |e| matches!(e, TokenParseError::BadId { .. }),
        "`abc1234`",
    );
    case(
        payload("abc123456", SECRET, addrs, PIN_HEX),
        |e| matches!(e, TokenParseError::BadId { .. }),
        "invalid",
    );
    case(
        payload("abc-1234", SECRET, addrs, PIN_HEX),
        |e| matches!(e, TokenParseError::BadId { .. }),
        "invalid",
    );
    case(
        payload("", SECRET, addrs, PIN_HEX),
        |e| matches!(e, TokenParseError::BadId { .. }),
        "invalid",
    );
    case(
        payload(ok_id, "short", addrs, PIN_HEX),
        |e| matches!(e, TokenParseError::BadSecret),
        "43 base64url",
    );
    case(
        payload(ok_id, &format!("{SECRET}A"), addrs, PIN_HEX),
        |e| matches!(e, TokenParseError::BadSecret),
        "malformed",
    );
    // Right length, but non-canonical final character (trailing bits set).
    case(
        payload(ok_id, &format!("{}9", &SECRET[..42]), addrs, PIN_HEX),
        |e| matches!(e, TokenParseError::BadSecret),
        "malformed",
    );
    case(
        payload(ok_id, &format!("{}+", &SECRET[..42]), addrs, PIN_HEX),
        |e| matches!(e, TokenParseError::BadSecret),
        "malformed",
    );
    case(
        payload(ok_id, SECRET, "[]", PIN_HEX),
        |e| matches!(e, TokenParseError::NoAddresses),
        "no control-plane addresses",
    );
    case(
        with_payload(&format!(
            r#"{{"i":"{ok_id}","s":"{SECRET}","p":"{PIN_HEX}"}}"#
        )),
        |e| matches!(e, TokenParseError::NoAddresses),
        "trellis token create",
    );
    case(
        payload(ok_id, SECRET, &many, PIN_HEX),
        |e| matches!(e, TokenParseError::TooManyAddresses { count: 33, max: 32 }),
        "33 control-plane addresses",
    );
    case(
        payload(ok_id, SECRET, r#"["10.0.0.1:7443",""]"#, PIN_HEX),
        |e| matches!(e, TokenParseError::BadAddress { .. }),
        "it is empty",
    );
    case(
        payload(ok_id, SECRET, r#"["a b:1"]"#, PIN_HEX),
        |e| matches!(e, TokenParseError::BadAddress { .. }),
        "spaces or control",
    );
    case(
        payload(ok_id, SECRET, r#"["a\u0000b"]"#, PIN_HEX),
        |e| matches!(e, TokenParseError::BadAddress { .. }),
        "spaces or control",
    );
    case(
        payload(ok_id, SECRET, &long_addr, PIN_HEX),
        |e| matches!(e, TokenParseError::BadAddress { .. }),
        "too long",
    );
    case(
        payload(ok_id, SECRET, addrs, "abab"),
        |e| matches!(e, TokenParseError::BadPin { .. }),
        "it has 4 characters",
    );
    case(
        payload(ok_id, SECRET, addrs, ""),
        |e| matches!(e, TokenParseError::BadPin { .. }),
        "64 hex characters",
    );
    case(
        payload(ok_id, SECRET, addrs, &format!("{PIN_HEX}ab")),
        |e| matches!(e, TokenParseError::BadPin { .. }),
        "66 characters",
    );
    case(
        payload(ok_id, SECRET, addrs, &"zz".repeat(32)),
        |e| matches!(e, TokenParseError::BadPin { .. }),
        "not hexadecimal",
    );
    case(
        scoped(r#""Example.org""#, r#""default/web""#),
        |e| matches!(e, TokenParseError::BadTrustDomain { .. }),
        "join token trust domain is invalid: trust domain `Example.org` may hold only lowercase",
    );
    case(
        scoped(r#""""#, r#""default/web""#),
        |e| matches!(e, TokenParseError::BadTrustDomain { .. }),
        "1 to 255 characters",
    );
    case(
        scoped(r#""example.org""#, r#""default""#),
        |e| matches!(e, TokenParseError::BadWorkload { .. }),
        "join token workload `default` is invalid: expected exactly one `/`",
    );
    case(
        scoped(r#""example.org""#, r#""""#),
        |e| matches!(e, TokenParseError::BadWorkload { .. }),
        "expected `namespace/serviceaccount`",
    );
    case(
        scoped(r#""example.org""#, r#""Default/web""#),
        |e| matches!(e, TokenParseError::BadWorkload { .. }),
        "the namespace has a character other than",
    );
    case(
        scoped(r#""example.org""#, r#""default/web/x""#),
        |e| matches!(e, TokenParseError::BadWorkload { .. }),
        "trellis token create",
    );
    case(
        scoped("1", r#""default/web""#),
        |e| matches!(e, TokenParseError::BadJson { .. }),
        "invalid type",
    );
    case(
        scoped(r#""example.org""#, r#"["default","web"]"#),
        |e| matches!(e, TokenParseError::BadJson { .. }),
        "invalid type",
    );
    // Field order: the id is reported before the pin.
    case(
        payload("BAD", SECRET, addrs, "zz"),
        |e| matches!(e, TokenParseError::BadId { .. }),
        "id",
    );
}

#[test]
fn errors_do_not_echo_raw_control_characters() {
    let s = payload("\\u001b[31mevil\\n", SECRET, r#"["x"]"#, PIN_HEX);
    let msg = JoinToken::parse(&s).unwrap_err().to_string();
    assert!(!msg.contains('\u{1b}') && !msg.contains('\n'), "{msg:?}");
    assert!(msg.contains("\\u{1b}[31mevil"), "{msg:?}");

    // serde_json's own messages quote the offending value.
    let s = with_payload(&format!(
        r#"{{"i":"abc12345","s":"{SECRET}","a":"\u001b[2J\u202e","p":"{PIN_HEX}"}}"#
    ));
    let err = JoinToken::parse(&s).unwrap_err();
    assert!(matches!(err, TokenParseError::BadJson { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.is_ascii() && !msg.contains('\u{1b}'), "{msg:?}");

    let long_id = "a".repeat(1000);
    let msg = JoinToken::parse(&payload(&long_id, SECRET, r#"["x"]"#, PIN_HEX))
        .unwrap_err()
        .to_string();
    assert!(msg.len() < 300, "id echoed in full: {} bytes", msg.len());

    for (td, w) in [
        (r#""\u001b[2J\u202e""#, r#""default/web""#),
        (r#""example.org""#, r#""\u001b[2J/\u202e""#),
    ] {
        let msg = JoinToken::parse(&scoped(td, w)).unwrap_err().to_string();
        assert!(msg.is_ascii() && !msg.contains('\u{1b}'), "{msg:?}");
        assert!(msg.contains("\\u{1b}[2J"), "{msg:?}");
    }
    let long = format!(r#""{}""#, "X".repeat(250));
    for (td, w) in [(long.as_str(), r#""default/web""#), (r#""x""#, &long)] {
        let msg = JoinToken::parse(&scoped(td, w)).unwrap_err().to_string();
        assert!(msg.len() < 300, "echoed in full: {msg}");
    }
}

#[test]
fn validate_catches_what_parse_would_reject() {
    let mut t = sample();
    t.addrs.clear();
    assert_eq!(t.validate(), Err(TokenParseError::NoAddresses));
    let mut t = sample();
    t.id = "x".into();
    assert!(matches!(t.validate(), Err(TokenParseError::BadId { .. })));
    let mut t = sample();
    t.secret = "x".into();
    assert_eq!(t.validate(), Err(TokenParseError::BadSecret));
    vm_sample().validate().unwrap();
    let t = sample().with_workload("Example.org", "default/web");
    assert!(matches!(
        t.validate(),
        Err(TokenParseError::BadTrustDomain { .. })
    ));
    let t = sample().with_workload("example.org", "web");
    assert!(matches!(
        t.validate(),
        Err(TokenParseError::BadWorkload { .. })
    ));
}

#[test]
fn vm_identities() {
    let long63 = "a".repeat(63);
    let long64 = "a".repeat(64);
    let ok: &[&str] = &[
        "default/web",
        "a/b",
        "ns-1/sa-2",
        "0ns/0sa",
        "kube-system/coredns.v2",
    ];
    for id in ok {
        let (ns, sa) = parse_vm_identity(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(format!("{ns}/{sa}"), *id);
    }
    assert!(parse_vm_identity(&format!("{long63}/{long63}")).is_ok());

    let bad: Vec<(String, &str)> = vec![
        ("".into(), "exactly one `/`"),
        ("default".into(), "exactly one `/`"),
        ("a/b/c".into(), "exactly one `/`"),
        ("/web".into(), "namespace is empty"),
        ("default/".into(), "service account is empty"),
        ("Default/web".into(), "namespace has a character"),
        ("default/Web".into(), "service account has a character"),
        ("de fault/web".into(), "namespace has a character"),
        ("default/we b".into(), "service account has a character"),
        ("default/web%2f".into(), "service account has a character"),
        ("-ns/web".into(), "namespace starts or ends"),
        ("ns-/web".into(), "namespace starts or ends"),
        ("ns/-web".into(), "starts or ends with `-`"),
        ("ns/web..x".into(), "empty part between dots"),
        ("ns/.web".into(), "empty part between dots"),
        (format!("{long64}/web"), "namespace is longer"),
        (format!("ns/{long64}"), "exceeds 63"),
        (
            format!("ns/{}", [long63.as_str(); 5].join(".")),
            "longer than 253",
        ),
        ("ns/wéb".into(), "service account has a character"),
    ];
    for (id, want) in &bad {
        match parse_vm_identity(id) {
            Err(e @ TokenParseError::BadVmIdentity { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(want), "{id:?}: {msg}");
                assert!(msg.contains("namespace/serviceaccount"), "{msg}");
            }
            other => panic!("{id:?}: expected BadVmIdentity, got {other:?}"),
        }
    }
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Parses damaged input; must not panic, and anything accepted must be a
/// valid token that survives another round trip.
fn parse_damaged(input: &str) {
    if let Ok(t) = JoinToken::parse(input) {
        t.validate().unwrap();
        assert_eq!(JoinToken::parse(&t.encode()).unwrap(), t);
    }
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, interesting: &[u8]) {
    for _ in 0..=rng.below(4) {
        if bytes.is_empty() {
            bytes.push(interesting[rng.below(interesting.len())]);
            continue;
        }
        let at = rng.below(bytes.len());
        match rng.below(5) {
            0 => bytes[at] = interesting[rng.below(interesting.len())],
            1 => bytes[at] ^= 1 << rng.below(8),
            2 => {
                bytes.remove(at);
            }
            3 => bytes.insert(at, interesting[rng.below(interesting.len())]),
            _ => {
                let end = (at + rng.below(8)).min(bytes.len());
                let chunk = bytes[at..end].to_vec();
                bytes.splice(at..at, chunk);
            }
        }
    }
}

#[test]
fn damaged_tokens_never_panic() {
    for token in [sample(), vm_sample()] {
        damage(&token.encode());
    }
}

/// Feeds [`parse_damaged`] truncations, substitutions and random mutations
/// of the valid token string `good`.
fn damage(good: &str) {
    // Every truncation, from either end.
    for i in 0..=good.len() {
        parse_damaged(&good[..i]);
        parse_damaged(&good[i..]);
    }

    // Every single-byte substitution with characters that matter to the
    // prefix, base64 and whitespace handling.
    let interesting = b"\0 \t\n.=-_+/Aa0z\xff{}\"\\trellis19";
    for i in 0..good.len() {
        for &b in interesting.iter() {
            let mut bytes = good.as_bytes().to_vec();
            bytes[i] = b;
            parse_damaged(&String::from_utf8_lossy(&bytes));
        }
    }

    // Random multi-byte damage, both to the text and to the JSON inside it
    // (re-encoded, so the JSON and validation paths are reached too).
    let json = URL_SAFE_NO_PAD.decode(&good[TOKEN_PREFIX.len()..]).unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut text = good.as_bytes().to_vec();
        mutate(&mut rng, &mut text, interesting);
        parse_damaged(&String::from_utf8_lossy(&text));

        let mut j = json.clone();
        mutate(&mut rng, &mut j, interesting);
        let s = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(&j));
        if JoinToken::parse(&s).is_ok() {
            accepted += 1;
        }
        parse_damaged(&s);
    }
    // Some JSON mutations (e.g. inside an address) are still valid tokens;
    // seeing none would mean the mutator never got past the outer layers.
    assert!(accepted > 0);
}

#[test]
fn a_workload_group_round_trips_and_needs_a_workload() {
    let t = vm_sample().with_group("reviews-v1");
    t.validate().unwrap();
    let back = JoinToken::parse(&t.encode()).unwrap();
    assert_eq!(back.group.as_deref(), Some("reviews-v1"));
    assert_eq!(back, t);

    let orphan = sample().with_group("reviews-v1");
    let err = JoinToken::parse(&orphan.encode()).unwrap_err();
    assert!(matches!(err, TokenParseError::BadGroup { .. }), "{err:?}");
    assert!(err.to_string().contains("workload identity"), "{err}");

    let bad = vm_sample().with_group("Reviews_V1");
    let err = JoinToken::parse(&bad.encode()).unwrap_err();
    assert!(err.to_string().contains("DNS-1123"), "{err}");
}

#[test]
fn a_cluster_token_names_its_cluster_and_round_trips() {
    let t = sample().with_cluster("west-1");
    let back = JoinToken::parse(&t.encode()).unwrap();
    assert_eq!(back.cluster.as_deref(), Some("west-1"));
    assert_eq!(back, t);
    // Tokens without `c` are not cluster tokens.
    assert_eq!(JoinToken::parse(&sample().encode()).unwrap().cluster, None);
}

#[test]
fn a_bad_cluster_name_or_a_cluster_with_a_workload_is_refused() {
    for (cluster, words) in [
        ("-west", "starts or ends"),
        ("", "empty"),
        ("we st", "character"),
    ] {
        let err = JoinToken::parse(&sample().with_cluster(cluster).encode()).unwrap_err();
        assert!(matches!(err, TokenParseError::BadCluster { .. }), "{err:?}");
        assert!(err.to_string().contains(words), "{err}");
        assert!(err.to_string().contains("--kind cluster"), "{err}");
    }
    let both = vm_sample().with_cluster("west");
    let err = JoinToken::parse(&both.encode()).unwrap_err();
    assert!(err.to_string().contains("not both"), "{err}");
    assert_eq!(both.validate().unwrap_err(), err);
}
