//! The admin API's JSON documents: what the agent serves on its Unix socket
//! and what `laneway status|pods|services|conns|explain|trace|maps` print.
//!
//! One type per endpoint, shared by the server and the CLI, so they cannot
//! drift apart. Addresses are strings (`10.96.0.10:80`), durations are
//! milliseconds, tags are `null` for base.

use serde::{Deserialize, Serialize};

mod lanes;

pub use lanes::{Lane, LaneEndpoint, LaneMap, LanePort, PolicyField, RequestCount, ServiceLanes};

/// Default path of the admin socket.
pub const DEFAULT_SOCKET: &str = "/run/laneway/admin.sock";

/// `GET /status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Agent version.
    pub version: String,
    /// Redirect mode (`socket`).
    pub mode: String,
    /// Whether the first snapshot has been applied.
    pub ready: bool,
    /// The cgroup the programs are attached to.
    pub cgroup: String,
    /// Programs and where they are attached.
    pub programs: Vec<ProgramStatus>,
    /// BPF map fill levels.
    pub maps: Vec<MapFill>,
    /// The router.
    pub router: RouterStatus,
    /// The snapshot in force.
    pub snapshot: SnapshotStatus,
    /// Counters kept by the kernel programs.
    pub bpf_stats: BpfStats,
    /// Client connections open on the router now.
    pub connections_active: u64,
}

/// One attached program.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgramStatus {
    /// Program name (`connect4`, ...).
    pub name: String,
    /// The hook it runs at (`cgroup/connect4`, ...).
    pub hook: String,
    /// Where it is attached (a cgroup path).
    pub attached_to: String,
}

/// A BPF map's fill level.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MapFill {
    /// Map name.
    pub name: String,
    /// Entries now.
    pub entries: u64,
    /// Capacity.
    pub capacity: u64,
}

/// The router's listener and heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouterStatus {
    /// Listening addresses.
    pub listen: Vec<String>,
    /// Where redirected IPv4 connects go.
    pub redirect_ipv4: String,
    /// Where redirected IPv6 connects go, if anywhere.
    pub redirect_ipv6: Option<String>,
    /// Age of the heartbeat the programs see, in ms.
    pub heartbeat_age_ms: u64,
    /// Whether the programs consider the router alive (heartbeat fresh).
    pub alive: bool,
}

/// The snapshot in force.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    /// Where it came from (`file:/etc/laneway.yaml`, `kubernetes`).
    pub source: String,
    /// Its age in ms.
    pub age_ms: u64,
    /// Snapshots applied since start.
    pub updates: u64,
    /// Services.
    pub services: u64,
    /// Service VIP:port pairs redirected.
    pub service_ports: u64,
    /// Endpoints: each endpoint of a service once, however many of its ports
    /// it serves ([`crate::snapshot::Snapshot::endpoint_count`]).
    pub endpoints: u64,
    /// Pods enrolled.
    pub pods_enrolled: u64,
    /// Pods that should be enrolled and are not.
    pub pods_unenrolled: u64,
}

/// Counters kept by the kernel programs (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfStats {
    /// Connects redirected to the router.
    pub redirected: u64,
    /// Connects left alone because the router's heartbeat was stale.
    pub fail_open: u64,
    /// Original-destination queries answered.
    pub origdst_answered: u64,
    /// Original-destination queries on sockets laneway does not know.
    pub origdst_missed: u64,
    /// Connects routed in the kernel straight to an endpoint of the
    /// caller's lane (no live router, or a `protocol: tcp` port).
    #[serde(default)]
    pub kernel_routed: u64,
}

/// `GET /pods`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pods {
    /// Enrolled pods.
    pub enrolled: Vec<PodInfo>,
    /// Pods that should be enrolled and are not.
    pub unenrolled: Vec<UnenrolledPod>,
}

/// An enrolled pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its tag; `null` = base.
    pub tag: Option<String>,
    /// Its network-namespace cookie (the enrolment map key).
    pub netns_cookie: u64,
    /// Its network namespace path.
    pub netns: String,
    /// Its IPs.
    pub ips: Vec<String>,
}

/// A pod that should be enrolled and is not.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UnenrolledPod {
    /// `namespace/name`.
    pub pod: String,
    /// Why.
    pub reason: String,
}

/// `GET /services` (or `/services?name=NAME`, NAME as `name` or `namespace/name`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Services {
    /// Services.
    pub services: Vec<ServiceInfo>,
}

/// A service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// ClusterIPs.
    pub vips: Vec<String>,
    /// Ports with their endpoints.
    pub ports: Vec<PortInfo>,
    /// The gray-release policy in force, summarised (`none` when none),
    /// e.g. `canary gray=10; sticky header:x-user-id; lanes gray=strict`.
    #[serde(default)]
    pub policy: String,
    /// Why the policy the source gave is not in force (bad annotations);
    /// the last good one is.
    #[serde(default)]
    pub policy_error: Option<String>,
}

