//! `laneway explain`: dry-run a routing decision with the live snapshot and
//! say each step, using the same functions the router uses.

use std::net::{IpAddr, SocketAddr};

use crate::{
    admin::api::{ExplainRequest, Explanation},
    route,
    router::Applied,
    snapshot::{Pod, ServicePort},
};

/// Why a dry run could not start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// `from` names no enrolled pod.
    #[error("no enrolled pod {0:?} (give namespace/name, a unique name, or an IP)")]
    UnknownPod(String),
    /// `from` is ambiguous.
    #[error("pod name {0:?} is ambiguous: give namespace/name")]
    AmbiguousPod(String),
    /// `to` names no service.
    #[error("no service {0:?} (give name, namespace/name or VIP, optionally :PORT)")]
    UnknownService(String),
    /// The service has no such port.
    #[error("service {service} has no port {port}")]
    UnknownPort {
        /// `namespace/name`.
        service: String,
        /// The port asked for.
        port: u16,
    },
}

/// Explains where a request from `req.from` to `req.to` with `req.headers`
/// would go now.
pub fn explain(applied: &Applied, req: &ExplainRequest) -> Result<Explanation, Error> {
    let snapshot = &applied.snapshot;
    let caller = find_pod(applied, &req.from)?;
    let (port, destination) = find_port(applied, &req.to)?;
    let service = snapshot.service_of(port).id.to_string();
    let mut steps = vec![format!(
        "destination {destination} is service {service} port {} (endpoints' port {})",
        port.port, port.target_port
    )];
    match caller {
        Some(p) => steps.push(format!(
            "caller is enrolled pod {p} ({})",
            p.tag
                .as_ref()
                .map_or("base: no tag".to_owned(), |t| format!("tag {t}"))
        )),
        None => steps.push("caller is not an enrolled pod".into()),
    }
    if let Some(rule) = &snapshot.service_of(port).policy.allow_from {
        match rule.check(caller) {
            Ok(()) => steps.push(format!("allow-from {rule} admits the caller")),
            Err(denial) => {
                let who = caller.map_or_else(|| "-".to_owned(), |p| p.to_string());
                let message = denial.message(&who, &service, rule);
                let message = message.strip_prefix("laneway: ").unwrap_or(&message);
                steps.push(format!("{message}: the router answers 403 (gRPC PERMISSION_DENIED; an L4 stream is reset)"));
                return Ok(Explanation {
                    service,
                    destination: destination.to_string(),
                    caller: caller.map(|p| p.to_string()),
                    caller_tag: caller.and_then(|p| p.tag.as_ref()).map(|t| t.to_string()),
                    tag: None,
                    tag_source: route::TagSource::None.to_string(),
                    decision: Some(route::Decision::Denied.as_str().to_owned()),
                    candidates: Vec::new(),
                    endpoint: None,
                    reject: Some(message.to_owned()),
                    steps,
                });
            }
        }
    }
    let owned: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
        .collect();
    let headers: Vec<(&str, &[u8])> = owned
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    let policy = &snapshot.service_of(port).policy;
    let path = req.path.as_deref().unwrap_or("/");
    let (bucket, sticky) = policy.bucket(&headers, path, rand::random());
    let plan = route::plan(
        port,
        policy,
        &headers,
        path,
        caller.and_then(|p| p.tag.as_ref()),
        &snapshot.tags,
        bucket,
        caller.is_some() || !snapshot.tags.strip_from_unknown_callers,
    );
    if caller.is_none() && snapshot.tags.strip_from_unknown_callers {
        steps.push("the caller is not a known enrolled pod: its tag headers and baggage are ignored (tags.strip_from_unknown_callers)".into());
    }
    steps.push(match (&plan.tag, &plan.source) {
        (Some(t), route::TagSource::Header(h)) => format!("request tag {t}, from header {h}"),
        (Some(t), route::TagSource::Baggage) => format!(
            "request tag {t}, from member {} of the baggage header",
            snapshot.tags.baggage_key
        ),
        (Some(t), route::TagSource::Match(i)) => format!(
            "no tag header or baggage member; match rule {i} of the service's policy gives tag {t}"
        ),
        (Some(t), route::TagSource::Caller) => {
            format!("no tag header, baggage member or matching rule: request tag {t} inherited from the caller pod")
        }
        (Some(t), route::TagSource::Canary) => format!(
            "untagged: canary shares {} send bucket {bucket} ({}) to lane {t}",
            policy.canary,
            if sticky { "from the sticky key, always the same" } else { "random: this request only" }
        ),
        _ if !policy.canary.0.is_empty() => format!(
            "untagged: canary shares {} leave bucket {bucket} ({}) on base",
            policy.canary,
            if sticky { "from the sticky key, always the same" } else { "random: this request only" }
        ),
        _ => format!(
            "no tag: no header {}, no baggage member {}, no matching rule, and the caller has no tag{}",
            snapshot.tags.headers.join(" or "),
            snapshot.tags.baggage_key,
            if snapshot.tags.inherit_caller_tag { "" } else { " to inherit (inheritance is off)" }
        ),
    });
    if let Some(e) = &snapshot.service_of(port).policy_error {
        steps.push(format!(
            "note: the service's policy annotations are bad ({e}); its last good policy is in force"
        ));
    }
    if let Some(pin) = route::pinning::pinned(port, &service, policy.endpoint_pinning, &headers) {
        steps.push(format!(
            "header {} names the endpoint, and the service allows pinning: the lane is not consulted",
            route::pinning::PIN_HEADER
        ));
        let (endpoint, reject) = match pin {
            Ok(i) => {
                let b = &port.backends[i];
                steps.push(format!("endpoint {} (pinned)", b.addr));
                (Some(b.addr.to_string()), None)
            }
            Err(e) => {
                steps.push(format!("{e}: the router answers 503"));
                (None, Some(e.to_string()))
            }
        };
        return Ok(Explanation {
            decision: Some(route::Decision::Pinned.as_str().to_owned()),
            candidates: endpoint.iter().cloned().collect(),
            endpoint,
            reject,
            ..explanation(service, destination, caller, &plan, steps)
        });
    }
    let external_addrs = |tag: &crate::config::Tag| policy.external_lanes.of(tag).to_vec();
    let addrs: Vec<String> = plan
        .candidates
        .iter()
        .map(|&i| &port.backends[i])
        .filter(|b| b.available())
        .map(|b| b.addr.to_string())
        .collect();
    steps.push(match (plan.decision, &plan.tag) {
        (route::Decision::Tagged | route::Decision::Canary, Some(t)) if !external_addrs(t).is_empty() => format!(
            "lane {t} has {} serving endpoint(s), served from outside the cluster at {} (external, health checks connect): {}",
            addrs.len(),
            crate::proxy::join_endpoints(&external_addrs(t)),
            plan.decision
        ),
        (route::Decision::Tagged | route::Decision::Canary, Some(t)) => {
            format!("lane {t} has {} serving endpoint(s): {}", addrs.len(), plan.decision)
        }
        (route::Decision::StrictReject, Some(t)) if !external_addrs(t).is_empty() => format!(
            "lane {t} is served from outside the cluster at {}, whose health checks do not connect; the lane is strict: the router answers 503",
            crate::proxy::join_endpoints(&external_addrs(t))
        ),
        (route::Decision::StrictReject, Some(t)) => format!(
            "lane {t} has no serving endpoint and is strict: the router answers 503"
        ),
        (route::Decision::Fallback, Some(t)) if port.base.is_empty() => format!(
            "lane {t} has no serving endpoint and the service has no base endpoint: fallback to all {} endpoint(s)",
            addrs.len()
        ),
        (route::Decision::Fallback, Some(t)) => format!(
            "lane {t} has no serving endpoint: fallback to the {} base endpoint(s) (permissive lane)",
            addrs.len()
        ),
        _ if port.base.is_empty() => format!(
            "untagged: the service has no base endpoint, so all {} endpoint(s) serve it",
            addrs.len()
        ),
        _ => format!("untagged: the {} base endpoint(s)", addrs.len()),
    });
    let picked = route::pick(
        port,
        plan.candidates,
        &[],
        policy.warmup,
        snapshot.outlier.max_ejection_percent,
        &mut rand::rng(),
    );
    let (endpoint, reject) = match picked {
        Some(b) if addrs.len() == 1 => {
            steps.push(format!("endpoint {} (the only candidate)", b.addr));
            (Some(b.addr.to_string()), None)
        }
        Some(b) => {
            steps.push(format!(
                "endpoint {} (fewest requests in flight of two random candidates; now {} in flight)",
                b.addr,
                b.load.in_flight()
            ));
            (Some(b.addr.to_string()), None)
        }
        None if plan.decision == route::Decision::StrictReject => (
            None,
            Some(match plan.tag.as_ref() {
                Some(t) if !external_addrs(t).is_empty() => {
                    crate::policy::external::down_message(&service, t, &external_addrs(t))
                        .trim_start_matches("laneway: ")
                        .trim_end()
                        .to_owned()
                }
                t => format!(
                    "lane {} of service {service} has no serving endpoint, and the lane is strict",
                    t.map_or("-", |t| t.as_str())
                ),
            }),
        ),
        None => {
            let err = route::NoEndpoint::Empty {
                service: service.clone(),
                tag: plan.tag.clone(),
            };
            steps.push(format!("{err}: the router answers 503"));
            (None, Some(err.to_string()))
        }
    };
    if let Some(t) = &plan.tag {
        steps.push(format!(
            "upstream request carries {}: {t}",
            snapshot.tags.upstream_header()
        ));
    }
    Ok(Explanation {
        decision: (endpoint.is_some() || plan.decision == route::Decision::StrictReject)
            .then(|| plan.decision.as_str().to_owned()),
        candidates: addrs,
        endpoint,
        reject,
        ..explanation(service, destination, caller, &plan, steps)
    })
}

