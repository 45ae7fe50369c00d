//! Values parsed as they are deserialized, so a bad one is reported with its key (the
//! `config` crate appends ``for key `x.y` ``) and nothing downstream parses them again.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `host:port` as written: a name or an IP address (IPv6 in brackets) and a port in
/// 1..=65535. Names are resolved later, by discovery or gossip, as often as they change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<HostPort, String> {
        let s = s.trim();
        s.rsplit_once(':')
            .and_then(|(host, port)| {
                let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
                (!host.is_empty()).then(|| HostPort {
                    host: host.to_owned(),
                    port,
                })
            })
            .ok_or_else(|| format!("`{s}` is not host:port"))
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// One `upstream.weights` entry: `host:port=weight`, weight 1..=1000.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Weight {
    /// As written in `upstream.static`/`upstream.dns`, or one resolved `ip:port`.
    pub node: HostPort,
    pub weight: u32,
}

impl FromStr for Weight {
    type Err = String;

    fn from_str(s: &str) -> Result<Weight, String> {
        let s = s.trim();
        let (node, weight) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("`{s}` is not host:port=weight"))?;
        let weight = weight
            .trim()
            .parse()
            .ok()
            .filter(|w| (1..=1000).contains(w))
            .ok_or_else(|| format!("`{s}`: weight must be 1..=1000"))?;
        Ok(Weight {
            node: node.parse()?,
            weight,
        })
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.node, self.weight)
    }
}

/// Serialized as written (canonically), for `satmesh check-config`.
macro_rules! as_text {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    )*};
}

as_text!(HostPort, Weight);

fn parse_addr<E: serde::de::Error>(text: &str) -> Result<SocketAddr, E> {
    text.trim()
        .parse()
        .map_err(|e| E::custom(format!("`{text}` is not an ip:port address ({e})")))
}

/// `#[serde(deserialize_with)]` for an `ip:port`, with an error that shows the value.
pub fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    parse_addr(&String::deserialize(deserializer)?)
}

/// [`socket_addr`] for an optional address.
pub fn opt_socket_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    Option::<String>::deserialize(deserializer)?
        .map(|text| parse_addr(&text))
        .transpose()
}

/// A list whose blank entries are skipped: an empty environment list
/// (`SATMESH__UPSTREAM__STATIC=`) means none.
pub fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| entry.parse().map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_takes_names_and_addresses_and_names_what_is_wrong() {
        let hp: HostPort = " oap.ns.svc:11800".parse().unwrap();
        assert_eq!((hp.host(), hp.port()), ("oap.ns.svc", 11800));
        assert_eq!(hp.to_string(), "oap.ns.svc:11800");
        assert_eq!(
            "[fd00::1]:1".parse::<HostPort>().unwrap().to_string(),
            "[fd00::1]:1"
        );
        for bad in ["oap", ":1", "oap:0", "oap:65536", "oap:x"] {
            let e = bad.parse::<HostPort>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn weight_entries_parse_and_print_back() {
        let w: Weight = "a:1= 3".parse().unwrap();
        assert_eq!((w.node.to_string(), w.weight), ("a:1".into(), 3));
        assert_eq!(w.to_string(), "a:1=3");
        assert!(
            "a:1"
                .parse::<Weight>()
                .unwrap_err()
                .contains("host:port=weight")
        );
        assert!("a:1=0".parse::<Weight>().unwrap_err().contains("1..=1000"));
        assert!("a=2".parse::<Weight>().unwrap_err().contains("host:port"));
    }
}
