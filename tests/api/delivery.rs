//! The pipeline end to end: HTTP → PostgreSQL → RabbitMQ → worker → SMTP → status.

use crate::helpers;

use std::time::Duration;

use base64::Engine;
use helpers::{parse_mail, simple_message, spawn_app, spawn_app_with, Script};
use mail_parser::{HeaderValue, MimeHeaders};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn plain_mail_is_delivered_and_its_status_reads_sent() {
    let app = spawn_app().await;

    let response = app.send(&simple_message()).await;
    assert_eq!(response.status().as_u16(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let accepted: serde_json::Value = response.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/messages/{id}"));
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);

    let status = app.wait_until_terminal(id).await;
    assert_eq!(status["status"], "sent", "{status}");
    assert_eq!(status["attempts"], 1);
    assert_eq!(status["last_reply"]["code"], 250);
    assert!(status["sent_at"].is_string());

    let mails = app.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].mail_from, "sender@example.com");
    assert_eq!(mails[0].rcpt_to, ["ann@example.com"]);
    let mail = parse_mail(&mails[0]);
    assert_eq!(mail.subject(), Some("Hello"));
    assert_eq!(
        mail.from().unwrap().first().unwrap().address(),
        Some("sender@example.com")
    );
    assert_eq!(
        mail.from().unwrap().first().unwrap().name(),
        Some("Postwire Test")
    );
    assert_eq!(
        mail.to().unwrap().first().unwrap().address(),
        Some("ann@example.com")
    );
    assert_eq!(
        mail.body_text(0).unwrap().replace("\r\n", "\n"),
        "Hi Ann,\nthis is a test.\n"
    );
    assert_eq!(
        format!("<{}>", mail.message_id().unwrap()),
        status["message_id"].as_str().unwrap()
    );
    // A plain-text mail is one text/plain part, and the server receives exactly the
    // rendered message: no empty line added before the final ".".
    let content_type = mail.content_type().unwrap();
    assert_eq!(
        (content_type.ctype(), content_type.subtype()),
        ("text", Some("plain"))
    );
    assert_eq!(
        status["size"].as_u64().unwrap() as usize,
        mails[0].data.len()
    );
    assert!(!mails[0].data.ends_with(b"\r\n\r\n"));
}

#[tokio::test]
async fn the_connectors_send_email_path_is_accepted() {
    let app = spawn_app().await;
    let response = app.post("/SendEmail", &simple_message()).await;
    assert_eq!(response.status().as_u16(), 202);
    let id = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");
}

#[tokio::test]
async fn html_mail_carries_a_text_and_an_html_alternative() {
    let app = spawn_app().await;
    let id = app
        .send_ok(&json!({
            "To": "ann@example.com",
            "Subject": "Newsletter",
            "Body": "<html><body><h1>Hello</h1><p>Read &amp; enjoy</p></body></html>",
            "IsHtml": true,
        }))
        .await;
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");

    let mails = app.smtp.wait_for_messages(1, WAIT).await;
    let mail = parse_mail(&mails[0]);
    let root = mail.root_part();
    assert_eq!(root.content_type().unwrap().subtype(), Some("alternative"));
    assert!(mail.body_html(0).unwrap().contains("<h1>Hello</h1>"));
    let text = mail.body_text(0).unwrap();
    assert!(
        text.contains("Hello") && text.contains("Read & enjoy"),
        "{text}"
    );
    assert!(
        !text.contains('<'),
        "the text alternative has no markup: {text}"
    );
}

