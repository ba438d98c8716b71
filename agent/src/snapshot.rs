//! The immutable view of the cluster that the router and the BPF maps are
//! built from.
//!
//! Every source of truth (the static file, or the Kubernetes API)
//! produces a [`Snapshot`]; the reconciler writes it to the maps and swaps it
//! into the router atomically, so a request sees one consistent state.
//! Per-endpoint load (requests in flight) lives outside the snapshot's data in
//! shared [`EndpointLoad`]s, carried over from the previous snapshot, so a
//! reload does not reset load balancing.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    config::{AppProtocol, Config, Tag},
    policy::Policy,
};

/// A service's identity: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Milliseconds on a monotonic clock private to this process (0 = start).
pub fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// `eligible_since_ms` of an endpoint that was there from the start: warm.
const WARM: u64 = 0;
/// `eligible_since_ms` of an endpoint that takes no requests now.
const NOT_ELIGIBLE: u64 = u64::MAX;

/// Passive outlier detection settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierRules {
    /// Consecutive failures (connect errors, 5xx) that eject an endpoint; 0 = off.
    pub consecutive_failures: u32,
    /// First ejection; each next one doubles, up to 64 times this.
    pub base_ejection: Duration,
    /// At most this share of a service's candidates is ejected at once.
    pub max_ejection_percent: u32,
}

impl Default for OutlierRules {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection_percent: 50,
        }
    }
}

/// Load and health shared by every snapshot that has this endpoint address,
/// so a reload resets neither load balancing, warm-up nor ejections.
#[derive(Debug)]
pub struct EndpointLoad {
    /// Requests (and L4 streams) in flight to the endpoint.
    pub in_flight: AtomicU32,
    /// When it last became able to take requests ([`now_ms`]); `WARM` or
    /// `NOT_ELIGIBLE`.
    eligible_since_ms: AtomicU64,
    /// Consecutive failures.
    failures: AtomicU32,
    /// Ejections in a row (each doubles the next).
    ejections: AtomicU32,
    /// Ejected until ([`now_ms`]); 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// An external endpoint's last health check connected (false until
    /// its first one does).
    reachable: AtomicBool,
}

impl EndpointLoad {
    fn new(since: u64) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            eligible_since_ms: AtomicU64::new(since),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            reachable: AtomicBool::new(false),
        }
    }

    /// Whether the endpoint's last health check connected (external
    /// endpoints only: pod endpoints are not probed).
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Records a health check; returns whether the result changed.
    pub fn set_reachable(&self, reachable: bool) -> bool {
        self.reachable.swap(reachable, Ordering::Relaxed) != reachable
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn set_eligible(&self, eligible: bool, warm: bool) {
        let since = self.eligible_since_ms.load(Ordering::Relaxed);
        match (eligible, since) {
            (true, NOT_ELIGIBLE) => {
                let now = if warm { WARM } else { now_ms() };
                self.eligible_since_ms.store(now, Ordering::Relaxed);
            }
            (false, _) => self
                .eligible_since_ms
                .store(NOT_ELIGIBLE, Ordering::Relaxed),
            _ => {}
        }
    }

    /// The slow-start weight: from 5% to 100% over `window` since the
    /// endpoint became able to take requests.
    pub fn warmup_weight(&self, window: Duration) -> f64 {
        let since = self.eligible_since_ms.load(Ordering::Relaxed);
        if window.is_zero() || since == WARM || since == NOT_ELIGIBLE {
            return 1.0;
        }
        let age = now_ms().saturating_sub(since) as f64;
        (age / window.as_millis() as f64).clamp(0.05, 1.0)
    }

    /// Whether the endpoint is ejected now.
    pub fn ejected(&self) -> bool {
        now_ms() < self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// A connect error or a 5xx: ejects after enough in a row. Returns
    /// whether this failure ejected the endpoint.
    pub fn record_failure(&self, rules: &OutlierRules) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if rules.consecutive_failures == 0
            || failures < rules.consecutive_failures
            || self.ejected()
        {
            return false;
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(6);
        let period = rules.base_ejection.as_millis() as u64 * (1 << n);
        self.ejected_until_ms
            .store(now_ms() + period, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        true
    }

    /// A good answer: the failure streak and the ejection backoff reset.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 && !self.ejected() {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }
}

/// One endpoint of one service port.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Where to connect: the pod IP and the target port.
    pub addr: SocketAddr,
    /// The pod's tag; `None` = base.
    pub tag: Option<Tag>,
    /// Serving (ready, or terminating but still able to serve).
    pub serving: bool,
    /// Terminating: no new requests.
    pub terminating: bool,
    /// Optional name for people (the pod name).
    pub name: Option<String>,
    /// Outside the cluster (a lane's `external_lanes` address): health
    /// checked by the agent, never in the kernel's lanes.
    pub external: bool,
    /// Shared load counters.
    pub load: Arc<EndpointLoad>,
}

impl Backend {
    /// Whether new requests may go here.
    pub fn eligible(&self) -> bool {
        self.serving && !self.terminating
    }

    /// Whether it can take a request now: a pod endpoint always (its
    /// conditions are in the snapshot), an external one while its health
    /// checks connect.
    pub fn available(&self) -> bool {
        !self.external || self.load.reachable()
    }

    /// Its condition as the source and the health checks give it (the
    /// endpoints gauge counts by it): `terminating`, `not-serving`,
    /// `serving`, or for an external endpoint `external` (health checks
    /// connect) or `external-down`.
    pub fn condition(&self) -> &'static str {
        match (self.external, self.available()) {
            (true, true) => "external",
            (true, false) => "external-down",
            _ if self.terminating => "terminating",
            _ if self.serving => "serving",
            _ => "not-serving",
        }
    }

    /// Its state for people (the lane map, `laneway services`): its
    /// [`condition`](Backend::condition), with a serving endpoint shown
    /// `ejected` (after consecutive failures) or `warming` (slow start over
    /// `warmup`: not yet its full share).
    pub fn state(&self, warmup: Duration) -> &'static str {
        match self.condition() {
            "serving" if self.load.ejected() => "ejected",
            "serving" if self.load.warmup_weight(warmup) < 1.0 => "warming",
            condition => condition,
        }
    }
}

