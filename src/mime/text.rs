//! The plain-text alternative of an HTML body.
//!
//! One pass over the input, no DOM and no recursion: the work is linear in the size of
//! the HTML whatever its shape (unclosed tags, 100k nested elements, megabytes of
//! entities), and the output is never larger than the input plus its line breaks. A
//! crate such as `html2text` renders tables and links better, but builds an html5ever
//! tree first: several times the input in memory for a 35 MB body, and recursion over
//! nesting depth. A text part is a courtesy to the reader; the HTML part is the
//! message.

/// A readable plain-text version of an HTML body: tags dropped, `head`, `style` and
/// `script` content skipped, common entities decoded, block ends as line breaks,
/// runs of blank lines collapsed. Lines end in CRLF.
pub fn html_to_text(html: &str) -> String {
    let mut out = Text::with_capacity(html.len());
    let mut at = 0;
    while let Some(lt) = find_from(html, at, "<") {
        out.push_html_text(&html[at..lt]);
        let Some(gt) = find_from(html, lt + 1, ">") else {
            // An unclosed tag: what follows is text, as browsers show it.
            out.push_html_text(&html[lt..]);
            at = html.len();
            break;
        };
        let tag = html[lt + 1..gt].trim_start();
        let closing = tag.starts_with('/');
        let name_start = tag.trim_start_matches('/');
        let name_len = name_start
            .bytes()
            .take_while(u8::is_ascii_alphanumeric)
            .count();
        let name = &name_start[..name_len];
        at = gt + 1;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if !closing && (is("style") || is("script") || is("head")) {
            // Skip to the end of the matching close tag; without one, to the end.
            at = find_close_tag(html, at, name).unwrap_or(html.len());
        } else if is("br") || (closing && BLOCKS.iter().any(|b| is(b))) {
            out.line_break();
        } else if !closing && is("li") {
            out.line_break();
            out.push_str("- ");
        }
    }
    out.push_html_text(&html[at..]);
    out.finish()
}

/// Elements whose end starts a new line.
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "tr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "table",
    "blockquote",
];

/// `haystack[from..].find(needle)`, as an index into `haystack`.
fn find_from(haystack: &str, from: usize, needle: &str) -> Option<usize> {
    haystack[from..].find(needle).map(|i| from + i)
}

