//! Webhook signature verification: Standard Webhooks, Stripe and GitHub-style.
//!
//! | scheme | headers | signed bytes | key | timestamp |
//! |---|---|---|---|---|
//! | `standard` | `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> …` | `id.timestamp.body` | base64 after `whsec_` | within the tolerance, both directions |
//! | `stripe` | `Stripe-Signature: t=<ts>,v1=<hex>,…` | `t.body` | the secret's bytes | not older than the tolerance |
//! | `github` | `X-Hub-Signature-256: sha256=<hex>` | the body | the secret's bytes | none |
//!
//! All use HMAC-SHA256 and compare in constant time (`hmac`'s `verify_slice`, which also
//! refuses a signature of the wrong length, so a truncated or empty one fails). Several secrets
//! may be configured at once, for rotation: a request passes if any signature in its header
//! matches any secret.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ConnectorError;

type HmacSha256 = Hmac<Sha256>;

/// The default timestamp tolerance, seconds.
pub const DEFAULT_TOLERANCE_S: i64 = 300;

/// A signature scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Standard Webhooks (<https://www.standardwebhooks.com>; Svix and others).
    Standard,
    /// Stripe's `Stripe-Signature`.
    Stripe,
    /// GitHub's `X-Hub-Signature-256` (and others that copy it).
    Github,
}

/// Why a request was refused. [`Rejection::reason`] is the label it is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// A header the scheme needs is absent.
    MissingHeader(&'static str),
    /// A header is there but cannot be read.
    Malformed(String),
    /// The timestamp is outside the tolerance.
    StaleTimestamp {
        /// Now minus the request's timestamp, seconds (negative: in the future).
        age_s: i64,
    },
    /// No signature matches any secret.
    BadSignature,
}

impl Rejection {
    /// A short label for metrics: `missing_header`, `malformed`, `stale_timestamp`, `bad_signature`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::MissingHeader(_) => "missing_header",
            Rejection::Malformed(_) => "malformed",
            Rejection::StaleTimestamp { .. } => "stale_timestamp",
            Rejection::BadSignature => "bad_signature",
        }
    }

    /// The HTTP status to answer: 400 for a request that cannot be read, 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::MissingHeader(_) | Rejection::Malformed(_) => 400,
            Rejection::StaleTimestamp { .. } | Rejection::BadSignature => 401,
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::MissingHeader(h) => write!(f, "missing header {h}"),
            Rejection::Malformed(m) => write!(f, "malformed signature header: {m}"),
            Rejection::StaleTimestamp { age_s } => write!(f, "timestamp {age_s} s away from now, outside the tolerance"),
            Rejection::BadSignature => write!(f, "no signature matches"),
        }
    }
}

/// Verifies the requests of one source.
#[derive(Clone)]
pub struct Verifier {
    scheme: Scheme,
    keys: Vec<Vec<u8>>,
    tolerance_s: i64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Verifier").field("scheme", &self.scheme).field("secrets", &self.keys.len()).field("tolerance_s", &self.tolerance_s).finish()
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

impl Verifier {
    /// A verifier for `scheme` with `secrets` (several: rotation) and a timestamp tolerance.
    ///
    /// # Errors
    /// No secret; a Standard Webhooks secret that is not base64 (after an optional `whsec_`).
    pub fn new(scheme: Scheme, secrets: &[String], tolerance_s: i64, key: &str) -> Result<Self, ConnectorError> {
        if secrets.is_empty() || secrets.iter().any(String::is_empty) {
            return Err(ConnectorError::Config { key: format!("{key}.secrets"), problem: "at least one secret, none empty".into() });
        }
        if tolerance_s <= 0 {
            return Err(ConnectorError::Config { key: format!("{key}.tolerance"), problem: "must be positive".into() });
        }
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| match scheme {
                Scheme::Standard => base64::engine::general_purpose::STANDARD.decode(s.strip_prefix("whsec_").unwrap_or(s)).map_err(|e| {
                    ConnectorError::Config { key: format!("{key}.secrets[{i}]"), problem: format!("a Standard Webhooks secret is base64 after `whsec_`: {e}") }
                }),
                Scheme::Stripe | Scheme::Github => Ok(s.as_bytes().to_vec()),
            })
            .collect::<Result<_, _>>()?;
        Ok(Verifier { scheme, keys, tolerance_s })
    }

