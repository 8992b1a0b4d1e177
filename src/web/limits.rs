//! What the page's HTTP server allows one client: its address (behind a
//! trusted proxy, from `X-Forwarded-For`), and request rates per address and
//! per link.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// A network: an address and a prefix length (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let (addr, prefix) = match raw.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (raw, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{raw:?} is not an IP address or network (10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{raw:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy;
/// then the last address of `X-Forwarded-For` that is not a trusted proxy
/// (each proxy appends the address it received from, so addresses further
/// left were written by the client and cannot be believed).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in header.rsplit(',').take(32) {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // Garbage: stop at the last address that parsed.
            break;
        };
        client = canonical(ip);
        if !is_trusted(client) {
            break;
        }
    }
    client
}

/// The key an address is counted under: IPv6 addresses by their /64 (one
/// subscriber usually has a whole /64), IPv4 addresses alone.
pub fn rate_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
        v4 => v4,
    }
}

/// At most `limit` requests per key in each window, for at most `keys_max`
/// keys at once. Fixed windows: cheap, and a burst at a window's edge
/// gets at most twice the limit.
#[derive(Debug)]
pub struct RateLimiter<K> {
    limit: u32,
    window: Duration,
    keys_max: usize,
    counts: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// A limiter of `limit` requests per `window` per key.
    pub fn new(limit: u32, window: Duration, keys_max: usize) -> Self {
        Self {
            limit,
            window,
            keys_max,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a request of `key` at `now`; false when it is over the limit.
    /// When the table is full of keys whose window is still open, a new key
    /// is refused too: memory stays bounded under a flood of addresses.
    pub fn allow(&self, key: K, now: Instant) -> bool {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.len() >= self.keys_max && !counts.contains_key(&key) {
            let window = self.window;
            counts.retain(|_, (start, _)| now.duration_since(*start) < window);
            if counts.len() >= self.keys_max {
                return false;
            }
        }
        let entry = counts.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            return false;
        }
        entry.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().expect("an address")
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let net = IpNet::parse("10.1.0.0/16").expect("valid");
        assert!(net.contains(ip("10.1.255.7")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        let odd = IpNet::parse("192.168.0.128/25").expect("valid");
        assert!(odd.contains(ip("192.168.0.200")));
        assert!(!odd.contains(ip("192.168.0.127")));
        let low = IpNet::parse("192.168.0.0/25").expect("valid");
        for inside in ["192.168.0.0", "192.168.0.1", "192.168.0.127"] {
            assert!(low.contains(ip(inside)), "{inside}");
        }
        assert!(!low.contains(ip("192.168.0.128")));
        let one = IpNet::parse("::1").expect("valid");
        assert!(one.contains(ip("::1")));
        assert!(!one.contains(ip("::2")));
        assert!(
            IpNet::parse("0.0.0.0/0")
                .expect("valid")
                .contains(ip("8.8.8.8"))
        );
        assert!(
            !IpNet::parse("0.0.0.0/0")
                .expect("valid")
                .contains(ip("::2"))
        );
        for bad in ["", "10.0.0.0/33", "::/129", "host", "10.0.0.0/x"] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted = [IpNet::parse("10.0.0.0/8").expect("valid")];
        // Not from the proxy: the header is the client's word, ignored.
        assert_eq!(
            client_ip(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        // From the proxy: the last hop that is not a proxy.
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                Some("1.2.3.4, 198.51.100.7, 10.0.0.3"),
                &trusted
            ),
            ip("198.51.100.7")
        );
        assert_eq!(client_ip(ip("10.0.0.2"), None, &trusted), ip("10.0.0.2"));
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("junk, 198.51.100.7"), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("198.51.100.7, junk"), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("198.51.100.7"), &[]),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ipv6_addresses_are_counted_by_their_64() {
        assert_eq!(rate_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(rate_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(rate_key(ip("1.2.3.4")), ip("1.2.3.4"));
    }

    #[test]
    fn the_limiter_allows_its_limit_per_window_and_stays_bounded() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let limiter = RateLimiter::new(2, Duration::from_secs(60), 2);
        assert!(limiter.allow("a", start));
        assert!(limiter.allow("a", start + second));
        assert!(!limiter.allow("a", start + 2 * second));
        assert!(limiter.allow("b", start), "another key has its own count");
        assert!(
            !limiter.allow("c", start + second),
            "the table is full of open windows"
        );
        let roomy = RateLimiter::new(3, Duration::from_secs(60), 2);
        assert!(roomy.allow("a", start) && roomy.allow("b", start));
        assert!(
            roomy.allow("a", start + second),
            "a key already counted goes on counting when the table is full"
        );
        let later = start + Duration::from_secs(60);
        assert!(limiter.allow("a", later), "a new window");
        assert!(limiter.allow("c", later), "expired keys made room");
    }
}