#[tokio::test]
async fn cc_and_bcc_reach_the_envelope_but_bcc_never_a_header() {
    let app = spawn_app().await;
    let id = app
        .send_ok(&json!({
            "To": "ann@example.com;\"Bob, B.\" <bob@example.com>",
            "CC": "carl@example.org",
            "Bcc": "secret@example.net; hidden@example.net",
            "From": "Sales <sales@example.com>",
            "Subject": "Copies",
            "Body": "x",
        }))
        .await;
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");

    let mails = app.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].mail_from, "sales@example.com");
    assert_eq!(
        mails[0].rcpt_to,
        [
            "ann@example.com",
            "bob@example.com",
            "carl@example.org",
            "secret@example.net",
            "hidden@example.net"
        ]
    );
    let raw = String::from_utf8_lossy(&mails[0].data).to_ascii_lowercase();
    let headers = &raw[..raw.find("\r\n\r\n").unwrap()];
    assert!(
        !headers.lines().any(|l| l.starts_with("bcc:")),
        "Bcc must not appear: {headers}"
    );
    assert!(!raw.contains("secret@example.net") && !raw.contains("hidden@example.net"));

    let mail = parse_mail(&mails[0]);
    let to: Vec<_> = mail
        .to()
        .unwrap()
        .iter()
        .map(|a| a.address().unwrap().to_owned())
        .collect();
    assert_eq!(to, ["ann@example.com", "bob@example.com"]);
    assert_eq!(
        mail.to().unwrap().iter().nth(1).unwrap().name(),
        Some("Bob, B.")
    );
    assert_eq!(
        mail.cc().unwrap().first().unwrap().address(),
        Some("carl@example.org")
    );

    // The lookup shows Bcc to whoever may read the message record.
    let status = app.message(&id).await;
    assert_eq!(
        status["bcc"],
        json!(["secret@example.net", "hidden@example.net"])
    );
}

#[tokio::test]
async fn inline_image_and_attachment_arrive_byte_for_byte() {
    let app = spawn_app().await;
    let png: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let pdf = b"%PDF-1.4\n\x00\x01\x02binary\r\n.\r\nend".to_vec();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let id = app
        .send_ok(&json!({
            "To": "ann@example.com",
            "Subject": "Report",
            "Body": "<p>See <img src=\"cid:logo@postwire\"></p>",
            "IsHtml": true,
            "Attachments": [
                {"FileName": "logo.png", "ContentId": "<logo@postwire>", "ContentData": b64(&png),
                 "ContentType": "image/png", "ContentTransferEncoding": "base64"},
                {"FileName": "report.pdf", "ContentData": b64(&pdf),
                 "ContentType": "application/pdf", "ContentTransferEncoding": "base64"},
                {"FileName": "notes.txt", "ContentData": "line one\nline two",
                 "ContentType": "text/plain", "ContentTransferEncoding": "none"}
            ]
        }))
        .await;
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");

    let mails = app.smtp.wait_for_messages(1, WAIT).await;
    let mail = parse_mail(&mails[0]);
    assert_eq!(
        mail.root_part().content_type().unwrap().subtype(),
        Some("mixed")
    );
    let related = mail
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.subtype() == Some("related"))
        })
        .expect("a multipart/related part holds the HTML and its inline image");
    let _ = related;

    let inline = mail
        .parts
        .iter()
        .find(|p| p.content_id() == Some("logo@postwire"))
        .expect("the inline part carries its Content-ID");
    assert_eq!(inline.contents(), png.as_slice());
    assert_eq!(inline.content_disposition().unwrap().ctype(), "inline");
    assert_eq!(inline.content_type().unwrap().ctype(), "image");

    let find = |name: &str| {
        mail.attachments()
            .find(|a| a.attachment_name() == Some(name))
            .unwrap_or_else(|| panic!("attachment {name} missing"))
    };
    let report = find("report.pdf");
    assert_eq!(report.contents(), pdf.as_slice());
    assert_eq!(report.content_disposition().unwrap().ctype(), "attachment");
    assert_eq!(find("notes.txt").contents(), b"line one\nline two");
}

