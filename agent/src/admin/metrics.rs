//! Prometheus metrics: requests by service, tag, decision and status class,
//! request duration, upstream connect errors, snapshot updates; plus, read at
//! scrape time, active connections, endpoints by state and the kernel
//! programs' own counters (redirected connections, fail-open events).

use std::{
    collections::HashSet,
    sync::{Mutex, atomic::AtomicU64},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// Labels of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `namespace/name`.
    pub service: String,
    /// The lane: the request tag when the service knows it, `_other` for
    /// any other tag, empty for none (`Service::metric_tag`).
    pub tag: String,
    /// `tagged`, `fallback`, `base`, `canary`, `strict-reject`, `denied`,
    /// `pinned` (`x-laneway-endpoint`), or `none` when no decision could be
    /// made.
    pub decision: String,
    /// `2xx`, `3xx`, `4xx`, `5xx`, or `none` for an L4 stream.
    pub status_class: String,
}

/// Labels of a gRPC response.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    /// `namespace/name`.
    pub service: String,
    /// The lane, as in [`RequestLabels::tag`].
    pub tag: String,
    /// The gRPC status code (`0` to `16`; `other` for any other value).
    pub grpc_status: String,
}

/// Labels naming a service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// `namespace/name`.
    pub service: String,
}

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// The label sets of `requests`' series, which a `Family` cannot list:
    /// the lane map reads the counters through it ([`Metrics::request_totals`]).
    request_series: Mutex<HashSet<RequestLabels>>,
    grpc_responses: Family<GrpcLabels, Counter>,
    durations: Family<ServiceLabels, Histogram>,
    connect_errors: Family<ServiceLabels, Counter>,
    policy_errors: Family<ServiceLabels, Counter>,
    denied: Family<ServiceLabels, Counter>,
    snapshot_updates: Counter<u64, AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("laneway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests and L4 streams routed, by service, tag, decision and status class (none for L4 streams)",
            requests.clone(),
        );
        let grpc_responses = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_responses",
            "gRPC calls finished, by service, tag and gRPC status (the upstream's, or the router's own)",
            grpc_responses.clone(),
        );
        let durations = Family::<ServiceLabels, Histogram>::new_with_constructor(|| {
            // 50 µs .. ~26 s.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.00005, 2.0, 20,
            ))
        });
        registry.register(
            "request_duration_seconds",
            "Time from request head received to response done",
            durations.clone(),
        );
        let connect_errors = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "upstream_connect_errors",
            "Upstream connects that failed (each was retried on another endpoint if one was left)",
            connect_errors.clone(),
        );
        let policy_errors = Family::<ServiceLabels, Counter>::default();
        registry.register("policy_errors", "Snapshots in which a service's policy annotations were bad (it kept its last good policy)", policy_errors.clone());
        let denied = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "denied",
            "HTTP requests, HTTP/2 streams and L4 streams refused because the service's allow-from rule does not admit the caller",
            denied.clone(),
        );
        let snapshot_updates = Counter::default();
        registry.register(
            "snapshot_updates",
            "Snapshots applied to the maps and the router",
            snapshot_updates.clone(),
        );
        Self {
            registry,
            requests,
            request_series: Mutex::default(),
            grpc_responses,
            durations,
            connect_errors,
            policy_errors,
            denied,
            snapshot_updates,
        }
    }
}

/// Values read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    /// Client connections open on the router.
    pub active_connections: u64,
    /// Endpoints by (service, state) with state `serving`, `terminating`,
    /// `not-serving`, and for external lanes' endpoints `external` (health
    /// checks connect) or `external-down`.
    pub endpoints: Vec<(String, &'static str, u64)>,
    /// Connects redirected by the kernel programs.
    pub redirected: u64,
    /// Connects left alone because the router's heartbeat was stale.
    pub fail_open: u64,
    /// Connects routed in the kernel to an endpoint of the caller's lane.
    pub kernel_routed: u64,
}