/// A service port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortInfo {
    /// Port on the VIP.
    pub port: u16,
    /// Port on the endpoints (unless an endpoint says otherwise).
    pub target_port: u16,
    /// `auto`, `http` or `tcp`.
    pub protocol: String,
    /// Endpoints grouped by tag; the base group has `tag: null`.
    pub lanes: Vec<LaneInfo>,
}

/// The endpoints of one tag.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LaneInfo {
    /// The tag; `null` = base.
    pub tag: Option<String>,
    /// Endpoints.
    pub endpoints: Vec<EndpointInfo>,
}

/// An endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// `ip:port`.
    pub address: String,
    /// Pod name, if known.
    pub name: Option<String>,
    /// Serving.
    pub serving: bool,
    /// Terminating.
    pub terminating: bool,
    /// Whether new requests may go here (serving and not terminating; an
    /// external endpoint: its health checks connect).
    pub eligible: bool,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Current load-balancing weight (1.0 = full; less while warming up).
    pub weight: f64,
    /// Ejected for a while after consecutive failures.
    #[serde(default)]
    pub ejected: bool,
    /// Outside the cluster (an external lane's address, health checked by
    /// the agent); `eligible` says whether its health checks connect.
    #[serde(default)]
    pub external: bool,
}

/// `GET /conns`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Conns {
    /// Open redirected client connections.
    pub connections: Vec<ConnInfo>,
}

/// One redirected client connection on the router.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnInfo {
    /// Router-local id.
    pub id: u64,
    /// The calling pod (`namespace/name`), if known.
    pub caller: Option<String>,
    /// The client's address as the router sees it.
    pub peer: String,
    /// The VIP:port the app dialled.
    pub destination: String,
    /// The service (`namespace/name`), if the destination is one.
    pub service: Option<String>,
    /// The endpoint of the request in flight, or of the last one.
    pub endpoint: Option<String>,
    /// The tag of the request in flight, or of the last one.
    pub tag: Option<String>,
    /// `http`, `h2`, `tcp` or `sniffing`.
    pub protocol: String,
    /// Requests (HTTP/2: streams) routed on this connection.
    pub requests: u64,
    /// Requests (HTTP/2: streams) in flight on it now.
    #[serde(default)]
    pub open_streams: u64,
    /// Bytes received from the client (kernel TCP counters).
    pub bytes_in: u64,
    /// Bytes sent to the client and acknowledged.
    pub bytes_out: u64,
    /// Age in ms.
    pub age_ms: u64,
}

/// `POST /explain` body: a routing decision to dry-run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExplainRequest {
    /// The calling pod: `namespace/name`, `name` (any namespace), or an IP;
    /// empty for "not an enrolled pod".
    pub from: String,
    /// The service: `name`, `namespace/name` or `VIP`, each optionally `:PORT`
    /// (default: the service's first port).
    pub to: String,
    /// Request headers, as `(name, value)`.
    pub headers: Vec<(String, String)>,
    /// The request target (path and query), for match rules on the query;
    /// default `/`.
    #[serde(default)]
    pub path: Option<String>,
}

/// `POST /explain` answer: each step of the decision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// `namespace/name` of the service.
    pub service: String,
    /// The VIP:port used.
    pub destination: String,
    /// The calling pod, if it is enrolled.
    pub caller: Option<String>,
    /// The calling pod's own tag.
    pub caller_tag: Option<String>,
    /// The request tag.
    pub tag: Option<String>,
    /// Where the tag came from: `header:NAME`, `baggage`, `caller`, `none`.
    pub tag_source: String,
    /// The decision (`tagged`, `fallback`, `base`, `canary`,
    /// `strict-reject`, `denied`); `null` when none could be made (no
    /// endpoint).
    pub decision: Option<String>,
    /// The candidate endpoints (`ip:port`).
    pub candidates: Vec<String>,
    /// The endpoint the router picks now (least requests of two random
    /// candidates: with one candidate, certain).
    pub endpoint: Option<String>,
    /// Why no endpoint can take it, if so (the router answers 503), or
    /// why the caller is denied (`denied`: 403), naming the rule.
    pub reject: Option<String>,
    /// The steps, for people.
    pub steps: Vec<String>,
}