/// The explanation's fields that say who asked what: service, caller and
/// tag, with the steps; the decision and endpoint left empty.
fn explanation(
    service: String,
    destination: SocketAddr,
    caller: Option<&Pod>,
    plan: &route::Plan<'_>,
    steps: Vec<String>,
) -> Explanation {
    Explanation {
        service,
        destination: destination.to_string(),
        caller: caller.map(|p| p.to_string()),
        caller_tag: caller.and_then(|p| p.tag.as_ref()).map(|t| t.to_string()),
        tag: plan.tag.as_ref().map(|t| t.to_string()),
        tag_source: plan.source.to_string(),
        decision: None,
        candidates: Vec::new(),
        endpoint: None,
        reject: None,
        steps,
    }
}

fn find_pod<'a>(applied: &'a Applied, from: &str) -> Result<Option<&'a Pod>, Error> {
    let from = from.trim();
    if from.is_empty() {
        return Ok(None);
    }
    let pods = &applied.snapshot.pods;
    if let Ok(ip) = from.parse::<IpAddr>() {
        return applied
            .caller(None, ip)
            .map(Some)
            .ok_or_else(|| Error::UnknownPod(from.into()));
    }
    let matches: Vec<&Pod> = match from.split_once('/') {
        Some((ns, name)) => pods
            .iter()
            .filter(|p| p.namespace == ns && p.name == name)
            .collect(),
        None => pods.iter().filter(|p| p.name == from).collect(),
    };
    match matches.as_slice() {
        [one] => Ok(Some(one)),
        [] => Err(Error::UnknownPod(from.into())),
        _ => Err(Error::AmbiguousPod(from.into())),
    }
}

