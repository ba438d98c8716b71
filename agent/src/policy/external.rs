//! External lanes: a lane of a service served from outside the cluster (a
//! developer's laptop over a VPN), declared as
//! `laneway.io/external-lanes: dev-alice=10.8.0.5:8080` (or
//! `external_lanes:` in a service's `policy:` in the static file).
//!
//! The addresses are checked here, when the policy is read: each entry is
//! `TAG=IP:PORT` (IPv6 as `[fd00::5]:8080`), entries are comma-separated,
//! a lane may name several addresses. Loopback, unspecified and multicast
//! addresses are refused: the router dials from the calling pod's network
//! namespace, where a loopback address is the pod itself.

use std::{collections::BTreeMap, fmt, net::SocketAddr, str::FromStr};

use crate::config::Tag;

/// External endpoints by lane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExternalLanes(pub BTreeMap<Tag, Vec<SocketAddr>>);

impl ExternalLanes {
    /// Whether no lane is external.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The external addresses of `tag`'s lane (empty: not external).
    pub fn of(&self, tag: &Tag) -> &[SocketAddr] {
        self.0.get(tag).map_or(&[], Vec::as_slice)
    }
}

impl FromStr for ExternalLanes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut lanes: BTreeMap<Tag, Vec<SocketAddr>> = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (tag, addr) = part.split_once('=').ok_or_else(|| {
                format!("external lane {part:?} is not TAG=IP:PORT (e.g. dev-alice=10.8.0.5:8080)")
            })?;
            let tag: Tag = tag.trim().parse()?;
            let addr: SocketAddr = addr.trim().parse().map_err(|_| {
                format!(
                    "external lane {part:?}: {:?} is not IP:PORT (IPv6 as [fd00::5]:8080)",
                    addr.trim()
                )
            })?;
            let ip = addr.ip();
            if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
                return Err(format!(
                    "external lane {part:?}: {ip} cannot be dialled from a pod (loopback, unspecified or multicast)"
                ));
            }
            if addr.port() == 0 {
                return Err(format!("external lane {part:?}: port 0"));
            }
            let addrs = lanes.entry(tag).or_default();
            if addrs.contains(&addr) {
                return Err(format!("external lane {part:?} is named twice"));
            }
            addrs.push(addr);
        }
        Ok(Self(lanes))
    }
}

impl fmt::Display for ExternalLanes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .flat_map(|(t, addrs)| addrs.iter().map(move |a| format!("{t}={a}")))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// The body of the 503 a request in an external lane gets while none of the
/// lane's external endpoints answers health checks.
pub fn down_message(service: &dyn fmt::Display, tag: &Tag, addrs: &[SocketAddr]) -> String {
    let addrs: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
    format!(
        "laneway: lane {tag} of service {service} is served from outside the cluster at {}, which does not answer (health check), and the lane is strict\n",
        addrs.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_parse_with_ipv4_ipv6_and_several_addresses() {
        let l: ExternalLanes =
            "dev-alice=10.8.0.5:8080, dev-bob=[fd00::5]:8080,dev-alice=10.8.0.6:80"
                .parse()
                .expect("valid");
        let alice: Tag = "dev-alice".parse().expect("tag");
        assert_eq!(
            l.of(&alice),
            &[
                "10.8.0.5:8080".parse().expect("addr"),
                "10.8.0.6:80".parse().expect("addr")
            ]
        );
        assert_eq!(
            l.to_string(),
            "dev-alice=10.8.0.5:8080,dev-alice=10.8.0.6:80,dev-bob=[fd00::5]:8080"
        );
        assert_eq!(l.to_string().parse::<ExternalLanes>(), Ok(l));
        assert!("".parse::<ExternalLanes>().expect("empty").is_empty());
    }

    #[test]
    fn bad_entries_name_the_bad_part() {
        for (text, says) in [
            ("dev-alice", "TAG=IP:PORT"),
            ("dev-alice=10.8.0.5", "\"10.8.0.5\" is not IP:PORT"),
            ("dev-alice=fd00::5:80", "IPv6 as [fd00::5]:8080"),
            ("Bad Tag=10.8.0.5:80", "Bad Tag"),
            ("dev=127.0.0.1:80", "cannot be dialled from a pod"),
            ("dev=10.8.0.5:0", "port 0"),
            ("dev=10.8.0.5:80,dev=10.8.0.5:80", "named twice"),
        ] {
            let e = text.parse::<ExternalLanes>().unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