/// The index just past `</name ...>` at or after `from`, the name compared without
/// regard to ASCII case. Every byte is looked at a bounded number of times: each
/// candidate `</` is checked in place, never by copying or lower-casing the rest.
fn find_close_tag(html: &str, from: usize, name: &str) -> Option<usize> {
    let mut at = from;
    loop {
        let open = find_from(html, at, "</")?;
        let candidate = &html.as_bytes()[open + 2..];
        let matches = candidate.len() >= name.len()
            && candidate[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            && !candidate
                .get(name.len())
                .is_some_and(u8::is_ascii_alphanumeric);
        if matches {
            return find_from(html, open + 2 + name.len(), ">").map(|gt| gt + 1);
        }
        at = open + 2;
    }
}

/// The text being built: lines trimmed at their end, at most one blank line in a
/// row, no leading or trailing blank lines.
struct Text {
    done: String,
    line: String,
    blank_lines: usize,
}

impl Text {
    fn with_capacity(n: usize) -> Text {
        Text {
            done: String::with_capacity(n.min(1 << 20)),
            line: String::new(),
            blank_lines: 0,
        }
    }

    fn push_str(&mut self, s: &str) {
        self.line.push_str(s);
    }

    /// Text between tags, its entities decoded.
    fn push_html_text(&mut self, s: &str) {
        let mut rest = s;
        while let Some(amp) = rest.find('&') {
            self.push_plain(&rest[..amp]);
            let after = &rest[amp + 1..];
            match decode_entity(after) {
                Some((c, used)) => {
                    self.push_plain(c.encode_utf8(&mut [0; 4]));
                    rest = &after[used..];
                }
                None => {
                    self.line.push('&');
                    rest = after;
                }
            }
        }
        self.push_plain(rest);
    }

    /// Whitespace runs become one space (line breaks in HTML source are spaces, as
    /// a browser shows them); other control characters are dropped.
    fn push_plain(&mut self, s: &str) {
        for c in s.chars() {
            if c.is_whitespace() || c == '\u{a0}' {
                if !self.line.is_empty() && !self.line.ends_with(' ') {
                    self.line.push(' ');
                }
            } else if !c.is_control() {
                self.line.push(c);
            }
        }
    }

    fn line_break(&mut self) {
        let line = self.line.trim();
        if line.is_empty() {
            self.blank_lines += 1;
        } else {
            if !self.done.is_empty() {
                // One blank line at most between two lines of text.
                self.done.push_str(if self.blank_lines > 0 {
                    "\r\n\r\n"
                } else {
                    "\r\n"
                });
            }
            self.done.push_str(line);
            self.blank_lines = 0;
        }
        self.line.clear();
    }

    fn finish(mut self) -> String {
        self.line_break();
        self.done
    }
}

/// Decodes the entity at the start of `s` (just after its `&`): the character and
/// how many bytes it used, `;` included. Unknown names are left as they are.
fn decode_entity(s: &str) -> Option<(char, usize)> {
    let end = s.bytes().take(12).position(|b| b == b';')?;
    let name = &s[..end];
    let c = if let Some(number) = name.strip_prefix('#') {
        let code = match number.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => number.parse().ok()?,
        };
        // Control characters (NUL, CR, LF...) are not text: a space stands in.
        char::from_u32(code)
            .filter(|c| !c.is_control())
            .unwrap_or(' ')
    } else {
        match name {
            "nbsp" => '\u{a0}',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            "amp" => '&',
            "copy" => '©',
            "reg" => '®',
            "mdash" => '—',
            "ndash" => '–',
            "hellip" => '…',
            "laquo" => '«',
            "raquo" => '»',
            "euro" => '€',
            _ => return None,
        }
    };
    Some((c, end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_becomes_readable_text() {
        let text = html_to_text(
            "<html><head><style>p{color:red}</style></head><body><p>Hello&nbsp;<b>Ann</b></p>\
             <ul><li>one</li><li>two &amp; three</li></ul>Bye<br>now</body></html>",
        );
        assert_eq!(
            text,
            "Hello Ann\r\n\r\n- one\r\n- two & three\r\nBye\r\nnow"
        );
    }

    #[test]
    fn skipped_elements_end_at_their_own_close_tag_in_any_case() {
        assert_eq!(
            html_to_text("a<SCRIPT>x</scriptx>y</Script >b<style>c</STYLE>d"),
            "abd"
        );
        // Unclosed: the rest is skipped.
        assert_eq!(html_to_text("a<head>b<p>c"), "a");
        assert_eq!(html_to_text("a<head></head>b<head></head>c"), "abc");
    }

    #[test]
    fn entities_decode_and_control_characters_never_come_through() {
        assert_eq!(
            html_to_text("&lt;b&gt; &#65;&#x42; &#13;&#10;&#0;x &bogus; &amp"),
            "<b> AB x &bogus; &amp"
        );
        assert_eq!(html_to_text("a\r\nb\rc\n  d\0e"), "a b c de");
    }

    #[test]
    fn an_unclosed_tag_is_text() {
        assert_eq!(html_to_text("x < y"), "x < y");
        assert_eq!(html_to_text("x <b>y</b> <i"), "x y <i");
    }

    #[test]
    fn lines_end_in_crlf_and_blank_lines_collapse() {
        let text = html_to_text("<p>a</p><p></p><p></p><div>b</div>  <br><br><br>c");
        assert_eq!(text, "a\r\n\r\nb\r\n\r\nc");
        assert!(!text.replace("\r\n", "").contains(['\r', '\n']));
    }

    #[test]
    fn deep_nesting_and_repeated_skips_are_handled_without_recursion() {
        let nested = "<div>".repeat(100_000) + "deep" + &"</div>".repeat(100_000);
        assert_eq!(html_to_text(&nested), "deep");
        let heads = "<head></head>".repeat(10_000) + "end";
        assert_eq!(html_to_text(&heads), "end");
    }
}