fn find_port<'a>(applied: &'a Applied, to: &str) -> Result<(&'a ServicePort, SocketAddr), Error> {
    let snapshot = &applied.snapshot;
    let to = to.trim();
    if let Ok(addr) = to.parse::<SocketAddr>() {
        return snapshot
            .port_for(addr)
            .map(|p| (p, addr))
            .ok_or_else(|| Error::UnknownService(to.into()));
    }
    let (name, port) = match to.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() && !name.contains(':') => {
            (name, port.parse::<u16>().ok())
        }
        _ => (to, None),
    };
    let service = match name.parse::<IpAddr>() {
        Ok(ip) => snapshot.services.iter().find(|s| s.vips.contains(&ip)),
        Err(_) => match name.split_once('/') {
            Some((ns, n)) => snapshot
                .services
                .iter()
                .find(|s| s.id.namespace == ns && s.id.name == n),
            None => snapshot.services.iter().find(|s| s.id.name == name),
        },
    }
    .ok_or_else(|| Error::UnknownService(to.into()))?;
    let vip = *service
        .vips
        .first()
        .ok_or_else(|| Error::UnknownService(to.into()))?;
    let index = match port {
        Some(p) => *service
            .ports
            .iter()
            .find(|&&i| snapshot.ports[i].port == p)
            .ok_or(Error::UnknownPort {
                service: service.id.to_string(),
                port: p,
            })?,
        None => *service
            .ports
            .first()
            .ok_or_else(|| Error::UnknownService(to.into()))?,
    };
    let port = &snapshot.ports[index];
    Ok((port, SocketAddr::new(vip, port.port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, snapshot::Snapshot};

    fn applied() -> Applied {
        let config = Config::parse(
            "services:\n  - name: reviews\n    vips: [10.96.0.10]\n    ports: [{port: 80, target_port: 8080}]\n    policy: {match: [{query: lane, exact: j1, tag: joint1}], external_lanes: 'dev=10.8.0.5:8080', endpoint_pinning: true}\n    endpoints:\n      - {ip: 10.0.0.1}\n      - {ip: 10.0.0.2, tag: joint1}\npods:\n  - {name: client, netns: /x, tag: gray, ips: [10.244.0.5]}\n",
        )
        .expect("valid");
        Applied {
            snapshot: Snapshot::from_config(&config, "t".into(), None, true),
            pods_by_cookie: Default::default(),
            netns: Default::default(),
            unenrolled: Vec::new(),
        }
    }

    fn ask(from: &str, to: &str, headers: &[(&str, &str)]) -> Result<Explanation, Error> {
        ask_path(from, to, headers, None)
    }

    fn ask_path(
        from: &str,
        to: &str,
        headers: &[(&str, &str)],
        path: Option<&str>,
    ) -> Result<Explanation, Error> {
        explain(
            &applied(),
            &ExplainRequest {
                from: from.into(),
                to: to.into(),
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                path: path.map(Into::into),
            },
        )
    }

    #[test]
    fn a_query_match_rule_is_explained_with_the_path() {
        let plain = ask_path("", "reviews", &[], None).expect("explained");
        assert_eq!(plain.endpoint.as_deref(), Some("10.0.0.1:8080"));
        let matched = ask_path("", "reviews", &[], Some("/items?lane=j1")).expect("explained");
        assert_eq!(matched.endpoint.as_deref(), Some("10.0.0.2:8080"));
        assert_eq!(matched.tag_source, "match:0");
    }

    #[test]
    fn tagged_request_names_every_step() {
        let e = ask("client", "reviews", &[("x-mse-tag", "joint1")]).expect("explained");
        let stripped = ask("", "reviews", &[("x-mse-tag", "joint1")]).expect("explained");
        assert_eq!(
            stripped.endpoint.as_deref(),
            Some("10.0.0.1:8080"),
            "unknown caller: tag ignored"
        );
        assert_eq!(e.endpoint.as_deref(), Some("10.0.0.2:8080"));
        assert_eq!(e.decision.as_deref(), Some("tagged"));
        assert_eq!(e.tag_source, "header:x-mse-tag");
        assert!(
            e.steps
                .iter()
                .any(|s| s.contains("lane joint1 has 1 serving endpoint")),
            "{:?}",
            e.steps
        );
    }

    #[test]
    fn caller_lane_without_endpoints_falls_back() {
        let e = ask("default/client", "10.96.0.10:80", &[]).expect("explained");
        assert_eq!(e.caller.as_deref(), Some("default/client"));
        assert_eq!(
            (e.tag.as_deref(), e.tag_source.as_str()),
            (Some("gray"), "caller")
        );
        assert_eq!(e.decision.as_deref(), Some("fallback"));
        assert_eq!(e.endpoint.as_deref(), Some("10.0.0.1:8080"));
        let by_ip = ask("10.244.0.5", "default/reviews:80", &[]).expect("by IP");
        assert_eq!(by_ip.caller.as_deref(), Some("default/client"));
    }

    #[test]
    fn an_allow_from_rule_is_explained_allowed_or_denied_with_the_rule() {
        let mut applied = applied();
        let reviews = &mut applied.snapshot.services[0];
        let mut policy = (*reviews.policy).clone();
        policy.allow_from = Some("namespaces=default;lanes=gray".parse().expect("valid"));
        reviews.policy = std::sync::Arc::new(policy);
        let ask = |from: &str| {
            explain(
                &applied,
                &ExplainRequest {
                    from: from.into(),
                    to: "reviews".into(),
                    headers: Vec::new(),
                    path: None,
                },
            )
            .expect("explained")
        };
        let allowed = ask("client");
        assert_eq!(allowed.endpoint.as_deref(), Some("10.0.0.1:8080"));
        assert!(
            allowed
                .steps
                .contains(&"allow-from namespaces=default;lanes=gray admits the caller".to_owned()),
            "{:?}",
            allowed.steps
        );
        let unknown = ask("");
        assert_eq!(unknown.decision.as_deref(), Some("denied"));
        assert_eq!(unknown.endpoint, None);
        let reject = unknown.reject.expect("a reason");
        assert!(
            reject.contains("allow-from namespaces=default;lanes=gray")
                && reject.contains("no enrolled pod"),
            "{reject}"
        );
    }

    #[test]
    fn a_pin_is_explained_as_pinned_and_overrides_the_lane() {
        let e = ask(
            "client",
            "reviews",
            &[("x-mse-tag", "joint1"), ("x-laneway-endpoint", "10.0.0.1")],
        )
        .expect("explained");
        assert_eq!(e.decision.as_deref(), Some("pinned"));
        assert_eq!(e.endpoint.as_deref(), Some("10.0.0.1:8080"));
        let e =
            ask("client", "reviews", &[("x-laneway-endpoint", "reviews-9")]).expect("explained");
        assert_eq!(
            (e.decision.as_deref(), e.endpoint.as_deref()),
            (Some("pinned"), None)
        );
        assert!(
            e.reject.as_deref().is_some_and(|r| r.contains("reviews-9")),
            "{e:?}"
        );
    }

    #[test]
    fn an_external_lane_is_explained_as_external_and_strict_when_down() {
        let e = ask("client", "reviews", &[("x-mse-tag", "dev")]).expect("explained");
        assert_eq!(e.decision.as_deref(), Some("strict-reject"));
        let reject = e.reject.as_deref().unwrap_or_default();
        assert!(
            reject.contains("lane dev of service default/reviews")
                && reject.contains("10.8.0.5:8080"),
            "{reject}"
        );
        assert!(
            e.steps
                .iter()
                .any(|s| s.contains("outside the cluster at 10.8.0.5:8080")),
            "{:?}",
            e.steps
        );
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        assert_eq!(
            ask("nobody", "reviews", &[]),
            Err(Error::UnknownPod("nobody".into()))
        );
        assert_eq!(
            ask("", "ratings", &[]),
            Err(Error::UnknownService("ratings".into()))
        );
        assert!(matches!(
            ask("", "reviews:81", &[]),
            Err(Error::UnknownPort { port: 81, .. })
        ));
    }
}
