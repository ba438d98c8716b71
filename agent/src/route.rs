//! Routing decisions: which tag a request asks for, which endpoints may serve
//! it, and which one does.
//!
//! This is the contract users rely on (README.md, "Routing semantics"):
//! 1. the request tag is the first tag header present, else the configured
//!    member of the W3C `baggage` header, else the calling pod's own tag
//!    (lane inheritance), else none;
//! 2. tag `t`: the serving, non-terminating endpoints tagged `t`; none of them:
//!    fall back to base (permissive lanes);
//! 3. no tag: base endpoints; a service with no base endpoint at all serves
//!    untagged traffic from all its endpoints;
//! 4. among candidates: least-request power-of-two-choices.
//!
//! With a gray-release [`Policy`], a request without a tag header or
//! baggage member is first matched against the policy's match rules, then
//! takes the caller's lane, then may be sent to a lane by a canary share; a
//! strict lane without endpoints answers 503 instead of falling back.
//!
//! Pure functions over a snapshot, so `explain` can dry-run them.
//!
//! Submodules: `pinning` (a request that names its endpoint,
//! `x-laneway-endpoint`).

pub mod pinning;

use std::{fmt, net::SocketAddr, sync::atomic::Ordering};

use rand::Rng;
use serde::Serialize;

use crate::{
    config::Tag,
    policy::{LaneMode, Policy},
    snapshot::{Backend, ServicePort, TagRules},
};

/// Where the request tag came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "name")]
pub enum TagSource {
    /// A tag header (its name).
    Header(String),
    /// The W3C `baggage` header.
    Baggage,
    /// A match rule of the service's policy (its index).
    Match(usize),
    /// The calling pod's own tag.
    Caller,
    /// A canary share of the service's policy.
    Canary,
    /// No tag.
    None,
}

impl fmt::Display for TagSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagSource::Header(name) => write!(f, "header:{name}"),
            TagSource::Baggage => f.write_str("baggage"),
            TagSource::Match(i) => write!(f, "match:{i}"),
            TagSource::Caller => f.write_str("caller"),
            TagSource::Canary => f.write_str("canary"),
            TagSource::None => f.write_str("none"),
        }
    }
}

/// The tag a request asks for, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestTag {
    /// The tag, if any.
    pub tag: Option<Tag>,
    /// Its source.
    pub source: TagSource,
}

/// What kind of decision was made; a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// The lane's own endpoints.
    Tagged,
    /// The lane has no endpoint: base instead.
    Fallback,
    /// Untagged: base endpoints (or all, for a service without base).
    Base,
    /// A canary share sent an untagged request to a lane.
    Canary,
    /// A strict lane had no endpoint: 503.
    StrictReject,
    /// The service's `allow-from` rule refuses the caller: 403 (an L4
    /// stream is reset).
    Denied,
    /// The request named its endpoint (`x-laneway-endpoint`, on a service
    /// that allows pinning); the lane was not consulted.
    Pinned,
}

impl Decision {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Tagged => "tagged",
            Decision::Fallback => "fallback",
            Decision::Base => "base",
            Decision::Canary => "canary",
            Decision::StrictReject => "strict-reject",
            Decision::Denied => "denied",
            Decision::Pinned => "pinned",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resolves the request tag from its headers (name, value pairs; names in any
/// case) and the caller pod's tag. Values that are not valid tags are ignored.
pub fn resolve_tag<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    caller: Option<&Tag>,
    rules: &TagRules,
) -> RequestTag {
    let allowed = |t: &Tag| rules.allows(t);
    for wanted in &rules.headers {
        let found = headers
            .clone()
            .filter(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .find_map(|(_, value)| parse_tag(value).filter(allowed));
        if let Some(tag) = found {
            return RequestTag {
                tag: Some(tag),
                source: TagSource::Header(wanted.clone()),
            };
        }
    }
    let from_baggage = headers
        .filter(|(name, _)| name.eq_ignore_ascii_case("baggage"))
        .find_map(|(_, value)| baggage_member(value, &rules.baggage_key).filter(allowed));
    if let Some(tag) = from_baggage {
        return RequestTag {
            tag: Some(tag),
            source: TagSource::Baggage,
        };
    }
    if rules.inherit_caller_tag
        && let Some(tag) = caller
    {
        return RequestTag {
            tag: Some(tag.clone()),
            source: TagSource::Caller,
        };
    }
    RequestTag {
        tag: None,
        source: TagSource::None,
    }
}

fn parse_tag(value: &[u8]) -> Option<Tag> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// The value of member `key` of a W3C baggage header
/// (`key1=value1;prop, key2=value2`), percent-decoded, if it is a valid tag.
pub fn baggage_member(value: &[u8], key: &str) -> Option<Tag> {
    let text = std::str::from_utf8(value).ok()?;
    text.split(',').find_map(|member| {
        let member = member.split(';').next()?.trim();
        let (k, v) = member.split_once('=')?;
        if k.trim() != key {
            return None;
        }
        percent_decode(v.trim())?.parse().ok()
    })
}

fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The endpoints a request may go to.
#[derive(Clone, Debug)]
pub struct Candidates<'a> {
    /// What kind of decision this is.
    pub decision: Decision,
    /// Indices into the port's backends.
    pub indices: &'a [usize],
}

/// Why no endpoint can take a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoEndpoint {
    /// The service has no serving endpoint for this request.
    #[error("service {service} has no serving endpoint for {}", lane(.tag))]
    Empty {
        /// `namespace/name`.
        service: String,
        /// The request tag.
        tag: Option<Tag>,
    },
}

