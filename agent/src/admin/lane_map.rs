//! The lane map's document ([`api::LaneMap`], `GET /lanes`): the snapshot
//! in force seen lane by lane, with the request counters of the metrics.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use super::{api, metrics::RequestLabels};
use crate::{
    config::Tag,
    policy::{LaneMode, Policy},
    snapshot::{Backend, OTHER_LANE, Service, Snapshot},
};

/// Every service of `snapshot`, lane by lane; `totals` are the series of
/// `laneway_requests_total` ([`super::metrics::Metrics::request_totals`]).
pub fn services(snapshot: &Snapshot, totals: &[(RequestLabels, u64)]) -> Vec<api::ServiceLanes> {
    let mut by_service: HashMap<&str, Vec<&(RequestLabels, u64)>> = HashMap::new();
    for series in totals {
        by_service
            .entry(series.0.service.as_str())
            .or_default()
            .push(series);
    }
    let mut services: Vec<api::ServiceLanes> = snapshot
        .services
        .iter()
        .map(|s| {
            let id = s.id.to_string();
            service(
                snapshot,
                s,
                by_service.get(id.as_str()).map_or(&[][..], Vec::as_slice),
            )
        })
        .collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    services
}

/// The order of lanes: base, then tags, then requests with other tags.
fn lane_order(tag: &Option<String>) -> (u8, Option<&str>) {
    match tag.as_deref() {
        None => (0, None),
        Some(OTHER_LANE) => (2, None),
        Some(t) => (1, Some(t)),
    }
}

/// The lane of `tag` in `lanes`, added (with its mode from the policy) if
/// it is not there yet.
fn lane<'a>(
    lanes: &'a mut BTreeMap<Option<String>, api::Lane>,
    policy: &Policy,
    tag: Option<String>,
) -> &'a mut api::Lane {
    lanes.entry(tag.clone()).or_insert_with(|| api::Lane {
        mode: tag.as_ref().map(|t| {
            let mode = match t.parse::<Tag>() {
                Ok(tag) => policy.lane_mode(&tag),
                // `_other`: any tag the configuration does not name.
                Err(_) => policy.default_lane_mode,
            };
            match mode {
                LaneMode::Strict => "strict".to_owned(),
                LaneMode::Permissive => "permissive".to_owned(),
            }
        }),
        tag,
        ..api::Lane::default()
    })
}

/// Adds `b` to a lane's endpoints, or its port to the endpoint of the same
/// IP (another port of the service): each endpoint once.
fn add_endpoint(endpoints: &mut Vec<api::LaneEndpoint>, b: &Backend, warmup: Duration) {
    let ip = b.addr.ip().to_string();
    let state = b.state(warmup);
    let weight = if b.eligible() {
        b.load.warmup_weight(warmup)
    } else {
        0.0
    };
    match endpoints.iter_mut().find(|e| e.ip == ip) {
        Some(e) => {
            // An external endpoint names its own port, the same on every
            // port of the service.
            if !e.ports.contains(&b.addr.port()) {
                e.ports.push(b.addr.port());
            }
            e.in_flight += b.load.in_flight();
            // The endpoint is as well as its worst port.
            if e.state == "serving" {
                e.state = state.to_owned();
            }
            e.weight = e.weight.min(weight);
        }
        None => endpoints.push(api::LaneEndpoint {
            ip,
            ports: vec![b.addr.port()],
            name: b.name.clone(),
            state: state.to_owned(),
            in_flight: b.load.in_flight(),
            weight,
        }),
    }
}

