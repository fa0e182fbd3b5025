//! Listen addresses as people type them: `host:port`, where the host is an IP
//! literal (`0.0.0.0`, `[::1]`) or a name (`localhost`) resolved when binding.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use tokio::net::TcpListener;

/// `host:port` to listen on; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    /// An IP literal (without brackets) or a host name.
    host: String,
    port: u16,
}

impl ListenAddr {
    /// The port (0 = the system picks one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host as written (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The IP, when the host is an IP literal rather than a name.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Resolves the host and binds the first of its addresses that accepts.
    pub async fn bind(&self) -> std::io::Result<TcpListener> {
        TcpListener::bind((self.host.as_str(), self.port)).await
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        Self {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| {
            format!("{text:?} is not host:port (e.g. 0.0.0.0:50051 or localhost:50051)")
        })?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{text:?}: the port must be a number from 0 to 65535"))?;
        if !is_host_name(host) {
            return Err(format!(
                "{text:?}: {host:?} is neither an IP address nor a host name"
            ));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_and_host_names_parse_and_print_back() {
        for (text, host, port) in [
            ("0.0.0.0:50051", "0.0.0.0", 50051),
            ("[::1]:8080", "::1", 8080),
            ("localhost:50051", "localhost", 50051),
            (
                "dr-gateway.payments.svc:50051",
                "dr-gateway.payments.svc",
                50051,
            ),
            ("LocalHost:0", "localhost", 0),
        ] {
            let addr: ListenAddr = text.parse().unwrap();
            assert_eq!((addr.host(), addr.port()), (host, port), "{text}");
            assert_eq!(addr.to_string().parse::<ListenAddr>().unwrap(), addr);
        }
        assert_eq!(
            ListenAddr::from(SocketAddr::from(([127, 0, 0, 1], 9))).to_string(),
            "127.0.0.1:9"
        );
    }

    #[test]
    fn malformed_addresses_are_refused_with_a_reason() {
        for text in [
            "localhost",
            ":50051",
            "localhost:http",
            "localhost:70000",
            "bad host:1",
            "-x:1",
            "a..b:1",
            "::1:80:x",
        ] {
            assert!(text.parse::<ListenAddr>().is_err(), "{text}");
        }
    }

    #[tokio::test]
    async fn a_host_name_is_resolved_when_binding() {
        let listener = "localhost:0"
            .parse::<ListenAddr>()
            .unwrap()
            .bind()
            .await
            .unwrap();
        assert!(listener.local_addr().unwrap().ip().is_loopback());
    }
}
