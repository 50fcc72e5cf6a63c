//! Content negotiation: a response is XML when the request's `Accept` prefers XML to
//! JSON. Handlers produce JSON; this layer converts, so both forms always agree.
//!
//! The conversion is ours rather than quick-xml's serializer: lists are written inside
//! a wrapper element with singular item names (`<errors><error>`), and map keys that
//! are not XML names (metadata keys are the client's) become `<entry>`; the
//! serializer writes lists as repeated elements and refuses such keys. quick-xml
//! does the escaping.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;

/// Converts JSON responses to XML for clients that prefer it.
pub async fn xml_when_preferred(req: Request, next: Next) -> Response {
    let wants_xml = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(prefers_xml);
    let response = next.run(req).await;
    if !wants_xml {
        return response;
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let (root, xml_type) = match content_type.as_str() {
        "application/json" => ("response", "application/xml"),
        "application/problem+json" => ("problem", "application/problem+xml"),
        _ => return response,
    };
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    write_element(&mut xml, root, &value);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(xml_type));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(xml))
}

/// True when the highest-quality media type naming XML beats the one naming JSON.
fn prefers_xml(accept: &str) -> bool {
    let (mut xml, mut json) = (0.0f32, 0.0f32);
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if media.ends_with("/xml") || media.ends_with("+xml") {
            xml = xml.max(q);
        } else if media.ends_with("/json") || media.ends_with("+json") || media == "*/*" {
            json = json.max(q);
        }
    }
    xml > json
}

fn write_element(out: &mut String, name: &str, value: &Value) {
    match value {
        Value::Null => {
            out.push('<');
            out.push_str(name);
            out.push_str("/>");
        }
        Value::Array(items) => {
            out.push('<');
            out.push_str(name);
            out.push('>');
            let item = singular(name);
            for v in items {
                write_element(out, &item, v);
            }
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
        Value::Object(map) => {
            out.push('<');
            out.push_str(name);
            out.push('>');
            for (k, v) in map {
                write_element(out, &element_name(k), v);
            }
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
        scalar => {
            out.push('<');
            out.push_str(name);
            out.push('>');
            let text = match scalar {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&quick_xml::escape::escape(text.as_str()));
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
    }
}

/// The element name for one item of a list: `messages` → `message`, `to` → `address`.
fn singular(list: &str) -> String {
    match list {
        "to" | "cc" | "bcc" => "address".to_owned(),
        "recipients" => "recipient".to_owned(),
        "metadata" => "entry".to_owned(),
        other => other.strip_suffix('s').unwrap_or("item").to_owned(),
    }
}

/// Map keys that are not valid XML names (metadata keys) are made safe.
fn element_name(key: &str) -> String {
    let valid = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if valid {
        key.to_owned()
    } else {
        "entry".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_choose_between_xml_and_json() {
        assert!(prefers_xml("application/xml"));
        assert!(prefers_xml("text/xml, application/json;q=0.5"));
        assert!(!prefers_xml("application/json, application/xml;q=0.9"));
        assert!(!prefers_xml("*/*"));
        assert!(!prefers_xml("text/html"));
    }

    #[test]
    fn json_becomes_escaped_xml() {
        let mut out = String::new();
        write_element(
            &mut out,
            "response",
            &serde_json::json!({"id": "1", "errors": [{"field": "To", "message": "<bad> & co"}], "n": null}),
        );
        assert_eq!(
            out,
            "<response><errors><error><field>To</field><message>&lt;bad&gt; &amp; co</message></error></errors><id>1</id><n/></response>"
        );
    }
}