fn lane(tag: &Option<Tag>) -> String {
    match tag {
        Some(t) => format!("tag {t}"),
        None => "untagged requests".into(),
    }
}

/// The candidate set for a request tag on a service port.
pub fn candidates<'a>(port: &'a ServicePort, tag: Option<&Tag>) -> Candidates<'a> {
    let untagged = |decision| Candidates {
        decision,
        indices: if port.base.is_empty() {
            &port.eligible
        } else {
            &port.base
        },
    };
    match tag {
        Some(t) => match port.by_tag.get(t) {
            Some(lane) if port.any_available(lane) => Candidates {
                decision: Decision::Tagged,
                indices: lane,
            },
            _ => untagged(Decision::Fallback),
        },
        None => untagged(Decision::Base),
    }
}

/// Where a request goes before an endpoint is picked: its tag, why, the
/// decision, and the candidates (empty for a strict reject).
#[derive(Clone, Debug)]
pub struct Plan<'a> {
    /// The request tag (the lane the request is in from here on).
    pub tag: Option<Tag>,
    /// Where the tag came from.
    pub source: TagSource,
    /// The decision.
    pub decision: Decision,
    /// Indices into the port's backends.
    pub candidates: &'a [usize],
}

/// Plans a request to `port` under `policy`. `random` picks a canary bucket
/// when the policy has no sticky key (or the request lacks it). Without
/// `trust_request_tags` (an unknown caller), tag headers and baggage are
/// ignored.
#[allow(clippy::too_many_arguments)]
pub fn plan<'a>(
    port: &'a ServicePort,
    policy: &Policy,
    headers: &[(&str, &[u8])],
    path: &str,
    caller: Option<&Tag>,
    rules: &TagRules,
    random: u32,
    trust_request_tags: bool,
) -> Plan<'a> {
    let explicit = if trust_request_tags {
        resolve_tag(headers.iter().copied(), None, rules)
    } else {
        RequestTag {
            tag: None,
            source: TagSource::None,
        }
    };
    let (tag, source) = if explicit.tag.is_some() {
        (explicit.tag, explicit.source)
    } else if let Some((i, tag)) = policy
        .matched(headers, path)
        .filter(|(_, tag)| rules.allows(tag))
    {
        (Some(tag.clone()), TagSource::Match(i))
    } else if let (true, Some(tag)) = (rules.inherit_caller_tag, caller) {
        (Some(tag.clone()), TagSource::Caller)
    } else {
        let (bucket, _) = policy.bucket(headers, path, random);
        if let Some(lane) = policy.canary_lane(bucket)
            && let Some(indices) = port.by_tag.get(lane).filter(|l| port.any_available(l))
        {
            return Plan {
                tag: Some(lane.clone()),
                source: TagSource::Canary,
                decision: Decision::Canary,
                candidates: indices,
            };
        }
        (None, TagSource::None)
    };
    let lane_is_strict = tag
        .as_ref()
        .is_some_and(|t| policy.lane_mode(t) == LaneMode::Strict);
    let c = candidates(port, tag.as_ref());
    if c.decision == Decision::Fallback && lane_is_strict {
        return Plan {
            tag,
            source,
            decision: Decision::StrictReject,
            candidates: &[],
        };
    }
    Plan {
        tag,
        source,
        decision: c.decision,
        candidates: c.indices,
    }
}

