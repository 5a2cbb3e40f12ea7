//! Tests for [`TokenRecord`]: every refusal of `check`, the success paths,
//! use counting, revocation and `summary`.

use super::*;

const NOW: u64 = 1_795_251_600; // 2026-11-21T09:00:00Z
const HOUR: u64 = 3600;

fn token() -> JoinToken {
    JoinToken {
        id: "abc12345".into(),
        secret: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8".into(),
        addrs: vec!["10.0.0.1:7443".into()],
        root_pin: [1; 32],
        trust_domain: None,
        workload: None,
        group: None,
        cluster: None,
    }
}

fn vm_kind() -> TokenKind {
    TokenKind::Vm {
        identity: "default/web".into(),
    }
}

#[test]
fn new_stores_only_a_hash() {
    let t = token();
    let r = TokenRecord::new(&t, TokenKind::ControlPlane, NOW, HOUR, Some(3));
    assert_eq!(r.id, "abc12345");
    assert_eq!(r.secret_sha256.len(), 64);
    assert_ne!(r.secret_sha256, t.secret);
    // sha256 of the secret string, computed independently.
    assert_eq!(
        r.secret_sha256,
        hex::encode(ring::digest::digest(&SHA256, t.secret.as_bytes()))
    );
    assert_eq!((r.created_at, r.expires_at), (NOW, NOW + HOUR));
    assert_eq!((r.max_uses, r.uses, r.revoked_at), (Some(3), 0, None));

    let forever = TokenRecord::new(&t, TokenKind::ControlPlane, NOW, u64::MAX, None);
    assert_eq!(forever.expires_at, u64::MAX);
}

/// (record, secret, kind, now, expected result, words in the message)
type Case<'a> = (
    &'a TokenRecord,
    &'a str,
    KindRequired,
    u64,
    Result<(), TokenError>,
    &'a str,
);

#[test]
fn check_table() {
    let t = token();
    let cp = TokenRecord::new(&t, TokenKind::ControlPlane, NOW, HOUR, None);
    let vm = TokenRecord::new(&t, vm_kind(), NOW, HOUR, Some(2));
    let revoked = TokenRecord {
        revoked_at: Some(NOW + 60),
        ..cp.clone()
    };
    let used_up = TokenRecord {
        uses: 2,
        ..vm.clone()
    };
    let vm_used_once = TokenRecord {
        uses: 1,
        ..vm.clone()
    };
    let corrupt = TokenRecord {
        secret_sha256: "not hex".into(),
        ..cp.clone()
    };
    let s = t.secret.as_str();
    let cpk = KindRequired::ControlPlane;
    let vmk = KindRequired::Vm;

    let cases: Vec<Case> = vec![
        (&cp, s, cpk, NOW, Ok(()), ""),
        (&cp, s, cpk, NOW + HOUR - 1, Ok(()), ""),
        (&vm, s, vmk, NOW, Ok(()), ""),
        (&vm_used_once, s, vmk, NOW, Ok(()), ""),
        (
            &cp,
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9",
            cpk,
            NOW,
            Err(TokenError::SecretMismatch { id: "abc12345".into() }),
            "wrong secret; check that the whole token was copied",
        ),
        (
            &cp,
            "",
            cpk,
            NOW,
            Err(TokenError::SecretMismatch { id: "abc12345".into() }),
            "token abc12345",
        ),
        (
            // Status is not revealed to someone without the secret.
            &revoked,
            "wrong",
            cpk,
            NOW + HOUR * 2,
            Err(TokenError::SecretMismatch { id: "abc12345".into() }),
            "wrong secret",
        ),
        (
            &revoked,
            s,
            cpk,
            NOW + 120,
            Err(TokenError::Revoked { id: "abc12345".into(), revoked_at: NOW + 60 }),
            "token abc12345 was revoked at 2026-11-21T09:01:00Z; create a new one with `trellis token create`",
        ),
        (
            // Revocation wins over expiry: it is the more deliberate fact.
            &revoked,
            s,
            cpk,
            NOW + HOUR * 2,
            Err(TokenError::Revoked { id: "abc12345".into(), revoked_at: NOW + 60 }),
            "revoked",
        ),
        (
            &cp,
            s,
            cpk,
            NOW + HOUR,
            Err(TokenError::Expired { id: "abc12345".into(), expires_at: NOW + HOUR }),
            "token abc12345 expired at 2026-11-21T10:00:00Z; create a new one with `trellis token create`",
        ),
        (
            &used_up,
            s,
            vmk,
            NOW,
            Err(TokenError::UsedUp { id: "abc12345".into(), uses: 2, max_uses: 2 }),
            "token abc12345 is used up (2 of 2 uses)",
        ),
        (
            &vm,
            s,
            cpk,
            NOW,
            Err(TokenError::WrongKind {
                id: "abc12345".into(),
                token_kind: KindRequired::Vm,
                required: KindRequired::ControlPlane,
            }),
            "token abc12345 is a VM token and cannot be used to join a control-plane node; \
             create a control-plane node token",
        ),
        (
            &cp,
            s,
            vmk,
            NOW,
            Err(TokenError::WrongKind {
                id: "abc12345".into(),
                token_kind: KindRequired::ControlPlane,
                required: KindRequired::Vm,
            }),
            "is a control-plane node token and cannot be used to join a VM",
        ),
        (
            &corrupt,
            s,
            cpk,
            NOW,
            Err(TokenError::CorruptRecord {
                id: "abc12345".into(),
                detail: "its secret hash is not 64 hex characters",
            }),
            "trellis token revoke abc12345",
        ),
    ];
    for (i, (record, secret, kind, now, want, words)) in cases.iter().enumerate() {
        let got = record.check(secret, *kind, *now);
        assert_eq!(&got, want, "case {i}");
        if let Err(e) = got {
            let msg = e.to_string();
            assert!(msg.contains(words), "case {i}: {msg:?} lacks {words:?}");
            assert!(!msg.contains(s), "case {i}: message leaks the secret");
        }
    }
}

