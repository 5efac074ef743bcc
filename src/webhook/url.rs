//! The `callback` query parameter: finding it in a raw query string, percent-decoding it and
//! validating it into a [`CallbackUrl`].
//!
//! Sans-IO and allocation-light: everything takes byte slices and returns values, so the gateway
//! can answer 400 for a bad callback before anything is sent upstream. This module owns URL
//! syntax only; whether a target may be contacted at all is [`super::allow`]'s business, and
//! nothing here resolves names.
//!
//! The rules are deliberately narrower than what browsers accept (WHATWG URL): a callback is
//! user input that sluice will later connect to, so anything two URL parsers could read
//! differently (userinfo, backslashes, fragments, numeric host shorthands like `2130706433` or
//! `0x7f.1` that `getaddrinfo` turns into 127.0.0.1, raw spaces) is refused instead of
//! normalised.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

/// Longest accepted callback URL, in bytes after percent-decoding of the query parameter. Long
/// enough for any sane receiver URL with a token in its query; short enough that a record of it
/// is cheap to keep and persist (browsers and CDNs commonly cap URLs near 2 KiB too).
pub const MAX_CALLBACK_URL_BYTES: usize = 2048;

/// The query parameter that carries the callback URL.
pub const CALLBACK_PARAM: &[u8] = b"callback";

/// Longest DNS name (RFC 1035 section 2.3.4), without a trailing dot, in bytes.
const MAX_DNS_NAME_BYTES: usize = 253;

/// Longest DNS label (RFC 1035 section 2.3.4), in bytes.
const MAX_DNS_LABEL_BYTES: usize = 63;

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallbackScheme {
    Http,
    Https,
}

impl CallbackScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackScheme::Http => "http",
            CallbackScheme::Https => "https",
        }
    }

    /// The port used when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            CallbackScheme::Http => 80,
            CallbackScheme::Https => 443,
        }
    }
}

/// The host of a callback URL: a lowercased DNS name or an IP literal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CallbackHost {
    /// Lowercase LDH labels, no trailing dot, never all-numeric.
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for CallbackHost {
    /// The host as it appears in a URL or `Host` header (IPv6 in brackets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallbackHost::Name(name) => f.write_str(name),
            CallbackHost::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            CallbackHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// A validated absolute `http://` or `https://` callback URL.
///
/// Keeps its normalised text (scheme and host lowercased, `/` for an empty path, the port only
/// when one was given); [`CallbackUrl::as_str`] parses back to an equal value with
/// [`CallbackUrl::parse_str`], which is how a persisted record is restored.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CallbackUrl {
    text: String,
    scheme: CallbackScheme,
    host: CallbackHost,
    port: u16,
    /// Byte range of the request target (path and query) in `text`.
    target: Range<usize>,
    /// Byte range of the authority (host and optional port) in `text`.
    authority: Range<usize>,
}

impl fmt::Debug for CallbackUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallbackUrl({:?})", self.text)
    }
}

