//! The agent's configuration, and the static source of truth.
//!
//! One YAML file holds both: how the agent runs (router address, timeouts, tag
//! headers, where programs attach) and, in standalone mode, the cluster state
//! it routes by (services, endpoints, pods to enrol). Unknown fields are
//! errors, and every error names the field path and the line, e.g.
//! `services[0].endpoints[1].tag: invalid tag "Joint 1": ... at line 14 column 14`.
//!
//! The config is serializable, so the agent can dump what it actually runs
//! with (defaults filled in).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, de};

use crate::policy::PolicySpec;

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The YAML is malformed or a field is invalid (the message names the
    /// field path and the line).
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, where.
        message: String,
    },
}

/// The whole file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The router: where it listens, where pods are sent, its limits.
    pub router: RouterConfig,
    /// How a request's tag (lane) is found.
    pub tags: TagConfig,
    /// Where the kernel programs attach.
    pub bpf: BpfConfig,
    /// The Kubernetes source (with `laneway agent --kube`).
    pub kube: KubeConfig,
    /// The local admin endpoint (health, readiness).
    pub admin: AdminConfig,
    /// Cluster-wide gray-release policy defaults; a Service's own policy
    /// overrides them field by field. What the file leaves out comes from
    /// [`PolicySpec::cluster_defaults`].
    #[serde(deserialize_with = "policy_over_cluster_defaults")]
    pub policy: PolicySpec,
    /// Services to route (standalone mode).
    pub services: Vec<Service>,
    /// Pods on this node to enrol (standalone mode).
    pub pods: Vec<Pod>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            router: RouterConfig::default(),
            tags: TagConfig::default(),
            bpf: BpfConfig::default(),
            kube: KubeConfig::default(),
            admin: AdminConfig::default(),
            policy: PolicySpec::cluster_defaults(),
            services: Vec::new(),
            pods: Vec::new(),
        }
    }
}

/// The top-level `policy:` as written, laid over the cluster defaults, so
/// a file that sets one field keeps the others' defaults.
fn policy_over_cluster_defaults<'de, D: Deserializer<'de>>(d: D) -> Result<PolicySpec, D::Error> {
    Ok(PolicySpec::deserialize(d)?.over(&PolicySpec::cluster_defaults()))
}

/// How enrolled pods' connections are steered to the router.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectMode {
    /// cgroup socket programs rewrite the connect (the default).
    #[default]
    Socket,
    /// A TC ingress program on each pod's host-side veth hands the packets
    /// to a transparent listener.
    Tc,
    /// Socket first; TC catches what the connect hooks did not see.
    Both,
}

impl RedirectMode {
    /// Whether the socket programs steer.
    pub fn socket(self) -> bool {
        matches!(self, RedirectMode::Socket | RedirectMode::Both)
    }

    /// Whether the TC program steers.
    pub fn tc(self) -> bool {
        matches!(self, RedirectMode::Tc | RedirectMode::Both)
    }
}

/// Where the router's upstream connections for an enrolled pod come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamSource {
    /// From the pod's own network namespace and address (the default): the
    /// endpoint sees the calling pod. Idle connections are pooled per pod.
    #[default]
    Pod,
    /// From the node's address, as before: one pool per endpoint shared by
    /// all pods, but endpoints (NetworkPolicies, access logs) see the node.
    Node,
}

