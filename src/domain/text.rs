//! Header text that cannot break out of its header line.

/// Why a text cannot go into a header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderTextError {
    #[error("must not contain line breaks (CR or LF)")]
    LineBreak,
    #[error("must not contain NUL")]
    Nul,
    #[error("must not contain control characters")]
    Control,
    #[error("must not contain invisible formatting characters (U+{0:04X})")]
    Invisible(u32),
    #[error("must be at most {0} bytes")]
    TooLong(usize),
}

/// Accepts text that is safe in a header value: no CR, LF, NUL or other control
/// characters (tab excepted), and no invisible formatting characters that would let a
/// reader see something other than what is sent.
pub fn check_header_text(text: &str) -> Result<(), HeaderTextError> {
    for c in text.chars() {
        match c {
            '\r' | '\n' => return Err(HeaderTextError::LineBreak),
            '\0' => return Err(HeaderTextError::Nul),
            '\t' => {}
            c if c.is_control() => return Err(HeaderTextError::Control),
            c if is_invisible(c) => return Err(HeaderTextError::Invisible(c as u32)),
            _ => {}
        }
    }
    Ok(())
}

/// [`check_header_text`], and at most `max` bytes long.
pub fn check_header_text_max(text: &str, max: usize) -> Result<(), HeaderTextError> {
    if text.len() > max {
        return Err(HeaderTextError::TooLong(max));
    }
    check_header_text(text)
}

/// Zero-width and bidirectional-override characters: they make an address or name look
/// like something else.
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_refuses_line_breaks_nul_and_invisible_characters() {
        assert_eq!(
            check_header_text("a\r\nBcc: x"),
            Err(HeaderTextError::LineBreak)
        );
        assert_eq!(check_header_text("a\nb"), Err(HeaderTextError::LineBreak));
        assert_eq!(check_header_text("a\0b"), Err(HeaderTextError::Nul));
        assert_eq!(check_header_text("a\u{7}b"), Err(HeaderTextError::Control));
        assert_eq!(
            check_header_text("pay\u{202E}lap"),
            Err(HeaderTextError::Invisible(0x202E))
        );
        assert_eq!(check_header_text("Grüße\tà tous"), Ok(()));
    }
}
