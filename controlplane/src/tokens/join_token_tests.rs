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
    }
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
    for t in [sample(), generated] {
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
fn case(input: impl AsRef<str>, check: fn(&TokenError) -> bool, words: &str) {
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
        |e| matches!(e, TokenError::Empty),
        "trellis token create",
    );
    case(
        " \t\n ",
        |e| matches!(e, TokenError::Empty),
        "no join token",
    );
    case(
        "x".repeat(MAX_TOKEN_LEN + 1),
        |e| matches!(e, TokenError::TooLong { .. }),
        "4097 bytes",
    );
    case(
        "hello",
        |e| matches!(e, TokenError::NotATrellisToken),
        "tokens start with `trellis1.`",
    );
    // A kubeadm token pasted by mistake.
    case(
        "abcdef.0123456789abcdef",
        |e| matches!(e, TokenError::NotATrellisToken),
        "not a Trellis join token",
    );
    case(
        "trellis1",
        |e| matches!(e, TokenError::NotATrellisToken),
        "trellis1.",
    );
    case(
        "Trellis1.abc",
        |e| matches!(e, TokenError::NotATrellisToken),
        "trellis1.",
    );
    case(
        "trellis.abc",
        |e| matches!(e, TokenError::NotATrellisToken),
        "trellis1.",
    );
    case(
        "trellis2.eyJ9",
        |e| matches!(e, TokenError::UnsupportedVersion { .. }),
        "`trellis2` is not supported",
    );
    case(
        "trellis10.x",
        |e| matches!(e, TokenError::UnsupportedVersion { .. }),
        "same release",
    );
    case(
        "trellis1.",
        |e| matches!(e, TokenError::BadJson { .. }),
        "copy the whole token",
    );
    case(
        "trellis1.!!!!",
        |e| matches!(e, TokenError::BadBase64 { .. }),
        "not valid base64url",
    );
    case(
        "trellis1.a",
        |e| matches!(e, TokenError::BadBase64 { .. }),
        "one word",
    );
    case(
        "trellis1.eyJp Ijoi",
        |e| matches!(e, TokenError::BadBase64 { .. }),
        "spaces or line breaks",
    );
    case(
        "trellis1.eyJp\nIjoi",
        |e| matches!(e, TokenError::BadBase64 { .. }),
        "spaces or line breaks",
    );
    case(
        with_payload("not json"),
        |e| matches!(e, TokenError::BadJson { .. }),
        "do not decode",
    );
    case(
        with_payload("{}"),
        |e| matches!(e, TokenError::BadJson { .. }),
        "missing field",
    );
    case(
        with_payload(r#"{"i":1,"s":"","p":""}"#),
        |e| matches!(e, TokenError::BadJson { .. }),
        "invalid type",
    );
    case(
        payload("ABC12345", SECRET, addrs, PIN_HEX),
        |e| matches!(e, TokenError::BadId { .. }),
        "8 lowercase letters or digits",
    );
    case(
        payload("abc1234", SECRET, addrs, PIN_HEX),
        |e| matches!(e, TokenError::BadId { .. }),
        "`abc1234`",
    );
    case(
        payload("abc123456", SECRET, addrs, PIN_HEX),
        |e| matches!(e, TokenError::BadId { .. }),
        "invalid",
    );
    case(
        payload("abc-1234", SECRET, addrs, PIN_HEX),
        |e| matches!(e, TokenError::BadId { .. }),
        "invalid",
    );
    case(
        payload("", SECRET, addrs, PIN_HEX),
        |e| matches!(e, TokenError::BadId { .. }),
        "invalid",
    );
    case(
        payload(ok_id, "short", addrs, PIN_HEX),
        |e| matches!(e, TokenError::BadSecret),
        "43 base64url",
    );
    case(
        payload(ok_id, &format!("{SECRET}A"), addrs, PIN_HEX),
        |e| matches!(e, TokenError::BadSecret),
        "malformed",
    );
    // Right length, but non-canonical final character (trailing bits set).
    case(
        payload(ok_id, &format!("{}9", &SECRET[..42]), addrs, PIN_HEX),
        |e| matches!(e, TokenError::BadSecret),
        "malformed",
    );
    case(
        payload(ok_id, &format!("{}+", &SECRET[..42]), addrs, PIN_HEX),
        |e| matches!(e, TokenError::BadSecret),
        "malformed",
    );
    case(
        payload(ok_id, SECRET, "[]", PIN_HEX),
        |e| matches!(e, TokenError::NoAddresses),
        "no control-plane addresses",
    );
    case(
        with_payload(&format!(
            r#"{{"i":"{ok_id}","s":"{SECRET}","p":"{PIN_HEX}"}}"#
        )),
        |e| matches!(e, TokenError::NoAddresses),
        "trellis token create",
    );
    case(
        payload(ok_id, SECRET, &many, PIN_HEX),
        |e| matches!(e, TokenError::TooManyAddresses { count: 33, max: 32 }),
        "33 control-plane addresses",
    );
    case(
        payload(ok_id, SECRET, r#"["10.0.0.1:7443",""]"#, PIN_HEX),
        |e| matches!(e, TokenError::BadAddress { .. }),
        "it is empty",
    );
    case(
        payload(ok_id, SECRET, r#"["a b:1"]"#, PIN_HEX),
        |e| matches!(e, TokenError::BadAddress { .. }),
        "spaces or control",
    );
    case(
        payload(ok_id, SECRET, r#"["a\u0000b"]"#, PIN_HEX),
        |e| matches!(e, TokenError::BadAddress { .. }),
        "spaces or control",
    );
    case(
        payload(ok_id, SECRET, &long_addr, PIN_HEX),
        |e| matches!(e, TokenError::BadAddress { .. }),
        "too long",
    );
    case(
        payload(ok_id, SECRET, addrs, "abab"),
        |e| matches!(e, TokenError::BadPin { .. }),
        "it has 4 characters",
    );
    case(
        payload(ok_id, SECRET, addrs, ""),
        |e| matches!(e, TokenError::BadPin { .. }),
        "64 hex characters",
    );
    case(
        payload(ok_id, SECRET, addrs, &format!("{PIN_HEX}ab")),
        |e| matches!(e, TokenError::BadPin { .. }),
        "66 characters",
    );
    case(
        payload(ok_id, SECRET, addrs, &"zz".repeat(32)),
        |e| matches!(e, TokenError::BadPin { .. }),
        "not hexadecimal",
    );
    // Field order: the id is reported before the pin.
    case(
        payload("BAD", SECRET, addrs, "zz"),
        |e| matches!(e, TokenError::BadId { .. }),
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
    assert!(matches!(err, TokenError::BadJson { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.is_ascii() && !msg.contains('\u{1b}'), "{msg:?}");

    let long_id = "a".repeat(1000);
    let msg = JoinToken::parse(&payload(&long_id, SECRET, r#"["x"]"#, PIN_HEX))
        .unwrap_err()
        .to_string();
    assert!(msg.len() < 300, "id echoed in full: {} bytes", msg.len());
}

#[test]
fn validate_catches_what_parse_would_reject() {
    let mut t = sample();
    t.addrs.clear();
    assert_eq!(t.validate(), Err(TokenError::NoAddresses));
    let mut t = sample();
    t.id = "x".into();
    assert!(matches!(t.validate(), Err(TokenError::BadId { .. })));
    let mut t = sample();
    t.secret = "x".into();
    assert_eq!(t.validate(), Err(TokenError::BadSecret));
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
    let good = sample().encode();

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
            let mut bytes = good.clone().into_bytes();
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
        let mut text = good.clone().into_bytes();
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