impl fmt::Display for CallbackUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl CallbackUrl {
    /// Parses the raw (still percent-encoded) value of a `callback` query parameter:
    /// decodes it as `application/x-www-form-urlencoded` (`%XX` escapes, `+` is a space, which
    /// then fails validation like any other whitespace) and validates the result.
    pub fn parse(raw_query_value: &[u8]) -> Result<CallbackUrl, &'static str> {
        // Every decoded byte comes from at least one raw byte and at most three; a raw value
        // longer than this cannot decode to an acceptable URL.
        if raw_query_value.len() > MAX_CALLBACK_URL_BYTES * 3 {
            return Err("callback URL is longer than 2048 bytes");
        }
        let decoded = form_decode(raw_query_value)?;
        Self::parse_bytes(&decoded)
    }

    /// Validates an already decoded URL (configuration, a persisted record).
    pub fn parse_str(url: &str) -> Result<CallbackUrl, &'static str> {
        Self::parse_bytes(url.as_bytes())
    }

    fn parse_bytes(url: &[u8]) -> Result<CallbackUrl, &'static str> {
        if url.is_empty() {
            return Err("callback URL is empty");
        }
        if url.len() > MAX_CALLBACK_URL_BYTES {
            return Err("callback URL is longer than 2048 bytes");
        }
        if url.iter().any(|&b| !b.is_ascii_graphic()) {
            return Err("callback URL contains whitespace, control or non-ASCII characters");
        }
        if url.contains(&b'#') {
            return Err("callback URL must not have a fragment (#...)");
        }
        if url.contains(&b'\\') {
            return Err("callback URL must not contain a backslash");
        }
        let (scheme, rest) = split_scheme(url)?;
        let authority_len = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        let (authority, path_query) = rest.split_at(authority_len);
        if authority.contains(&b'@') {
            return Err("callback URL must not contain userinfo (user@host)");
        }
        let (host, port) = parse_authority(authority)?;
        validate_path_query(path_query)?;

        // Normalised text: scheme://host[:port]target, with "/" for an empty path.
        let mut text = String::with_capacity(url.len() + 1);
        text.push_str(scheme.as_str());
        text.push_str("://");
        let authority_start = text.len();
        text.push_str(&host.to_string());
        if let Some(port) = port {
            text.push(':');
            text.push_str(&port.to_string());
        }
        let authority_end = text.len();
        if !path_query.starts_with(b"/") {
            text.push('/');
        }
        // ASCII checked above: from_utf8 cannot fail, but never unwrap on input.
        text.push_str(std::str::from_utf8(path_query).map_err(|_| "callback URL is not ASCII")?);
        Ok(CallbackUrl {
            target: authority_end..text.len(),
            authority: authority_start..authority_end,
            port: port.unwrap_or(scheme.default_port()),
            text,
            scheme,
            host,
        })
    }

    /// The normalised URL.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn scheme(&self) -> CallbackScheme {
        self.scheme
    }

    pub fn host(&self) -> &CallbackHost {
        &self.host
    }

    /// The port to connect to (the scheme's default when the URL names none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The request target: path and query, starting with `/`.
    pub fn target(&self) -> &str {
        self.text.get(self.target.clone()).unwrap_or("/")
    }

    /// The `Host` header value: the host (IPv6 in brackets) and the port if the URL gave one.
    pub fn authority(&self) -> &str {
        self.text.get(self.authority.clone()).unwrap_or("")
    }
}

/// Removes every `callback` parameter from a raw query string (without the `?`).
///
/// Writes the other parameters to `out` byte for byte and in order (separators included, empty
/// parameters such as `a&&b` kept), so a query without a callback comes out identical. When `out`
/// ends up empty the caller drops the `?`. Returns the raw (still encoded) callback value, a
/// subslice of `query` (its position is `value.as_ptr() - query.as_ptr()`), or `None` when there
/// is none; `callback` without `=` yields an empty value, which [`CallbackUrl::parse`] refuses.
///
/// A parameter counts as `callback` when its name decodes to exactly `callback` (so
/// `callb%61ck=` is caught too). More than one is an error (answer 400): picking one would let
/// the gateway and a log reader disagree on where the webhook goes.
pub fn strip_callback<'q>(
    query: &'q [u8],
    out: &mut Vec<u8>,
) -> Result<Option<&'q [u8]>, &'static str> {
    out.clear();
    let mut found: Option<Range<usize>> = None;
    let mut start = 0usize;
    let mut first_kept = true;
    loop {
        let end = query[start..]
            .iter()
            .position(|&b| b == b'&')
            .map_or(query.len(), |i| start + i);
        let param = &query[start..end];
        let name_len = param.iter().position(|&b| b == b'=').unwrap_or(param.len());
        if name_is_callback(&param[..name_len]) {
            if found.is_some() {
                return Err("more than one callback parameter");
            }
            let value_start = (start + name_len + 1).min(end);
            found = Some(value_start..end);
        } else {
            if !first_kept {
                out.push(b'&');
            }
            out.extend_from_slice(param);
            first_kept = false;
        }
        if end == query.len() {
            break;
        }
        start = end + 1;
    }
    Ok(found.map(|range| &query[range]))
}

/// [`strip_callback`] and [`CallbackUrl::parse`] in one call: the stripped query goes to `out`,
/// the parsed callback (if any) is returned. Every error is a 400 for the client.
pub fn extract_callback(
    query: &[u8],
    out: &mut Vec<u8>,
) -> Result<Option<CallbackUrl>, &'static str> {
    match strip_callback(query, out)? {
        Some(value) => CallbackUrl::parse(value).map(Some),
        None => Ok(None),
    }
}