/// One port of a service, with its endpoints and precomputed candidate sets.
#[derive(Clone, Debug)]
pub struct ServicePort {
    /// Index of the service in [`Snapshot::services`].
    pub service: usize,
    /// The port on the VIP.
    pub port: u16,
    /// The port on the endpoints.
    pub target_port: u16,
    /// What the port speaks.
    pub protocol: AppProtocol,
    /// All endpoints, in the source's order.
    pub backends: Vec<Backend>,
    /// Eligible endpoints by tag (indices into `backends`), external ones
    /// included (whatever their health: see [`Backend::available`]).
    pub by_tag: HashMap<Tag, Vec<usize>>,
    /// Whether any backend is external (then a lane's candidates are
    /// checked for health).
    pub has_external: bool,
    /// Eligible untagged endpoints.
    pub base: Vec<usize>,
    /// Every eligible endpoint in the cluster (external ones serve only
    /// their lane).
    pub eligible: Vec<usize>,
}

/// A service.
#[derive(Clone, Debug)]
pub struct Service {
    /// Identity.
    pub id: ServiceId,
    /// ClusterIPs.
    pub vips: Vec<IpAddr>,
    /// Indices into [`Snapshot::ports`].
    pub ports: Vec<usize>,
    /// The gray-release policy in force (its own over the cluster defaults).
    pub policy: Arc<Policy>,
    /// Why the policy the source gave could not be used (the last good one
    /// stays in force).
    pub policy_error: Option<String>,
    /// The lanes the configuration knows for this service: its endpoints'
    /// tags (whatever their condition), the tags its policy names and the
    /// allowed tags. Built once here, so labelling a request's metrics
    /// (see [`Service::metric_tag`]) is one lookup.
    pub known_lanes: HashSet<Tag>,
}

/// A pod on this node to enrol.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The pod's tag; `None` = base.
    pub tag: Option<Tag>,
    /// Its network namespace.
    pub netns: PathBuf,
    /// Its IPs.
    pub ips: Vec<IpAddr>,
    /// Its host-side veth (TC mode).
    pub interface: Option<String>,
}

impl fmt::Display for Pod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How tags are resolved (from the config).
#[derive(Clone, Debug)]
pub struct TagRules {
    /// Tag headers in precedence order, lowercase; the first is written upstream.
    pub headers: Vec<String>,
    /// The W3C baggage member carrying a tag.
    pub baggage_key: String,
    /// Untagged requests take the caller pod's tag.
    pub inherit_caller_tag: bool,
    /// If not empty, the only tags a request may ask for.
    pub allowed: Vec<Tag>,
    /// Requests from unknown callers carry no tag.
    pub strip_from_unknown_callers: bool,
}

