//! `GET /lanes`: every service's lanes side by side, with the state of each
//! endpoint, the policy in force and request counters by lane and decision.
//! The lane map (`/ui`) polls it; scripts may too. Served on the admin
//! socket and on `admin.listen` (beside `/metrics`).
//!
//! Counters are totals since the agent started (the series of
//! `laneway_requests_total`); a rate is the difference of two polls over
//! the difference of their `time_ms`. States, decisions and policy field
//! names are open sets of strings: a client shows what it does not know as
//! it comes.

use serde::{Deserialize, Serialize};

/// `GET /lanes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LaneMap {
    /// When it was made, Unix time in ms.
    pub time_ms: u64,
    /// Agent version.
    pub version: String,
    /// Redirect mode (`socket`, `tc`, `both`).
    pub mode: String,
    /// Where the snapshot in force came from (`file:...`, `kubernetes`).
    pub source: String,
    /// Services, by namespace and name.
    pub services: Vec<ServiceLanes>,
}

/// One service's lanes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceLanes {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// ClusterIPs.
    pub vips: Vec<String>,
    /// Ports.
    pub ports: Vec<LanePort>,
    /// The policy in force, field by field (`canary`: `gray=10`, `sticky`,
    /// `match`, `lanes`, `warmup`, ...); empty when there is none.
    pub policy: Vec<PolicyField>,
    /// Why the policy the source gave is not in force (the last good one is).
    pub policy_error: Option<String>,
    /// Base first, then lanes by tag.
    pub lanes: Vec<Lane>,
}

/// A service port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LanePort {
    /// Port on the VIP.
    pub port: u16,
    /// Port on the endpoints.
    pub target_port: u16,
    /// `auto`, `http`, `http2`, `tcp`.
    pub protocol: String,
}

/// One field of a policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyField {
    /// `canary`, `sticky`, `match`, `lanes`, `warmup`, ...
    pub name: String,
    /// As in the annotation: `gray=10`.
    pub value: String,
}

/// A lane of a service: a tag its endpoints carry, its policy names, or
/// its requests asked for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lane {
    /// The tag; `null` = base; `_other` = requests with a tag the
    /// configuration does not know for this service (as in the metrics).
    pub tag: Option<String>,
    /// What a request for the lane gets when it has no endpoint:
    /// `permissive` (falls back to base) or `strict` (503); `null` for base.
    pub mode: Option<String>,
    /// Its canary share of untagged requests, in percent; `null` when none.
    pub canary_percent: Option<f64>,
    /// Match rules that give requests this tag (`header:x-user-type=internal`).
    pub matched_by: Vec<String>,
    /// Its endpoints, each once however many ports it serves.
    pub endpoints: Vec<LaneEndpoint>,
    /// Requests whose lane this is, since the agent started.
    pub requests: Vec<RequestCount>,
}

/// An endpoint in a lane.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LaneEndpoint {
    /// Its IP.
    pub ip: String,
    /// The ports it serves for the service.
    pub ports: Vec<u16>,
    /// Pod name, if known.
    pub name: Option<String>,
    /// `serving`, `warming`, `ejected`, `terminating`, `not-serving`.
    pub state: String,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Its load-balancing weight now (1 = full; less while warming up, 0
    /// when it takes no request).
    pub weight: f64,
}

/// A counter of requests (HTTP requests, HTTP/2 streams, L4 streams).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCount {
    /// `tagged`, `fallback`, `base`, `canary`, `strict-reject`, `none`.
    pub decision: String,
    /// `2xx` ... `5xx`, or `none` for L4 streams.
    pub status_class: String,
    /// Requests so far.
    pub total: u64,
}
