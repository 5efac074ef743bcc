//! `--callback-allow`: where webhook deliveries may go.
//!
//! Callback URLs are user input, so without a list sluice can be made to POST to anything it can
//! reach (server-side request forgery: internal admin endpoints, `169.254.169.254` cloud metadata,
//! localhost services). The list names the receivers an operator accepts:
//!
//! - `hooks.example.com`: this host name exactly (case-insensitive);
//! - `*.example.com`: any name under `example.com` (not `example.com` itself: list it too);
//! - `10.0.0.0/8`, `fd00::/8`: an address block; `192.0.2.7`, `::1`: one address.
//!
//! A URL is allowed when its host *name* matches a name rule (the name is then trusted, whatever
//! it resolves to), or when its host is an IP literal that an address rule covers, or when its
//! name resolves and at least one resolved address is covered by an address rule; only the
//! covered addresses are then connected to (resolution happens once and the checked addresses are
//! the ones dialled, so a DNS answer cannot change between check and connect). Name rules never
//! match IP literals and address rules never match names. An empty list allows everything.
//!
//! This module is pure: it never resolves. The sender calls [`CallbackAllow::check_host`] before
//! resolving and [`CallbackAllow::filter_addrs`] after.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::url::{is_dns_name, looks_numeric, CallbackHost};

/// Bits in an IPv4 / IPv6 address: the largest prefix lengths.
const IPV4_BITS: u8 = 32;
const IPV6_BITS: u8 = 128;

/// One entry of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    /// A lowercase host name, matched exactly.
    Name(String),
    /// `*.example.com` stored as `.example.com`: matches names ending in it.
    Suffix(String),
    /// An address block (a single address is a full-length prefix).
    Net(IpNet),
}

/// An address and a prefix length, host bits zero, the address in canonical form (IPv4-mapped
/// IPv6 addresses are stored as IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    fn contains(&self, ip: IpAddr) -> bool {
        let other = match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(_), IpAddr::V4(ip)) => u128::from(u32::from(ip)),
            (IpAddr::V6(_), IpAddr::V6(ip)) => u128::from(ip),
            _ => return false,
        };
        let (value, _) = self.value_and_bits();
        (value ^ other) & !self.host_mask() == 0
    }
}

/// The verdict on a URL's host before any name resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostCheck {
    /// Allowed by the host alone (the list is empty, a name rule matched, or an address rule
    /// covers the IP literal): connect to whatever the name resolves to.
    Allowed,
    /// Not allowed by name, but address rules exist: resolve, then keep only the addresses
    /// [`CallbackAllow::filter_addrs`] allows.
    CheckAddresses,
    /// Refused, with the reason for the delivery report.
    Denied(String),
}

/// The parsed `--callback-allow` list. `Default` is the empty list: everything allowed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CallbackAllow {
    rules: Vec<Rule>,
}

impl fmt::Debug for CallbackAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallbackAllow[")?;
        for (i, rule) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match rule {
                Rule::Name(name) => f.write_str(name)?,
                Rule::Suffix(suffix) => write!(f, "*{suffix}")?,
                Rule::Net(net) => write!(f, "{}/{}", net.addr, net.prefix)?,
            }
        }
        f.write_str("]")
    }
}

