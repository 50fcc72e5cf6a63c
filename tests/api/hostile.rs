//! Hostile input: nothing queued for any of it; and what must pass, passes intact.
//! Also the XML form of the API.

use crate::helpers;

use std::time::Duration;

use base64::Engine;

use helpers::{assert_refused, message_with as with, parse_mail, spawn_app, TestApp};
use mail_parser::{HeaderValue, MimeHeaders};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

async fn refused(app: &TestApp, body: Value, field: &str) {
    assert_refused(app, body, 400, field).await;
}

#[tokio::test]
async fn control_characters_in_any_header_field_are_refused() {
    let app = spawn_app().await;
    for bad in ["a\rb", "a\nb", "a\r\nBcc: x@example.com", "a\0b"] {
        refused(&app, with(json!({"Subject": bad})), "Subject").await;
        refused(
            &app,
            with(json!({"From": format!("\"{bad}\" <s@example.com>")})),
            "From",
        )
        .await;
        refused(
            &app,
            with(json!({"To": format!("{bad}@example.com")})),
            "To",
        )
        .await;
        refused(
            &app,
            with(json!({"Headers": {"X-Tag": bad}})),
            "Headers.X-Tag",
        )
        .await;
        let attachment = |k: &str| {
            let mut a = json!({"FileName": "a.txt", "ContentData": "eA==", "ContentType": "text/plain", "ContentTransferEncoding": "base64"});
            a[k] = json!(format!("x{bad}"));
            with(json!({"Attachments": [a]}))
        };
        refused(&app, attachment("FileName"), "Attachments[0].FileName").await;
        refused(
            &app,
            attachment("ContentType"),
            "Attachments[0].ContentType",
        )
        .await;
    }
}

#[tokio::test]
async fn custom_headers_must_be_x_headers() {
    let app = spawn_app().await;
    for name in ["Bcc", "From", "X-Bad Name", "X-é", "X-"] {
        refused(
            &app,
            with(json!({"Headers": {name: "v"}})),
            &format!("Headers.{name}"),
        )
        .await;
    }
}

#[tokio::test]
async fn address_tricks_are_refused() {
    let app = spawn_app().await;
    let long_local = format!("{}@example.com", "a".repeat(65));
    let long_domain = format!("a@{}.com", vec!["b".repeat(63); 4].join("."));
    for bad in [
        "\"a@b\"@c.com",
        "u@a.com(x)evil.com",
        "Ann <a@example.com> trailing@evil.com",
        "-oQ/tmp/evil@example.com",
        long_local.as_str(),
        long_domain.as_str(),
        "zero\u{200B}width@example.com",
        "rtl\u{202E}moc.live@example.com",
        "a@exa mple.com",
    ] {
        refused(&app, with(json!({"To": bad})), "To").await;
    }
}

