//! IP allowlists and the client IP they are checked against.
//!
//! The client IP is the socket peer, unless the peer is a trusted proxy: then it is the
//! right-most `X-Forwarded-For` hop that is not itself a trusted proxy (a caller can prepend
//! anything, so only hops added by trusted proxies count). Lists are merged prefix sets
//! (`iprange`), so a lookup costs a walk of at most 32/128 bits whatever the list size.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use iprange::IpRange;

use crate::config::Config;
use crate::forwarding::X_FORWARDED_FOR_NAME;

/// A set of IPv4 and IPv6 networks.
#[derive(Clone, Default)]
pub struct CidrSet {
    v4: IpRange<Ipv4Net>,
    v6: IpRange<Ipv6Net>,
    len: usize,
}

impl std::fmt::Debug for CidrSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CidrSet({} networks)", self.len)
    }
}

impl CidrSet {
    pub fn add(&mut self, net: IpNet) {
        match net {
            IpNet::V4(n) => {
                self.v4.add(n.trunc());
            }
            IpNet::V6(n) => {
                self.v6.add(n.trunc());
            }
        }
        self.len += 1;
    }

    /// Call once after the last `add`: merges adjacent and nested networks.
    pub fn simplify(&mut self) {
        self.v4.simplify();
        self.v6.simplify();
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.v4.contains(&v4),
            // An IPv4 peer seen on a dual-stack socket arrives as ::ffff:a.b.c.d.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.v4.contains(&v4),
                None => self.v6.contains(&Ipv6Net::from(v6)),
            },
        }
    }

    /// Networks added (before merging), for logs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds another set's networks.
    pub fn extend(&mut self, other: &CidrSet) {
        self.v4 = self.v4.merge(&other.v4);
        self.v6 = self.v6.merge(&other.v6);
        self.len += other.len;
    }
}

/// Parses `a.b.c.d/nn`, `x::/nn` or a bare address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{text}` is not an IPv4/IPv6 address or CIDR (e.g. 52.0.0.0/8)"))
}