/// The router.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// `socket`, `tc` or `both`.
    pub mode: RedirectMode,
    /// TC mode: the transparent (`IP_TRANSPARENT`) listener.
    pub tproxy_listen: SocketAddr,
    /// IPv4 listener, e.g. `0.0.0.0:15001`.
    pub listen: SocketAddr,
    /// Optional IPv6 listener, e.g. `[::]:15001`; without it native IPv6
    /// connects are not redirected (v4-mapped ones are).
    pub listen_v6: Option<SocketAddr>,
    /// The address redirected IPv4 connects are sent to: one that pods reach
    /// and that lands on `listen` (the node's address as pods see it).
    /// Written `auto` (the default), it is the unspecified address here, and
    /// the agent derives the node's address at start
    /// ([`Config::derive_redirect_ipv4`]). A loopback address is refused: in a
    /// pod's network namespace it is the pod's own loopback.
    #[serde(with = "auto_ip")]
    pub redirect_ipv4: IpAddr,
    /// The address redirected IPv6 connects are sent to (with `listen_v6`).
    pub redirect_ipv6: Option<IpAddr>,
    /// `SO_MARK` on the router's own upstream sockets (loop guard); 0 = none.
    pub socket_mark: u32,
    /// Where upstream connections for enrolled pods come from: `pod` (their
    /// own namespace and address) or `node`.
    pub upstream_source: UpstreamSource,
    /// Largest request head accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Upstream connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time for a whole request head to arrive; slower gets 408.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// From request sent to response head; slower gets 504.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Idle keep-alive client connections close after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long to wait for a client's first bytes before treating the
    /// connection as an opaque (server-first) protocol.
    #[serde(with = "humantime_serde")]
    pub sniff_timeout: Duration,
    /// Idle upstream connections kept per calling pod and endpoint.
    pub pool_max_idle_per_endpoint: usize,
    /// Idle upstream connections kept in all.
    pub pool_max_idle_total: usize,
    /// Idle upstream connections close after this.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take to finish before the
    /// agent exits anyway (fit the DaemonSet's termination grace period).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Consecutive failures (connect errors, 5xx) that eject an endpoint for
    /// a while (passive outlier detection); 0 turns it off.
    pub outlier_consecutive_failures: u32,
    /// The first ejection; each next one in a row doubles (up to 64x).
    #[serde(with = "humantime_serde")]
    pub outlier_base_ejection: Duration,
    /// At most this percentage of a service's candidates is ejected at once.
    pub outlier_max_ejection_percent: u32,
    /// Send an idempotent request without a body (GET, HEAD, OPTIONS, PUT,
    /// DELETE) once more when the upstream closed or reset before answering.
    pub retry_idempotent: bool,
    /// How often each external endpoint (`external_lanes`) is probed with a
    /// TCP connect.
    #[serde(with = "humantime_serde")]
    pub external_health_interval: Duration,
    /// A probe that has not connected within this failed.
    #[serde(with = "humantime_serde")]
    pub external_health_timeout: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            mode: RedirectMode::Socket,
            tproxy_listen: SocketAddr::from(([0, 0, 0, 0], 15006)),
            listen: SocketAddr::from(([0, 0, 0, 0], 15001)),
            listen_v6: None,
            redirect_ipv4: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            redirect_ipv6: None,
            socket_mark: 0x4c57,
            upstream_source: UpstreamSource::Pod,
            max_header_bytes: 64 * 1024,
            connect_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            sniff_timeout: Duration::from_millis(300),
            pool_max_idle_per_endpoint: 64,
            pool_max_idle_total: 1024,
            pool_idle_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(20),
            outlier_consecutive_failures: 5,
            outlier_base_ejection: Duration::from_secs(10),
            outlier_max_ejection_percent: 50,
            retry_idempotent: true,
            external_health_interval: Duration::from_secs(2),
            external_health_timeout: Duration::from_millis(500),
        }
    }
}

/// How a request's tag is found: the first of `headers` present, else the
/// `baggage_key` member of the W3C `baggage` header, else (with
/// `inherit_caller_tag`) the calling pod's own tag.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TagConfig {
    /// Tag headers, lowercase, in order of precedence. The first one is the
    /// header the router writes upstream.
    pub headers: Vec<HeaderName>,
    /// Key of the W3C `baggage` member that carries a tag.
    pub baggage_key: String,
    /// Requests without a tag take the calling pod's tag.
    pub inherit_caller_tag: bool,
    /// The pod label holding a pod's tag (used by the Kubernetes source).
    pub pod_label: String,
    /// If not empty, the only tags requests may ask for: any other tag in a
    /// header, baggage member or match rule is ignored (and not written
    /// upstream).
    pub allowed: Vec<Tag>,
    /// Ignore (and do not forward) tags in requests whose caller is not a
    /// known enrolled pod (e.g. traffic that reached the router by another
    /// redirect), so an outside client cannot pick a lane.
    pub strip_from_unknown_callers: bool,
}

impl Default for TagConfig {
    fn default() -> Self {
        Self {
            headers: vec![HeaderName("x-mse-tag".into())],
            baggage_key: "x-mse-tag".into(),
            inherit_caller_tag: true,
            pod_label: "laneway.io/tag".into(),
            allowed: Vec::new(),
            strip_from_unknown_callers: true,
        }
    }
}

/// Where the programs attach.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BpfConfig {
    /// The cgroup v2 directory to attach to; default: the cgroup v2 root found
    /// in `/proc/self/mountinfo`. Tests use a child cgroup.
    pub cgroup: Option<PathBuf>,
    /// The bpffs directory where maps and links are pinned, so the programs
    /// and their state outlive an agent restart. Uninstalling removes it.
    pub pin_path: PathBuf,
    /// How the TC program attaches to pods' veths (TC mode).
    pub tc_attach: TcAttach,
}

impl Default for BpfConfig {
    fn default() -> Self {
        Self {
            cgroup: None,
            pin_path: PathBuf::from("/sys/fs/bpf/laneway"),
            tc_attach: TcAttach::Auto,
        }
    }
}

/// How the TC program attaches to a veth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    /// TCX on Linux 6.6 and newer, else netlink.
    #[default]
    Auto,
    /// A TCX link, after the programs already there (Linux 6.6+).
    Tcx,
    /// A clsact filter at laneway's own priority (0x4c57), after lower
    /// priorities (the way older CNIs attach).
    Netlink,
}

