//! The path allowlist (the `--paths` flag): which request paths sluice forwards at all.
//!
//! Owns parsing and validating the configured entries and matching a raw request path against
//! them. An entry is an exact path (`/crypto/sign`) or a prefix (`/v1/*`, matching `/v1/`
//! followed by at least one byte). Matching works on the percent-decoded path, decoded on the fly
//! without allocating, and refuses paths that a server behind sluice could normalise into
//! something else: empty segments (`//`), dot segments (`.`, `..`, also percent-encoded or with a
//! `;param` suffix), encoded slashes and backslashes, raw backslashes, `%00` and malformed escapes.
//! Such a path matches nothing, so it is answered 404 and never reaches the origin.
//!
//! The raw path is still what gets forwarded; decoding here only decides *whether* to forward.

/// One configured endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// As configured, e.g. `/crypto/sign` or `/v1/*`.
    spec: Box<str>,
    /// `true` for `/dir/*` entries.
    prefix: bool,
}

impl Entry {
    /// The bytes to compare with: the whole path, or the prefix up to and including the `/`.
    fn path(&self) -> &[u8] {
        let bytes = self.spec.as_bytes();
        if self.prefix {
            bytes.strip_suffix(b"*").unwrap_or(bytes)
        } else {
            bytes
        }
    }
}

/// A validated, ordered list of allowed paths. The first matching entry wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<Entry>,
}

impl Allowlist {
    /// Parse a comma-separated list (the `--paths` flag). Items are trimmed and empty items
    /// skipped. Errors name the offending entry and the rule it breaks.
    pub fn parse(spec: &str) -> Result<Allowlist, String> {
        let mut entries: Vec<Entry> = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let prefix =
                validate_entry(item).map_err(|rule| format!("allowlist entry {item:?}: {rule}"))?;
            if entries.iter().any(|e| &*e.spec == item) {
                return Err(format!("allowlist entry {item:?}: listed twice"));
            }
            entries.push(Entry {
                spec: item.into(),
                prefix,
            });
        }
        if entries.is_empty() {
            return Err(
                "the path allowlist is empty: give at least one path such as /v1/sign or /v1/*"
                    .to_string(),
            );
        }
        Ok(Allowlist { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true for a parsed allowlist; here for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entry `i` as configured (`/v1/*` for a prefix entry); empty for an index out of range.
    pub fn entry(&self, i: usize) -> &str {
        self.entries.get(i).map_or("", |e| &e.spec)
    }

    /// Whether entry `i` is a prefix entry (`false` for an index out of range).
    pub fn is_prefix(&self, i: usize) -> bool {
        self.entries.get(i).is_some_and(|e| e.prefix)
    }

    /// The index of the first entry matching `raw_path` (the path of the request line, without
    /// the query), or `None`. See the module docs for the paths that never match.
    pub fn match_path(&self, raw_path: &[u8]) -> Option<usize> {
        if !is_safe_path(raw_path) {
            return None;
        }
        self.entries.iter().position(|e| {
            if e.prefix {
                decoded_extends(raw_path, e.path())
            } else {
                decoded(raw_path).eq(e.path().iter().copied())
            }
        })
    }
}

/// Check one configured entry; returns whether it is a prefix entry, or the rule it breaks.
fn validate_entry(item: &str) -> Result<bool, &'static str> {
    if !item.starts_with('/') {
        return Err("must start with '/'");
    }
    if item.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters");
    }
    for (c, rule) in [
        (
            '?',
            "must not contain '?' (a query is not part of the path)",
        ),
        ('#', "must not contain '#'"),
        (
            '%',
            "must not contain '%' (write the decoded path; requests are matched decoded)",
        ),
        ('\\', "must not contain '\\'"),
    ] {
        if item.contains(c) {
            return Err(rule);
        }
    }
    let (path, prefix) = match item.strip_suffix('*') {
        Some(dir) if dir.ends_with('/') => (dir, true),
        _ => (item, false),
    };
    if path.contains('*') {
        return Err("'*' is only allowed as a final '/*' (prefix entry)");
    }
    if path.contains("//") {
        return Err("must not contain an empty segment '//'");
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("must not contain a '.' or '..' segment");
    }
    Ok(prefix)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Iterator over the percent-decoded bytes of an already validated path. A malformed escape
/// (impossible after `is_safe_path`) ends the iteration instead of panicking.
struct Decoded<'a> {
    raw: &'a [u8],
}