fn service(
    snapshot: &Snapshot,
    s: &Service,
    totals: &[&(RequestLabels, u64)],
) -> api::ServiceLanes {
    let policy = &s.policy;
    let mut lanes: BTreeMap<Option<String>, api::Lane> = BTreeMap::new();
    lane(&mut lanes, policy, None);
    for (tag, share) in &policy.canary.0 {
        lane(&mut lanes, policy, Some(tag.to_string())).canary_percent =
            Some(f64::from(*share) / 100.0);
    }
    for rule in &policy.matches {
        lane(&mut lanes, policy, Some(rule.tag.to_string()))
            .matched_by
            .push(rule.condition());
    }
    for tag in policy.lanes.0.keys() {
        lane(&mut lanes, policy, Some(tag.to_string()));
    }
    for &&(ref labels, total) in totals {
        let tag = (!labels.tag.is_empty()).then(|| labels.tag.clone());
        lane(&mut lanes, policy, tag)
            .requests
            .push(api::RequestCount {
                decision: labels.decision.clone(),
                status_class: labels.status_class.clone(),
                total,
            });
    }
    for &p in &s.ports {
        for b in &snapshot.ports[p].backends {
            let tag = b.tag.as_ref().map(ToString::to_string);
            add_endpoint(
                &mut lane(&mut lanes, policy, tag).endpoints,
                b,
                policy.warmup,
            );
        }
    }
    let mut lanes: Vec<api::Lane> = lanes.into_values().collect();
    lanes.sort_by(|a, b| lane_order(&a.tag).cmp(&lane_order(&b.tag)));
    for lane in &mut lanes {
        lane.requests
            .sort_by(|a, b| (&a.decision, &a.status_class).cmp(&(&b.decision, &b.status_class)));
    }
    api::ServiceLanes {
        namespace: s.id.namespace.clone(),
        name: s.id.name.clone(),
        vips: s.vips.iter().map(ToString::to_string).collect(),
        ports: s
            .ports
            .iter()
            .map(|&p| {
                let port = &snapshot.ports[p];
                api::LanePort {
                    port: port.port,
                    target_port: port.target_port,
                    protocol: port.protocol.to_string(),
                }
            })
            .collect(),
        policy: policy
            .fields()
            .into_iter()
            .map(|(name, value)| api::PolicyField {
                name: name.to_owned(),
                value,
            })
            .collect(),
        policy_error: s.policy_error.clone(),
        lanes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        admin::metrics::{Metrics, status_class},
        config::Config,
    };

    fn snapshot() -> Snapshot {
        let config = Config::parse(
            r#"
services:
  - name: reviews
    vips: [10.96.0.10]
    ports: [{port: 80, target_port: 8080}, {port: 9090, name: admin}]
    policy:
      canary: gray=20
      match: [{header: x-user-type, exact: internal, tag: blue}]
      lanes: gray=strict
    endpoints:
      - {ip: 10.0.1.2, name: reviews-base}
      - {ip: 10.0.1.3, tag: joint1, name: reviews-joint1}
      - {ip: 10.0.1.4, tag: gray, terminating: true}
  - name: ratings
    vips: [10.96.0.11]
    ports: [{port: 80}]
    endpoints: [{ip: 10.0.2.2}]
"#,
        )
        .expect("valid");
        Snapshot::from_config(&config, "test".into(), None, true)
    }

    fn count(m: &Metrics, service: &str, tag: &str, decision: &str, status: u16, n: usize) {
        for _ in 0..n {
            m.request(
                RequestLabels {
                    service: service.into(),
                    tag: tag.into(),
                    decision: decision.into(),
                    status_class: status_class(status),
                },
                None,
            );
        }
    }

    #[test]
    fn an_external_lane_shows_its_endpoint_once_and_down_until_it_answers() {
        let config = Config::parse(
            "services:\n  - name: reviews\n    vips: [10.96.0.10]\n    ports: [{port: 80, target_port: 8080}, {port: 9090}]\n    policy: {external_lanes: 'dev=10.8.0.5:8080'}\n    endpoints: [{ip: 10.0.1.2}]\n",
        )
        .expect("valid");
        let snapshot = Snapshot::from_config(&config, "test".into(), None, true);
        let lanes = |s: &Snapshot| services(s, &Metrics::default().request_totals());
        let of = |services: &[api::ServiceLanes]| {
            let dev = services[0]
                .lanes
                .iter()
                .find(|l| l.tag.as_deref() == Some("dev"))
                .cloned()
                .expect("lane dev");
            assert_eq!(dev.mode.as_deref(), Some("strict"));
            assert_eq!(dev.endpoints.len(), 1);
            assert_eq!(
                dev.endpoints[0].ports,
                [8080],
                "one port, however many the service has"
            );
            dev.endpoints[0].state.clone()
        };
        assert_eq!(of(&lanes(&snapshot)), "external-down");
        snapshot.ports[0]
            .backends
            .iter()
            .filter(|b| b.external)
            .for_each(|b| {
                b.load.set_reachable(true);
            });
        assert_eq!(of(&lanes(&snapshot)), "external");
    }

    #[test]
    fn lanes_side_by_side_with_policy_states_and_counters() {
        let metrics = Metrics::default();
        count(&metrics, "default/reviews", "", "base", 200, 3);
        count(&metrics, "default/reviews", "gray", "canary", 200, 2);
        count(&metrics, "default/reviews", "gray", "strict-reject", 503, 1);
        count(&metrics, "default/reviews", "_other", "fallback", 200, 4);
        let services = services(&snapshot(), &metrics.request_totals());
        assert_eq!(
            services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["ratings", "reviews"]
        );
        let reviews = &services[1];
        let tags: Vec<Option<&str>> = reviews.lanes.iter().map(|l| l.tag.as_deref()).collect();
        // Base first; lanes of endpoints, of the policy (blue: a match rule)
        // and of requests; requests with unknown tags last.
        assert_eq!(
            tags,
            [
                None,
                Some("blue"),
                Some("gray"),
                Some("joint1"),
                Some("_other")
            ]
        );
        let [base, blue, gray, joint1, other] = &reviews.lanes[..] else {
            panic!("five lanes");
        };
        assert_eq!(base.mode, None);
        assert_eq!(base.endpoints.len(), 1);
        // One endpoint, both ports of the service.
        assert_eq!(base.endpoints[0].ports, [8080, 9090]);
        assert_eq!(base.endpoints[0].name.as_deref(), Some("reviews-base"));
        assert_eq!(base.endpoints[0].state, "serving");
        assert_eq!(base.endpoints[0].weight, 1.0);
        assert_eq!(
            base.requests,
            [api::RequestCount {
                decision: "base".into(),
                status_class: "2xx".into(),
                total: 3
            }]
        );
        assert_eq!(blue.matched_by, ["header:x-user-type=internal"]);
        assert!(blue.endpoints.is_empty());
        assert_eq!(gray.mode.as_deref(), Some("strict"));
        assert_eq!(gray.canary_percent, Some(20.0));
        assert_eq!(gray.endpoints[0].state, "terminating");
        assert_eq!(gray.endpoints[0].weight, 0.0);
        assert_eq!(
            gray.requests
                .iter()
                .map(|c| (c.decision.as_str(), c.total))
                .collect::<Vec<_>>(),
            [("canary", 2), ("strict-reject", 1)]
        );
        assert_eq!(joint1.mode.as_deref(), Some("permissive"));
        assert_eq!(joint1.canary_percent, None);
        assert_eq!(other.requests[0].total, 4);
        assert_eq!(
            reviews
                .policy
                .iter()
                .map(|f| (f.name.as_str(), f.value.as_str()))
                .collect::<Vec<_>>(),
            [
                ("canary", "gray=20"),
                ("match", "header:x-user-type=internal->blue"),
                ("lanes", "gray=strict"),
                ("warmup", "30s"),
            ]
        );
        // A service with no policy of its own (the cluster default's
        // warm-up) and no requests: its base lane alone.
        assert_eq!(services[0].policy.len(), 1);
        assert_eq!(services[0].policy[0].name, "warmup");
        assert_eq!(services[0].lanes.len(), 1);
        assert!(services[0].lanes[0].requests.is_empty());
    }

    /// The fields the page (`ui/app.js`) reads, by these names.
    #[test]
    fn the_json_the_page_reads() {
        let metrics = Metrics::default();
        count(&metrics, "default/reviews", "joint1", "tagged", 200, 1);
        let map = api::LaneMap {
            time_ms: 1,
            version: "0".into(),
            mode: "socket".into(),
            source: "test".into(),
            services: services(&snapshot(), &metrics.request_totals()),
        };
        let json = serde_json::to_value(&map).expect("json");
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&json),
            ["mode", "services", "source", "time_ms", "version"]
        );
        let reviews = &json["services"][1];
        assert_eq!(
            keys(reviews),
            [
                "lanes",
                "name",
                "namespace",
                "policy",
                "policy_error",
                "ports",
                "vips"
            ]
        );
        assert_eq!(
            reviews["policy"][0],
            serde_json::json!({"name": "canary", "value": "gray=20"})
        );
        assert_eq!(
            reviews["ports"][0],
            serde_json::json!({"port": 80, "target_port": 8080, "protocol": "auto"})
        );
        let joint1 = &reviews["lanes"][3];
        assert_eq!(
            keys(joint1),
            [
                "canary_percent",
                "endpoints",
                "matched_by",
                "mode",
                "requests",
                "tag"
            ]
        );
        assert_eq!(reviews["lanes"][0]["tag"], serde_json::Value::Null, "base");
        assert_eq!(
            joint1["endpoints"][0],
            serde_json::json!({
                "ip": "10.0.1.3", "ports": [8080, 9090], "name": "reviews-joint1",
                "state": "serving", "in_flight": 0, "weight": 1.0
            })
        );
        assert_eq!(
            joint1["requests"][0],
            serde_json::json!({"decision": "tagged", "status_class": "2xx", "total": 1})
        );
        // And the page reads each of them by that name.
        let script = super::super::ui::asset("/ui/app.js").expect("app.js").body;
        let mut fields = Vec::new();
        let mut collect = |v: &serde_json::Value| fields.extend(keys(v));
        collect(&json);
        collect(reviews);
        collect(&reviews["policy"][0]);
        collect(&reviews["ports"][0]);
        collect(joint1);
        collect(&joint1["endpoints"][0]);
        collect(&joint1["requests"][0]);
        for field in fields {
            assert!(
                script.contains(&format!(".{field}")),
                "app.js reads {field}"
            );
        }
    }
}
