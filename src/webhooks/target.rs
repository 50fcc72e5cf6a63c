//! Where a webhook may go. A tenant chooses the URL, so without a guard postwire would
//! make requests into its own network for anyone with an `admin` key (SSRF): the
//! loopback interface, private ranges, the cloud metadata service. Hosts are checked
//! when the request is made, after resolution (names can change what they point to),
//! and requests go to the checked addresses only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is an address on the public internet (not loopback, private,
/// link-local, CGNAT, multicast, documentation or otherwise special).
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
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, the metadata service among them
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first == 0x64 && ip.segments()[1] == 0xff9b) // NAT64 64:ff9b::/96
        || first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
}

/// Why `url` may not be requested when its host is an address (names are checked by
/// [`PublicOnly`] as they resolve).
pub fn refuse_literal(url: &url::Url) -> Option<String> {
    let ip = match url.host()? {
        url::Host::Ipv4(v4) => IpAddr::V4(v4),
        url::Host::Ipv6(v6) => IpAddr::V6(v6),
        url::Host::Domain(_) => return None,
    };
    (!is_public(ip))
        .then(|| format!("{ip} is not a public address (webhooks.allow_private_targets is off)"))
}

/// A resolver that answers only with public addresses: a name that resolves to any
/// other (loopback, private, metadata) is an error, so no request is made.
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
                return Err(format!(
                    "{host} resolves to {}, not a public address (webhooks.allow_private_targets is off)",
                    bad.ip()
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn literal_hosts_are_checked_before_any_request() {
        let refused = |u: &str| refuse_literal(&url::Url::parse(u).unwrap());
        assert!(refused("http://127.0.0.1:8080/x").is_some());
        assert!(refused("http://[::1]/x").is_some());
        assert!(refused("http://169.254.169.254/latest/meta-data").is_some());
        assert!(refused("https://93.184.216.34/").is_none());
        assert!(refused("https://hooks.example.com/").is_none());
    }
}