impl TagRules {
    /// Whether a request may be put in lane `tag` (by a header, a baggage
    /// member or a match rule): the allowlist is empty or names it.
    pub fn allows(&self, tag: &Tag) -> bool {
        self.allowed.is_empty() || self.allowed.contains(tag)
    }

    /// The header the resolved tag is written into upstream: the first tag
    /// header (the config requires one).
    pub fn upstream_header(&self) -> &str {
        self.headers.first().map_or("", String::as_str)
    }
}

/// The metric `tag` label of requests in a lane the service does not know
/// (see [`Service::metric_tag`]). It starts with `_`, which no tag can, so
/// it never clashes with a real lane.
pub const OTHER_LANE: &str = "_other";

/// The whole view.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Where it came from, for people (`file:/etc/laneway.yaml`).
    pub source: String,
    /// When it was built.
    pub built_at: Instant,
    /// Services.
    pub services: Vec<Service>,
    /// Service ports.
    pub ports: Vec<ServicePort>,
    /// Port index by VIP:port.
    pub by_vip: HashMap<SocketAddr, usize>,
    /// Pods to enrol.
    pub pods: Vec<Pod>,
    /// Pod index by IP.
    pub pods_by_ip: HashMap<IpAddr, usize>,
    /// Tag rules.
    pub tags: TagRules,
    /// Passive outlier detection.
    pub outlier: OutlierRules,
}