/// Whether a raw query parameter name decodes ([`form_decode`]'s rules) to exactly
/// `callback`. Decodes as it compares, so it allocates nothing (it runs for every parameter of
/// every request, and for the access log's redaction).
pub fn name_is_callback(raw_name: &[u8]) -> bool {
    // Fast path: the common spelling, and names too long or too short to decode to it.
    if raw_name == CALLBACK_PARAM {
        return true;
    }
    if raw_name.len() < CALLBACK_PARAM.len() || raw_name.len() > CALLBACK_PARAM.len() * 3 {
        return false;
    }
    let mut want = CALLBACK_PARAM.iter();
    let mut i = 0;
    while i < raw_name.len() {
        let byte = match raw_name[i] {
            b'%' => {
                let hi = raw_name.get(i + 1).and_then(|&b| hex_value(b));
                let lo = raw_name.get(i + 2).and_then(|&b| hex_value(b));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        i += 3;
                        hi << 4 | lo
                    }
                    _ => return false,
                }
            }
            b'+' => {
                i += 1;
                b' '
            }
            b => {
                i += 1;
                b
            }
        };
        if want.next() != Some(&byte) {
            return false;
        }
    }
    want.next().is_none()
}

/// `application/x-www-form-urlencoded` decoding: `%XX` becomes the byte, `+` a space. A `%` not
/// followed by two hex digits is an error (lenient decoders keep it, strict ones refuse: refuse).
pub fn form_decode(raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hi = raw.get(i + 1).and_then(|&b| hex_value(b));
                let lo = raw.get(i + 2).and_then(|&b| hex_value(b));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err("callback contains an invalid percent-escape (%XX)"),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn split_scheme(url: &[u8]) -> Result<(CallbackScheme, &[u8]), &'static str> {
    const HTTP: &[u8] = b"http://";
    const HTTPS: &[u8] = b"https://";
    let starts = |prefix: &[u8]| {
        url.len() >= prefix.len() && url[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    if starts(HTTPS) {
        Ok((CallbackScheme::Https, &url[HTTPS.len()..]))
    } else if starts(HTTP) {
        Ok((CallbackScheme::Http, &url[HTTP.len()..]))
    } else {
        Err("callback URL must be absolute and start with http:// or https://")
    }
}

fn parse_authority(authority: &[u8]) -> Result<(CallbackHost, Option<u16>), &'static str> {
    if authority.is_empty() {
        return Err("callback URL has no host");
    }
    let (host, port) = if authority[0] == b'[' {
        let close = authority
            .iter()
            .position(|&b| b == b']')
            .ok_or("callback URL has an unterminated IPv6 literal")?;
        let inside = std::str::from_utf8(&authority[1..close])
            .map_err(|_| "callback URL has an invalid IPv6 literal")?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| "callback URL has an invalid IPv6 literal (zone ids are not allowed)")?;
        let after = &authority[close + 1..];
        let port = match after.split_first() {
            None => None,
            Some((b':', digits)) => Some(digits),
            Some(_) => return Err("callback URL has junk after the IPv6 literal"),
        };
        (CallbackHost::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = match authority.iter().position(|&b| b == b':') {
            Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
            None => (authority, None),
        };
        (parse_host(host)?, port)
    };
    let port = match port {
        None => None,
        Some(digits) => Some(parse_port(digits)?),
    };
    Ok((host, port))
}

fn parse_port(digits: &[u8]) -> Result<u16, &'static str> {
    const ERR: &str = "callback URL has an invalid port (must be 1-65535)";
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ERR);
    }
    let port = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(ERR)?;
    if port == 0 {
        return Err(ERR);
    }
    Ok(port)
}

fn parse_host(host: &[u8]) -> Result<CallbackHost, &'static str> {
    if host.is_empty() {
        return Err("callback URL has no host");
    }
    let text = std::str::from_utf8(host).map_err(|_| "callback URL host is not ASCII")?;
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Ok(CallbackHost::Ip(IpAddr::V4(ip)));
    }
    let lower = text.to_ascii_lowercase();
    if looks_numeric(&lower) {
        return Err("callback URL host looks numeric but is not a dotted-decimal IPv4 address");
    }
    if !is_dns_name(&lower) {
        return Err("callback URL host is not a valid DNS name, IPv4 address or [IPv6] literal");
    }
    Ok(CallbackHost::Name(lower))
}

