//! Standard Webhooks signatures: the `whsec_<base64>` secret and the `v1,<base64 HMAC-SHA256>`
//! value of the `webhook-signature` header.
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}` with the raw body bytes; the
//! key is the base64-decoded part of the secret (not its text). See
//! <https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>.
//! This module only computes and checks signatures; which headers carry them is the sender's.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use ring::hmac;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// The signature scheme tag: HMAC-SHA256, base64.
pub const SIGNATURE_VERSION: &str = "v1";

/// Shortest key accepted, in bytes after decoding: the spec asks for 24 to 64 bytes (192 to 512
/// bits), and a shorter HMAC key is guessable in principle.
pub const MIN_SECRET_BYTES: usize = 24;

/// Longest key accepted, in bytes after decoding (the spec's upper bound).
pub const MAX_SECRET_BYTES: usize = 64;

/// Standard alphabet; padding optional (some generators strip it).
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The HMAC key of a webhook secret. `Debug` never shows it.
#[derive(Clone)]
pub struct WebhookSecret {
    key: hmac::Key,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>` (standard alphabet). Errors name the expected form and never
    /// repeat the secret.
    pub fn parse(text: &str) -> Result<WebhookSecret, String> {
        let encoded = text.trim().strip_prefix(SECRET_PREFIX).ok_or_else(|| {
            "webhook secret must have the form whsec_<base64> (Standard Webhooks)".to_string()
        })?;
        let bytes = SECRET_BASE64.decode(encoded).map_err(|_| {
            "webhook secret must have the form whsec_<base64>: the part after whsec_ is not valid base64"
                .to_string()
        })?;
        Self::from_bytes(&bytes)
    }

    /// A secret from raw key bytes (24 to 64 of them).
    pub fn from_bytes(key: &[u8]) -> Result<WebhookSecret, String> {
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(format!(
                "webhook secret must decode to {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes (got {}); \
                 generate one with: echo whsec_$(head -c 32 /dev/urandom | base64)",
                key.len()
            ));
        }
        Ok(WebhookSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        })
    }
}

fn tag(secret: &WebhookSecret, msg_id: &str, timestamp_secs: u64, body: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(&secret.key);
    ctx.update(msg_id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp_secs.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    ctx.sign()
}

/// The `webhook-signature` value: `v1,` + base64(HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")).
pub fn sign(secret: &WebhookSecret, msg_id: &str, timestamp_secs: u64, body: &[u8]) -> String {
    let tag = tag(secret, msg_id, timestamp_secs, body);
    format!("{SIGNATURE_VERSION},{}", STANDARD.encode(tag.as_ref()))
}

/// Whether a `webhook-signature` header value (space-separated `v1,<base64>` entries, as during
/// a secret rotation) holds a valid signature for this message. Compares in constant time.
/// The receiver's check; used by sluice's tests and offered for tools.
pub fn verify(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp_secs: u64,
    body: &[u8],
    header_value: &str,
) -> bool {
    // hmac::verify wants the message in one piece; verification is not on a hot path.
    let ts = timestamp_secs.to_string();
    let mut message = Vec::with_capacity(msg_id.len() + ts.len() + body.len() + 2);
    message.extend_from_slice(msg_id.as_bytes());
    message.push(b'.');
    message.extend_from_slice(ts.as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    header_value.split(' ').any(|entry| {
        let Some(encoded) = entry
            .strip_prefix(SIGNATURE_VERSION)
            .and_then(|rest| rest.strip_prefix(','))
        else {
            return false;
        };
        match STANDARD.decode(encoded) {
            // Constant-time comparison of the computed and the offered tag.
            Ok(candidate) => hmac::verify(&secret.key, &message, &candidate).is_ok(),
            Err(_) => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks spec (also svix-webhooks' `TestWebhookSign`).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: u64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn spec_vector() {
        let secret = WebhookSecret::parse(SPEC_SECRET).unwrap();
        assert_eq!(
            sign(&secret, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
        assert!(verify(
            &secret,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
            SPEC_SIGNATURE
        ));
    }

    #[test]
    fn verify_refuses_changes() {
        let secret = WebhookSecret::parse(SPEC_SECRET).unwrap();
        let other = WebhookSecret::from_bytes(&[7u8; 32]).unwrap();
        let good = SPEC_SIGNATURE;
        assert!(!verify(
            &secret,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP + 1,
            SPEC_BODY,
            good
        ));
        assert!(!verify(
            &secret,
            "msg_other",
            SPEC_TIMESTAMP,
            SPEC_BODY,
            good
        ));
        assert!(!verify(
            &secret,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            br#"{"test": 2432232315}"#,
            good
        ));
        assert!(!verify(
            &other,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
            good
        ));
        for bad in [
            "",
            "v1,",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1,!!!",
        ] {
            assert!(
                !verify(&secret, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY, bad),
                "{bad:?}"
            );
        }
        // Several entries (rotation): one valid is enough.
        let several = format!("v1,AAAA {good} v1a,xyz");
        assert!(verify(
            &secret,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
            &several
        ));
    }

    #[test]
    fn binary_body_is_signed_raw() {
        let secret = WebhookSecret::from_bytes(&[1u8; 32]).unwrap();
        let body = b"\x00\xff\r\n.";
        let sig = sign(&secret, "job_1", 1, body);
        assert!(verify(&secret, "job_1", 1, body, &sig));
        assert!(!verify(&secret, "job_1", 1, b"\x00\xff\r\n", &sig));
    }

    #[test]
    fn secret_parsing() {
        // Unpadded base64 is accepted too (24 bytes encode without padding; 32 bytes need "=").
        let padded = format!("{SECRET_PREFIX}{}", STANDARD.encode([9u8; 32]));
        assert!(padded.ends_with('='));
        assert!(WebhookSecret::parse(&padded).is_ok());
        assert!(WebhookSecret::parse(padded.trim_end_matches('=')).is_ok());
        let cases = [
            ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_<base64>"),
            ("whsec:MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_<base64>"),
            ("whsec_not base64!", "not valid base64"),
            ("whsec_", "24-64 bytes (got 0)"),
            ("whsec_c2hvcnQ=", "24-64 bytes (got 5)"),
        ];
        for (text, want) in cases {
            let err = WebhookSecret::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(
                !err.contains("MfKQ9r8G") && !err.contains("c2hvcnQ"),
                "error repeats the secret: {err}"
            );
        }
        let long = format!("{SECRET_PREFIX}{}", STANDARD.encode([1u8; 65]));
        assert!(WebhookSecret::parse(&long).unwrap_err().contains("got 65"));
    }

    #[test]
    fn debug_is_redacted() {
        let secret = WebhookSecret::parse(SPEC_SECRET).unwrap();
        assert_eq!(format!("{secret:?}"), "WebhookSecret(<redacted>)");
    }
}