/// The `baggage` header to send upstream: the request's baggage members with
/// `key` set to `tag`, or `None` when none are left (or the request came
/// without baggage). In no lane, the `key` member is dropped: it is one the
/// router did not accept (from a caller that is not enrolled, not in
/// `tags.allowed`, or no valid tag), and passed on it would pick the lane
/// at the next hop.
pub fn propagated_baggage<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    key: &str,
    tag: Option<&Tag>,
) -> Option<String> {
    let values: Vec<&str> = headers
        .filter(|(n, _)| n.eq_ignore_ascii_case("baggage"))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .collect();
    if values.is_empty() {
        return None;
    }
    let mut members: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .filter(|m| m.split(['=', ';']).next().unwrap_or("").trim() != key)
        .map(str::to_owned)
        .collect();
    if let Some(tag) = tag {
        members.push(format!("{key}={tag}"));
    }
    // Nothing left: no empty `baggage` field.
    (!members.is_empty()).then(|| members.join(","))
}

/// Picks an endpoint among `indices`, skipping `exclude` (endpoints whose
/// connect failed for this request), external endpoints that are down, and
/// ejected endpoints (unless more than
/// `max_ejection_percent` of the candidates are: then ejections are ignored,
/// so a sick service still gets its traffic spread).
///
/// All warm: least-request power-of-two-choices. Some warming up (slow
/// start over `warmup`): weighted random by `weight / (in_flight + 1)`, so
/// a new endpoint's share grows with its weight.
pub fn pick<'a>(
    port: &'a ServicePort,
    indices: &[usize],
    exclude: &[SocketAddr],
    warmup: std::time::Duration,
    max_ejection_percent: u32,
    rng: &mut impl Rng,
) -> Option<&'a Backend> {
    let mut usable: Vec<&Backend> = indices
        .iter()
        .map(|&i| &port.backends[i])
        .filter(|b| !exclude.contains(&b.addr) && b.available())
        .collect();
    let ejected = usable.iter().filter(|b| b.load.ejected()).count();
    if ejected > 0 && ejected * 100 <= usable.len() * max_ejection_percent as usize {
        usable.retain(|b| !b.load.ejected());
    }
    let load = |b: &Backend| b.load.in_flight.load(Ordering::Relaxed);
    match usable.len() {
        0 => None,
        1 => usable.first().copied(),
        n => {
            let weights: Vec<f64> = usable
                .iter()
                .map(|b| b.load.warmup_weight(warmup))
                .collect();
            if weights.iter().any(|w| *w < 1.0) {
                let scores: Vec<f64> = usable
                    .iter()
                    .zip(&weights)
                    .map(|(b, w)| w / f64::from(load(b) + 1))
                    .collect();
                let total: f64 = scores.iter().sum();
                let mut at = rng.random::<f64>() * total;
                for (b, score) in usable.iter().zip(&scores) {
                    if at < *score {
                        return Some(b);
                    }
                    at -= score;
                }
                return usable.last().copied();
            }
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (usable[a], usable[b]);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, snapshot::Snapshot};
    use std::collections::HashSet;

    fn rules() -> TagRules {
        TagRules {
            headers: vec!["x-mse-tag".into(), "x-lane".into()],
            baggage_key: "lane".into(),
            inherit_caller_tag: true,
            allowed: Vec::new(),
            strip_from_unknown_callers: true,
        }
    }

    #[test]
    fn tags_outside_the_allowlist_are_ignored() {
        let mut r = rules();
        r.allowed = vec![tag("gray")];
        let t = resolve_tag(
            [
                ("x-mse-tag", b"joint1".as_slice()),
                ("x-lane", b"gray".as_slice()),
            ]
            .into_iter(),
            None,
            &r,
        );
        assert_eq!(
            t.tag,
            Some(tag("gray")),
            "joint1 is not allowed, the next header is"
        );
        let t = resolve_tag([("baggage", b"lane=evil".as_slice())].into_iter(), None, &r);
        assert_eq!(t.tag, None);
    }

    #[test]
    fn untrusted_callers_cannot_pick_a_lane() {
        let s = snapshot("      - {ip: 10.0.0.1}\n      - {ip: 10.0.0.2, tag: gray}\n");
        let h: Vec<(&str, &[u8])> = vec![("x-mse-tag", b"gray".as_slice())];
        let trusted = plan(
            &s.ports[0],
            &Policy::default(),
            &h,
            "/",
            None,
            &rules(),
            0,
            true,
        );
        assert_eq!(trusted.decision, Decision::Tagged);
        let untrusted = plan(
            &s.ports[0],
            &Policy::default(),
            &h,
            "/",
            None,
            &rules(),
            0,
            false,
        );
        assert_eq!((untrusted.decision, untrusted.tag), (Decision::Base, None));
    }

    fn tag(s: &str) -> Tag {
        s.parse().expect("tag")
    }

    fn resolve(headers: &[(&'static str, &'static str)], caller: Option<&str>) -> RequestTag {
        let caller = caller.map(tag);
        resolve_tag(
            headers.iter().map(|(n, v)| (*n, v.as_bytes())),
            caller.as_ref(),
            &rules(),
        )
    }

    #[test]
    fn tag_headers_win_in_configured_order() {
        let t = resolve(&[("X-Lane", "b"), ("X-MSE-Tag", "a")], Some("c"));
        assert_eq!(t.tag, Some(tag("a")));
        assert_eq!(t.source, TagSource::Header("x-mse-tag".into()));
        let t = resolve(&[("x-lane", "b"), ("baggage", "lane=z")], None);
        assert_eq!(t.tag, Some(tag("b")));
    }

    #[test]
    fn baggage_then_caller_then_none() {
        let t = resolve(&[("baggage", "userId=1, lane = joint1;p=1,x=y")], Some("c"));
        assert_eq!((t.tag, t.source), (Some(tag("joint1")), TagSource::Baggage));
        let t = resolve(&[("baggage", "lane=j%31")], None);
        assert_eq!(t.tag, Some(tag("j1")), "percent-decoded");
        let t = resolve(&[], Some("gray"));
        assert_eq!((t.tag, t.source), (Some(tag("gray")), TagSource::Caller));
        let t = resolve(&[], None);
        assert_eq!((t.tag, t.source), (None, TagSource::None));
    }

    #[test]
    fn invalid_tag_values_are_ignored() {
        let t = resolve(&[("x-mse-tag", "not a tag!"), ("x-lane", "ok")], None);
        assert_eq!(t.tag, Some(tag("ok")));
    }

    #[test]
    fn no_inheritance_when_disabled() {
        let mut r = rules();
        r.inherit_caller_tag = false;
        let caller = tag("gray");
        let t = resolve_tag(std::iter::empty(), Some(&caller), &r);
        assert_eq!(t.tag, None);
    }

    fn snapshot(yaml_endpoints: &str) -> Snapshot {
        let text = format!(
            "services:\n  - name: s\n    vips: [10.96.0.1]\n    ports: [{{port: 80}}]\n    endpoints:\n{yaml_endpoints}"
        );
        Snapshot::from_config(
            &Config::parse(&text).expect("valid"),
            "t".into(),
            None,
            true,
        )
    }

    fn addrs(port: &ServicePort, c: &Candidates<'_>) -> HashSet<String> {
        c.indices
            .iter()
            .map(|&i| port.backends[i].addr.ip().to_string())
            .collect()
    }

    #[test]
    fn candidate_semantics() {
        let s = snapshot(
            "      - {ip: 10.0.0.1}\n      - {ip: 10.0.0.2, tag: joint1}\n      - {ip: 10.0.0.3, tag: gray, terminating: true}\n",
        );
        let p = &s.ports[0];
        let c = candidates(p, Some(&tag("joint1")));
        assert_eq!(c.decision, Decision::Tagged);
        assert_eq!(addrs(p, &c), HashSet::from(["10.0.0.2".to_string()]));
        let c = candidates(p, Some(&tag("gray")));
        assert_eq!(c.decision, Decision::Fallback, "gray only terminating");
        assert_eq!(addrs(p, &c), HashSet::from(["10.0.0.1".to_string()]));
        let c = candidates(p, None);
        assert_eq!(c.decision, Decision::Base);
        assert_eq!(addrs(p, &c), HashSet::from(["10.0.0.1".to_string()]));
    }

    #[test]
    fn service_without_base_serves_untagged_from_all() {
        let s =
            snapshot("      - {ip: 10.0.0.2, tag: joint1}\n      - {ip: 10.0.0.3, tag: gray}\n");
        let p = &s.ports[0];
        let c = candidates(p, None);
        assert_eq!(c.decision, Decision::Base);
        assert_eq!(addrs(p, &c).len(), 2);
        let c = candidates(p, Some(&tag("other")));
        assert_eq!((c.decision, addrs(p, &c).len()), (Decision::Fallback, 2));
    }

    #[test]
    fn p2c_prefers_the_less_loaded_and_honours_exclude() {
        let s = snapshot("      - {ip: 10.0.0.1}\n      - {ip: 10.0.0.2}\n");
        let p = &s.ports[0];
        p.backends[0].load.in_flight.store(10, Ordering::Relaxed);
        let mut rng = rand::rng();
        for _ in 0..50 {
            let b = pick(p, &p.base, &[], Default::default(), 50, &mut rng).expect("one");
            assert_eq!(b.addr.ip().to_string(), "10.0.0.2");
        }
        let b = pick(
            p,
            &p.base,
            &[p.backends[1].addr],
            Default::default(),
            50,
            &mut rng,
        )
        .expect("one");
        assert_eq!(b.addr.ip().to_string(), "10.0.0.1");
        assert!(
            pick(
                p,
                &p.base,
                &[p.backends[0].addr, p.backends[1].addr],
                Default::default(),
                50,
                &mut rng
            )
            .is_none()
        );
    }

    #[test]
    fn ejected_endpoints_are_skipped_unless_too_many_are() {
        let s = snapshot("      - {ip: 10.0.0.1}\n      - {ip: 10.0.0.2}\n");
        let p = &s.ports[0];
        let rules = crate::snapshot::OutlierRules {
            consecutive_failures: 2,
            base_ejection: std::time::Duration::from_secs(60),
            max_ejection_percent: 50,
        };
        assert!(!p.backends[0].load.record_failure(&rules));
        assert!(
            p.backends[0].load.record_failure(&rules),
            "second failure in a row ejects"
        );
        let mut rng = rand::rng();
        for _ in 0..50 {
            let b = pick(p, &p.base, &[], Default::default(), 50, &mut rng).expect("one");
            assert_eq!(b.addr.ip().to_string(), "10.0.0.2");
        }
        // 100% of candidates ejected is over the 50% limit: traffic spreads again.
        let only = [p.base[0]];
        assert!(pick(p, &only, &[], Default::default(), 50, &mut rng).is_some());
    }

    #[test]
    fn warming_endpoints_get_a_growing_share() {
        let mut config = crate::config::Config::parse(
            "services:\n  - name: s\n    vips: [10.96.0.1]\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.0.0.1}\n",
        )
        .expect("valid");
        let first = Snapshot::from_config(&config, "t".into(), None, true);
        config.services[0].endpoints.push(crate::config::Endpoint {
            ip: "10.0.0.2".parse().expect("ip"),
            tag: None,
            serving: true,
            terminating: false,
            name: None,
            ports: Default::default(),
        });
        let second = Snapshot::from_config(&config, "t".into(), Some(&first), false);
        let p = &second.ports[0];
        let window = std::time::Duration::from_secs(3600);
        assert!(
            p.backends[1].load.warmup_weight(window) < 0.1,
            "just added: cold"
        );
        assert_eq!(
            p.backends[0].load.warmup_weight(window),
            1.0,
            "there from the start: warm"
        );
        let mut rng = rand::rng();
        let new = (0..2000)
            .filter_map(|_| pick(p, &p.base, &[], window, 50, &mut rng))
            .filter(|b| b.addr.ip().to_string() == "10.0.0.2")
            .count();
        // Weight 0.05 of 1.05: about 95 of 2000; P2C would give about 1000.
        assert!((40..=200).contains(&new), "{new}");
    }

    #[test]
    fn p2c_spreads_equal_load() {
        let s =
            snapshot("      - {ip: 10.0.0.1}\n      - {ip: 10.0.0.2}\n      - {ip: 10.0.0.3}\n");
        let p = &s.ports[0];
        let mut rng = rand::rng();
        let seen: HashSet<_> = (0..200)
            .filter_map(|_| pick(p, &p.base, &[], Default::default(), 50, &mut rng))
            .map(|b| b.addr)
            .collect();
        assert_eq!(seen.len(), 3);
    }

    fn policy(yaml: &str) -> Policy {
        let spec: crate::policy::PolicySpec = serde_yaml::from_str(yaml).expect("policy");
        Policy::from(&spec)
    }

    fn plan_of<'a>(
        p: &'a ServicePort,
        pol: &Policy,
        headers: &[(&'static str, &'static str)],
        caller: Option<&str>,
        random: u32,
    ) -> Plan<'a> {
        let h: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let caller = caller.map(tag);
        let r = rules();
        plan(p, pol, &h, "/x?lane=g", caller.as_ref(), &r, random, true)
    }

    #[test]
    fn canary_share_sends_its_buckets_to_the_lane() {
        let s = snapshot("      - {ip: 10.0.0.1}\n      - {ip: 10.0.0.2, tag: gray}\n");
        let p = &s.ports[0];
        let pol = policy("canary: gray=10");
        let c = plan_of(p, &pol, &[], None, 999);
        assert_eq!(
            (
                c.decision,
                c.source.clone(),
                c.tag.as_ref().map(Tag::as_str)
            ),
            (Decision::Canary, TagSource::Canary, Some("gray"))
        );
        let b = plan_of(p, &pol, &[], None, 1000);
        assert_eq!((b.decision, b.tag), (Decision::Base, None));
        // Tagged requests and tagged callers are not subject to shares.
        assert_eq!(
            plan_of(p, &pol, &[("x-mse-tag", "joint1")], None, 0).decision,
            Decision::Fallback
        );
        assert_eq!(
            plan_of(p, &pol, &[], Some("blue"), 0).source,
            TagSource::Caller
        );
    }

    #[test]
    fn canary_to_a_lane_without_endpoints_stays_on_base() {
        let s = snapshot("      - {ip: 10.0.0.1}\n");
        let c = plan_of(&s.ports[0], &policy("canary: gray=100"), &[], None, 5);
        assert_eq!(c.decision, Decision::Base);
    }

    #[test]
    fn match_rules_come_before_the_caller_lane_and_after_headers() {
        let s = snapshot(
            "      - {ip: 10.0.0.1}\n      - {ip: 10.0.0.2, tag: gray}\n      - {ip: 10.0.0.3, tag: blue}\n",
        );
        let p = &s.ports[0];
        let pol = policy("match: [{query: lane, exact: g, tag: gray}]");
        let m = plan_of(p, &pol, &[], Some("blue"), 0);
        assert_eq!(
            (m.source.clone(), m.decision),
            (TagSource::Match(0), Decision::Tagged)
        );
        let h = plan_of(p, &pol, &[("x-mse-tag", "blue")], None, 0);
        assert_eq!(h.tag.as_ref().map(Tag::as_str), Some("blue"));
    }

    #[test]
    fn a_match_rule_cannot_give_a_tag_outside_the_allowlist() {
        let s = snapshot("      - {ip: 10.0.0.1}\n      - {ip: 10.0.0.2, tag: gray}\n");
        let p = &s.ports[0];
        let pol = policy("match: [{query: lane, exact: g, tag: gray}]");
        let mut r = rules();
        r.allowed = vec![tag("blue")];
        let refused = plan(p, &pol, &[], "/x?lane=g", None, &r, 0, true);
        assert_eq!((refused.tag, refused.decision), (None, Decision::Base));
        r.allowed.push(tag("gray"));
        let allowed = plan(p, &pol, &[], "/x?lane=g", None, &r, 0, true);
        assert_eq!(allowed.decision, Decision::Tagged);
    }

    #[test]
    fn strict_lanes_reject_and_permissive_lanes_fall_back() {
        let s = snapshot("      - {ip: 10.0.0.1}\n");
        let p = &s.ports[0];
        let strict = plan_of(
            p,
            &policy("lanes: gray=strict"),
            &[("x-mse-tag", "gray")],
            None,
            0,
        );
        assert_eq!(strict.decision, Decision::StrictReject);
        assert!(strict.candidates.is_empty());
        let other = plan_of(
            p,
            &policy("lanes: gray=strict"),
            &[("x-mse-tag", "blue")],
            None,
            0,
        );
        assert_eq!(other.decision, Decision::Fallback);
        let all_strict = plan_of(
            p,
            &policy("default_lane_mode: strict"),
            &[("x-mse-tag", "blue")],
            None,
            0,
        );
        assert_eq!(all_strict.decision, Decision::StrictReject);
    }

    #[test]
    fn an_external_lane_serves_while_its_endpoint_answers_and_is_strict_when_down() {
        let s = snapshot("      - {ip: 10.0.0.1}\n      - {ip: 10.0.0.2, tag: gray}\n");
        let text = "services:\n  - name: s\n    vips: [10.96.0.1]\n    ports: [{port: 80}]\n    policy: {external_lanes: 'dev=10.8.0.5:8080'}\n    endpoints:\n      - {ip: 10.0.0.1}\n";
        let config = Config::parse(text).expect("valid");
        let s2 = Snapshot::from_config(&config, "t".into(), Some(&s), false);
        let p = &s2.ports[0];
        let pol = &s2.services[0].policy;
        let dev = [("x-mse-tag", "dev")];
        let external = p.backends.iter().find(|b| b.external).expect("external");
        assert_eq!(external.addr.to_string(), "10.8.0.5:8080");
        // Not checked yet (or down): strict, 503.
        assert_eq!(
            plan_of(p, pol, &dev, None, 0).decision,
            Decision::StrictReject
        );
        external.load.set_reachable(true);
        let up = plan_of(p, pol, &dev, None, 0);
        assert_eq!(up.decision, Decision::Tagged);
        let mut rng = rand::rng();
        let picked = pick(p, up.candidates, &[], Default::default(), 50, &mut rng).expect("one");
        assert!(picked.external);
        // Untagged requests never leave the cluster.
        let base = plan_of(p, pol, &[], None, 0);
        assert_eq!(
            addrs(p, &candidates(p, None)),
            HashSet::from(["10.0.0.1".to_string()])
        );
        assert_eq!(base.decision, Decision::Base);
        // Health survives a rebuild (it lives with the address).
        let s3 = Snapshot::from_config(&config, "t".into(), Some(&s2), false);
        assert!(
            s3.ports[0]
                .backends
                .iter()
                .any(|b| b.external && b.available())
        );
        external.load.set_reachable(false);
        // Named permissive: falls back to base when down.
        let permissive = policy("{external_lanes: 'dev=10.8.0.5:8080', lanes: dev=permissive}");
        assert_eq!(
            plan_of(p, &permissive, &dev, None, 0).decision,
            Decision::Fallback
        );
    }

    #[test]
    fn a_service_of_tagged_pods_and_an_external_lane_serves_untagged_from_its_pods_only() {
        let text = "services:\n  - name: s\n    vips: [10.96.0.1]\n    ports: [{port: 80}]\n    policy: {external_lanes: 'dev=10.8.0.5:8080'}\n    endpoints:\n      - {ip: 10.0.0.2, tag: gray}\n";
        let s = Snapshot::from_config(&Config::parse(text).expect("valid"), "t".into(), None, true);
        let p = &s.ports[0];
        assert_eq!(
            addrs(p, &candidates(p, None)),
            HashSet::from(["10.0.0.2".to_string()])
        );
    }

    #[test]
    fn baggage_carries_the_resolved_tag_only_when_the_request_had_baggage() {
        let gray = tag("gray");
        let h: Vec<(&str, &[u8])> = vec![
            ("baggage", b"user=1, x-mse-tag=old;p=1".as_slice()),
            ("Baggage", b"k=v".as_slice()),
        ];
        assert_eq!(
            propagated_baggage(h.iter().copied(), "x-mse-tag", Some(&gray)).as_deref(),
            Some("user=1,k=v,x-mse-tag=gray")
        );
        assert_eq!(
            propagated_baggage(std::iter::empty(), "x-mse-tag", Some(&gray)),
            None
        );
        // In no lane the member the router did not accept goes, the rest stays.
        assert_eq!(
            propagated_baggage(h.iter().copied(), "x-mse-tag", None).as_deref(),
            Some("user=1,k=v")
        );
        let only_the_tag: Vec<(&str, &[u8])> = vec![("baggage", b"x-mse-tag=old".as_slice())];
        assert_eq!(
            propagated_baggage(only_the_tag.into_iter(), "x-mse-tag", None),
            None
        );
    }
}
