//! How long validating and rendering hostile message bodies takes, by size: the work
//! the API does before it stores a message (CRLF normalisation, HTML-to-text, MIME
//! encoding, the wire check). Linear work shows as a flat ms/MB column.
//!
//! ```sh
//! cargo run --release --example render_corpus            # 1, 4, 16 and 35 MB
//! cargo run --release --example render_corpus -- 1 2 8  # other sizes, in MB
//! ```

use std::time::{Duration, Instant};

use postwire::api::email_message::EmailMessage;
use postwire::config::Limits;
use postwire::domain::Mailbox;

/// A body of about `size` bytes of `kind`.
fn corpus(kind: &str, size: usize) -> String {
    let repeat = |unit: &str| unit.repeat(size / unit.len());
    match kind {
        "repeated <head></head>" => repeat("<head></head>"),
        "repeated <style>…</style>" => repeat("<style>p{}</style>x"),
        "repeated <script>…</script>" => repeat("<SCRIPT>1</script>y"),
        "unclosed <style>" => format!("<style>{}", repeat("<p>x</p>")),
        "unclosed tags" => repeat("<p><b><i>text "),
        "'<' without '>'" => repeat("a < b "),
        "nested <div>" => {
            let depth = size / 11;
            format!("{}deep{}", "<div>".repeat(depth), "</div>".repeat(depth))
        }
        "entities" => repeat("&amp;&lt;&#x41;&nbsp;&#169;"),
        "plain HTML (baseline)" => repeat("<p>Hello <b>world</b>, lorem ipsum.</p>\n"),
        other => unreachable!("{other}"),
    }
}

const KINDS: &[&str] = &[
    "plain HTML (baseline)",
    "repeated <head></head>",
    "repeated <style>…</style>",
    "repeated <script>…</script>",
    "unclosed <style>",
    "unclosed tags",
    "'<' without '>'",
    "nested <div>",
    "entities",
];

/// Best of three: validation into the domain type, then rendering.
fn time(body: &str) -> Duration {
    let limits = Limits {
        max_recipients: 100,
        max_attachments: 50,
        max_attachment_bytes: 1 << 30,
        max_message_bytes: 1 << 30,
        batch_max: 500,
    };
    let from = Mailbox::parse("Sender <sender@example.com>").expect("a mailbox");
    (0..3)
        .map(|_| {
            let request = EmailMessage {
                to: Some("ann@example.com".to_owned()),
                subject: Some("corpus".to_owned()),
                body: Some(body.to_owned()),
                is_html: Some(true),
                ..Default::default()
            };
            let started = Instant::now();
            let mut message = request.into_domain(&limits).expect("a valid message");
            postwire::mime::render(uuid::Uuid::nil(), &mut message, &from, "example.com")
                .expect("renders");
            started.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes in MB"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1, 4, 16, 35]
    } else {
        sizes
    };
    println!(
        "| corpus | {} |",
        sizes
            .iter()
            .map(|s| format!("{s} MB"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(sizes.len()));
    for kind in KINDS {
        let cells: Vec<String> = sizes
            .iter()
            .map(|mb| {
                let body = corpus(kind, mb * 1_000_000);
                let ms = time(&body).as_secs_f64() * 1000.0;
                format!("{ms:.0} ms ({:.0} ms/MB)", ms / *mb as f64)
            })
            .collect();
        println!("| {kind} | {} |", cells.join(" | "));
    }
}