/// The Kubernetes source.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeConfig {
    /// Namespaces with this label set to `true` are enrolled; a pod with the
    /// same label set to `false` opts out.
    pub namespace_label: String,
    /// Where the host's `/proc` is (in a container: a host mount). Each local
    /// pod's network namespace is found through a process of the pod (its
    /// cgroup names the pod UID), then `PROC/PID/ns/net`.
    pub proc_root: PathBuf,
    /// Changes arriving within this window are applied as one snapshot.
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
}

impl Default for KubeConfig {
    fn default() -> Self {
        Self {
            namespace_label: "laneway.io/enabled".into(),
            proc_root: PathBuf::from("/proc"),
            debounce: Duration::from_millis(100),
        }
    }
}

/// The local admin endpoint.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// HTTP listener for `/healthz`, `/readyz` and `/metrics` (local by
    /// default; no secrets are served). `null` turns it off.
    pub listen: Option<SocketAddr>,
    /// Unix socket of the JSON admin API the CLI talks to (mode 0600: root
    /// only).
    pub socket: PathBuf,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 15020))),
            socket: PathBuf::from(crate::admin::api::DEFAULT_SOCKET),
        }
    }
}

/// A Service.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Name.
    pub name: Name,
    /// Namespace.
    #[serde(default = "default_namespace")]
    pub namespace: Name,
    /// ClusterIPs (IPv4 and/or IPv6).
    pub vips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Gray-release policy (the annotations' fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
}

/// A Service port.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    /// Optional port name.
    #[serde(default)]
    pub name: Option<String>,
    /// The port on the VIP.
    pub port: Port,
    /// The port on the endpoints; default: `port`.
    #[serde(default)]
    pub target_port: Option<Port>,
    /// `http`, `tcp` (opaque, never parsed) or `auto` (default: sniff).
    #[serde(default)]
    pub protocol: AppProtocol,
}

/// What a service port speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// Look at the first bytes of each connection.
    #[default]
    Auto,
    /// HTTP/1.x (or HTTP/2 when the client starts with its preface).
    Http,
    /// HTTP/2 with prior knowledge (h2c), e.g. gRPC: every stream routed.
    #[serde(alias = "grpc")]
    Http2,
    /// Anything else: passed through at L4.
    Tcp,
}

impl fmt::Display for AppProtocol {
    /// As in the file: `auto`, `http`, `http2`, `tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AppProtocol::Auto => "auto",
            AppProtocol::Http => "http",
            AppProtocol::Http2 => "http2",
            AppProtocol::Tcp => "tcp",
        })
    }
}

/// An endpoint of a Service.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The pod's IP.
    pub ip: IpAddr,
    /// The pod's tag; none = base.
    #[serde(default)]
    pub tag: Option<Tag>,
    /// Serving (ready, or terminating but still able to serve).
    #[serde(default = "yes")]
    pub serving: bool,
    /// Terminating: gets no new requests.
    #[serde(default)]
    pub terminating: bool,
    /// Optional name, for people (e.g. the pod name).
    #[serde(default)]
    pub name: Option<String>,
    /// The endpoint's port by service port name, where it differs from the
    /// port's `target_port` (EndpointSlices give ports per endpoint).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, Port>,
}

/// A pod on this node to enrol.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    /// Name.
    pub name: Name,
    /// Namespace.
    #[serde(default = "default_namespace")]
    pub namespace: Name,
    /// The pod's tag; none = base.
    #[serde(default)]
    pub tag: Option<Tag>,
    /// The pod's network namespace, e.g. `/run/netns/client` or `/proc/PID/ns/net`.
    pub netns: PathBuf,
    /// The pod's IPs, to know the caller of connections that arrive without
    /// laneway's own original-destination record (TC mode).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// TC mode: the pod's host-side veth, where the TC program attaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

fn default_namespace() -> Name {
    Name("default".into())
}

fn yes() -> bool {
    true
}

/// A lane tag: a Kubernetes label value (1-63 of `[A-Za-z0-9._-]`,
/// alphanumeric at both ends).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Tag(String);

impl Tag {
    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Tag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        let ends_ok = s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric());
        if s.is_empty() || s.len() > 63 || !s.chars().all(ok_char) || !ends_ok {
            return Err(format!(
                "invalid tag {s:?}: a tag is a label value, 1-63 characters of \
                 [A-Za-z0-9._-], starting and ending alphanumeric"
            ));
        }
        Ok(Tag(s.to_owned()))
    }
}

/// A Kubernetes object name (DNS-1123 label, also used for namespaces).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if s.is_empty() || s.len() > 253 || !s.chars().all(|c| ok_char(c) || c == '.') {
            return Err(format!(
                "invalid name {s:?}: use lowercase letters, digits, '-' and '.'"
            ));
        }
        Ok(Name(s.to_owned()))
    }
}

/// A lowercase HTTP header name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct HeaderName(String);

impl HeaderName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HeaderName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if s.is_empty() || !s.chars().all(token) {
            return Err(format!("invalid header name {s:?}"));
        }
        Ok(HeaderName(s.to_ascii_lowercase()))
    }
}