impl CallbackAllow {
    /// Parses a comma-separated list (whitespace around entries ignored). An empty or
    /// all-whitespace string is the empty list (allow all). Errors name the entry and the rule.
    pub fn parse(list: &str) -> Result<CallbackAllow, String> {
        if list.trim().is_empty() {
            return Ok(CallbackAllow::default());
        }
        let rules = list
            .split(',')
            .map(|entry| parse_rule(entry.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CallbackAllow { rules })
    }

    /// Whether the list is empty (every target allowed).
    pub fn allows_all(&self) -> bool {
        self.rules.is_empty()
    }

    fn has_net_rules(&self) -> bool {
        self.rules.iter().any(|r| matches!(r, Rule::Net(_)))
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r, Rule::Net(net) if net.contains(ip)))
    }

    /// The check made before resolving (no I/O). The gateway may also call this at request time
    /// to answer 400 early for a host that can never be allowed.
    pub fn check_host(&self, host: &CallbackHost) -> HostCheck {
        if self.allows_all() {
            return HostCheck::Allowed;
        }
        match host {
            CallbackHost::Ip(ip) => {
                if self.ip_allowed(*ip) {
                    HostCheck::Allowed
                } else {
                    HostCheck::Denied(format!("callback address {ip} is not in --callback-allow"))
                }
            }
            CallbackHost::Name(name) => {
                let by_name = self.rules.iter().any(|r| match r {
                    Rule::Name(rule) => rule == name,
                    Rule::Suffix(suffix) => {
                        name.len() > suffix.len() && name.ends_with(suffix.as_str())
                    }
                    Rule::Net(_) => false,
                });
                if by_name {
                    HostCheck::Allowed
                } else if self.has_net_rules() {
                    HostCheck::CheckAddresses
                } else {
                    HostCheck::Denied(format!("callback host {name} is not in --callback-allow"))
                }
            }
        }
    }

    /// The check made after resolving a host that got [`HostCheck::CheckAddresses`]: keeps the
    /// addresses an address rule covers, in order. An empty result means the delivery is refused;
    /// [`CallbackAllow::denied_addrs_reason`] words it.
    pub fn filter_addrs(&self, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        addrs
            .iter()
            .copied()
            .filter(|a| self.ip_allowed(a.ip()))
            .collect()
    }

    /// The report text for a name whose resolved addresses were all refused.
    pub fn denied_addrs_reason(host: &CallbackHost, addrs: &[SocketAddr]) -> String {
        let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        format!(
            "callback host {host} resolved only to addresses not in --callback-allow ({})",
            list.join(", ")
        )
    }
}

fn parse_rule(entry: &str) -> Result<Rule, String> {
    if entry.is_empty() {
        return Err(
            "--callback-allow: empty entry (two commas in a row, or a trailing comma)".into(),
        );
    }
    if entry.contains("://") {
        return Err(format!(
            "--callback-allow: {entry:?}: list host names or addresses, not URLs"
        ));
    }
    if let Some((addr, prefix)) = entry.split_once('/') {
        return parse_net(entry, addr, prefix).map(Rule::Net);
    }
    if let Some(ip) = parse_ip(entry).map(|ip| ip.to_canonical()) {
        let prefix = if ip.is_ipv4() { IPV4_BITS } else { IPV6_BITS };
        return Ok(Rule::Net(IpNet { addr: ip, prefix }));
    }
    let lower = entry.to_ascii_lowercase();
    if let Some(base) = lower.strip_prefix("*.") {
        if !is_dns_name(base) || looks_numeric(base) {
            return Err(format!(
                "--callback-allow: {entry:?} is not a valid wildcard (expected *.<DNS name>, e.g. *.example.com)"
            ));
        }
        return Ok(Rule::Suffix(format!(".{base}")));
    }
    if lower.contains('*') {
        return Err(format!(
            "--callback-allow: {entry:?}: a wildcard is only allowed as a leading \"*.\""
        ));
    }
    if !is_dns_name(&lower) || looks_numeric(&lower) {
        return Err(format!(
            "--callback-allow: {entry:?} is not a host name, *.suffix, IP address or CIDR block"
        ));
    }
    Ok(Rule::Name(lower))
}

/// An IP address, IPv6 optionally in brackets.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    inner.parse::<IpAddr>().ok()
}

fn parse_net(entry: &str, addr: &str, prefix: &str) -> Result<IpNet, String> {
    let ip = parse_ip(addr).ok_or_else(|| {
        format!("--callback-allow: {entry:?}: {addr:?} is not an IP address (expected ADDR/PREFIX)")
    })?;
    let bits = if ip.is_ipv4() { IPV4_BITS } else { IPV6_BITS };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= bits && prefix.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            format!("--callback-allow: {entry:?}: the prefix length must be 0-{bits}")
        })?;
    let net = IpNet {
        addr: ip.to_canonical(),
        prefix: if ip.is_ipv6() && ip.to_canonical().is_ipv4() {
            // ::ffff:10.0.0.0/104 is 10.0.0.0/8.
            prefix.checked_sub(IPV6_BITS - IPV4_BITS).ok_or_else(|| {
                format!("--callback-allow: {entry:?}: an IPv4-mapped block needs a prefix of at least 96")
            })?
        } else {
            prefix
        },
    };
    // Host bits set is almost always a typo (10.0.0.1/8 for 10.0.0.0/8): refuse, naming the fix.
    if !net.is_aligned() {
        return Err(format!(
            "--callback-allow: {entry:?} has bits set after the /{prefix} prefix (did you mean {}?)",
            aligned_text(net)
        ));
    }
    Ok(net)
}