/// Whether a (lowercase) name would be read as an IPv4 address by a WHATWG parser or by
/// `inet_aton`/`getaddrinfo`: its last label is a decimal, octal or hex number (`127.1`,
/// `2130706433`, `0x7f.0.0.1`). Such names are refused so that the name checked against the
/// allow list is the address connected to.
pub(crate) fn looks_numeric(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.is_empty() {
        return false;
    }
    let hex = last
        .strip_prefix("0x")
        .map(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex == Some(true) || last.bytes().all(|b| b.is_ascii_digit())
}

/// A DNS host name: dot-separated labels of letters, digits and hyphens (RFC 1123), no label
/// empty, longer than 63 bytes or starting/ending with a hyphen; at most 253 bytes; no trailing
/// dot (so `example.com.` cannot sneak past an `example.com` allow rule).
pub(crate) fn is_dns_name(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_DNS_NAME_BYTES {
        return false;
    }
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_DNS_LABEL_BYTES
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// Path and query: RFC 3986 `pchar`s, `/` and `?`, with valid `%XX` escapes. Everything else
/// (`"`, `<`, `>`, `` ` ``, `{`, `}`, `|`, `^`, `[`, `]` ...) must be percent-encoded by the client.
fn validate_path_query(path_query: &[u8]) -> Result<(), &'static str> {
    if !path_query.is_empty() && path_query[0] != b'/' && path_query[0] != b'?' {
        return Err("callback URL path must start with /");
    }
    let mut i = 0;
    while i < path_query.len() {
        let b = path_query[i];
        if b == b'%' {
            let ok = path_query.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && path_query.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Err("callback URL contains an invalid percent-escape (%XX)");
            }
            i += 3;
            continue;
        }
        let allowed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&b);
        if !allowed {
            return Err(
                "callback URL path or query contains a character that must be percent-encoded",
            );
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> CallbackUrl {
        match CallbackUrl::parse(raw.as_bytes()) {
            Ok(url) => url,
            Err(e) => panic!("{raw:?} should parse, got {e:?}"),
        }
    }

    #[test]
    fn valid_urls() {
        let cases: &[(&str, &str, u16, &str, &str)] = &[
            // raw query value, normalised URL, port, authority, target
            (
                "http://example.com/hook",
                "http://example.com/hook",
                80,
                "example.com",
                "/hook",
            ),
            (
                "https%3A%2F%2Fapi.Example.COM%3A8443%2Fa%2Fb%3Fx%3D1%26y%3D2",
                "https://api.example.com:8443/a/b?x=1&y=2",
                8443,
                "api.example.com:8443",
                "/a/b?x=1&y=2",
            ),
            (
                "HTTPS://h.example",
                "https://h.example/",
                443,
                "h.example",
                "/",
            ),
            (
                "http://127.0.0.1:9000",
                "http://127.0.0.1:9000/",
                9000,
                "127.0.0.1:9000",
                "/",
            ),
            (
                "http://[::1]:8080/x",
                "http://[::1]:8080/x",
                8080,
                "[::1]:8080",
                "/x",
            ),
            (
                "http://[2001:DB8::1]/x",
                "http://[2001:db8::1]/x",
                80,
                "[2001:db8::1]",
                "/x",
            ),
            (
                "http://h.example?q=1",
                "http://h.example/?q=1",
                80,
                "h.example",
                "/?q=1",
            ),
            // An encoded escape stays an escape inside the URL.
            (
                "http://h.example/a%2520b",
                "http://h.example/a%20b",
                80,
                "h.example",
                "/a%20b",
            ),
            (
                "http://xn--bcher-kva.example/~u/a;b=c",
                "http://xn--bcher-kva.example/~u/a;b=c",
                80,
                "xn--bcher-kva.example",
                "/~u/a;b=c",
            ),
            (
                "http://a-b.c1.example:1/",
                "http://a-b.c1.example:1/",
                1,
                "a-b.c1.example:1",
                "/",
            ),
            (
                "http://localhost:65535/",
                "http://localhost:65535/",
                65535,
                "localhost:65535",
                "/",
            ),
        ];
        for &(raw, text, port, authority, target) in cases {
            let url = ok(raw);
            assert_eq!(url.as_str(), text, "{raw}");
            assert_eq!(url.port(), port, "{raw}");
            assert_eq!(url.authority(), authority, "{raw}");
            assert_eq!(url.target(), target, "{raw}");
            // The normalised text parses back to the same value.
            assert_eq!(
                CallbackUrl::parse_str(url.as_str()),
                Ok(url.clone()),
                "{raw}"
            );
        }
        assert_eq!(ok("https://h.example").scheme(), CallbackScheme::Https);
        assert_eq!(
            ok("http://H.Example").host(),
            &CallbackHost::Name("h.example".into())
        );
        assert_eq!(
            ok("http://10.1.2.3").host(),
            &CallbackHost::Ip("10.1.2.3".parse().unwrap())
        );
        let longest = format!(
            "http://h.example/{}",
            "a".repeat(MAX_CALLBACK_URL_BYTES - 17)
        );
        assert_eq!(ok(&longest).as_str().len(), MAX_CALLBACK_URL_BYTES);
    }

    #[test]
    fn invalid_urls() {
        let too_long = format!(
            "http://h.example/{}",
            "a".repeat(MAX_CALLBACK_URL_BYTES - 16)
        );
        let long_label = format!("http://{}.example/", "a".repeat(64));
        let long_name = format!("http://{}/", ["abcdefghi"; 26].join("."));
        let cases: Vec<(&str, &str)> = vec![
            ("", "empty"),
            ("ftp://h.example/", "http:// or https://"),
            ("//h.example/", "http:// or https://"),
            ("/relative", "http:// or https://"),
            ("h.example", "http:// or https://"),
            ("http:/h.example", "http:// or https://"),
            ("javascript:alert(1)", "http:// or https://"),
            ("http://", "no host"),
            ("http:///path", "no host"),
            ("http://:80/", "no host"),
            ("http://user@h.example/", "userinfo"),
            ("http://user:pw@h.example/", "userinfo"),
            ("http://h.example@evil.example/", "userinfo"),
            ("http://h.example/#frag", "fragment"),
            ("http://h.example/a%23b", "fragment"),
            ("http://h.example/a b", "whitespace"),
            ("http://h.example/a+b", "whitespace"),
            ("http://h.example/a%09b", "whitespace"),
            ("http://h.example/a%0D%0AX-Injected:%201", "whitespace"),
            ("http://h.example/%00", "whitespace"),
            ("http://h.example/%C3%A9", "non-ASCII"),
            ("http://h.example\\@evil/", "backslash"),
            ("http://h.example/%5C", "backslash"),
            ("http://h.example/%", "percent-escape"),
            ("http://h.example/%2", "percent-escape"),
            ("http://h.example/%zz", "percent-escape"),
            ("http://h.example/%25zz", "percent-escape"),
            ("http://h.example/%3C", "percent-encoded"),
            ("http://h.example/a|b", "percent-encoded"),
            ("http://h.example/%7B%7D", "percent-encoded"),
            ("http://h.example:/", "port"),
            ("http://h.example:0/", "port"),
            ("http://h.example:65536/", "port"),
            ("http://h.example:123456/", "port"),
            ("http://h.example:8a/", "port"),
            ("http://h.example:-1/", "port"),
            ("http://h.example:80:80/", "port"),
            ("http://[::1/", "unterminated"),
            ("http://[::1]x/", "junk"),
            ("http://[fe80::1%25eth0]/", "IPv6"),
            ("http://[1.2.3.4]/", "IPv6"),
            ("http://::1/", "no host"),
            ("http://2130706433/", "numeric"),
            ("http://127.1/", "numeric"),
            ("http://0x7f.0.0.1/", "numeric"),
            ("http://1.2.3.4.5/", "numeric"),
            ("http://01.2.3.4/", "numeric"),
            ("http://256.1.1.1/", "numeric"),
            ("http://example.0x10/", "numeric"),
            ("http://h.example./", "DNS name"),
            ("http://.h.example/", "DNS name"),
            ("http://h..example/", "DNS name"),
            ("http://-h.example/", "DNS name"),
            ("http://h-.example/", "DNS name"),
            ("http://h_1.example/", "DNS name"),
            ("http://h.example;x/", "DNS name"),
            (&long_label, "DNS name"),
            (&long_name, "DNS name"),
            ("http://h.example?x#y", "fragment"),
            (&too_long, "2048"),
        ];
        for (raw, want) in cases {
            match CallbackUrl::parse(raw.as_bytes()) {
                Ok(url) => panic!("{raw:?} should be refused, got {url:?}"),
                Err(e) => assert!(
                    e.contains(want),
                    "{raw:?}: error {e:?} should mention {want:?}"
                ),
            }
        }
        // Raw bytes that are not even ASCII.
        assert!(CallbackUrl::parse(b"http://h.example/\xff").is_err());
        // A raw value that could never decode to 2048 bytes or less is refused before decoding.
        let huge = vec![b'a'; MAX_CALLBACK_URL_BYTES * 3 + 1];
        assert_eq!(
            CallbackUrl::parse(&huge),
            Err("callback URL is longer than 2048 bytes")
        );
    }

    #[test]
    fn host_display() {
        assert_eq!(
            CallbackHost::Name("a.example".into()).to_string(),
            "a.example"
        );
        assert_eq!(
            CallbackHost::Ip("::1".parse().unwrap()).to_string(),
            "[::1]"
        );
        assert_eq!(
            CallbackHost::Ip("1.2.3.4".parse().unwrap()).to_string(),
            "1.2.3.4"
        );
    }

    fn strip(query: &str) -> (String, Option<String>) {
        let mut out = Vec::new();
        let value =
            strip_callback(query.as_bytes(), &mut out).unwrap_or_else(|e| panic!("{query:?}: {e}"));
        let value = value.map(|v| String::from_utf8(v.to_vec()).unwrap());
        (String::from_utf8(out).unwrap(), value)
    }

    #[test]
    fn strip_keeps_other_parameters_byte_for_byte() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("", "", None),
            ("message=hi", "message=hi", None),
            ("a=1&&b=%20+x&c", "a=1&&b=%20+x&c", None),
            ("callback=http%3A%2F%2Fh%2F", "", Some("http%3A%2F%2Fh%2F")),
            ("callback=x&message=a%2Bb", "message=a%2Bb", Some("x")),
            ("message=a&callback=x", "message=a", Some("x")),
            ("m=1&callback=x&n=2&&o", "m=1&n=2&&o", Some("x")),
            ("m=1&callback=&n=2", "m=1&n=2", Some("")),
            ("m=1&callback", "m=1", Some("")),
            ("callb%61ck=x&m=1", "m=1", Some("x")),
            ("CALLBACK=x&m=1", "CALLBACK=x&m=1", None),
            (
                "callbacks=x&xcallback=y&callback_url=z",
                "callbacks=x&xcallback=y&callback_url=z",
                None,
            ),
            ("callback=a=b&m", "m", Some("a=b")),
            ("&callback=x&", "&", Some("x")),
            ("m=%ZZ&callback=x", "m=%ZZ", Some("x")),
        ];
        for &(query, rest, value) in cases {
            let (out, got) = strip(query);
            assert_eq!(out, rest, "{query:?}");
            assert_eq!(got.as_deref(), value, "{query:?}");
        }
    }

    #[test]
    fn strip_returns_a_subslice_of_the_query() {
        let query = b"a=1&callback=xyz&b=2";
        let value = strip_callback(query, &mut Vec::new()).unwrap().unwrap();
        assert_eq!(value, b"xyz");
        assert_eq!(value.as_ptr() as usize - query.as_ptr() as usize, 13);
    }

    #[test]
    fn strip_refuses_several_callbacks() {
        let mut out = Vec::new();
        for query in [
            "callback=a&callback=b",
            "callback=a&m=1&callb%61ck=b",
            "callback&callback",
        ] {
            assert_eq!(
                strip_callback(query.as_bytes(), &mut out),
                Err("more than one callback parameter"),
                "{query:?}"
            );
        }
    }

    #[test]
    fn extract_combines_strip_and_parse() {
        let mut out = Vec::new();
        let url = extract_callback(b"message=m&callback=https%3A%2F%2Fh.example%2Fcb", &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(url.as_str(), "https://h.example/cb");
        assert_eq!(out, b"message=m");
        assert_eq!(extract_callback(b"message=m", &mut out), Ok(None));
        assert_eq!(out, b"message=m");
        assert!(extract_callback(b"callback=ftp%3A%2F%2Fx", &mut out).is_err());
        assert!(extract_callback(b"callback=", &mut out).is_err());
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode(b"a+b%41%6a%6A"), Ok(b"a bAjj".to_vec()));
        assert!(form_decode(b"%4").is_err());
        assert!(form_decode(b"%g0").is_err());
    }

    #[test]
    fn callback_names_decode_as_they_compare() {
        for (name, is) in [
            (&b"callback"[..], true),
            (b"callb%61ck", true),
            (b"%63%61%6C%6c%62%61%63%6b", true),
            (b"callbac", false),
            (b"callbackx", false),
            (b"callbac%6", false),
            (b"callbac%6b%", false),
            (b"CALLBACK", false),
            (b"call+back", false),
            (b"signature", false),
        ] {
            assert_eq!(
                name_is_callback(name),
                is,
                "{}",
                String::from_utf8_lossy(name)
            );
            // The same answer as decoding first.
            let decoded = form_decode(name).map(|d| d == CALLBACK_PARAM);
            assert_eq!(decoded.unwrap_or(false), is);
        }
    }
}