impl Metrics {
    /// Counts a finished request or L4 stream; `duration` (requests only)
    /// goes into the duration histogram.
    pub fn request(&self, labels: RequestLabels, duration: Option<Duration>) {
        if let Some(duration) = duration {
            let service = ServiceLabels {
                service: labels.service.clone(),
            };
            self.durations
                .get_or_create(&service)
                .observe(duration.as_secs_f64());
        }
        match self.requests.get(&labels) {
            Some(counter) => {
                counter.inc();
            }
            None => {
                self.request_series
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(labels.clone());
                self.requests.get_or_create(&labels).inc();
            }
        }
    }

    /// Every series of `laneway_requests_total` with its count, as
    /// `/metrics` shows them (in no particular order).
    pub fn request_totals(&self) -> Vec<(RequestLabels, u64)> {
        let series: Vec<RequestLabels> = self
            .request_series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        series
            .into_iter()
            .filter_map(|labels| {
                let total = self.requests.get(&labels)?.get();
                Some((labels, total))
            })
            .collect()
    }

    /// Counts a finished gRPC call by its status.
    pub fn grpc_response(&self, service: &str, tag: &str, code: u32) {
        let grpc_status = match code {
            0..=16 => code.to_string(),
            _ => "other".to_owned(),
        };
        self.grpc_responses
            .get_or_create(&GrpcLabels {
                service: service.to_owned(),
                tag: tag.to_owned(),
                grpc_status,
            })
            .inc();
    }

    /// Gives each service its error counters at 0, so they are scraped (and
    /// alerts on them work) before the first error. Series of services that
    /// went away are kept: a counter does not go back.
    pub fn known_services(&self, services: impl IntoIterator<Item = String>) {
        for service in services {
            let labels = ServiceLabels { service };
            // Creating the series is the point; the guard is not needed.
            drop(self.connect_errors.get_or_create(&labels));
            drop(self.policy_errors.get_or_create(&labels));
            drop(self.denied.get_or_create(&labels));
        }
    }

    /// Counts a request or L4 stream of `service` refused by its
    /// `allow-from` rule.
    pub fn denied(&self, service: &str) {
        self.denied
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .inc();
    }

    /// Counts a failed upstream connect.
    pub fn connect_error(&self, service: &str) {
        self.connect_errors
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .inc();
    }

    /// Counts a snapshot in which `service`'s policy was bad.
    pub fn policy_error(&self, service: &str) {
        self.policy_errors
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .inc();
    }

    /// Counts an applied snapshot.
    pub fn snapshot_applied(&self) {
        self.snapshot_updates.inc();
    }