/// A TCP port, 1-65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Port(pub u16);

impl TryFrom<u64> for Port {
    type Error = String;
    fn try_from(n: u64) -> Result<Self, String> {
        match u16::try_from(n) {
            Ok(p) if p != 0 => Ok(Port(p)),
            _ => Err(format!("invalid port {n}: must be 1-65535")),
        }
    }
}

/// Deserializes any `FromStr` type from a YAML string, so that its error
/// carries serde_yaml's field path and line.
macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    )*};
}
deserialize_from_str!(Tag, Name, HeaderName);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Port::try_from(u64::deserialize(d)?).map_err(de::Error::custom)
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::parse_file_text(path, &Self::read_file(path)?)
    }

    /// The text of the config file at `path`.
    pub fn read_file(path: &Path) -> Result<String, Error> {
        std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses and validates `text`, read from `path` (named in errors).
    pub fn parse_file_text(path: &Path, text: &str) -> Result<Self, Error> {
        Self::parse(text).map_err(|message| Error::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses and validates config text; the error names field and line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Config =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
                .map_err(describe)?;
        config.validate(text)?;
        Ok(config)
    }

    /// Checks what the types alone cannot: cross-field rules.
    fn validate(&self, text: &str) -> Result<(), String> {
        if self.tags.headers.is_empty() {
            return Err(at(
                text,
                "headers:",
                "tags.headers: name at least one tag header",
            ));
        }
        for (field, ip, hint) in [
            (
                "redirect_ipv4",
                Some(self.router.redirect_ipv4),
                ", or leave it out (auto: the agent derives it at start)",
            ),
            ("redirect_ipv6", self.router.redirect_ipv6, ""),
        ] {
            if let Some(ip) = ip.filter(IpAddr::is_loopback) {
                return Err(at(
                    text,
                    &format!("{field}:"),
                    &format!(
                        "router.{field}: {ip} is a loopback address, which inside a pod's \
                         network namespace is the pod's own, not the node: write the node's \
                         address as pods reach it{hint}"
                    ),
                ));
            }
        }
        if self.router.listen_v6.is_some() != self.router.redirect_ipv6.is_some() {
            return Err(at(
                text,
                "listen_v6:",
                "router.listen_v6 and router.redirect_ipv6 go together: set both or neither",
            ));
        }
        if self.policy.external_lanes.is_some() {
            return Err(at(
                text,
                "external_lanes:",
                "policy.external_lanes: an external lane belongs to one service: \
                 write it in that service's policy (services[].policy.external_lanes)",
            ));
        }
        let mut seen: HashMap<(IpAddr, u16), String> = HashMap::new();
        let mut names: HashMap<(String, String), usize> = HashMap::new();
        for (i, svc) in self.services.iter().enumerate() {
            let id = format!("{}/{}", svc.namespace, svc.name);
            let key = (svc.namespace.0.clone(), svc.name.0.clone());
            if let Some(first) = names.insert(key, i) {
                return Err(at_entry(
                    text,
                    ("services", i),
                    "name:",
                    &format!(
                        "services[{i}].name: service {id} is already defined at services[{first}]"
                    ),
                ));
            }
            if svc.vips.is_empty() {
                return Err(at_entry(
                    text,
                    ("services", i),
                    "vips:",
                    &format!("services[{i}].vips: service {id} needs at least one VIP"),
                ));
            }
            if svc.ports.is_empty() {
                return Err(at_entry(
                    text,
                    ("services", i),
                    "ports:",
                    &format!("services[{i}].ports: service {id} needs at least one port"),
                ));
            }
            for vip in &svc.vips {
                for port in &svc.ports {
                    if let Some(other) = seen.insert((*vip, port.port.0), id.clone()) {
                        return Err(at_entry(
                            text,
                            ("services", i),
                            "vips:",
                            &format!(
                                "services[{i}].vips: {vip} port {} is already used by service {other}",
                                port.port.0
                            ),
                        ));
                    }
                }
            }
        }
        let mut pods: HashMap<(String, String), usize> = HashMap::new();
        for (i, pod) in self.pods.iter().enumerate() {
            self.validate_tc_pod(text, i, pod)?;
            let key = (pod.namespace.0.clone(), pod.name.0.clone());
            if let Some(first) = pods.insert(key, i) {
                return Err(at_entry(
                    text,
                    ("pods", i),
                    "name:",
                    &format!(
                        "pods[{i}].name: pod {}/{} is already defined at pods[{first}]",
                        pod.namespace, pod.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What TC mode needs of a pod in the file: its veth (`interface`, in
    /// `tc` mode the only way its packets are steered) and its IPs (a
    /// transparent connection carries no record of its caller, so the router
    /// knows the pod only by source address; an unknown caller's tags are
    /// ignored, `tags.strip_from_unknown_callers`). Without them the pod's
    /// requests would go to base in silence.
    fn validate_tc_pod(&self, text: &str, i: usize, pod: &Pod) -> Result<(), String> {
        let mode = match self.router.mode {
            RedirectMode::Socket => return Ok(()),
            RedirectMode::Tc => "tc",
            RedirectMode::Both => "both",
        };
        let id = format!("{}/{}", pod.namespace, pod.name);
        if self.router.mode == RedirectMode::Tc && pod.interface.is_none() {
            return Err(at_entry(
                text,
                ("pods", i),
                "name:",
                &format!(
                    "pods[{i}].interface: router.mode tc steers a pod at its host-side veth: \
                     name pod {id}'s"
                ),
            ));
        }
        if pod.ips.is_empty() {
            return Err(at_entry(
                text,
                ("pods", i),
                "name:",
                &format!(
                    "pods[{i}].ips: with router.mode {mode} the router knows a calling pod by \
                     its source address (tags from unknown callers are ignored): list pod \
                     {id}'s IPs"
                ),
            ));
        }
        Ok(())
    }

    /// The node's IPv4 address as pods reach it, for `router.redirect_ipv4:
    /// auto`: the source address the node's routing table picks toward an
    /// enrolled pod (`pods[].ips`), else toward a service endpoint, else
    /// toward the default route (as the kubelet picks a node IP). The first
    /// two are the address the kubelet's probes come from, which a pod must
    /// answer, so pods reach it. Returns the address and what it was found
    /// through; `None` when no IPv4 route gives a non-loopback source.
    /// Call it in the node's network namespace.
    pub fn derive_redirect_ipv4(&self) -> Option<(Ipv4Addr, String)> {
        let pods = self.pods.iter().flat_map(|p| {
            p.ips
                .iter()
                .map(move |ip| (*ip, format!("pod {}/{} ({ip})", p.namespace, p.name)))
        });
        let endpoints = self.services.iter().flat_map(|s| {
            s.endpoints.iter().map(move |e| {
                (
                    e.ip,
                    format!("endpoint {} of {}/{}", e.ip, s.namespace, s.name),
                )
            })
        });
        let default_route = std::iter::once((
            IpAddr::V4(DEFAULT_ROUTE_PROBE),
            "the default route".to_owned(),
        ));
        pods.chain(endpoints)
            .chain(default_route)
            .find_map(|(ip, through)| match ip {
                IpAddr::V4(v4) => source_toward(v4).map(|source| (source, through)),
                IpAddr::V6(_) => None,
            })
    }

    /// Whether a service has an IPv4 VIP (only those are redirected on the
    /// IPv4 path).
    pub fn has_ipv4_vip(&self) -> bool {
        self.services
            .iter()
            .any(|s| s.vips.iter().any(IpAddr::is_ipv4))
    }
}

/// A destination that only the default route covers (TEST-NET-1, never
/// routed on purpose); nothing is sent to it.
const DEFAULT_ROUTE_PROBE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// The source address the kernel picks for packets to `dest` (a UDP
/// `connect` looks up the route and sends nothing); loopback and
/// unspecified answers are no node address.
fn source_toward(dest: Ipv4Addr) -> Option<Ipv4Addr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((dest, 9)).ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(source) if !source.is_loopback() && !source.is_unspecified() => Some(source),
        _ => None,
    }
}

/// `router.redirect_ipv4`: an IP address, or `auto`, held as the unspecified
/// address (which the kernel programs read as "no IPv4 redirect").
mod auto_ip {
    use std::net::{IpAddr, Ipv4Addr};

    use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

    /// Writes `auto` for the unspecified address.
    pub fn serialize<S: Serializer>(ip: &IpAddr, s: S) -> Result<S::Ok, S::Error> {
        match ip.is_unspecified() {
            true => s.serialize_str("auto"),
            false => ip.serialize(s),
        }
    }

    /// Reads `auto` or an address.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "auto" => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            _ => text.parse().map_err(|_| {
                de::Error::custom(format!(
                    "invalid IP address {text:?}: write the node's address or `auto`"
                ))
            }),
        }
    }
}

/// `field.path: what is wrong at line L column C`. serde_yaml alone stops the
/// path at the enclosing mapping for errors raised inside a value;
/// serde_path_to_error has the whole path, serde_yaml the location.
fn describe(e: serde_path_to_error::Error<serde_yaml::Error>) -> String {
    let path = e.path().to_string();
    let inner = e.inner();
    let mut message = inner.to_string();
    // serde_yaml's own rendering is "[path: ]message[ at line L column C]".
    if let Some(loc) = inner.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_owned();
        }
    }
    if let Some((prefix, rest)) = message.split_once(": ")
        && !prefix.contains(' ')
        && path.starts_with(prefix.trim_end_matches('.'))
    {
        message = rest.to_owned();
    }
    let location = inner
        .location()
        .map(|l| format!(" at line {} column {}", l.line(), l.column()))
        .unwrap_or_default();
    if path.is_empty() || path == "." {
        format!("{message}{location}")
    } else {
        format!("{path}: {message}{location}")
    }
}

