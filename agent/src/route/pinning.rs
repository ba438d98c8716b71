//! Endpoint pinning: a tester sends a request to one chosen endpoint of a
//! service with header `x-laneway-endpoint: <pod name or IP>`.
//!
//! Only on services whose policy allows it (`endpoint_pinning`,
//! `laneway.io/endpoint-pinning: "true"`); elsewhere the header is ignored.
//! It is never forwarded upstream ([`crate::proxy::Target`] leaves it out),
//! so the endpoint never sees it. A pin overrides the lane: the named
//! endpoint serves the request whatever its tag (the upstream request still
//! carries the request's lane in the tag header, for the hops after it). A
//! pin to an endpoint the service does not have, or that cannot take
//! requests now (not serving, terminating, an external endpoint that is
//! down), is answered 503 naming service and endpoint: never a silent
//! fallback, since a tester wants that instance or an error.

use std::{fmt, net::IpAddr};

use crate::snapshot::ServicePort;

/// The request header naming the endpoint.
pub const PIN_HEADER: &str = "x-laneway-endpoint";

/// Why a pinned request cannot go to the endpoint it names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No endpoint of the service has that name or IP.
    #[error(
        "service {service} has no endpoint {asked:?} (x-laneway-endpoint takes the pod name or IP of one of its endpoints)"
    )]
    Unknown {
        /// `namespace/name`.
        service: String,
        /// The header's value.
        asked: String,
    },
    /// The endpoint exists but takes no requests now.
    #[error("endpoint {asked} ({addr}) of service {service} is {state}: it takes no requests now")]
    NotServing {
        /// `namespace/name`.
        service: String,
        /// The header's value.
        asked: String,
        /// The endpoint's address.
        addr: std::net::SocketAddr,
        /// Its state (`not-serving`, `terminating`, `external-down`).
        state: &'static str,
    },
}

/// The endpoint a request is pinned to, as an index into `port`'s backends:
/// `None` when pinning is off for the service (`allowed`) or the request
/// names no endpoint.
pub fn pinned(
    port: &ServicePort,
    service: &dyn fmt::Display,
    allowed: bool,
    headers: &[(&str, &[u8])],
) -> Option<Result<usize, Error>> {
    if !allowed {
        return None;
    }
    let asked = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(PIN_HEADER))
        .map(|(_, v)| String::from_utf8_lossy(v).trim().to_owned())
        .filter(|v| !v.is_empty())?;
    let ip: Option<IpAddr> = asked.parse().ok();
    let named = |i: &usize| {
        let b = &port.backends[*i];
        b.name.as_deref() == Some(asked.as_str()) || Some(b.addr.ip()) == ip
    };
    let matching: Vec<usize> = (0..port.backends.len()).filter(named).collect();
    let Some(&first) = matching.first() else {
        return Some(Err(Error::Unknown {
            service: service.to_string(),
            asked,
        }));
    };
    let usable = matching.into_iter().find(|&i| {
        let b = &port.backends[i];
        b.eligible() && b.available()
    });
    Some(usable.ok_or_else(|| Error::NotServing {
        service: service.to_string(),
        addr: port.backends[first].addr,
        state: port.backends[first].condition(),
        asked,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, snapshot::Snapshot};

    fn snapshot() -> Snapshot {
        let text = "services:\n  - name: s\n    vips: [10.96.0.1]\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.0.0.1, name: s-base}\n      - {ip: 10.0.0.2, name: s-gray, tag: gray}\n      - {ip: 10.0.0.3, name: s-old, terminating: true}\n";
        Snapshot::from_config(&Config::parse(text).expect("valid"), "t".into(), None, true)
    }

    fn pin(s: &Snapshot, allowed: bool, value: &str) -> Option<Result<usize, Error>> {
        let headers = [("X-Laneway-Endpoint", value.as_bytes())];
        pinned(&s.ports[0], &"default/s", allowed, &headers)
    }

    #[test]
    fn a_pin_names_an_endpoint_by_pod_name_or_ip() {
        let s = snapshot();
        assert_eq!(pin(&s, true, "s-gray"), Some(Ok(1)));
        assert_eq!(pin(&s, true, " 10.0.0.1 "), Some(Ok(0)));
        assert_eq!(
            pinned(&s.ports[0], &"default/s", true, &[]),
            None,
            "no header: no pin"
        );
    }

    #[test]
    fn without_pinning_the_header_is_ignored() {
        assert_eq!(pin(&snapshot(), false, "s-gray"), None);
    }

    #[test]
    fn an_unknown_or_unavailable_endpoint_is_an_error_naming_it() {
        let s = snapshot();
        let e = pin(&s, true, "s-nope").expect("asked").unwrap_err();
        assert!(
            matches!(&e, Error::Unknown { asked, .. } if asked == "s-nope"),
            "{e}"
        );
        assert!(e.to_string().contains("default/s"), "{e}");
        let e = pin(&s, true, "s-old").expect("asked").unwrap_err();
        assert!(
            e.to_string().contains("s-old") && e.to_string().contains("terminating"),
            "{e}"
        );
    }
}
