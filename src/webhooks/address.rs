//! Where webhooks may go: `http`/`https` URLs whose every address is public, unless
//! `webhooks.allow_private`.
//!
//! A URL is checked when the endpoint is added, and its host is resolved and checked again
//! at every delivery attempt, which then connects only to the addresses checked: a name that
//! resolved to a public address at registration and to `127.0.0.1` later (DNS rebinding) is
//! refused at delivery time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::Url;

/// A URL webhooks may not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not an absolute `http(s)` URL with a host.
    #[error("url: {0}")]
    BadUrl(String),
    /// The host does not resolve.
    #[error("url: cannot resolve {host}: {reason}")]
    Unresolvable {
        /// The host.
        host: String,
        /// The resolver's error.
        reason: String,
    },
    /// The host is or resolves to a loopback, private or otherwise non-public address.
    #[error(
        "url: {host} is {addr}, a loopback, private or link-local address; webhooks go only to public \
         addresses (set webhooks.allow_private = true to allow them)"
    )]
    Private {
        /// The host.
        host: String,
        /// The refused address.
        addr: IpAddr,
    },
}

/// Parses a webhook URL: absolute, `http` or `https`, with a host, without credentials.
pub fn parse_url(text: &str) -> Result<Url, AddressError> {
    let url = Url::parse(text.trim()).map_err(|e| AddressError::BadUrl(format!("not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(AddressError::BadUrl(format!("scheme must be http or https, not {:?}", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(AddressError::BadUrl("has no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(AddressError::BadUrl("must not carry credentials (the signature authenticates)".into()));
    }
    Ok(url)
}

/// Resolves the URL's host and checks every address (all of them: a client may use any).
pub async fn check_url(url: &Url, allow_private: bool) -> Result<Vec<SocketAddr>, AddressError> {
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    resolve_checked(&host, port, allow_private).await
}

/// `host:port` resolved, every address checked.
pub async fn resolve_checked(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, AddressError> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| AddressError::Unresolvable { host: host.to_owned(), reason: e.to_string() })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(AddressError::Unresolvable { host: host.to_owned(), reason: "no addresses".into() });
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(AddressError::Private { host: host.to_owned(), addr: bad.ip() });
    }
    Ok(addrs)
}

/// True for an address on the public internet: not loopback, private, link-local, shared
/// (CGNAT), unspecified, broadcast, multicast, documentation or reserved; IPv6 forms of IPv4
/// addresses are judged as the IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b // NAT64 (embeds IPv4)
        || ip.to_ipv4().is_some()) // IPv4-compatible ::a.b.c.d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_private_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private} is not public");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(public.parse().unwrap()), "{public} is public");
        }
    }

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        assert!(parse_url("https://hooks.example.com/x").is_ok());
        for bad in ["ftp://example.com/", "not a url", "https://user:pw@example.com/", "file:///etc/passwd"] {
            let err = parse_url(bad).unwrap_err().to_string();
            assert!(!err.contains("pw@"), "{err}");
        }
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        for url in ["http://127.0.0.1:9/", "http://[::1]:9/", "http://localhost:9/"] {
            let url = parse_url(url).unwrap();
            let err = check_url(&url, false).await.unwrap_err();
            assert!(matches!(err, AddressError::Private { .. }), "{url}: {err}");
            assert!(check_url(&url, true).await.is_ok(), "{url}");
        }
    }
}
