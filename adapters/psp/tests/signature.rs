//! Webhook signature checks: Hyperswitch HMAC-SHA512 and Stripe v1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ledger_psp::signature::{STRIPE_TOLERANCE_S_DEFAULT, sign_stripe};
use ledger_psp::{SignatureError, sign_hyperswitch, verify_hyperswitch, verify_stripe};

const KEY: &[u8] = b"whsec_key";
const BODY: &[u8] = br#"{"event_id":"evt_1"}"#;
/// `printf '%s' '{"event_id":"evt_1"}' | openssl dgst -sha512 -hmac whsec_key`
const OPENSSL_SHA512: &str = "4a16d5e79c3f0ecab9a31901ed72e69c6a37ac8caeeb7590ea4c658308b17cdfc5a8f7cc96b581870d957dd0760d0b2f160d52fe6d1bba6063749d69cdfd8df8";
/// `printf '%s' '1700000000.{"id":"evt_1"}' | openssl dgst -sha256 -hmac whsec_test`
const OPENSSL_SHA256: &str = "c89214b5b5da833daed6f0b8c5bb6bd58cea9022bd80ccc78230f3942d632925";

#[test]
fn hyperswitch_signature_matches_an_independent_implementation() {
    assert_eq!(sign_hyperswitch(KEY, BODY), OPENSSL_SHA512);
    assert_eq!(verify_hyperswitch(KEY, BODY, Some(OPENSSL_SHA512)), Ok(()));
}

#[test]
fn hyperswitch_verification_fails_closed() {
    let good = sign_hyperswitch(KEY, BODY);
    // (name, key, body, header, expected)
    type Case<'a> = (&'a str, &'a [u8], &'a [u8], Option<String>, SignatureError);
    let cases: [Case; 7] = [
        (
            "tampered body",
            KEY,
            br#"{"event_id":"evt_2"}"#,
            Some(good.clone()),
            SignatureError::Mismatch,
        ),
        (
            "wrong key",
            b"other",
            BODY,
            Some(good.clone()),
            SignatureError::Mismatch,
        ),
        ("missing header", KEY, BODY, None, SignatureError::Missing),
        (
            "uppercase hex",
            KEY,
            BODY,
            Some(good.to_uppercase()),
            SignatureError::Malformed,
        ),
        (
            "short hex",
            KEY,
            BODY,
            Some(good[..126].to_owned()),
            SignatureError::Malformed,
        ),
        (
            "non-hex",
            KEY,
            BODY,
            Some(format!("{}zz", &good[..126])),
            SignatureError::Malformed,
        ),
        (
            "padded",
            KEY,
            BODY,
            Some(format!(" {good}")),
            SignatureError::Malformed,
        ),
    ];
    for (name, key, body, header, expected) in cases {
        assert_eq!(
            verify_hyperswitch(key, body, header.as_deref()),
            Err(expected),
            "{name}"
        );
    }
    // A SHA-256-length signature is not accepted as a truncated SHA-512.
    assert_eq!(
        verify_hyperswitch(KEY, BODY, Some(&good[..64])),
        Err(SignatureError::Malformed)
    );
}

#[test]
fn stripe_signature_matches_an_independent_implementation() {
    let header = sign_stripe(b"whsec_test", br#"{"id":"evt_1"}"#, 1_700_000_000);
    assert_eq!(header, format!("t=1700000000,v1={OPENSSL_SHA256}"));
}

#[test]
fn stripe_accepts_any_matching_v1_within_tolerance() {
    let secret = b"whsec_test";
    let body = br#"{"id":"evt_1"}"#;
    let t = 1_700_000_000;
    let good = format!("v1={OPENSSL_SHA256}");
    let wrong = format!("v1={}", "0".repeat(64));
    let tol = STRIPE_TOLERANCE_S_DEFAULT;
    let ok = |header: String, now: i64| verify_stripe(secret, body, Some(&header), now, tol);

    assert_eq!(ok(format!("t={t},{good}"), t), Ok(()));
    assert_eq!(
        ok(format!("t={t},{wrong},{good}"), t),
        Ok(()),
        "second v1 matches"
    );
    assert_eq!(ok(format!("t={t},v0=abc,{good}"), t), Ok(()), "v0 ignored");
    assert_eq!(
        ok(format!("t={t},{good}"), t + 300),
        Ok(()),
        "edge of tolerance"
    );
    assert_eq!(
        ok(format!("t={t},{good}"), t + 301),
        Err(SignatureError::OutsideTolerance)
    );
    assert_eq!(
        ok(format!("t={t},{good}"), t - 301),
        Err(SignatureError::OutsideTolerance),
        "far-future timestamps are refused too"
    );
    assert_eq!(
        ok(format!("t={t},{wrong}"), t),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        ok(format!("t={},{good}", t + 1), t),
        Err(SignatureError::Mismatch),
        "timestamp is signed"
    );
    assert_eq!(
        verify_stripe(b"whsec_other", body, Some(&format!("t={t},{good}")), t, tol),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_stripe(secret, body, None, t, tol),
        Err(SignatureError::Missing)
    );
    for malformed in [
        good.clone(),
        format!("t={t}"),
        format!("t=soon,{good}"),
        format!("t={t},v1=XYZ"),
        "garbage".to_owned(),
    ] {
        assert_eq!(
            ok(malformed.clone(), t),
            Err(SignatureError::Malformed),
            "{malformed}"
        );
    }
}