impl Iterator for Decoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        match *self.raw {
            [b'%', hi, lo, ref rest @ ..] => {
                let b = hex(hi)? << 4 | hex(lo)?;
                self.raw = rest;
                Some(b)
            }
            [b'%', ..] => None,
            [b, ref rest @ ..] => {
                self.raw = rest;
                Some(b)
            }
            [] => None,
        }
    }
}

fn decoded(raw: &[u8]) -> Decoded<'_> {
    Decoded { raw }
}

/// The decoded path starts with `prefix` and has at least one more byte.
fn decoded_extends(raw: &[u8], prefix: &[u8]) -> bool {
    let mut d = decoded(raw);
    prefix.iter().all(|&p| d.next() == Some(p)) && d.next().is_some()
}

/// The rules of the module docs, on the raw path.
fn is_safe_path(raw: &[u8]) -> bool {
    let Some(rest) = raw.strip_prefix(b"/") else {
        return false;
    };
    let mut segments = rest.split(|&b| b == b'/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        // An empty segment other than a trailing one is `//`.
        if seg.is_empty() && !last {
            return false;
        }
        if !is_safe_segment(seg) {
            return false;
        }
    }
    true
}

/// A segment is safe when its escapes are well formed, it decodes to no NUL, slash or backslash
/// (raw backslashes included: some servers treat `\` as `/`), and it is not a dot segment. A dot
/// segment followed by `;params` (`..;x`) counts as one: servlet containers strip path
/// parameters before resolving dots.
fn is_safe_segment(seg: &[u8]) -> bool {
    // Decoded bytes before the first ';', and whether they were all dots.
    let mut before_params = 0usize;
    let mut all_dots = true;
    let mut in_params = false;
    let mut i = 0;
    while let Some(&b) = seg.get(i) {
        let byte = if b == b'%' {
            let (Some(hi), Some(lo)) = (
                seg.get(i + 1).copied().and_then(hex),
                seg.get(i + 2).copied().and_then(hex),
            ) else {
                return false;
            };
            i += 3;
            hi << 4 | lo
        } else {
            i += 1;
            b
        };
        if byte == 0 || byte == b'/' || byte == b'\\' {
            return false;
        }
        if byte == b';' {
            in_params = true;
        }
        if !in_params {
            before_params += 1;
            all_dots &= byte == b'.';
        }
    }
    !(all_dots && (before_params == 1 || before_params == 2))
}