    fn matches(&self, parts: &[&[u8]], signature: &[u8]) -> bool {
        self.keys.iter().any(|k| {
            let mut mac = HmacSha256::new_from_slice(k).expect("invariant: HMAC takes keys of any length");
            for p in parts {
                mac.update(p);
            }
            mac.verify_slice(signature).is_ok()
        })
    }

    /// Verifies a request: `header` looks a header up by lower-case name. Returns the
    /// webhook's id where the scheme carries one (Standard Webhooks' `webhook-id`).
    ///
    /// # Errors
    /// Why the request is refused.
    pub fn verify<'a>(&self, header: impl Fn(&str) -> Option<&'a str>, body: &[u8], now_s: i64) -> Result<Option<String>, Rejection> {
        match self.scheme {
            Scheme::Standard => {
                let id = header("webhook-id").ok_or(Rejection::MissingHeader("webhook-id"))?;
                let ts_text = header("webhook-timestamp").ok_or(Rejection::MissingHeader("webhook-timestamp"))?;
                let signatures = header("webhook-signature").ok_or(Rejection::MissingHeader("webhook-signature"))?;
                let ts: i64 = ts_text.trim().parse().map_err(|_| Rejection::Malformed(format!("webhook-timestamp `{ts_text}` is not a number")))?;
                if (now_s - ts).abs() > self.tolerance_s {
                    return Err(Rejection::StaleTimestamp { age_s: now_s - ts });
                }
                let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts_text.trim().as_bytes(), b".", body];
                for sig in signatures.split(' ').filter(|s| !s.is_empty()) {
                    let Some(b64) = sig.strip_prefix("v1,") else { continue };
                    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) else { continue };
                    if self.matches(&parts, &bytes) {
                        return Ok(Some(id.to_string()));
                    }
                }
                Err(Rejection::BadSignature)
            }
            Scheme::Stripe => {
                let value = header("stripe-signature").ok_or(Rejection::MissingHeader("Stripe-Signature"))?;
                let mut ts_text = None;
                let mut signatures = Vec::new();
                for item in value.split(',') {
                    match item.trim().split_once('=') {
                        Some(("t", t)) => ts_text = Some(t),
                        Some(("v1", s)) => signatures.push(s),
                        _ => {}
                    }
                }
                let ts_text = ts_text.ok_or_else(|| Rejection::Malformed("Stripe-Signature has no t=".into()))?;
                let ts: i64 = ts_text.parse().map_err(|_| Rejection::Malformed(format!("Stripe-Signature t=`{ts_text}` is not a number")))?;
                if now_s - ts > self.tolerance_s {
                    return Err(Rejection::StaleTimestamp { age_s: now_s - ts });
                }
                let parts: [&[u8]; 3] = [ts_text.as_bytes(), b".", body];
                if signatures.iter().filter_map(|s| decode_hex(s)).any(|bytes| self.matches(&parts, &bytes)) {
                    return Ok(None);
                }
                Err(Rejection::BadSignature)
            }
            Scheme::Github => {
                let value = header("x-hub-signature-256").ok_or(Rejection::MissingHeader("X-Hub-Signature-256"))?;
                let hex = value.trim().strip_prefix("sha256=").ok_or_else(|| Rejection::Malformed("X-Hub-Signature-256 does not start with sha256=".into()))?;
                match decode_hex(hex) {
                    Some(bytes) if self.matches(&[body], &bytes) => Ok(None),
                    _ => Err(Rejection::BadSignature),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |name: &str| pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }

    fn standard(secrets: &[&str]) -> Verifier {
        Verifier::new(Scheme::Standard, &secrets.iter().map(|s| s.to_string()).collect::<Vec<_>>(), DEFAULT_TOLERANCE_S, "sources[0]").unwrap()
    }

    // The Standard Webhooks specification's published vector.
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1_614_265_330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn sw(sig: &str, now: i64, v: &Verifier) -> Result<Option<String>, Rejection> {
        let ts = SW_TS.to_string();
        let h = [("webhook-id", SW_ID), ("webhook-timestamp", ts.as_str()), ("webhook-signature", sig)];
        v.verify(headers(&h), SW_BODY, now)
    }

    #[test]
    fn standard_webhooks_published_vector_passes_and_forgeries_fail() {
        let v = standard(&[SW_SECRET]);
        assert_eq!(sw(SW_SIG, SW_TS, &v), Ok(Some(SW_ID.to_string())));
        // Among several signatures (the sender rotating), with the prefix-less secret too.
        assert_eq!(sw(&format!("v1,bm9wZQ== {SW_SIG}"), SW_TS + 10, &standard(&["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])), Ok(Some(SW_ID.to_string())));
        let truncated = &SW_SIG[..SW_SIG.len() - 8];
        for forged in [truncated, "v1,", "v1", "", "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="] {
            assert_eq!(sw(forged, SW_TS, &v), Err(Rejection::BadSignature), "{forged:?}");
        }
        // A prefix of the signature bytes (decodes, but is short).
        let short = base64::engine::general_purpose::STANDARD.encode(&base64::engine::general_purpose::STANDARD.decode(&SW_SIG[3..]).unwrap()[..16]);
        assert_eq!(sw(&format!("v1,{short}"), SW_TS, &v), Err(Rejection::BadSignature));
        // The wrong secret.
        assert_eq!(sw(SW_SIG, SW_TS, &standard(&["whsec_c2x1aWNlLXRlc3Qtc2VjcmV0"])), Err(Rejection::BadSignature));
        // The body changed by one byte.
        let ts = SW_TS.to_string();
        let h = [("webhook-id", SW_ID), ("webhook-timestamp", ts.as_str()), ("webhook-signature", SW_SIG)];
        assert_eq!(v.verify(headers(&h), br#"{"test": 2432232315}"#, SW_TS), Err(Rejection::BadSignature));
    }

    #[test]
    fn standard_webhooks_timestamps_outside_the_tolerance_fail_both_ways() {
        let v = standard(&[SW_SECRET]);
        assert_eq!(sw(SW_SIG, SW_TS + 300, &v), Ok(Some(SW_ID.to_string())));
        assert_eq!(sw(SW_SIG, SW_TS - 300, &v), Ok(Some(SW_ID.to_string())));
        assert_eq!(sw(SW_SIG, SW_TS + 301, &v), Err(Rejection::StaleTimestamp { age_s: 301 }));
        assert_eq!(sw(SW_SIG, SW_TS - 301, &v), Err(Rejection::StaleTimestamp { age_s: -301 }));
        assert_eq!(
            v.verify(headers(&[("webhook-id", SW_ID), ("webhook-signature", SW_SIG)]), SW_BODY, SW_TS),
            Err(Rejection::MissingHeader("webhook-timestamp"))
        );
    }

    #[test]
    fn rotation_accepts_the_old_and_the_new_secret() {
        let both = standard(&["whsec_c2x1aWNlLXRlc3Qtc2VjcmV0", SW_SECRET]);
        assert_eq!(sw(SW_SIG, SW_TS, &both), Ok(Some(SW_ID.to_string())));
    }

    // Stripe publishes the scheme, not a vector: this one was computed with Python's hmac
    // (an implementation that is not ours): hmac.new(b"whsec_sluice_stripe_test",
    // b"1700000000." + body, sha256).hexdigest().
    const STRIPE_SECRET: &str = "whsec_sluice_stripe_test";
    const STRIPE_BODY: &[u8] = br#"{"id":"evt_1","type":"charge.succeeded"}"#;
    const STRIPE_SIG: &str = "8c70fb0ed936bcc816a0399be3d1b5c1684471a0712b31b8777d6f8c1c366ac7";

    #[test]
    fn stripe_signatures_verify_and_forgeries_fail() {
        let v = Verifier::new(Scheme::Stripe, &[STRIPE_SECRET.to_string()], DEFAULT_TOLERANCE_S, "s").unwrap();
        let check = |value: &str, now: i64| v.verify(headers(&[("Stripe-Signature", value)]), STRIPE_BODY, now);
        assert_eq!(check(&format!("t=1700000000,v1={STRIPE_SIG}"), 1_700_000_100), Ok(None));
        assert_eq!(check(&format!("t=1700000000,v1=00{},v1={STRIPE_SIG},v0=abc", &STRIPE_SIG[2..]), 1_700_000_000), Ok(None));
        assert_eq!(check(&format!("t=1700000000,v1={}", &STRIPE_SIG[..40]), 1_700_000_000), Err(Rejection::BadSignature));
        assert_eq!(check("t=1700000000,v1=", 1_700_000_000), Err(Rejection::BadSignature));
        assert_eq!(check(&format!("t=1700000001,v1={STRIPE_SIG}"), 1_700_000_001), Err(Rejection::BadSignature), "the timestamp is signed");
        assert_eq!(check(&format!("t=1700000000,v1={STRIPE_SIG}"), 1_700_000_301), Err(Rejection::StaleTimestamp { age_s: 301 }));
        assert_eq!(check(&format!("v1={STRIPE_SIG}"), 1_700_000_000), Err(Rejection::Malformed("Stripe-Signature has no t=".into())));
        let wrong = Verifier::new(Scheme::Stripe, &["whsec_other".to_string()], DEFAULT_TOLERANCE_S, "s").unwrap();
        assert_eq!(
            wrong.verify(headers(&[("stripe-signature", &format!("t=1700000000,v1={STRIPE_SIG}"))]), STRIPE_BODY, 1_700_000_000),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn github_published_vector_passes_and_forgeries_fail() {
        // GitHub's documented example ("Validating webhook deliveries").
        let v = Verifier::new(Scheme::Github, &["It's a Secret to Everybody".to_string()], DEFAULT_TOLERANCE_S, "s").unwrap();
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let check = |value: &str, body: &[u8]| v.verify(headers(&[("X-Hub-Signature-256", value)]), body, 0);
        assert_eq!(check(good, b"Hello, World!"), Ok(None));
        assert_eq!(check(good, b"Hello, World?"), Err(Rejection::BadSignature));
        assert_eq!(check(&good[..good.len() - 2], b"Hello, World!"), Err(Rejection::BadSignature));
        assert_eq!(check("sha256=", b"Hello, World!"), Err(Rejection::BadSignature));
        assert_eq!(check(&good[7..], b"Hello, World!"), Err(Rejection::Malformed("X-Hub-Signature-256 does not start with sha256=".into())));
        assert_eq!(v.verify(headers(&[]), b"Hello, World!", 0).unwrap_err().status(), 400);
    }

    #[test]
    fn secrets_are_checked_at_start() {
        let e = Verifier::new(Scheme::Standard, &["whsec_not base64!".to_string()], 300, "sources[1]").unwrap_err().to_string();
        assert!(e.contains("sources[1].secrets[0]"), "{e}");
        assert!(Verifier::new(Scheme::Github, &[], 300, "s").is_err());
        assert!(!format!("{:?}", standard(&[SW_SECRET])).contains("MfKQ"), "Debug never shows a secret");
    }
}