/// Appends "at line N" for the last line of `text` containing `needle` (the
/// offending entry; serde_yaml reports lines only for type errors).
fn at(text: &str, needle: &str, message: &str) -> String {
    match text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .last()
    {
        Some((n, _)) => format!("{message} at line {}", n + 1),
        None => message.to_owned(),
    }
}

/// Appends "at line N" for entry `index` of the top-level list `section`:
/// the entry's first line containing `key`, else the entry's first line
/// (cross-field errors have no line from serde_yaml). A list written in flow
/// style (`[...]`) gets the section's line.
fn at_entry(text: &str, (section, index): (&str, usize), key: &str, message: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines
        .iter()
        .position(|l| l.strip_prefix(section).is_some_and(|r| r.starts_with(':')))
    else {
        return message.to_owned();
    };
    // The section ends at the next line that starts in column 0.
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with(|c: char| !c.is_whitespace() && c != '#'))
        .map_or(lines.len(), |n| start + 1 + n);
    let body = &lines[start + 1..end];
    let item_indent = body.iter().find_map(|l| {
        l.trim_start()
            .starts_with("- ")
            .then(|| l.len() - l.trim_start().len())
    });
    let entries: Vec<usize> = body
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            Some(l.len() - l.trim_start().len()) == item_indent && l.trim_start().starts_with("- ")
        })
        .map(|(n, _)| start + 1 + n)
        .collect();
    let line = match entries.get(index) {
        Some(&first) => {
            let last = entries.get(index + 1).copied().unwrap_or(end);
            (first..last)
                .find(|&n| {
                    let l = lines[n].trim_start().trim_start_matches("- ");
                    l.starts_with(key)
                        || l.contains(&format!("{{{key}"))
                        || l.contains(&format!(", {key}"))
                })
                .unwrap_or(first)
        }
        None => start,
    };
    format!("{message} at line {}", line + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
router:
  listen: 0.0.0.0:15001
  redirect_ipv4: 10.200.0.1
  connect_timeout: 500ms
services:
  - name: reviews
    vips: [10.96.0.10]
    ports: [{port: 80, target_port: 8080}]
    endpoints:
      - {ip: 10.0.1.2}
      - {ip: 10.0.1.3, tag: joint1}
      - {ip: 10.0.1.4, tag: gray, terminating: true}
pods:
  - {name: client, tag: joint1, netns: /run/netns/client}
"#;

    #[test]
    fn parses_a_good_file_with_defaults() {
        let c = Config::parse(GOOD).expect("valid");
        assert_eq!(c.router.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.router.header_timeout, Duration::from_secs(10));
        assert_eq!(c.services[0].namespace.as_str(), "default");
        assert_eq!(
            c.services[0].endpoints[1].tag.as_ref().map(Tag::as_str),
            Some("joint1")
        );
        assert!(c.services[0].endpoints[2].terminating);
        assert!(c.services[0].endpoints[0].serving);
    }

    #[test]
    fn dumped_config_parses_back() {
        let c = Config::parse(GOOD).expect("valid");
        let dumped = serde_yaml::to_string(&c).expect("serializes");
        let again = Config::parse(&dumped).expect("dump parses");
        assert_eq!(again.services[0].endpoints.len(), 3);
        assert_eq!(again.router.connect_timeout, c.router.connect_timeout);
    }

    #[test]
    fn the_cluster_policy_defaults_to_a_30s_warmup_and_the_dump_shows_it() {
        let thirty = Some(std::time::Duration::from_secs(30));
        let c = Config::parse("{}").expect("an empty config is valid");
        assert_eq!(c.policy.warmup, thirty);
        let dumped = serde_yaml::to_string(&c).expect("serializes");
        assert!(
            dumped.contains("policy:\n  default_lane_mode: permissive\n  warmup: 30s\n"),
            "{dumped}"
        );
        let c = Config::parse("policy: {default_lane_mode: strict}").expect("valid");
        assert_eq!(
            c.policy.warmup, thirty,
            "fields not written keep their default"
        );
        let c = Config::parse("policy: {warmup: 0s}").expect("valid");
        assert_eq!(
            c.policy.warmup,
            Some(std::time::Duration::ZERO),
            "0s turns it off"
        );
    }

    fn error_of(text: &str) -> String {
        Config::parse(text).expect_err("must be rejected")
    }

    #[test]
    fn http2_and_grpc_ports_are_served_as_http2() {
        for protocol in ["http2", "grpc"] {
            let yaml = GOOD.replace(
                "{port: 80, target_port: 8080}",
                &format!("{{port: 80, target_port: 8080, protocol: {protocol}}}"),
            );
            let c = Config::parse(&yaml).expect("valid");
            assert_eq!(
                c.services[0].ports[0].protocol,
                AppProtocol::Http2,
                "{protocol}"
            );
        }
    }

    #[test]
    fn bad_tag_names_field_and_line() {
        let e = error_of(&GOOD.replace(
            "tag: joint1}\n      - {ip: 10.0.1.4",
            "tag: Joint 1}\n      - {ip: 10.0.1.4",
        ));
        assert!(e.contains("services[0].endpoints[1].tag"), "{e}");
        assert!(e.contains("line 12"), "{e}");
        assert!(e.contains("invalid tag \"Joint 1\""), "{e}");
    }

    #[test]
    fn bad_ip_and_port_name_field_and_line() {
        let e = error_of(&GOOD.replace("10.96.0.10", "10.96.0.300"));
        assert!(
            e.contains("services[0].vips[0]") && e.contains("line 8"),
            "{e}"
        );
        let e = error_of(&GOOD.replace("port: 80,", "port: 0,"));
        assert!(
            e.contains("services[0].ports[0].port") && e.contains("must be 1-65535"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_is_an_error() {
        let e = error_of(&GOOD.replace("connect_timeout", "conect_timeout"));
        assert!(
            e.contains("router") && e.contains("conect_timeout") && e.contains("line 5"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_vip_port_is_an_error_with_line() {
        let text =
            format!("{GOOD}\n  - name: other\n    vips: [10.96.0.10]\n    ports: [{{port: 80}}]\n")
                .replace(
                    "pods:\n  - {name: client, tag: joint1, netns: /run/netns/client}\n",
                    "",
                );
        let text = format!("{text}pods: []\n");
        let e = error_of(&text);
        assert!(e.contains("already used by service default/reviews"), "{e}");
        assert!(e.contains("at line"), "{e}");
    }

    #[test]
    fn redirect_ipv4_defaults_to_auto_and_refuses_loopback() {
        let c = Config::parse("services: []\n").expect("valid");
        assert!(c.router.redirect_ipv4.is_unspecified(), "auto by default");
        let dumped = serde_yaml::to_string(&c).expect("serializes");
        assert!(dumped.contains("redirect_ipv4: auto"), "{dumped}");
        let again = Config::parse(&dumped).expect("dump parses");
        assert!(again.router.redirect_ipv4.is_unspecified());
        let e = error_of(&GOOD.replace("10.200.0.1", "127.0.0.1"));
        assert!(
            e.contains("router.redirect_ipv4: 127.0.0.1 is a loopback address")
                && e.contains("line 4"),
            "{e}"
        );
        let e = error_of(&GOOD.replace("10.200.0.1", "node"));
        assert!(
            e.contains("router.redirect_ipv4") && e.contains("`auto`"),
            "{e}"
        );
    }

    #[test]
    fn tc_mode_pods_need_their_veth_and_ips() {
        let tc = |pod: &str| {
            Config::parse(&format!(
                "router: {{mode: tc}}\nservices: []\npods:\n  - {{name: a, netns: /run/netns/a}}\n  \
                 - {pod}\n"
            ))
        };
        let e = tc("{name: b, netns: /run/netns/b, ips: [10.0.0.2]}").unwrap_err();
        assert!(
            e.starts_with("pods[0].interface") && e.ends_with("line 4"),
            "{e}"
        );
        let text = "router: {mode: tc}\npods:\n  - {name: b, netns: /x, interface: v}\n";
        let e = Config::parse(text).unwrap_err();
        assert!(
            e.starts_with("pods[0].ips") && e.contains("default/b") && e.ends_with("line 3"),
            "{e}"
        );
        let both = "router: {mode: both}\npods:\n  - {name: b, netns: /x}\n";
        assert!(Config::parse(both).unwrap_err().starts_with("pods[0].ips"));
        Config::parse(&text.replace("interface: v", "interface: v, ips: [10.0.0.2]"))
            .expect("a TC pod with veth and IPs");
        Config::parse("pods:\n  - {name: b, netns: /x}\n").expect("socket mode needs neither");
    }

    #[test]
    fn a_loopback_route_is_no_node_address() {
        assert_eq!(source_toward(Ipv4Addr::new(127, 0, 0, 9)), None);
        let c = Config::parse(
            "services:\n  - {name: a, vips: [10.96.0.1], ports: [{port: 80}], \
             endpoints: [{ip: 127.0.0.7}]}\n",
        )
        .expect("valid");
        assert!(c.has_ipv4_vip());
        // The loopback endpoint gives nothing; whatever is found comes from
        // the default route of the machine running the test.
        if let Some((_, through)) = c.derive_redirect_ipv4() {
            assert_eq!(through, "the default route");
        }
    }

    #[test]
    fn bad_duration_is_an_error() {
        let e = error_of(&GOOD.replace("500ms", "fast"));
        assert!(e.contains("router.connect_timeout"), "{e}");
    }

    #[test]
    fn bad_policy_names_field_and_line() {
        let text = GOOD.replace(
            "    endpoints:\n",
            "    policy: {canary: 'gray=60,blue=50'}\n    endpoints:\n",
        );
        let e = error_of(&text);
        assert!(
            e.contains("services[0].policy.canary")
                && e.contains("more than 100%")
                && e.contains("line 10"),
            "{e}"
        );
        let text = GOOD.replace(
            "    endpoints:\n",
            "    policy: {match: [{header: a, regex: '(', tag: gray}]}\n    endpoints:\n",
        );
        let e = error_of(&text);
        assert!(
            e.contains("services[0].policy.match") && e.contains("regex"),
            "{e}"
        );
        let text = GOOD.replace(
            "    endpoints:\n",
            "    policy: {allow_from: 'namespaces=shop;lanes=gray!'}\n    endpoints:\n",
        );
        let e = error_of(&text);
        assert!(
            e.contains("services[0].policy.allow_from")
                && e.contains("lanes: invalid tag \"gray!\"")
                && e.contains("line 10"),
            "{e}"
        );
        let ok = Config::parse(&GOOD.replace(
            "    endpoints:\n",
            "    policy: {canary: gray=10, lanes: gray=strict}\n    endpoints:\n",
        ))
        .expect("valid policy");
        assert!(ok.services[0].policy.is_some());
    }

    #[test]
    fn bad_external_lanes_and_pinning_name_field_and_bad_part() {
        let text = GOOD.replace(
            "    endpoints:\n",
            "    policy: {external_lanes: 'dev-alice=10.8.0.5'}\n    endpoints:\n",
        );
        let e = error_of(&text);
        assert!(
            e.contains("services[0].policy.external_lanes")
                && e.contains("\"10.8.0.5\" is not IP:PORT")
                && e.contains("line 10"),
            "{e}"
        );
        let e = error_of(&GOOD.replace(
            "    endpoints:\n",
            "    policy: {endpoint_pinning: maybe}\n    endpoints:\n",
        ));
        assert!(e.contains("services[0].policy.endpoint_pinning"), "{e}");
        let e = error_of(&format!(
            "policy: {{external_lanes: 'dev=10.8.0.5:80'}}\n{GOOD}"
        ));
        assert!(
            e.contains("policy.external_lanes") && e.contains("belongs to one service"),
            "{e}"
        );
        let ok = Config::parse(&GOOD.replace(
            "    endpoints:\n",
            "    policy: {external_lanes: 'dev=10.8.0.5:80', endpoint_pinning: true}\n    endpoints:\n",
        ))
        .expect("valid policy");
        assert!(ok.services[0].policy.is_some());
    }

    #[test]
    fn cross_field_errors_name_the_line_of_the_entry() {
        let text = "\
services:
  - name: ratings
    vips: [10.96.0.11]
    ports: [{port: 80}]
    endpoints:
      - {ip: 10.0.1.2, name: reviews-1}
  - name: reviews
    vips: [10.96.0.10]
    ports: []
    endpoints:
      - {ip: 10.0.1.3, name: reviews-2}
pods:
  - {name: a, netns: /run/netns/a}
  - {name: a, netns: /run/netns/b}
";
        let err = Config::parse(text).unwrap_err().to_string();
        assert!(err.contains("services[1].ports"), "{err}");
        assert!(err.ends_with("at line 9"), "{err}");
        let err = Config::parse(&text.replace("ports: []", "ports: [{port: 80}]"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pods[1].name") && err.ends_with("at line 14"),
            "{err}"
        );
        let err = Config::parse(
            &text
                .replace("ports: []", "ports: [{port: 80}]")
                .replace("10.96.0.10]", "10.96.0.11]"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("services[1].vips"), "{err}");
        assert!(err.ends_with("at line 8"), "{err}");
    }

    #[test]
    fn the_readme_example_is_a_valid_config_naming_every_field() {
        let readme = include_str!("../../README.md");
        let start = readme.find("## Configuration").expect("section");
        let block = &readme[start..];
        let yaml_start = block.find("```yaml\n").expect("yaml block") + "```yaml\n".len();
        let yaml = &block[yaml_start..];
        let yaml = &yaml[..yaml.find("```").expect("block end")];
        let c = Config::parse(yaml).expect("the README's config parses");
        assert!(c.services[0].policy.is_some());
        // Every field the agent knows (its dump, defaults filled in) must be
        // written out in the README's example, so a new field cannot go
        // undocumented.
        fn keys(value: &serde_yaml::Value, out: &mut Vec<String>) {
            match value {
                serde_yaml::Value::Mapping(m) => {
                    for (k, v) in m {
                        if let Some(k) = k.as_str() {
                            out.push(k.to_owned());
                        }
                        keys(v, out);
                    }
                }
                serde_yaml::Value::Sequence(items) => items.iter().for_each(|v| keys(v, out)),
                _ => {}
            }
        }
        let mut fields = Vec::new();
        keys(&serde_yaml::to_value(&c).expect("dump"), &mut fields);
        let missing: Vec<_> = fields
            .iter()
            .filter(|k| !yaml.contains(&format!("{k}:")))
            .collect();
        assert!(missing.is_empty(), "README example lacks {missing:?}");
    }
}
