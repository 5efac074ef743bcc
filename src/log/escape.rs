//! Escaping of client-controlled bytes (request targets, methods, messages) into log lines, so
//! that no client can forge a line, break a field or smuggle terminal escapes into a log.
//!
//! - [`text`]: for the text formats. Printable ASCII stays; `"` and `\` get a backslash;
//!   every other byte (controls, DEL, anything non-ASCII) becomes `\xHH`. The output is ASCII.
//! - [`json`]: the inside of a JSON string (RFC 8259): `"` `\` and control characters are
//!   escaped (`\n`, `\r`, `\t`, else `\u00XX`; DEL as `\u007f`), valid UTF-8 is kept, and each
//!   invalid byte becomes U+FFFD, so the line is always valid JSON and valid UTF-8.
//!
//! Both append to a `Vec<u8>` and allocate only if it must grow.

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` escaped for a text log line (see the module documentation).
pub fn text(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            0x20..=0x7e => out.push(b),
            _ => out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]),
        }
    }
}

/// Whether [`text`] would copy `bytes` unchanged.
pub fn text_is_clean(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

/// Appends `bytes` escaped as the inside of a JSON string (see the module documentation).
pub fn json(out: &mut Vec<u8>, bytes: &[u8]) {
    for chunk in bytes.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x00..=0x1f | 0x7f => out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 0xf) as usize],
                ]),
                // Multi-byte UTF-8 sequences are copied whole (their bytes are all >= 0x80).
                _ => out.push(b),
            }
        }
        for _ in chunk.invalid() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(input: &[u8]) -> String {
        let mut out = Vec::new();
        text(&mut out, input);
        String::from_utf8(out).expect("text escaping gives ASCII")
    }

    fn j(input: &[u8]) -> String {
        let mut out = Vec::new();
        json(&mut out, input);
        String::from_utf8(out).expect("JSON escaping gives UTF-8")
    }

    #[test]
    fn text_escapes_quotes_backslashes_and_every_non_printable_byte() {
        assert_eq!(t(b"/crypto/sign?message=hi"), "/crypto/sign?message=hi");
        assert_eq!(t(b"a\"b\\c"), "a\\\"b\\\\c");
        assert_eq!(
            t(b"x\r\ny\tz\x00\x1b[31m\x7f"),
            "x\\x0d\\x0ay\\x09z\\x00\\x1b[31m\\x7f"
        );
        assert_eq!(t("é".as_bytes()), "\\xc3\\xa9");
        assert_eq!(t(b"\xff"), "\\xff");
        assert!(text_is_clean(b"/a?b=c d"));
        assert!(!text_is_clean(b"a\"b") && !text_is_clean(b"\n") && !text_is_clean(b"\x80"));
    }

    #[test]
    fn json_escapes_and_stays_valid_utf8() {
        assert_eq!(j(b"/crypto/sign?m=1"), "/crypto/sign?m=1");
        assert_eq!(j(b"a\"b\\c"), "a\\\"b\\\\c");
        assert_eq!(
            j(b"x\r\ny\tz\x00\x1b\x7f"),
            "x\\r\\ny\\tz\\u0000\\u001b\\u007f"
        );
        assert_eq!(j("é€".as_bytes()), "é€");
        assert_eq!(j(b"a\xffb\xc3"), "a\u{fffd}b\u{fffd}");
        // Every escaped string parses back as a JSON string.
        for input in [&b"\"\\\n\x01\xfe/x"[..], "𝄞\u{2028}".as_bytes(), b""] {
            let quoted = format!("\"{}\"", j(input));
            let back: String = serde_json::from_str(&quoted).expect(&quoted);
            assert_eq!(back, String::from_utf8_lossy(input));
        }
    }
}