#[tokio::test]
async fn importance_sets_the_priority_headers() {
    let app = spawn_app().await;
    for (importance, x_priority, word) in [
        ("high", "1 (Highest)", "high"),
        ("LOW", "5 (Lowest)", "low"),
    ] {
        let mut body = simple_message();
        body["Importance"] = json!(importance);
        let id = app.send_ok(&body).await;
        assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");
        let mails = app.smtp.received();
        let mail = parse_mail(mails.last().unwrap());
        let header = |name: &str| match mail.header(name) {
            Some(HeaderValue::Text(t)) => t.to_string(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(header("Importance"), word);
        assert_eq!(header("X-Priority"), x_priority);
        assert!(header("X-MSMail-Priority").eq_ignore_ascii_case(word));
    }
}

#[tokio::test]
async fn non_ascii_subject_and_names_are_encoded_and_read_back() {
    let app = spawn_app().await;
    let subject = "Grüße aus Köln – 日本語のテスト ✉";
    let id = app
        .send_ok(&json!({
            "To": "\"Zoë Ågren\" <zoe@example.com>",
            "From": "Jürgen Größ <juergen@example.com>",
            "Subject": subject,
            "Body": "Prüfung: ça marche.",
        }))
        .await;
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");

    let mails = app.smtp.wait_for_messages(1, WAIT).await;
    let raw = &mails[0].data;
    let header_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(raw[..header_end].is_ascii(), "headers are RFC 2047 encoded");
    let mail = parse_mail(&mails[0]);
    assert_eq!(mail.subject(), Some(subject));
    assert_eq!(
        mail.from().unwrap().first().unwrap().name(),
        Some("Jürgen Größ")
    );
    assert_eq!(
        mail.to().unwrap().first().unwrap().name(),
        Some("Zoë Ågren")
    );
    assert_eq!(mail.body_text(0).unwrap().trim_end(), "Prüfung: ça marche.");
    assert_eq!(app.message(&id).await["subject"], subject);
}

#[tokio::test]
async fn a_550_reply_fails_the_message_after_one_attempt() {
    let app = spawn_app_with(Script::reject_data(550), |_| {}).await;
    let id = app.send_ok(&simple_message()).await;

    let status = app.wait_until_terminal(&id).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["attempts"], 1);
    assert_eq!(status["last_reply"]["code"], 550);
    assert!(status["last_error"].as_str().unwrap().contains("550"));
    assert!(status["sent_at"].is_null());
    assert_eq!(app.smtp.data_attempts(), 1);
    assert!(app.smtp.received().is_empty());

    let events = app.history(&id).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["accepted", "attempt", "failed"]);
    assert_eq!(events[1]["reply"]["code"], 550);
}

#[tokio::test]
async fn one_refused_recipient_does_not_fail_the_others() {
    let app = spawn_app_with(Script::reject_rcpt("gone@example.com", 550), |_| {}).await;
    let id = app
        .send_ok(&json!({
            "To": "ann@example.com; gone@example.com; bob@example.com",
            "Subject": "Partial",
            "Body": "x",
        }))
        .await;

    let status = app.wait_until_terminal(&id).await;
    assert_eq!(status["status"], "sent", "{status}");
    let mails = app.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].rcpt_to, ["ann@example.com", "bob@example.com"]);
    let results = status["recipients"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let gone = results
        .iter()
        .find(|r| r["address"] == "gone@example.com")
        .unwrap();
    assert_eq!(gone["accepted"], false);
    assert_eq!(gone["reply"]["code"], 550);
    assert!(results.iter().filter(|r| r["accepted"] == true).count() == 2);
}

#[tokio::test]
async fn status_and_events_are_readable_by_id() {
    let app = spawn_app().await;
    let mut body = simple_message();
    body["CC"] = json!("carl@example.org");
    let id = app.send_ok(&body).await;
    let status = app.wait_until_terminal(&id).await;

    assert_eq!(status["id"], id.as_str());
    assert_eq!(status["connection"], "default");
    assert_eq!(status["from"], "Postwire Test <sender@example.com>");
    assert_eq!(status["to"], json!(["Ann <ann@example.com>"]));
    assert_eq!(status["cc"], json!(["carl@example.org"]));
    assert_eq!(status["subject"], "Hello");
    assert!(status["created_at"].is_string() && status["updated_at"].is_string());
    assert!(status["next_attempt_at"].is_null());

    let events = app.history(&id).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["accepted", "attempt", "sent"]);
    assert_eq!(events[1]["attempt"], 1);
    assert_eq!(events[1]["reply"]["code"], 250);
    assert_eq!(events[1]["reply"]["enhanced"], "2.0.0");
}

#[tokio::test]
async fn unknown_id_gives_404_and_malformed_id_gives_400() {
    let app = spawn_app().await;
    let unknown = uuid::Uuid::now_v7();
    for path in [
        format!("/v1/messages/{unknown}"),
        format!("/v1/messages/{unknown}/events"),
    ] {
        let response = app.get(&path).await;
        assert_eq!(response.status().as_u16(), 404, "{path}");
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
    }
    let response = app.get("/v1/messages/not-a-uuid").await;
    helpers::assert_problem(response, 400, "id").await;
}

