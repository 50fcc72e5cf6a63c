//! Hostile input: nothing queued for any of it; and what must pass, passes intact.
//! Also the XML form of the API.

mod helpers;

use std::time::Duration;

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