impl Snapshot {
    /// Builds a snapshot from a static config; endpoint load counters are
    /// carried over from `previous` for addresses it already had. With
    /// `warm`, endpoints new to this snapshot count as warm (the first full
    /// state after start: they were serving before the agent came).
    pub fn from_config(
        config: &Config,
        source: String,
        previous: Option<&Snapshot>,
        warm: bool,
    ) -> Self {
        let mut loads: HashMap<SocketAddr, Arc<EndpointLoad>> = previous
            .map(|p| {
                p.ports
                    .iter()
                    .flat_map(|port| port.backends.iter())
                    .map(|b| (b.addr, b.load.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut services = Vec::new();
        let mut ports = Vec::new();
        let mut by_vip = HashMap::new();
        for svc in &config.services {
            let service = services.len();
            let spec = svc.policy.clone().unwrap_or_default().over(&config.policy);
            let policy = Policy::from(&spec);
            let mut port_indices = Vec::new();
            for p in &svc.ports {
                let target_port = p.target_port.unwrap_or(p.port).0;
                let mut backends = svc
                    .endpoints
                    .iter()
                    .map(|e| {
                        let port = p
                            .name
                            .as_ref()
                            .and_then(|name| e.ports.get(name))
                            .map_or(target_port, |port| port.0);
                        let addr = SocketAddr::new(e.ip, port);
                        let load = loads
                            .entry(addr)
                            .or_insert_with(|| Arc::new(EndpointLoad::new(NOT_ELIGIBLE)))
                            .clone();
                        load.set_eligible(e.serving && !e.terminating, warm);
                        Backend {
                            addr,
                            tag: e.tag.clone(),
                            serving: e.serving,
                            terminating: e.terminating,
                            name: e.name.clone(),
                            external: false,
                            load,
                        }
                    })
                    .collect::<Vec<_>>();
                backends.extend(external_backends(&policy, &mut loads));
                let index = ports.len();
                ports.push(ServicePort::new(
                    service,
                    p.port.0,
                    target_port,
                    p.protocol,
                    backends,
                ));
                for vip in &svc.vips {
                    by_vip.insert(SocketAddr::new(*vip, p.port.0), index);
                }
                port_indices.push(index);
            }
            let known_lanes = svc
                .endpoints
                .iter()
                .filter_map(|e| e.tag.as_ref())
                .chain(policy.named_lanes())
                .chain(&config.tags.allowed)
                .cloned()
                .collect();
            services.push(Service {
                id: ServiceId {
                    namespace: svc.namespace.to_string(),
                    name: svc.name.to_string(),
                },
                vips: svc.vips.clone(),
                ports: port_indices,
                policy: Arc::new(policy),
                policy_error: None,
                known_lanes,
            });
        }
        let pods: Vec<Pod> = config
            .pods
            .iter()
            .map(|p| Pod {
                namespace: p.namespace.to_string(),
                name: p.name.to_string(),
                tag: p.tag.clone(),
                netns: p.netns.clone(),
                ips: p.ips.clone(),
                interface: p.interface.clone(),
            })
            .collect();
        let pods_by_ip = pods
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.ips.iter().map(move |ip| (*ip, i)))
            .collect();
        Snapshot {
            source,
            built_at: Instant::now(),
            services,
            ports,
            by_vip,
            pods,
            pods_by_ip,
            outlier: OutlierRules {
                consecutive_failures: config.router.outlier_consecutive_failures,
                base_ejection: config.router.outlier_base_ejection,
                max_ejection_percent: config.router.outlier_max_ejection_percent,
            },
            tags: TagRules {
                headers: config
                    .tags
                    .headers
                    .iter()
                    .map(|h| h.as_str().to_owned())
                    .collect(),
                baggage_key: config.tags.baggage_key.clone(),
                inherit_caller_tag: config.tags.inherit_caller_tag,
                allowed: config.tags.allowed.clone(),
                strip_from_unknown_callers: config.tags.strip_from_unknown_callers,
            },
        }
    }

    /// Every external endpoint of every service, each once: what the
    /// health checks probe.
    pub fn external_endpoints(&self) -> Vec<(SocketAddr, Arc<EndpointLoad>)> {
        let mut seen = HashSet::new();
        self.ports
            .iter()
            .flat_map(|p| p.backends.iter().filter(|b| b.external))
            .filter(|b| seen.insert(b.addr))
            .map(|b| (b.addr, b.load.clone()))
            .collect()
    }

    /// How many endpoints the services have: each endpoint (address) of a
    /// service once, however many of its ports it serves. `laneway status`
    /// and `laneway config check` both count so.
    pub fn endpoint_count(&self) -> usize {
        self.services
            .iter()
            .map(|s| {
                s.ports
                    .iter()
                    .flat_map(|&p| self.ports[p].backends.iter().map(|b| b.addr.ip()))
                    .collect::<HashSet<_>>()
                    .len()
            })
            .sum()
    }

    /// Each service's endpoints by state ([`Backend::condition`]: `serving`,
    /// `terminating`, `not-serving`, `external`, `external-down`), keyed
    /// by `namespace/name`: each endpoint once,
    /// however many of the service's ports it serves, as
    /// [`Snapshot::endpoint_count`] counts them.
    pub fn endpoint_states(&self) -> std::collections::BTreeMap<(String, &'static str), u64> {
        let mut states = std::collections::BTreeMap::new();
        for service in &self.services {
            let mut seen = HashSet::new();
            for backend in service.ports.iter().flat_map(|&p| &self.ports[p].backends) {
                if !seen.insert(backend.addr.ip()) {
                    continue;
                }
                *states
                    .entry((service.id.to_string(), backend.condition()))
                    .or_default() += 1;
            }
        }
        states
    }

    /// The service port behind a VIP:port. IPv4-mapped IPv6 addresses match
    /// their IPv4 VIP.
    pub fn port_for(&self, vip: SocketAddr) -> Option<&ServicePort> {
        let vip = match vip {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
                None => vip,
            },
            v4 => v4,
        };
        self.by_vip.get(&vip).map(|&i| &self.ports[i])
    }

    /// The service a port belongs to.
    pub fn service_of(&self, port: &ServicePort) -> &Service {
        &self.services[port.service]
    }
}

impl Service {
    /// The `tag` label of a request to this service in lane `tag`: the tag
    /// when it is one of the service's [`Service::known_lanes`],
    /// [`OTHER_LANE`] for any other tag, empty for none. Request tags come
    /// from clients, so labelling them verbatim would let one pod create a
    /// series per random tag; this bounds the series by the configuration.
    pub fn metric_tag(&self, tag: Option<&Tag>) -> String {
        match tag {
            None => String::new(),
            Some(tag) if self.known_lanes.contains(tag) => tag.to_string(),
            Some(_) => OTHER_LANE.to_owned(),
        }
    }
}

impl ServicePort {
    fn new(
        service: usize,
        port: u16,
        target_port: u16,
        protocol: AppProtocol,
        backends: Vec<Backend>,
    ) -> Self {
        let mut by_tag: HashMap<Tag, Vec<usize>> = HashMap::new();
        let mut base = Vec::new();
        let mut eligible = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            if !b.eligible() {
                continue;
            }
            if !b.external {
                eligible.push(i);
            }
            match &b.tag {
                Some(tag) => by_tag.entry(tag.clone()).or_default().push(i),
                None => base.push(i),
            }
        }
        let has_external = backends.iter().any(|b| b.external);
        Self {
            service,
            port,
            target_port,
            protocol,
            backends,
            by_tag,
            has_external,
            base,
            eligible,
        }
    }

    /// Whether a lane (indices into `backends`) has an endpoint that can
    /// take a request now: any, unless some are external and down.
    pub fn any_available(&self, lane: &[usize]) -> bool {
        match self.has_external {
            false => !lane.is_empty(),
            true => lane.iter().any(|&i| self.backends[i].available()),
        }
    }
}

/// The backends of a service's external lanes: the same on every port (the
/// address names its own port), serving, with their load and health carried
/// over by address like every endpoint's.
fn external_backends<'a>(
    policy: &'a Policy,
    loads: &'a mut HashMap<SocketAddr, Arc<EndpointLoad>>,
) -> impl Iterator<Item = Backend> + 'a {
    policy
        .external_lanes
        .0
        .iter()
        .flat_map(|(tag, addrs)| addrs.iter().map(move |addr| (tag, *addr)))
        .map(|(tag, addr)| {
            let load = loads
                .entry(addr)
                .or_insert_with(|| Arc::new(EndpointLoad::new(WARM)))
                .clone();
            Backend {
                addr,
                tag: Some(tag.clone()),
                serving: true,
                terminating: false,
                name: None,
                external: true,
                load,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            r#"
services:
  - name: reviews
    vips: [10.96.0.10, "fd00:96::10"]
    ports: [{port: 80, target_port: 8080}, {port: 443}]
    endpoints:
      - {ip: 10.0.1.2}
      - {ip: 10.0.1.3, tag: joint1}
      - {ip: 10.0.1.4, tag: gray, terminating: true}
      - {ip: 10.0.1.5, serving: false}
pods:
  - {name: client, tag: joint1, netns: /run/netns/client, ips: [10.0.0.2]}
"#,
        )
        .expect("valid")
    }

    #[test]
    fn indexes_ports_by_every_vip_and_v4_mapped() {
        let s = Snapshot::from_config(&config(), "test".into(), None, true);
        let by4 = s.port_for("10.96.0.10:80".parse().unwrap()).expect("v4");
        assert_eq!(by4.target_port, 8080);
        let mapped = s
            .port_for("[::ffff:10.96.0.10]:80".parse().unwrap())
            .expect("mapped");
        assert_eq!(mapped.target_port, 8080);
        assert_eq!(
            s.port_for("[fd00:96::10]:443".parse().unwrap())
                .expect("v6")
                .target_port,
            443
        );
        assert!(s.port_for("10.96.0.10:81".parse().unwrap()).is_none());
        assert_eq!(s.pods_by_ip[&"10.0.0.2".parse::<IpAddr>().unwrap()], 0);
    }

    #[test]
    fn candidate_sets_leave_out_terminating_and_not_serving() {
        let s = Snapshot::from_config(&config(), "test".into(), None, true);
        let p = s.port_for("10.96.0.10:80".parse().unwrap()).expect("port");
        assert_eq!(p.base, vec![0]);
        assert_eq!(p.eligible, vec![0, 1]);
        assert_eq!(p.by_tag.len(), 1, "gray is terminating: no gray candidates");
    }

    #[test]
    fn metric_tags_are_lanes_the_configuration_knows_and_other_for_the_rest() {
        let yaml = r#"
tags: {allowed: [gray, joint1, joint9, canary1, matched, strictly]}
services:
  - name: reviews
    vips: [10.96.0.10]
    ports: [{port: 80}]
    policy: {canary: canary1=10, match: [{header: x-beta, exact: "1", tag: matched}], lanes: strictly=strict}
    endpoints:
      - {ip: 10.0.1.2}
      - {ip: 10.0.1.3, tag: joint1}
      - {ip: 10.0.1.4, tag: gray, terminating: true}
  - name: ratings
    vips: [10.96.0.11]
    ports: [{port: 80}]
    endpoints:
      - {ip: 10.0.1.5, tag: joint2}
"#;
        let s = Snapshot::from_config(&Config::parse(yaml).expect("valid"), "t".into(), None, true);
        let reviews = &s.services[0];
        let label = |tag: &str| reviews.metric_tag(Some(&tag.parse().unwrap()));
        // Carried by an endpoint (also a terminating one), named by the
        // policy, or allowed by the operator: the lane's own name.
        for known in ["joint1", "gray", "canary1", "matched", "strictly", "joint9"] {
            assert_eq!(label(known), known);
        }
        // Another service's lane, or anything a client makes up: `_other`.
        for unknown in ["joint2", "x7f3a", "other"] {
            assert_eq!(label(unknown), OTHER_LANE, "{unknown}");
        }
        assert_eq!(reviews.metric_tag(None), "");
        // Without an allowlist only the service's own lanes keep their name.
        let open = Config::parse(&yaml.replacen(
            "tags: {allowed: [gray, joint1, joint9, canary1, matched, strictly]}",
            "",
            1,
        ))
        .expect("valid");
        let s = Snapshot::from_config(&open, "t".into(), None, true);
        assert_eq!(
            s.services[0].metric_tag(Some(&"joint9".parse().unwrap())),
            OTHER_LANE
        );
    }

    #[test]
    fn services_warm_up_by_default_but_the_first_snapshot_is_warm() {
        let first = Snapshot::from_config(&config(), "test".into(), None, true);
        let window = first.services[0].policy.warmup;
        assert_eq!(window, Duration::from_secs(30), "the cluster default");
        let mut more = config();
        let mut added = more.services[0].endpoints[0].clone();
        added.ip = "10.0.1.6".parse().unwrap();
        more.services[0].endpoints.push(added);
        let second = Snapshot::from_config(&more, "test".into(), Some(&first), false);
        let backends = &second.ports[0].backends;
        assert_eq!(
            backends[0].load.warmup_weight(window),
            1.0,
            "there from the start"
        );
        assert!(
            backends[4].load.warmup_weight(window) < 0.1,
            "new: warming up"
        );
    }

    #[test]
    fn endpoint_states_for_people() {
        let first = Snapshot::from_config(&config(), "test".into(), None, true);
        let mut more = config();
        let mut added = more.services[0].endpoints[0].clone();
        added.ip = "10.0.1.6".parse().unwrap();
        more.services[0].endpoints.push(added);
        let second = Snapshot::from_config(&more, "test".into(), Some(&first), false);
        let window = second.services[0].policy.warmup;
        let states: Vec<&str> = second.ports[0]
            .backends
            .iter()
            .map(|b| b.state(window))
            .collect();
        assert_eq!(
            states,
            [
                "serving",
                "serving",
                "terminating",
                "not-serving",
                "warming"
            ]
        );
        let rules = OutlierRules {
            consecutive_failures: 1,
            ..OutlierRules::default()
        };
        assert!(second.ports[0].backends[1].load.record_failure(&rules));
        assert_eq!(second.ports[0].backends[1].state(window), "ejected");
        assert_eq!(
            second.ports[0].backends[4].state(Duration::ZERO),
            "serving",
            "no warm-up window: at full weight at once"
        );
    }

    #[test]
    fn an_endpoint_counts_once_whatever_its_ports() {
        let s = Snapshot::from_config(&config(), "test".into(), None, true);
        assert_eq!(s.ports.iter().map(|p| p.backends.len()).sum::<usize>(), 8);
        assert_eq!(s.endpoint_count(), 4, "4 endpoints behind 2 ports");
        let states: u64 = s.endpoint_states().values().sum();
        assert_eq!(states, 4, "the endpoints gauge counts them alike");
    }

    #[test]
    fn load_counters_survive_a_rebuild() {
        let first = Snapshot::from_config(&config(), "test".into(), None, true);
        let p = first
            .port_for("10.96.0.10:80".parse().unwrap())
            .expect("port");
        p.backends[0].load.in_flight.fetch_add(3, Ordering::Relaxed);
        let second = Snapshot::from_config(&config(), "test".into(), Some(&first), false);
        let p2 = second
            .port_for("10.96.0.10:80".parse().unwrap())
            .expect("port");
        assert_eq!(p2.backends[0].load.in_flight(), 3);
    }
}