#[test]
fn redeem_counts_uses_until_used_up() {
    let t = token();
    let mut r = TokenRecord::new(&t, vm_kind(), NOW, HOUR, Some(2));
    assert_eq!(r.summary(NOW), TokenStatus::Active);
    r.redeem(&t.secret, KindRequired::Vm, NOW).unwrap();
    r.redeem(&t.secret, KindRequired::Vm, NOW + 1).unwrap();
    assert_eq!(r.uses, 2);
    assert_eq!(r.summary(NOW + 1), TokenStatus::UsedUp);
    assert!(matches!(
        r.redeem(&t.secret, KindRequired::Vm, NOW + 2),
        Err(TokenError::UsedUp {
            uses: 2,
            max_uses: 2,
            ..
        })
    ));
    // A refused redeem does not count.
    assert_eq!(r.uses, 2);
    assert!(r.redeem("nope", KindRequired::Vm, NOW).is_err());
    assert_eq!(r.uses, 2);
}

#[test]
fn unlimited_tokens_and_consume_saturate() {
    let t = token();
    let mut r = TokenRecord::new(&t, TokenKind::ControlPlane, NOW, HOUR, None);
    r.uses = u32::MAX - 1;
    r.consume();
    r.consume();
    assert_eq!(r.uses, u32::MAX);
    assert_eq!(r.check(&t.secret, KindRequired::ControlPlane, NOW), Ok(()));
}

#[test]
fn zero_max_uses_is_never_usable() {
    let t = token();
    let r = TokenRecord::new(&t, TokenKind::ControlPlane, NOW, HOUR, Some(0));
    assert_eq!(r.summary(NOW), TokenStatus::UsedUp);
    assert!(matches!(
        r.check(&t.secret, KindRequired::ControlPlane, NOW),
        Err(TokenError::UsedUp {
            uses: 0,
            max_uses: 0,
            ..
        })
    ));
}

#[test]
fn revoke_keeps_first_time() {
    let t = token();
    let mut r = TokenRecord::new(&t, TokenKind::ControlPlane, NOW, HOUR, None);
    r.revoke(NOW + 5);
    r.revoke(NOW + 50);
    assert_eq!(r.revoked_at, Some(NOW + 5));
    assert_eq!(r.summary(NOW + 6), TokenStatus::Revoked);
}

#[test]
fn summary_table() {
    let t = token();
    let base = TokenRecord::new(&t, TokenKind::ControlPlane, NOW, HOUR, Some(1));
    let used = TokenRecord {
        uses: 1,
        ..base.clone()
    };
    let revoked = TokenRecord {
        revoked_at: Some(NOW),
        ..used.clone()
    };
    let cases = [
        (&base, NOW, TokenStatus::Active, "active"),
        (&base, NOW + HOUR - 1, TokenStatus::Active, "active"),
        (&base, NOW + HOUR, TokenStatus::Expired, "expired"),
        (&used, NOW, TokenStatus::UsedUp, "used up"),
        (&used, NOW + HOUR, TokenStatus::Expired, "expired"),
        (&revoked, NOW, TokenStatus::Revoked, "revoked"),
        (&revoked, NOW + HOUR, TokenStatus::Revoked, "revoked"),
    ];
    for (r, now, want, text) in cases {
        assert_eq!(r.summary(now), want, "at {now}: {r:?}");
        assert_eq!(want.to_string(), text);
    }
}

#[test]
fn record_serde_round_trip() {
    let t = token();
    let mut r = TokenRecord::new(&t, vm_kind(), NOW, HOUR, Some(5));
    r.consume();
    r.revoke(NOW + 1);
    let json = serde_json::to_string(&r).unwrap();
    assert!(
        json.contains(r#""kind":{"vm":{"identity":"default/web"}}"#),
        "{json}"
    );
    assert!(!json.contains(&t.secret), "secret stored in clear: {json}");
    assert_eq!(serde_json::from_str::<TokenRecord>(&json).unwrap(), r);
    assert_eq!(
        serde_json::to_string(&TokenStatus::UsedUp).unwrap(),
        r#""used_up""#
    );
}

#[test]
fn constant_time_eq_compares_every_byte() {
    let a = [7u8; 32];
    assert!(constant_time_eq(&a, &a));
    for i in 0..32 {
        let mut b = a;
        b[i] ^= 0x80;
        assert!(!constant_time_eq(&a, &b), "difference at byte {i} missed");
    }
}