impl IpNet {
    fn value_and_bits(&self) -> (u128, u8) {
        match self.addr {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), IPV4_BITS),
            IpAddr::V6(v6) => (u128::from(v6), IPV6_BITS),
        }
    }

    fn host_mask(&self) -> u128 {
        let (_, bits) = self.value_and_bits();
        let host_bits = u32::from(bits.saturating_sub(self.prefix));
        if host_bits == 0 {
            0
        } else if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        }
    }

    /// Whether the address has no bits set past the prefix.
    fn is_aligned(&self) -> bool {
        let (value, _) = self.value_and_bits();
        value & self.host_mask() == 0
    }
}

fn aligned_text(net: IpNet) -> String {
    let (value, _) = net.value_and_bits();
    let base = value & !net.host_mask();
    let addr = match net.addr {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(base as u32)),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(base)),
    };
    format!("{addr}/{}", net.prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(list: &str) -> CallbackAllow {
        CallbackAllow::parse(list).unwrap_or_else(|e| panic!("{list:?}: {e}"))
    }

    fn name(n: &str) -> CallbackHost {
        CallbackHost::Name(n.to_string())
    }

    fn ip(s: &str) -> CallbackHost {
        CallbackHost::Ip(s.parse().unwrap())
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|s| SocketAddr::new(s.parse().unwrap(), 443))
            .collect()
    }

    #[test]
    fn empty_allows_all() {
        for list in ["", "  ", "\t"] {
            let a = allow(list);
            assert!(a.allows_all());
            assert_eq!(a.check_host(&name("anything.example")), HostCheck::Allowed);
            assert_eq!(a.check_host(&ip("169.254.169.254")), HostCheck::Allowed);
        }
    }

    #[test]
    fn exact_hosts_case_insensitive() {
        let a = allow("Hooks.Example.com, other.example");
        assert_eq!(a.check_host(&name("hooks.example.com")), HostCheck::Allowed);
        assert_eq!(a.check_host(&name("other.example")), HostCheck::Allowed);
        for denied in [
            "example.com",
            "x.hooks.example.com",
            "hooks.example.co",
            "hooks.example.com.evil",
        ] {
            match a.check_host(&name(denied)) {
                HostCheck::Denied(reason) => {
                    assert!(
                        reason.contains(denied) && reason.contains("--callback-allow"),
                        "{reason}"
                    )
                }
                other => panic!("{denied}: {other:?}"),
            }
        }
        // Name rules never match IP literals.
        assert!(matches!(
            a.check_host(&ip("127.0.0.1")),
            HostCheck::Denied(_)
        ));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let a = allow("*.Example.com");
        for ok in ["a.example.com", "a.b.example.com"] {
            assert_eq!(a.check_host(&name(ok)), HostCheck::Allowed, "{ok}");
        }
        for denied in [
            "example.com",
            "badexample.com",
            "example.com.evil",
            "a.example.co",
        ] {
            assert!(
                matches!(a.check_host(&name(denied)), HostCheck::Denied(_)),
                "{denied}"
            );
        }
    }

    #[test]
    fn cidr_v4_boundaries() {
        let a = allow("10.0.0.0/8,192.168.1.0/31,203.0.113.9");
        for ok in [
            "10.0.0.0",
            "10.255.255.255",
            "192.168.1.0",
            "192.168.1.1",
            "203.0.113.9",
            "::ffff:10.1.2.3",
        ] {
            assert_eq!(a.check_host(&ip(ok)), HostCheck::Allowed, "{ok}");
        }
        for denied in [
            "9.255.255.255",
            "11.0.0.0",
            "192.168.1.2",
            "192.168.0.255",
            "203.0.113.8",
            "203.0.113.10",
            "::a00:1",
        ] {
            assert!(
                matches!(a.check_host(&ip(denied)), HostCheck::Denied(_)),
                "{denied}"
            );
        }
    }

    #[test]
    fn cidr_v6_boundaries() {
        let a = allow("2001:db8::/32, [::1], fd00::/127");
        for ok in [
            "2001:db8::",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            "::1",
            "fd00::",
            "fd00::1",
        ] {
            assert_eq!(a.check_host(&ip(ok)), HostCheck::Allowed, "{ok}");
        }
        for denied in [
            "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
            "2001:db9::",
            "::2",
            "::",
            "fd00::2",
            "127.0.0.1",
        ] {
            assert!(
                matches!(a.check_host(&ip(denied)), HostCheck::Denied(_)),
                "{denied}"
            );
        }
        // ::1/128 written as CIDR, and the all-addresses blocks.
        assert_eq!(allow("::1/128").check_host(&ip("::1")), HostCheck::Allowed);
        assert_eq!(
            allow("0.0.0.0/0").check_host(&ip("8.8.8.8")),
            HostCheck::Allowed
        );
        assert!(matches!(
            allow("0.0.0.0/0").check_host(&ip("::2")),
            HostCheck::Denied(_)
        ));
        assert_eq!(allow("::/0").check_host(&ip("::2")), HostCheck::Allowed);
        // An IPv4-mapped block is the IPv4 block.
        assert_eq!(
            allow("::ffff:10.0.0.0/104").check_host(&ip("10.9.9.9")),
            HostCheck::Allowed
        );
    }

    #[test]
    fn names_under_address_rules_are_checked_after_resolving() {
        let a = allow("*.example.com,127.0.0.0/8");
        assert_eq!(a.check_host(&name("a.example.com")), HostCheck::Allowed);
        assert_eq!(a.check_host(&name("localhost")), HostCheck::CheckAddresses);
        let resolved = addrs(&["::1", "127.0.0.1", "10.0.0.1"]);
        assert_eq!(a.filter_addrs(&resolved), addrs(&["127.0.0.1"]));
        assert!(a.filter_addrs(&addrs(&["169.254.169.254"])).is_empty());
        let reason = CallbackAllow::denied_addrs_reason(
            &name("evil.example"),
            &addrs(&["169.254.169.254", "::1"]),
        );
        assert_eq!(
            reason,
            "callback host evil.example resolved only to addresses not in --callback-allow (169.254.169.254, ::1)"
        );
    }

    #[test]
    fn parse_errors_name_the_entry() {
        let cases = [
            ("a.example,,b.example", "empty entry"),
            ("a.example,", "empty entry"),
            ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
            ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
            ("10.0.0.0/33", "0-32"),
            ("::/129", "0-128"),
            ("10.0.0.0/", "0-32"),
            ("10.0.0.0/+8", "0-32"),
            ("10.0.0/8", "not an IP address"),
            ("foo/8", "not an IP address"),
            ("::ffff:0.0.0.0/8", "at least 96"),
            ("*.", "not a valid wildcard"),
            ("*.*.example.com", "not a valid wildcard"),
            ("*example.com", "leading"),
            ("a.*.example.com", "leading"),
            ("http://a.example", "not URLs"),
            ("a_b.example", "not a host name"),
            ("2130706433", "not a host name"),
            ("a.example:8080", "not a host name"),
        ];
        for (list, want) in cases {
            match CallbackAllow::parse(list) {
                Ok(a) => panic!("{list:?} should be refused, got {a:?}"),
                Err(e) => assert!(
                    e.contains(want) && e.starts_with("--callback-allow"),
                    "{list:?}: {e}"
                ),
            }
        }
    }

    #[test]
    fn debug_lists_rules() {
        assert_eq!(
            format!("{:?}", allow("A.example, *.b.example ,10.0.0.0/8,::1")),
            "CallbackAllow[a.example,*.b.example,10.0.0.0/8,::1/128]"
        );
    }
}