#[tokio::test]
async fn many_messages_share_pooled_smtp_sessions() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let mut body = simple_message();
        body["Subject"] = json!(format!("message {i}"));
        ids.push(app.send_ok(&body).await);
    }
    for id in &ids {
        assert_eq!(app.wait_until_terminal(id).await["status"], "sent");
    }
    let mails = app.smtp.wait_for_messages(30, WAIT).await;
    assert_eq!(mails.len(), 30, "each message is delivered exactly once");
    // The test connection allows 4 sessions: pooling means far fewer than 30.
    assert!(
        app.smtp.sessions_opened() <= 4,
        "opened {}",
        app.smtp.sessions_opened()
    );
}

#[tokio::test]
async fn a_batch_is_accepted_in_order_and_every_message_delivered() {
    let app = spawn_app().await;
    let messages: Vec<_> = (0..5)
        .map(|i| json!({"To": format!("r{i}@example.com"), "Subject": format!("batch {i}"), "Body": "x"}))
        .collect();
    let response = app
        .post("/v1/messages/batch", &json!({ "messages": messages }))
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    let answers = body["messages"].as_array().unwrap();
    assert_eq!(answers.len(), 5);
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer["status"], "queued");
        let id = answer["id"].as_str().unwrap();
        let status = app.wait_until_terminal(id).await;
        assert_eq!(status["status"], "sent");
        assert_eq!(
            status["subject"],
            format!("batch {i}"),
            "ids come back in request order"
        );
        assert_eq!(status["to"], json!([format!("r{i}@example.com")]));
    }
    assert_eq!(app.smtp.wait_for_messages(5, WAIT).await.len(), 5);
}

#[tokio::test]
async fn a_batch_with_one_invalid_message_accepts_nothing_and_names_it() {
    let app = spawn_app().await;
    let batch = json!({ "messages": [
        simple_message(),
        {"To": "not an address", "Subject": "x", "Body": "y"},
        simple_message(),
        {"To": "ann@example.com", "Subject": "bad\r\nheader", "Body": "y"},
    ]});
    let problem = helpers::assert_problem(
        app.post("/v1/messages/batch", &batch).await,
        400,
        "messages[1].To",
    )
    .await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["messages[1].To", "messages[3].Subject"]);
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test]
async fn a_batch_over_the_limit_returns_413() {
    let app = spawn_app_with(Script::accept_all(), |s| s.limits.batch_max = 3).await;
    let batch = json!({ "messages": vec![simple_message(); 4] });
    helpers::assert_problem(
        app.post("/v1/messages/batch", &batch).await,
        413,
        "messages",
    )
    .await;
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test]
async fn a_repeated_batch_with_the_same_idempotency_key_is_not_queued_twice() {
    let app = spawn_app().await;
    let batch = json!({ "messages": vec![simple_message(); 3] });
    let post = || {
        app.client
            .post(format!("{}/v1/messages/batch", app.address))
            .header("Idempotency-Key", "batch-7")
            .json(&batch)
            .send()
    };
    let first: serde_json::Value = post().await.unwrap().json().await.unwrap();
    let again = post().await.unwrap();
    assert_eq!(again.status().as_u16(), 202);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(first, again);
    assert_eq!(app.stored_messages().await, 3);
}

#[tokio::test]
async fn concurrent_single_sends_committed_together_each_keep_their_own_message() {
    let app = std::sync::Arc::new(spawn_app().await);
    // Enough at once that the API writes several requests per commit.
    let sends: Vec<_> = (0..40)
        .map(|i| {
            let app = std::sync::Arc::clone(&app);
            tokio::spawn(async move {
                let mut body = simple_message();
                body["Subject"] = json!(format!("concurrent {i}"));
                (i, app.send_ok(&body).await)
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for send in sends {
        let (i, id) = send.await.unwrap();
        let status = app.wait_until_terminal(&id).await;
        assert_eq!(status["status"], "sent");
        assert_eq!(status["subject"], format!("concurrent {i}"), "{status}");
        assert!(ids.insert(id), "each request gets its own id");
    }
    let mails = app
        .smtp
        .wait_for_messages(40, Duration::from_secs(20))
        .await;
    let mut subjects: Vec<String> = mails
        .iter()
        .map(|m| parse_mail(m).subject().unwrap().to_owned())
        .collect();
    subjects.sort();
    let mut expected: Vec<String> = (0..40).map(|i| format!("concurrent {i}")).collect();
    expected.sort();
    assert_eq!(subjects, expected, "each message delivered once");
}
