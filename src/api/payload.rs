//! Request bodies: content-type dispatch, size limit and shape errors that name the
//! field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use sha2::Digest;

use super::ApiError;

/// Bodies (and message contents) larger than this are parsed, validated and rendered
/// on the blocking pool rather than on an async worker thread.
pub(crate) const LARGE_BODY: usize = 64 * 1024;

/// A request body type, and the shape it takes in XML.
pub trait RequestBody: DeserializeOwned + Send + 'static {
    /// The XML form, turned into `Self` after parsing.
    type Xml: DeserializeOwned + Into<Self>;
}

/// A request body deserialised from JSON or XML, with the SHA-256 of its bytes (to
/// recognise a repeated request under the same Idempotency-Key).
pub struct Payload<T>(pub T, pub [u8; 32]);

impl<S, T> FromRequest<S> for Payload<T>
where
    S: Send + Sync,
    T: RequestBody,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let xml =
            matches!(essence.as_str(), "application/xml" | "text/xml") || essence.ends_with("+xml");
        if !(xml || essence == "application/json" || essence.ends_with("+json")) {
            return Err(ApiError::UnsupportedMediaType(if content_type.is_empty() {
                "(none): send Content-Type: application/json or application/xml".to_owned()
            } else {
                content_type
            }));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                _ => ApiError::Malformed {
                    field: None,
                    message: rejection.body_text(),
                },
            }
        })?;
        let bytes_len = bytes.len();
        let parse = move || -> Result<Payload<T>, ApiError> {
            let digest = sha2::Sha256::digest(&bytes).into();
            let value = if xml {
                parse_xml::<T::Xml>(&bytes)?.into()
            } else {
                parse_json(&bytes)?
            };
            Ok(Payload(value, digest))
        };
        crate::accept::off_runtime(bytes_len > LARGE_BODY, parse).await?
    }
}

/// Deserialises JSON, naming the path of the offending field in errors.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = strip_position(&inner.to_string());
        let field = (path != "." && !path.is_empty()).then(|| path.replace(".[", "["));
        ApiError::Malformed { field, message }
    })
}

/// Deserialises XML. Document type and entity declarations are refused before any
/// parsing, so no entity is ever expanded (XXE, "billion laughs").
pub fn parse_xml<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let upper = bytes.to_ascii_uppercase();
    if upper.windows(9).any(|w| w == b"<!DOCTYPE") || upper.windows(8).any(|w| w == b"<!ENTITY") {
        return Err(ApiError::Malformed {
            field: None,
            message: "XML document type and entity declarations are not accepted".to_owned(),
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ApiError::Malformed {
        field: None,
        message: "the XML body is not UTF-8".to_owned(),
    })?;
    quick_xml::de::from_str(text).map_err(|e| ApiError::Malformed {
        field: None,
        message: format!("invalid XML: {e}"),
    })
}

/// serde_json appends " at line 1 column 42"; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Query parameters, with malformed ones answered as the API's problem document
/// rather than axum's plain-text rejection.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(Query)
            .map_err(|e| ApiError::Malformed {
                field: None,
                message: format!("invalid query string: {e}"),
            })
    }
}

/// For `PATCH` bodies: distinguishes a field sent as `null` (`Some(None)`) from an
/// absent one (`None`, with `#[serde(default)]`).
pub(super) fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// A page size from a query's `limit`: `default` when absent, else 1 to 500.
pub fn page_limit(limit: Option<u32>, default: u32) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=500).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::field("limit", "must be 1 to 500"))
    }
}

/// An RFC 3339 time from a request's `field`.
pub fn rfc3339(
    field: &'static str,
    value: &str,
) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| ApiError::field(field, format!("{value:?} is not an RFC 3339 time")))
}