/// The client IP for policy and logs: the peer, or when the peer is a trusted proxy, the
/// right-most untrusted hop of the request's `X-Forwarded-For` (only then are they read).
pub fn client_ip(peer: IpAddr, trusted: &CidrSet, headers: &http::HeaderMap) -> IpAddr {
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    let values = headers.get_all(X_FORWARDED_FOR_NAME).iter().filter_map(|v| v.to_str().ok());
    let hops = values.rev().flat_map(|value| value.rsplit(','));
    for hop in hops {
        let Some(ip) = parse_hop(hop) else {
            // Garbage where a trusted proxy should have written an address: the client cannot
            // be told, so the nearest known address stands for it.
            break;
        };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` hop: an address, possibly `[v6]:port` or `v4:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<std::net::SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[').and_then(|h| h.split_once(']')).and_then(|(ip, _)| ip.parse().ok())
}

/// The allowlists routes check, as last loaded: one merged set per list and per route. Built at
/// start-up from the config, rebuilt on SIGHUP when the lists' files change.
pub struct Allowlists {
    lists: Vec<CidrSet>,
    /// Per route (config order): the union of its lists; `None`: any caller.
    routes: Vec<Option<CidrSet>>,
}

impl Allowlists {
    pub fn new(config: &Config) -> Allowlists {
        Allowlists::from_lists(config, config.ip_allowlists.iter().map(|l| l.networks.clone()).collect())
    }

    fn from_lists(config: &Config, lists: Vec<CidrSet>) -> Allowlists {
        let routes = config
            .routes
            .iter()
            .map(|r| {
                r.allow_ips.as_ref().map(|indexes| {
                    let mut union = CidrSet::default();
                    indexes.iter().for_each(|&i| union.extend(&lists[i]));
                    union.simplify();
                    union
                })
            })
            .collect();
        Allowlists { lists, routes }
    }

    /// The networks route `route` accepts; `None`: any caller.
    pub fn for_route(&self, route: usize) -> Option<&CidrSet> {
        self.routes[route].as_ref()
    }

    /// Reads every list's files again. A list whose file cannot be read, or lists nothing,
    /// keeps its current networks; each such failure is returned with its reason.
    pub fn reload(&self, config: &Config) -> (Allowlists, Vec<String>) {
        let mut failures = Vec::new();
        let lists = config
            .ip_allowlists
            .iter()
            .zip(&self.lists)
            .map(|(list, current)| {
                let mut set = list.inline.clone();
                for file in &list.files {
                    match read_allowlist_file(file) {
                        Ok(nets) if nets.is_empty() => {
                            failures.push(format!(
                                "ip_allowlists.{}: `{}` lists no networks",
                                list.name,
                                file.display()
                            ));
                            return current.clone();
                        }
                        Ok(nets) => nets.into_iter().for_each(|n| set.add(n)),
                        Err(message) => {
                            failures.push(format!("ip_allowlists.{}: {message}", list.name));
                            return current.clone();
                        }
                    }
                }
                set.simplify();
                set
            })
            .collect();
        (Allowlists::from_lists(config, lists), failures)
    }
}

/// Reads an allowlist file: JSON whose `cidrs` array is read (`seawall genesys ipranges` writes
/// them; other keys are informative).
pub fn read_allowlist_file(path: &std::path::Path) -> Result<Vec<IpNet>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("`{}` is not JSON: {e}", path.display()))?;
    let Some(cidrs) = value.get("cidrs").and_then(|c| c.as_array()) else {
        return Err(format!("`{}` has no `cidrs` array", path.display()));
    };
    cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| match c.as_str() {
            Some(text) => parse_cidr(text).map_err(|e| format!("`{}` cidrs[{i}]: {e}", path.display())),
            None => Err(format!("`{}` cidrs[{i}] is not a string", path.display())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cidrs: &[&str]) -> CidrSet {
        let mut s = CidrSet::default();
        for c in cidrs {
            s.add(parse_cidr(c).unwrap());
        }
        s.simplify();
        s
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn membership_for_v4_v6_and_mapped_addresses() {
        let s = set(&["52.0.0.0/8", "2001:db8::/32", "192.0.2.7"]);
        assert!(s.contains(ip("52.1.2.3")));
        assert!(!s.contains(ip("53.0.0.1")));
        assert!(s.contains(ip("192.0.2.7")));
        assert!(!s.contains(ip("192.0.2.8")));
        assert!(s.contains(ip("2001:db8::1")));
        assert!(!s.contains(ip("2001:db9::1")));
        assert!(s.contains(ip("::ffff:52.9.9.9")));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn thousands_of_networks_are_a_prefix_lookup() {
        let mut s = CidrSet::default();
        for i in 0..5000u32 {
            let base = 0x0a00_0000 + (i << 8);
            s.add(IpNet::V4(Ipv4Net::new(base.into(), 24).unwrap()));
        }
        s.simplify();
        assert!(s.contains(ip("10.0.19.200")));
        assert!(s.contains(ip("10.19.135.1")));
        assert!(!s.contains(ip("10.19.136.1")));
        let start = std::time::Instant::now();
        for i in 0..100_000u32 {
            std::hint::black_box(s.contains(IpAddr::V4((0x0a00_0000 + i).into())));
        }
        // A linear scan of 5000 networks would be ~500M comparisons; this is ~3M steps.
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn bad_cidrs_say_what_is_expected() {
        assert!(parse_cidr("52.0.0.0/33").is_err());
        assert!(parse_cidr("hello").unwrap_err().contains("e.g. 52.0.0.0/8"));
        assert_eq!(parse_cidr(" 10.0.0.1 ").unwrap().to_string(), "10.0.0.1/32");
    }

    fn xff(values: &[&str]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_its_address() {
        let trusted = set(&["10.0.0.0/8"]);
        let peer = ip("203.0.113.9");
        assert_eq!(client_ip(peer, &trusted, &xff(&["52.1.1.1"])), peer);
        assert_eq!(client_ip(peer, &CidrSet::default(), &xff(&["52.1.1.1"])), peer);
    }

    #[test]
    fn a_trusted_peer_yields_the_rightmost_untrusted_hop() {
        let trusted = set(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.5");
        // The caller prepended a fake 52.x; the load balancer appended the real caller.
        assert_eq!(client_ip(peer, &trusted, &xff(&["52.1.1.1, 198.51.100.4"])), ip("198.51.100.4"));
        assert_eq!(client_ip(peer, &trusted, &xff(&["52.1.1.1", "198.51.100.4, 10.1.1.1"])), ip("198.51.100.4"));
        assert_eq!(client_ip(peer, &trusted, &xff(&["[2001:db8::1]:443"])), ip("2001:db8::1"));
        assert_eq!(client_ip(peer, &trusted, &xff(&["198.51.100.4:5555"])), ip("198.51.100.4"));
        // No header, or only trusted hops: the left-most trusted address is the best we know.
        assert_eq!(client_ip(peer, &trusted, &xff(&[])), peer);
        assert_eq!(client_ip(peer, &trusted, &xff(&["10.9.9.9"])), ip("10.9.9.9"));
        // Garbage stops the walk: the nearest known address stands for the client.
        assert_eq!(client_ip(peer, &trusted, &xff(&["198.51.100.4, junk"])), peer);
    }
}