/// One line of `GET /trace` (newline-delimited JSON, streamed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Unix time in ms.
    pub time_ms: u64,
    /// The calling pod, if known.
    pub caller: Option<String>,
    /// `namespace/name`.
    pub service: String,
    /// The request tag.
    pub tag: Option<String>,
    /// Where the tag came from.
    pub tag_source: String,
    /// The decision (`tagged`, `fallback`, `base`, `canary`,
    /// `strict-reject`, `denied`, `pinned`); `null` when none could be made
    /// (no endpoint, a request the router could not read).
    pub decision: Option<String>,
    /// The endpoint; `null` when the router answered itself.
    pub endpoint: Option<String>,
    /// The endpoint is outside the cluster (an external lane's).
    #[serde(default)]
    pub external: bool,
    /// HTTP status sent to the client (`0` for an L4 stream).
    pub status: u16,
    /// The gRPC status of a gRPC call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// Duration in µs.
    pub duration_us: u64,
    /// What went wrong, if the router produced an error status.
    pub error: Option<String>,
}

/// `GET /maps`: the BPF maps, decoded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Maps {
    /// `ENROLLED`.
    pub enrolled: Vec<EnrolledEntry>,
    /// `SERVICES`.
    pub services: Vec<ServiceEntry>,
    /// `ROUTER[0]`.
    pub router: RouterEntry,
    /// `ORIG_BY_COOKIE`.
    pub orig_by_cookie: Vec<CookieEntry>,
    /// `ORIG_BY_CONN`.
    pub orig_by_conn: Vec<ConnEntry>,
    /// `LANE_ENDPOINTS`.
    #[serde(default)]
    pub lane_endpoints: Vec<LaneEntry>,
    /// `STATS`.
    pub stats: BpfStats,
}

/// An `ENROLLED` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EnrolledEntry {
    /// Key: netns cookie.
    pub netns_cookie: u64,
    /// Value: pod id.
    pub pod_id: u32,
    /// Value: the pod's lane id (0 = base).
    #[serde(default)]
    pub lane: u32,
    /// The pod it stands for, if known.
    pub pod: Option<String>,
}

/// A `LANE_ENDPOINTS` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LaneEntry {
    /// Key: VIP:port.
    pub vip: String,
    /// Key: lane id (0 = base).
    pub lane: u32,
    /// The lane's tag, if known (`None` for base).
    pub tag: Option<String>,
    /// Value: the endpoints the kernel picks from.
    pub endpoints: Vec<String>,
}

/// A `SERVICES` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// Key: VIP:port.
    pub vip: String,
    /// Value: service id.
    pub service_id: u32,
    /// The service it stands for, if known.
    pub service: Option<String>,
}

/// `ROUTER[0]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouterEntry {
    /// IPv4 redirect address.
    pub addr4: String,
    /// IPv6 redirect address (`::` = none).
    pub addr6: String,
    /// Port.
    pub port: u16,
    /// Socket mark of the router's sockets.
    pub mark: u32,
    /// Heartbeat, CLOCK_MONOTONIC ns (0 = shut down).
    pub heartbeat_ns: u64,
}

/// An `ORIG_BY_COOKIE` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CookieEntry {
    /// Key: socket cookie.
    pub socket_cookie: u64,
    /// Original destination.
    pub destination: String,
    /// Caller netns cookie.
    pub netns_cookie: u64,
    /// Caller pod id.
    pub pod_id: u32,
}

/// An `ORIG_BY_CONN` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnEntry {
    /// Key: the pod's address.
    pub client: String,
    /// Key: the router's address.
    pub router: String,
    /// Original destination.
    pub destination: String,
    /// Caller netns cookie.
    pub netns_cookie: u64,
}

/// `laneway preflight`: checks run locally, without the agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Preflight {
    /// The checks.
    pub checks: Vec<Check>,
}

/// One preflight check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// `pass`, `warn` or `fail`.
    pub result: String,
    /// What was found.
    pub detail: String,
    /// What to do about it, when not `pass`.
    pub fix: Option<String>,
}

/// `GET /handover/listener?addr=IP:PORT`: where a successor finds the
/// running agent's listener on that address (without `addr`: the
/// transparent one), to take a duplicate of it with `pidfd_getfd`. The same
/// socket, not a second one on the port: its queued connections are never
/// reset when the old agent closes its copy (on any kernel; `SO_REUSEPORT`
/// with `tcp_migrate_req` needs Linux 5.14), and a transparent socket
/// cannot share its port anyway (`bpf_sk_assign` refuses reuseport
/// sockets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InheritedListener {
    /// The running agent's process id.
    pub pid: i32,
    /// The listener's file descriptor number in that process.
    pub fd: i32,
}

/// `GET /handover/owner`: the agent that owns the node now, so a starting
/// agent knows whether to take over or stand by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Its rollout generation (`--generation`; the DaemonSet passes the
    /// pod's `pod-template-generation`).
    pub generation: u64,
    /// Its process id.
    pub pid: i32,
}

/// An error from the admin API (any non-2xx answer carries one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
}
