//! `laneway lanes`: the lane map ([`LaneMap`], `GET /lanes`) as tables, one
//! per service, a row per lane.

use std::{collections::BTreeMap, fmt::Write as _};

use super::table::{Table, list};
use crate::admin::api::{Lane, LaneMap};

/// A lane's name for people: `base`, its tag, or `other tags` (requests
/// with a tag the service does not know).
fn lane_name(lane: &Lane) -> &str {
    match lane.tag.as_deref() {
        None => "base",
        Some(crate::snapshot::OTHER_LANE) => "other tags",
        Some(tag) => tag,
    }
}

/// `tagged 12, fallback 3 (1 5xx)`: a lane's requests by decision.
fn requests(lane: &Lane) -> String {
    let mut by_decision: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for count in &lane.requests {
        let (total, errors) = by_decision.entry(&count.decision).or_default();
        *total += count.total;
        if count.status_class == "5xx" {
            *errors += count.total;
        }
    }
    let parts: Vec<String> = by_decision
        .into_iter()
        .map(|(decision, (total, errors))| match errors {
            0 => format!("{decision} {total}"),
            _ => format!("{decision} {total} ({errors} 5xx)"),
        })
        .collect();
    list(&parts)
}

/// `laneway lanes`.
pub(crate) fn render(map: &LaneMap) -> String {
    let mut out = String::new();
    if map.services.is_empty() {
        out.push_str("(no services)\n");
    }
    for (i, svc) in map.services.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "{}/{}  {}", svc.namespace, svc.name, list(&svc.vips));
        let policy: Vec<String> = svc
            .policy
            .iter()
            .map(|f| format!("{} {}", f.name, f.value))
            .collect();
        let _ = writeln!(
            out,
            "  policy: {}",
            if policy.is_empty() {
                "none".to_owned()
            } else {
                policy.join("; ")
            }
        );
        if let Some(e) = &svc.policy_error {
            let _ = writeln!(
                out,
                "  policy error (the last good policy is in force): {e}"
            );
        }
        let mut t = Table::new(&["LANE", "MODE", "CANARY", "ENDPOINTS", "REQUESTS"]);
        for lane in &svc.lanes {
            let endpoints: Vec<String> = lane
                .endpoints
                .iter()
                .map(|e| format!("{} {}", e.name.as_deref().unwrap_or(&e.ip), e.state))
                .collect();
            t.row([
                lane_name(lane).to_owned(),
                lane.mode.clone().unwrap_or_else(|| "-".to_owned()),
                lane.canary_percent
                    .map_or_else(|| "-".to_owned(), |p| format!("{p}%")),
                list(&endpoints),
                requests(lane),
            ]);
            for rule in &lane.matched_by {
                t.note(format!("match {rule}"));
            }
        }
        out.push_str(&t.render("    "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::api::{LaneEndpoint, PolicyField, RequestCount, ServiceLanes};

    fn count(decision: &str, status_class: &str, total: u64) -> RequestCount {
        RequestCount {
            decision: decision.into(),
            status_class: status_class.into(),
            total,
        }
    }

    #[test]
    fn a_row_per_lane_with_endpoints_shares_and_requests() {
        let endpoint = |name: &str, state: &str| LaneEndpoint {
            ip: "10.244.0.13".into(),
            ports: vec![8080],
            name: Some(name.into()),
            state: state.into(),
            in_flight: 0,
            weight: 1.0,
        };
        let map = LaneMap {
            services: vec![ServiceLanes {
                namespace: "default".into(),
                name: "reviews".into(),
                vips: vec!["10.96.0.10".into()],
                policy: vec![
                    PolicyField {
                        name: "canary".into(),
                        value: "gray=20".into(),
                    },
                    PolicyField {
                        name: "warmup".into(),
                        value: "30s".into(),
                    },
                ],
                lanes: vec![
                    Lane {
                        endpoints: vec![endpoint("reviews-base", "serving")],
                        requests: vec![count("base", "2xx", 80), count("base", "5xx", 2)],
                        ..Lane::default()
                    },
                    Lane {
                        tag: Some("gray".into()),
                        mode: Some("strict".into()),
                        canary_percent: Some(20.0),
                        matched_by: vec!["header:x-user-type=internal".into()],
                        endpoints: vec![endpoint("reviews-gray", "warming")],
                        requests: vec![count("canary", "2xx", 19), count("tagged", "2xx", 1)],
                    },
                    Lane {
                        tag: Some("_other".into()),
                        mode: Some("permissive".into()),
                        requests: vec![count("fallback", "2xx", 3)],
                        ..Lane::default()
                    },
                ],
                ..ServiceLanes::default()
            }],
            ..LaneMap::default()
        };
        assert_eq!(
            render(&map),
            "default/reviews  10.96.0.10\n  policy: canary gray=20; warmup 30s\n\
             \x20   LANE        MODE        CANARY  ENDPOINTS             REQUESTS\n\
             \x20   base        -           -       reviews-base serving  base 82 (2 5xx)\n\
             \x20   gray        strict      20%     reviews-gray warming  canary 19, tagged 1\n\
             \x20               match header:x-user-type=internal\n\
             \x20   other tags  permissive  -       -                     fallback 3\n"
        );
        assert_eq!(render(&LaneMap::default()), "(no services)\n");
    }
}
