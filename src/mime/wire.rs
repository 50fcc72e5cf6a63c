//! The SMTP wire invariant: every line of a rendered message ends in CRLF, no CR or LF
//! appears anywhere else, no NUL appears at all, and no line is longer than RFC 5322's
//! 998 octets. A message that holds it cannot end DATA early on any relay, however
//! leniently that relay splits lines (SMTP smuggling), once the SMTP client has
//! dot-stuffed it.

/// Longest line RFC 5322 allows, without its CRLF.
pub const MAX_LINE: usize = 998;

/// Where rendered bytes break the wire invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireViolation {
    #[error("a CR not followed by LF at byte {0}")]
    BareCr(usize),
    #[error("an LF not preceded by CR at byte {0}")]
    BareLf(usize),
    #[error("a NUL at byte {0}")]
    Nul(usize),
    #[error("a line of {len} octets (over {MAX_LINE}) starting at byte {at}")]
    LongLine { at: usize, len: usize },
}

/// Checks the wire invariant in one pass.
pub fn check(raw: &[u8]) -> Result<(), WireViolation> {
    let mut line_start = 0;
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' => {
                if raw.get(i + 1) != Some(&b'\n') {
                    return Err(WireViolation::BareCr(i));
                }
                check_length(line_start, i)?;
                i += 2;
                line_start = i;
                continue;
            }
            b'\n' => return Err(WireViolation::BareLf(i)),
            0 => return Err(WireViolation::Nul(i)),
            _ => {}
        }
        i += 1;
    }
    check_length(line_start, raw.len())
}

fn check_length(start: usize, end: usize) -> Result<(), WireViolation> {
    if end - start > MAX_LINE {
        return Err(WireViolation::LongLine {
            at: start,
            len: end - start,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_messages_pass() {
        assert_eq!(check(b""), Ok(()));
        assert_eq!(check(b"Subject: x\r\n\r\nbody\r\n.\r\n"), Ok(()));
        let line = "a".repeat(MAX_LINE);
        assert_eq!(check(format!("{line}\r\n{line}").as_bytes()), Ok(()));
    }

    #[test]
    fn every_kind_of_violation_is_found_where_it_is() {
        assert_eq!(check(b"a\r\nb\nc"), Err(WireViolation::BareLf(4)));
        assert_eq!(check(b"a\rb"), Err(WireViolation::BareCr(1)));
        assert_eq!(check(b"a\r"), Err(WireViolation::BareCr(1)));
        assert_eq!(check(b"ab\0"), Err(WireViolation::Nul(2)));
        assert_eq!(check(b"\n.\r\n"), Err(WireViolation::BareLf(0)));
        let long = format!("x\r\n{}\r\n", "a".repeat(MAX_LINE + 1));
        assert_eq!(
            check(long.as_bytes()),
            Err(WireViolation::LongLine {
                at: 3,
                len: MAX_LINE + 1
            })
        );
        let unterminated = "b".repeat(MAX_LINE + 1);
        assert!(matches!(
            check(unterminated.as_bytes()),
            Err(WireViolation::LongLine { at: 0, .. })
        ));
    }
}