#[tokio::test]
async fn long_header_lines_are_folded_not_refused() {
    let app = spawn_app().await;
    let subject: String = (0..300)
        .map(|i| format!("word{i} "))
        .collect::<String>()
        .trim_end()
        .to_owned();
    let tag = "v".repeat(1500);
    let id = app
        .send_ok(&with(
            json!({"Subject": subject, "Headers": {"X-Long": tag}}),
        ))
        .await;
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");
    let mails = app.smtp.wait_for_messages(1, WAIT).await;
    let raw = String::from_utf8_lossy(&mails[0].data).to_string();
    for line in raw.split("\r\n") {
        assert!(
            line.len() <= 998,
            "a line of {} characters: {}…",
            line.len(),
            &line[..60]
        );
    }
    let mail = parse_mail(&mails[0]);
    assert_eq!(mail.subject(), Some(subject.as_str()));
    // Read X-Long as unstructured text, so its encoded words are decoded.
    let mail = mail_parser::MessageParser::default()
        .header_text(mail_parser::HeaderName::Other("X-Long".into()))
        .parse(&mails[0].data)
        .unwrap();
    match mail.header("X-Long") {
        Some(HeaderValue::Text(t)) => assert_eq!(t.as_ref(), tag),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn smuggling_attempts_in_the_body_arrive_as_one_intact_message() {
    let app = spawn_app().await;
    let body = "line one\n.\nMAIL FROM:<evil@example.net>\r\n.\r\nRCPT TO:<victim@example.org>\n.\r\nDATA\rbare CR\r\n..double\nend";
    let id = app.send_ok(&with(json!({"Body": body}))).await;
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mails = app.smtp.received();
    assert_eq!(mails.len(), 1, "exactly one message");
    let commands = app.smtp.commands();
    let count = |verb: &str| {
        commands
            .iter()
            .filter(|c| c.to_ascii_uppercase().starts_with(verb))
            .count()
    };
    assert_eq!(
        (count("MAIL"), count("RCPT"), count("DATA")),
        (1, 1, 1),
        "{commands:?}"
    );
    assert_eq!(mails[0].rcpt_to, ["ann@example.com"]);

    let text = parse_mail(&mails[0]).body_text(0).unwrap().into_owned();
    // SMTP carries text as lines, so the last one gets its line break too.
    let expected = body
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\n', "\r\n")
        + "\r\n";
    assert_eq!(
        text, expected,
        "the body survives, line endings normalised to CRLF"
    );
}

#[tokio::test]
async fn metadata_and_reply_to_are_kept() {
    let app = spawn_app().await;
    let id = app
        .send_ok(&with(json!({"ReplyTo": "Support <help@example.com>", "Metadata": {"order": "42", "tenant": "acme"}})))
        .await;
    let status = app.wait_until_terminal(&id).await;
    assert_eq!(status["metadata"], json!({"order": "42", "tenant": "acme"}));
    let mails = app.smtp.wait_for_messages(1, WAIT).await;
    let mail = parse_mail(&mails[0]);
    assert_eq!(
        mail.reply_to().unwrap().first().unwrap().address(),
        Some("help@example.com")
    );
    let raw = String::from_utf8_lossy(&mails[0].data);
    assert!(!raw.contains("acme"), "metadata is never sent");
}

async fn post_xml(app: &TestApp, path: &str, xml: &str, accept: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}{path}", app.address))
        .header("Content-Type", "application/xml")
        .body(xml.to_owned());
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn an_xml_send_is_delivered_and_answered_in_xml() {
    let app = spawn_app().await;
    let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<emailMessage>
  <To>Ann &lt;ann@example.com&gt;</To>
  <CC>carl@example.org</CC>
  <Subject>XML Grüße</Subject>
  <Body>&lt;p&gt;Hi&lt;/p&gt;</Body>
  <IsHtml>true</IsHtml>
  <Importance>High</Importance>
  <Attachments>
    <Attachment>
      <FileName>a.txt</FileName>
      <ContentData>aGVsbG8=</ContentData>
      <ContentType>text/plain</ContentType>
      <ContentTransferEncoding>base64</ContentTransferEncoding>
    </Attachment>
  </Attachments>
</emailMessage>"#;
    let response = post_xml(&app, "/SendEmail", xml, Some("application/xml")).await;
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(response.headers()["content-type"], "application/xml");
    let text = response.text().await.unwrap();
    assert!(text.contains("<status>queued</status>"), "{text}");
    let id = text
        .split("<id>")
        .nth(1)
        .unwrap()
        .split("</id>")
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");

    let mails = app.smtp.wait_for_messages(1, WAIT).await;
    let mail = parse_mail(&mails[0]);
    assert_eq!(mail.subject(), Some("XML Grüße"));
    assert!(mail.body_html(0).unwrap().contains("<p>Hi</p>"));
    let attachment = mail.attachments().next().unwrap();
    assert_eq!(attachment.contents(), b"hello");
    assert_eq!(attachment.attachment_name(), Some("a.txt"));

    // The lookup answers XML too when asked.
    let lookup = app
        .client
        .get(format!("{}/v1/messages/{id}", app.address))
        .header("Accept", "text/xml")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        lookup.contains("<status>sent</status>")
            && lookup.contains("<address>carl@example.org</address>"),
        "{lookup}"
    );
}

#[tokio::test]
async fn an_xml_batch_is_accepted() {
    let app = spawn_app().await;
    let xml = "<batch><emailMessage><To>a@example.com</To><Subject>1</Subject></emailMessage>\
               <emailMessage><To>b@example.com</To><Subject>2</Subject></emailMessage></batch>";
    let response = post_xml(&app, "/v1/messages/batch", xml, None).await;
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["messages"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn xml_entities_are_refused_without_being_expanded() {
    let app = spawn_app().await;
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><emailMessage><To>a@example.com</To><Body>&x;</Body></emailMessage>"#;
    let lol = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><emailMessage><To>a@example.com</To><Body>&lol3;</Body></emailMessage>"#;
    for xml in [xxe, lol] {
        let response = post_xml(&app, "/v1/messages", xml, Some("application/xml")).await;
        assert_eq!(response.status().as_u16(), 400);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+xml"
        );
        let text = response.text().await.unwrap();
        assert!(
            text.contains("<problem>") && text.contains("entity"),
            "{text}"
        );
        assert!(!text.contains("root:"), "nothing was expanded");
    }
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test]
async fn malformed_or_mistyped_xml_is_a_400() {
    let app = spawn_app().await;
    for xml in [
        "<emailMessage><To>a@example.com</To>",
        "<emailMessage><To>a@example.com</To><Bc>x@example.com</Bc></emailMessage>",
        "<emailMessage><To>a@example.com</To><IsHtml>maybe</IsHtml></emailMessage>",
    ] {
        let response = post_xml(&app, "/v1/messages", xml, None).await;
        assert_eq!(response.status().as_u16(), 400, "{xml}");
    }
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test]
async fn a_multibyte_custom_header_name_is_refused_not_crashed_on() {
    let app = spawn_app().await;
    refused(&app, with(json!({"Headers": {"Té": "x"}})), "Headers.Té").await;
}

#[tokio::test]
async fn malformed_query_strings_get_a_problem_document() {
    let app = spawn_app().await;
    for path in ["/v1/messages?x=1", "/v1/messages?limit=abc"] {
        let response = app.get(path).await;
        assert_eq!(response.status().as_u16(), 400, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
}

/// Sequences that end DATA early on some relay, followed by a smuggled transaction.
const SMUGGLING: &[(&str, &str)] = &[
    (
        "LF.CRLF",
        "ok\n.\r\nMAIL FROM:<evil@x.com>\r\nRCPT TO:<victim@x.com>\r\nDATA\r\nsmuggled\r\n.\r\n",
    ),
    (
        "CR.CRLF",
        "ok\r.\r\nMAIL FROM:<evil@x.com>\r\nRCPT TO:<victim@x.com>\r\nDATA\r\nsmuggled\r\n.\r\n",
    ),
    (
        "LF.LF",
        "ok\n.\nMAIL FROM:<evil@x.com>\nRCPT TO:<victim@x.com>\nDATA\nsmuggled\n.\n",
    ),
    (
        "CRLF.LF",
        "ok\r\n.\nMAIL FROM:<evil@x.com>\r\nRCPT TO:<victim@x.com>\r\nDATA\r\nsmuggled\r\n.\r\n",
    ),
    (
        "CR.CR",
        "ok\r.\rMAIL FROM:<evil@x.com>\rRCPT TO:<victim@x.com>\rDATA\rsmuggled\r.\r",
    ),
    (
        "CRLF.CRLF",
        "ok\r\n.\r\nMAIL FROM:<evil@x.com>\r\nRCPT TO:<victim@x.com>\r\nDATA\r\nsmuggled\r\n.\r\n",
    ),
    ("leading dots", ".\r\n..\r\n.x\n.\r.end"),
    ("NUL", "before\0after\r\n.\r\nMAIL FROM:<evil@x.com>\r\n"),
    ("long line", "x"),
];

/// The payload, with the long-line case made long (over 998 octets, no break).
fn payload(name: &str, text: &str) -> String {
    if name == "long line" {
        format!("{}\n.\nMAIL FROM:<evil@x.com>\n", "L".repeat(5000))
    } else {
        text.to_owned()
    }
}

/// What SMTP carries of a text: every line end as CRLF.
fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\n', "\r\n")
}

/// A text body as the receiver reads it: CRLF line ends, and a last line break (SMTP
/// carries lines).
fn as_lines(text: &str) -> String {
    let text = crlf(text);
    if text.ends_with("\r\n") {
        text
    } else {
        text + "\r\n"
    }
}

fn attachment(data: &[u8], content_type: &str, encoding: &str, cid: Option<&str>) -> Value {
    let content = match encoding {
        "none" => String::from_utf8(data.to_vec()).expect("literal data is text"),
        _ => base64::engine::general_purpose::STANDARD.encode(data),
    };
    let mut a = json!({
        "FileName": "part.bin",
        "ContentData": content,
        "ContentType": content_type,
        "ContentTransferEncoding": encoding,
    });
    if let Some(cid) = cid {
        a["ContentId"] = json!(cid);
    }
    a
}

/// Where the payload went, and what the receiver must find there.
enum Expect {
    Text(String),
    Html(String),
    Part(Vec<u8>),
}

#[tokio::test]
async fn smuggling_catalogue_against_a_lenient_relay_one_transaction_per_message_and_content_intact(
) {
    let app = spawn_app().await;
    app.smtp.set_lenient(true);
    let mut sent: Vec<(String, String, Expect)> = Vec::new();
    let mut refused = 0;
    for (name, text) in SMUGGLING {
        let text = payload(name, text);
        let has_nul = text.contains('\0');
        let bytes = text.as_bytes();
        let mut cases: Vec<(String, Value, Option<Expect>)> = vec![
            (
                "Body".into(),
                with(json!({"Body": text})),
                (!has_nul).then(|| Expect::Text(as_lines(&text))),
            ),
            (
                "Body (HTML)".into(),
                with(json!({"Body": text, "IsHtml": true})),
                (!has_nul).then(|| Expect::Html(crlf(&text))),
            ),
        ];
        for (content_type, encoding) in [
            ("text/plain", "none"),
            ("application/octet-stream", "none"),
            ("text/plain", "base64"),
            ("application/octet-stream", "base64"),
        ] {
            cases.push((
                format!("attachment {content_type} {encoding}"),
                with(json!({"Attachments": [attachment(bytes, content_type, encoding, None)]})),
                Some(Expect::Part(bytes.to_vec())),
            ));
            cases.push((
                format!("inline {content_type} {encoding}"),
                with(json!({
                    "Body": "<p><img src=\"cid:part1@example.com\"></p>",
                    "IsHtml": true,
                    "Attachments": [attachment(bytes, content_type, encoding, Some("part1@example.com"))],
                })),
                Some(Expect::Part(bytes.to_vec())),
            ));
        }
        // Header fields refuse any line break or NUL outright.
        for (field, body) in [
            ("Subject", with(json!({"Subject": text}))),
            (
                "To",
                with(json!({"To": format!("\"{text}\" <ann@example.com>")})),
            ),
            ("Headers.X-Tag", with(json!({"Headers": {"X-Tag": text}}))),
        ] {
            let response = app.send(&body).await;
            assert_eq!(response.status().as_u16(), 400, "{name} in {field}");
            refused += 1;
        }
        for (location, body, expect) in cases {
            let response = app.send(&body).await;
            let status = response.status().as_u16();
            let answer: Value = response.json().await.unwrap();
            match expect {
                None => {
                    assert_eq!(status, 400, "{name} in {location}: {answer}");
                    refused += 1;
                }
                Some(expect) => {
                    assert_eq!(status, 202, "{name} in {location}: {answer}");
                    let id = answer["id"].as_str().unwrap().to_owned();
                    sent.push((format!("{name} in {location}"), id, expect));
                }
            }
        }
    }
    for (case, id, _) in &sent {
        let status = app.wait_until_terminal(id).await;
        assert_eq!(status["status"], "sent", "{case}: {status}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let commands = app.smtp.commands();
    let count = |verb: &str| {
        commands
            .iter()
            .filter(|c| c.to_ascii_uppercase().starts_with(verb))
            .count()
    };
    assert_eq!(
        (count("MAIL"), count("RCPT"), count("DATA")),
        (sent.len(), sent.len(), sent.len()),
        "one MAIL, RCPT and DATA per message, nothing smuggled"
    );
    assert_eq!(app.smtp.bare_line_ends(), 0, "no bare CR or LF on the wire");
    assert!(
        app.smtp.longest_line() <= 998,
        "{}",
        app.smtp.longest_line()
    );
    let received = app.smtp.received();
    assert_eq!(received.len(), sent.len());
    assert!(received.iter().all(|m| m.rcpt_to == ["ann@example.com"]));
    for (case, id, expect) in &sent {
        let mail = received
            .iter()
            .find(|m| helpers::postwire_id(&m.data).as_deref() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("{case}: not received"));
        let parsed = parse_mail(mail);
        match expect {
            Expect::Text(text) => assert_eq!(parsed.body_text(0).unwrap(), *text, "{case}"),
            Expect::Html(html) => assert_eq!(parsed.body_html(0).unwrap(), *html, "{case}"),
            Expect::Part(bytes) => {
                let part = parsed
                    .attachments()
                    .next()
                    .unwrap_or_else(|| panic!("{case}: no part"));
                assert_eq!(part.contents(), &bytes[..], "{case}");
            }
        }
    }
    assert!(refused >= SMUGGLING.len() * 3);
}

#[tokio::test]
async fn an_unbreakable_subject_goes_out_encoded_under_998_octets() {
    let app = spawn_app().await;
    app.smtp.set_lenient(true);
    let subject = format!("{}=?utf-8?b?", "x".repeat(1500));
    let id = app.send_ok(&with(json!({"Subject": subject}))).await;
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");
    let mails = app.smtp.wait_for_messages(1, WAIT).await;
    assert!(
        app.smtp.longest_line() <= 998,
        "{}",
        app.smtp.longest_line()
    );
    assert_eq!(parse_mail(&mails[0]).subject(), Some(subject.as_str()));
}

#[tokio::test]
async fn one_value_the_database_refuses_fails_only_its_own_request() {
    let app = spawn_app().await;
    for round in 0..3 {
        let bodies: Vec<Value> = (0..40)
            .map(|i| {
                let metadata = if i == 17 {
                    json!({"k": "a\u{0}b"})
                } else {
                    json!({"k": format!("{round}-{i}")})
                };
                with(json!({"Metadata": metadata, "Subject": format!("{round}-{i}")}))
            })
            .collect();
        let responses = futures_util::future::join_all(bodies.iter().map(|b| app.send(b))).await;
        for (i, response) in responses.into_iter().enumerate() {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            if i == 17 {
                assert_eq!(status, 400, "{body}");
                assert_eq!(body["errors"][0]["field"], "Metadata.k", "{body}");
            } else {
                assert_eq!(status, 202, "round {round}, send {i}: {body}");
            }
        }
    }
    assert_eq!(app.stored_messages().await, 3 * 39);
}

#[tokio::test]
async fn metadata_keys_and_values_the_database_would_refuse_are_named() {
    let app = spawn_app().await;
    for (metadata, field) in [
        (json!({"k": "nul\u{0}"}), "Metadata.k"),
        (json!({"bad\u{0}key": "v"}), "Metadata.bad\\u{0}key"),
        (json!({"bad\nkey": "v"}), "Metadata.bad\\u{a}key"),
        (json!({"": "v"}), "Metadata."),
        (json!({"k": "v".repeat(1025)}), "Metadata.k"),
    ] {
        refused(&app, with(json!({"Metadata": metadata})), field).await;
    }
    // XML can carry NUL as a character reference.
    let xml = "<emailMessage><To>a@example.com</To><Metadata><Item name=\"k\">a&#0;b</Item></Metadata></emailMessage>";
    let response = post_xml(&app, "/v1/messages", xml, None).await;
    assert_eq!(response.status().as_u16(), 400);
    // Line breaks in a value are fine: metadata is stored, never sent.
    let id = app
        .send_ok(&with(json!({"Metadata": {"note": "line one\r\nline two"}})))
        .await;
    assert_eq!(
        app.message(&id).await["metadata"]["note"],
        "line one\r\nline two"
    );
    assert_eq!(app.stored_messages().await, 1);
}

#[tokio::test]
async fn query_and_path_values_the_database_would_refuse_are_client_errors() {
    let app = spawn_app().await;
    for path in [
        "/v1/messages?connection=%00",
        "/v1/messages?connection=a%0Ab",
        "/v1/messages?status=%00",
        "/v1/messages?cursor=%00",
        "/v1/messages?since=%00",
    ] {
        let status = app.get(path).await.status().as_u16();
        assert_eq!(status, 400, "{path}");
    }
    for path in [
        "/v1/connections/%00",
        "/v1/connections/a%0Ab",
        "/v1/messages/%00",
    ] {
        let status = app.get(path).await.status().as_u16();
        assert!(status == 404 || status == 400, "{path}: {status}");
    }
    let response = app.send(&with(json!({"connection": "bad\u{0}name"}))).await;
    helpers::assert_problem(response, 400, "connection").await;
}

#[tokio::test]
async fn a_client_request_id_is_echoed_only_when_it_is_a_short_plain_token() {
    let app = spawn_app().await;
    let echoed = |id: String| {
        let app = &app;
        async move {
            let response = app
                .client
                .get(format!("{}/healthz", app.address))
                .header("x-request-id", id)
                .send()
                .await
                .unwrap();
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(echoed("order-42.retry:1".into()).await, "order-42.retry:1");
    for hostile in ["a".repeat(1000), "x\"};alert(1)".into(), "a b".into()] {
        let id = echoed(hostile.clone()).await;
        assert_ne!(id, hostile);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    }
}