/// The entries as configured, comma-separated (for the start-up line).
impl std::fmt::Display for Allowlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for i in 0..self.len() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(self.entry(i))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(spec: &str) -> Allowlist {
        Allowlist::parse(spec).unwrap()
    }

    #[test]
    fn parse_entries() {
        let a = list(" /crypto/sign , ,/v1/* ,/");
        assert_eq!(a.len(), 3);
        assert!(!a.is_empty());
        assert_eq!(a.entry(0), "/crypto/sign");
        assert!(!a.is_prefix(0));
        assert_eq!(a.entry(1), "/v1/*");
        assert!(a.is_prefix(1));
        assert_eq!(a.entry(2), "/");
        assert_eq!(a.entry(9), "");
        assert!(!a.is_prefix(9));
        assert!(list("/*").is_prefix(0));
        assert!(list("/caf\u{e9}").match_path(b"/caf%C3%A9").is_some());
    }

    #[test]
    fn parse_errors_name_the_entry() {
        for (spec, needle) in [
            ("", "empty"),
            (" , ,", "empty"),
            ("/ok,crypto/sign", "\"crypto/sign\""),
            ("/a?b", "'?'"),
            ("/a#b", "'#'"),
            ("/a%2Fb", "'%'"),
            ("/a//b", "'//'"),
            ("/a/./b", "'.'"),
            ("/a/../b", "'..'"),
            ("/a/..", "'..'"),
            ("/./*", "'.'"),
            ("/a b", "whitespace"),
            ("/a\tb", "whitespace"),
            ("/a\u{1}", "control"),
            ("/a\\b", "'\\'"),
            ("/v1*", "'*'"),
            ("/v1/*/x", "'*'"),
            ("/v1/**", "'*'"),
            ("/a,/a", "twice"),
        ] {
            let e = Allowlist::parse(spec).unwrap_err();
            assert!(e.contains(needle), "{spec:?}: {e}");
        }
        // Dots inside a segment are fine.
        list("/v1.2/file.json,/.well-known/x,/a..b");
    }

    #[test]
    fn exact_matches() {
        let a = list("/crypto/sign");
        assert_eq!(a.match_path(b"/crypto/sign"), Some(0));
        assert_eq!(a.match_path(b"/crypto/%73ign"), Some(0));
        assert_eq!(a.match_path(b"/%63rypto/sign"), Some(0));
        for no in [
            &b"/crypto/sign/"[..],
            b"/crypto/signx",
            b"/crypto/sig",
            b"/Crypto/sign",
            b"/crypto//sign",
            b"//crypto/sign",
            b"/crypto/./sign",
            b"/x/../crypto/sign",
            b"/crypto/sign/..",
            b"/crypto/sign/.",
            b"/crypto%2Fsign",
            b"/crypto%2fsign",
            b"/crypto%5Csign",
            b"/crypto%5csign",
            b"/crypto\\sign",
            b"/crypto/sign%00",
            b"/crypto/sign%",
            b"/crypto/sign%2",
            b"/crypto/sign%zz",
            b"/crypto/%2e/sign",
            b"/crypto/%2E%2e/crypto/sign",
            b"/x/.%2e/crypto/sign",
            b"/x/..;/crypto/sign",
            b"/x/.;a/crypto/sign",
            b"crypto/sign",
            b"*",
            b"",
        ] {
            assert_eq!(a.match_path(no), None, "{:?}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn prefix_matches() {
        let a = list("/v1/*");
        assert_eq!(a.match_path(b"/v1/x"), Some(0));
        assert_eq!(a.match_path(b"/v1/x/y/"), Some(0));
        assert_eq!(a.match_path(b"/v1/a;b"), Some(0));
        assert_eq!(a.match_path(b"/v1/.well-known"), Some(0));
        assert_eq!(a.match_path(b"/v1/..."), Some(0));
        assert_eq!(a.match_path(b"/v1/%41"), Some(0));
        assert_eq!(a.match_path(b"/v%31/x"), Some(0));
        for no in [
            &b"/v1/"[..],
            b"/v1",
            b"/v1x/a",
            b"/v2/a",
            b"/v1//a",
            b"/v1/../admin",
            b"/v1/%2e%2e/admin",
            b"/v1/..%2Fadmin",
            b"/v1%2Fa",
            b"/v1/a%00",
        ] {
            assert_eq!(a.match_path(no), None, "{:?}", String::from_utf8_lossy(no));
        }
        let root = list("/*");
        assert_eq!(root.match_path(b"/a"), Some(0));
        assert_eq!(root.match_path(b"/"), None);
    }

    #[test]
    fn first_match_wins() {
        let a = list("/v1/special,/v1/*,/v1/special/x");
        assert_eq!(a.match_path(b"/v1/special"), Some(0));
        assert_eq!(a.match_path(b"/v1/other"), Some(1));
        assert_eq!(a.match_path(b"/v1/special/x"), Some(1));
        let b = list("/,/a");
        assert_eq!(b.match_path(b"/"), Some(0));
        assert_eq!(b.match_path(b"/a"), Some(1));
    }
}
