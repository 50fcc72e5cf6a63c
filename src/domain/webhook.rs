//! Webhooks' vocabulary: the event types, endpoint URLs, and signing per the Standard
//! Webhooks specification (as Svix does it).

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a webhook tells of.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum WebhookEvent {
    #[serde(rename = "message.sent")]
    Sent,
    /// An attempt failed for now; another follows.
    #[serde(rename = "message.deferred")]
    Deferred,
    #[serde(rename = "message.failed")]
    Failed,
    #[serde(rename = "message.cancelled")]
    Cancelled,
    /// Not sent by its `ExpiresAt` or `retry.max_age`.
    #[serde(rename = "message.expired")]
    Expired,
    /// Failed without an attempt: every recipient is suppressed.
    #[serde(rename = "message.suppressed")]
    Suppressed,
    /// Sent, but the server refused one recipient or more for good.
    #[serde(rename = "message.recipient_failed")]
    RecipientFailed,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 7] = [
        WebhookEvent::Sent,
        WebhookEvent::Deferred,
        WebhookEvent::Failed,
        WebhookEvent::Cancelled,
        WebhookEvent::Expired,
        WebhookEvent::Suppressed,
        WebhookEvent::RecipientFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Sent => "message.sent",
            WebhookEvent::Deferred => "message.deferred",
            WebhookEvent::Failed => "message.failed",
            WebhookEvent::Cancelled => "message.cancelled",
            WebhookEvent::Expired => "message.expired",
            WebhookEvent::Suppressed => "message.suppressed",
            WebhookEvent::RecipientFailed => "message.recipient_failed",
        }
    }
}

impl std::str::FromStr for WebhookEvent {
    type Err = String;
    fn from_str(s: &str) -> Result<WebhookEvent, String> {
        WebhookEvent::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = WebhookEvent::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown event type {s:?}; known: {}", known.join(", "))
            })
    }
}

/// A new signing secret: `whsec_` and 32 random bytes in base64.
pub fn new_webhook_secret() -> String {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    format!("whsec_{}", STANDARD.encode(key))
}

/// The `webhook-signature` entry of one secret: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` keyed with the secret's bytes (the base64 after `whsec_`).
pub fn sign_webhook(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = STANDARD
        .decode(encoded)
        .unwrap_or_else(|_| encoded.as_bytes().to_vec());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// An endpoint's URL, checked: absolute `https` (or `http` when `allow_http`), with a
/// host, no credentials, no fragment. Where the host points is checked when sending
/// (it may change).
pub fn parse_webhook_url(input: &str, allow_http: bool) -> Result<url::Url, String> {
    let url = url::Url::parse(input.trim()).map_err(|e| format!("is not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return Err("must be https (webhooks.allow_http is off)".to_owned()),
        other => return Err(format!("must be https, not {other}")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".to_owned());
    }
    if url.fragment().is_some() {
        return Err("must not have a fragment".to_owned());
    }
    if input.len() > 2048 {
        return Err("is longer than 2048 characters".to_owned());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let signature = sign_webhook(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_fresh_and_decode_to_32_bytes() {
        let (a, b) = (new_webhook_secret(), new_webhook_secret());
        assert_ne!(a, b);
        let key = STANDARD.decode(a.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(key.len(), 32);
    }

    #[test]
    fn endpoint_urls_are_https_with_a_host_and_no_credentials() {
        assert!(parse_webhook_url("https://hooks.example.com/postwire", false).is_ok());
        assert!(parse_webhook_url("http://hooks.example.com/", false).is_err());
        assert!(parse_webhook_url("http://127.0.0.1:9000/", true).is_ok());
        assert!(parse_webhook_url("ftp://example.com/", true).is_err());
        assert!(parse_webhook_url("https://u:p@example.com/", false).is_err());
        assert!(parse_webhook_url("https://example.com/#x", false).is_err());
        assert!(parse_webhook_url("not a url", false).is_err());
    }

    #[test]
    fn event_types_round_trip_their_names() {
        for t in WebhookEvent::ALL {
            assert_eq!(t.as_str().parse::<WebhookEvent>(), Ok(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        assert!("message.bounced".parse::<WebhookEvent>().is_err());
    }
}