    /// Snapshots applied so far.
    pub fn snapshot_updates(&self) -> u64 {
        self.snapshot_updates.get()
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        // The registry ends with "# EOF"; the gauges read now go before it.
        let body = out.strip_suffix("# EOF\n").unwrap_or(&out).to_owned();
        let mut text = body;
        text.push_str("# HELP laneway_active_connections Client connections open on the router.\n");
        text.push_str("# TYPE laneway_active_connections gauge\n");
        text.push_str(&format!(
            "laneway_active_connections {}\n",
            gauges.active_connections
        ));
        text.push_str("# HELP laneway_endpoints Endpoints by service and state.\n");
        text.push_str("# TYPE laneway_endpoints gauge\n");
        for (service, state, n) in &gauges.endpoints {
            text.push_str(&format!(
                "laneway_endpoints{{service=\"{}\",state=\"{state}\"}} {n}\n",
                escape(service)
            ));
        }
        text.push_str("# HELP laneway_redirected_connections Connects redirected to the router by the kernel programs.\n");
        text.push_str("# TYPE laneway_redirected_connections counter\n");
        text.push_str(&format!(
            "laneway_redirected_connections_total {}\n",
            gauges.redirected
        ));
        text.push_str("# HELP laneway_fail_open Connects the kernel programs left alone because the router's heartbeat was stale.\n");
        text.push_str("# TYPE laneway_fail_open counter\n");
        text.push_str(&format!("laneway_fail_open_total {}\n", gauges.fail_open));
        text.push_str("# HELP laneway_kernel_routed_connections Connects the kernel programs sent straight to an endpoint of the caller's lane (no live router, or a protocol: tcp port).\n");
        text.push_str("# TYPE laneway_kernel_routed_connections counter\n");
        text.push_str(&format!(
            "laneway_kernel_routed_connections_total {}\n",
            gauges.kernel_routed
        ));
        text.push_str("# EOF\n");
        text
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `2xx` for 200 and so on; `none` when there was no HTTP status (an L4
/// stream, or a request whose connection ended before an answer).
pub fn status_class(status: u16) -> String {
    match status {
        100..=999 => format!("{}xx", status / 100),
        _ => "none".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(0), "none", "L4 streams have no status");
    }

    #[test]
    fn request_totals_are_the_series_metrics_shows() {
        let m = Metrics::default();
        let labels = |tag: &str, status| RequestLabels {
            service: "default/reviews".into(),
            tag: tag.into(),
            decision: "tagged".into(),
            status_class: status_class(status),
        };
        for _ in 0..3 {
            m.request(labels("joint1", 200), None);
        }
        m.request(labels("joint1", 503), None);
        let mut totals = m.request_totals();
        totals.sort_by(|a, b| a.0.status_class.cmp(&b.0.status_class));
        assert_eq!(
            totals,
            [(labels("joint1", 200), 3), (labels("joint1", 503), 1)]
        );
        let text = m.render(&Gauges::default());
        assert!(text.contains("tag=\"joint1\",decision=\"tagged\",status_class=\"2xx\"} 3"));
    }

    #[test]
    fn renders_counters_histograms_and_scrape_time_values() {
        let m = Metrics::default();
        let labels = RequestLabels {
            service: "default/reviews".into(),
            tag: "joint1".into(),
            decision: "tagged".into(),
            status_class: status_class(200),
        };
        m.request(labels.clone(), Some(Duration::from_millis(2)));
        m.request(labels, Some(Duration::from_millis(3)));
        m.connect_error("default/reviews");
        m.known_services(["default/ratings".to_owned()]);
        m.denied("default/reviews");
        m.grpc_response("default/reviews", "joint1", 14);
        m.grpc_response("default/reviews", "joint1", 1234);
        m.snapshot_applied();
        let text = m.render(&Gauges {
            active_connections: 3,
            endpoints: vec![("default/reviews".into(), "serving", 2)],
            redirected: 7,
            fail_open: 1,
            kernel_routed: 5,
        });
        assert!(text.contains(
            "laneway_requests_total{service=\"default/reviews\",tag=\"joint1\",decision=\"tagged\",status_class=\"2xx\"} 2"
        ), "{text}");
        assert!(
            text.contains("laneway_request_duration_seconds_count{service=\"default/reviews\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("laneway_upstream_connect_errors_total{service=\"default/reviews\"} 1")
        );
        assert!(text.contains(
            "laneway_grpc_responses_total{service=\"default/reviews\",tag=\"joint1\",grpc_status=\"14\"} 1"
        ), "{text}");
        assert!(text.contains("grpc_status=\"other\"} 1"), "bounded: {text}");
        assert!(text.contains("laneway_denied_total{service=\"default/reviews\"} 1"));
        assert!(
            text.contains("laneway_denied_total{service=\"default/ratings\"} 0"),
            "every known service has the series: {text}"
        );
        assert!(text.contains("laneway_snapshot_updates_total 1"));
        assert!(text.contains("laneway_active_connections 3"));
        assert!(
            text.contains("laneway_endpoints{service=\"default/reviews\",state=\"serving\"} 2")
        );
        assert!(text.contains("laneway_redirected_connections_total 7"));
        assert!(text.contains("laneway_fail_open_total 1"));
        assert!(text.contains("laneway_kernel_routed_connections_total 5"));
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
