//! The lanes the kernel keeps by itself.
//!
//! While no router is live (the agent killed, stopped or hung, or between
//! two agents), the connect programs do not leave an enrolled pod's connect
//! to a service VIP to kube-proxy, which would spread it over every lane:
//! they send it straight to an endpoint of the pod's lane, else base, picked
//! at random from the `LANE_ENDPOINTS` map. `protocol: tcp` ports, which the
//! router would only pass through, are routed that way always.
//!
//! This module computes what the maps must hold for a snapshot, as the router
//! routes an L4 stream: per (VIP:port, lane) the lane's serving,
//! non-terminating endpoints; for base, the base ones, or all serving ones
//! when the service has no base endpoint ([`route::candidates`]). Never a
//! terminating endpoint, and only endpoints of the VIP's family. Each tag
//! gets a small integer lane id ([`LaneIds`]), carried in the pod's
//! `ENROLLED` entry.
//!
//! The kernel applies no policy: canary shares, strict lanes, warm-up,
//! ejections and caller authorization (`allow-from`) need the router. So a
//! `protocol: tcp` port whose service has canary shares, strict lanes,
//! external lanes or an `allow-from` rule stays with the router while it is
//! live. Its lanes are still mirrored: with no live router the kernel holds
//! them without the rule (leaving the service out would not deny anyone, it
//! would only hand the connect to kube-proxy, which knows neither lanes nor
//! rules). External endpoints are never in the kernel's lanes: without a
//! live router nobody checks whether they answer.

use std::collections::{BTreeSet, HashMap, HashSet};

use laneway_common::{
    BASE_LANE, KernelEndpoint, LaneEndpoints, LaneKey, MAX_LANE_ENDPOINTS, PodValue,
    SERVICE_KERNEL_ROUTED, ServiceKey, ServiceValue,
};

use crate::{
    bpf,
    config::{AppProtocol, Tag},
    policy::{LaneMode, Policy},
    route,
    snapshot::{ServicePort, Snapshot},
};

/// Lane ids of tags, for the life of the agent: a tag keeps its id across
/// reloads and an id is never given to another tag, so a pod entry written
/// before or after a reload never points at another lane's endpoints.
#[derive(Debug, Default)]
pub struct LaneIds {
    ids: HashMap<Tag, u32>,
    last: u32,
}

impl LaneIds {
    /// Gives every tag of `snapshot` (pods' and endpoints') that has none
    /// an id, in sorted order (so a fresh agent numbers a config as the
    /// last fresh one did).
    pub fn learn(&mut self, snapshot: &Snapshot) {
        let tags: BTreeSet<&Tag> = snapshot
            .pods
            .iter()
            .filter_map(|p| p.tag.as_ref())
            .chain(
                snapshot
                    .ports
                    .iter()
                    .flat_map(|p| p.backends.iter().filter_map(|b| b.tag.as_ref())),
            )
            .collect();
        for tag in tags {
            if !self.ids.contains_key(tag) {
                self.last += 1;
                self.ids.insert(tag.clone(), self.last);
            }
        }
    }

    /// The tag whose lane id is `lane` (`None` for base or an id not given).
    pub fn tag_of(&self, lane: u32) -> Option<&Tag> {
        self.ids
            .iter()
            .find(|(_, id)| **id == lane)
            .map(|(tag, _)| tag)
    }

    /// The lane id of `tag` ([`BASE_LANE`] for none, or one not learnt).
    pub fn lane(&self, tag: Option<&Tag>) -> u32 {
        tag.and_then(|t| self.ids.get(t))
            .copied()
            .unwrap_or(BASE_LANE)
    }
}

/// What the maps must hold for the kernel to keep lanes.
#[derive(Debug, Default)]
pub struct KernelLanes {
    /// `LANE_ENDPOINTS` as it must be: an entry per (VIP:port, lane) with
    /// at least one endpoint.
    pub endpoints: HashMap<LaneKey, LaneEndpoints>,
    /// Each pod's lane id, by index in [`Snapshot::pods`].
    pod_lanes: Vec<u32>,
    /// The VIP:ports routed in the kernel also while the router is live.
    kernel_routed: HashSet<ServiceKey>,
}

impl KernelLanes {
    /// Computes the entries for `snapshot`, giving new tags ids in `ids`.
    pub fn new(snapshot: &Snapshot, ids: &mut LaneIds) -> Self {
        ids.learn(snapshot);
        // As the router: an L4 stream takes the caller's lane only when
        // caller tags are inherited.
        let pod_lanes = snapshot
            .pods
            .iter()
            .map(|p| match snapshot.tags.inherit_caller_tag {
                true => ids.lane(p.tag.as_ref()),
                false => BASE_LANE,
            })
            .collect();
        let mut lanes = Self {
            pod_lanes,
            ..Self::default()
        };
        for port in &snapshot.ports {
            let service = snapshot.service_of(port);
            for vip in &service.vips {
                let key = bpf::service_key(*vip, port.port);
                let base = route::candidates(port, None).indices;
                lanes.insert(key, BASE_LANE, port, base);
                for (tag, indices) in &port.by_tag {
                    lanes.insert(key, ids.lane(Some(tag)), port, indices);
                }
                if port.protocol == AppProtocol::Tcp && policy_free(&service.policy) {
                    lanes.kernel_routed.insert(key);
                }
            }
        }
        lanes
    }

    /// Adds the entry of `lane` on `vip` (a `SERVICES` key): `port`'s
    /// backends at `indices` of the VIP's family, the first
    /// [`MAX_LANE_ENDPOINTS`] of them; none when there are none.
    fn insert(&mut self, vip: ServiceKey, lane: u32, port: &ServicePort, indices: &[usize]) {
        let vip_is_v4 = laneway_common::is_v4_mapped(&vip.addr);
        let mut set = LaneEndpoints {
            count: 0,
            endpoints: [KernelEndpoint::default(); MAX_LANE_ENDPOINTS],
        };
        // External endpoints stay with the router: only it knows whether
        // they answer (ARCHITECTURE.md, "External lanes").
        let same_family = indices
            .iter()
            .map(|&i| &port.backends[i])
            .filter(|b| !b.external)
            .map(|b| b.addr)
            .filter(|addr| addr.is_ipv4() == vip_is_v4);
        for (slot, addr) in set.endpoints.iter_mut().zip(same_family) {
            *slot = KernelEndpoint {
                addr: bpf::service_key(addr.ip(), 0).addr,
                port: addr.port(),
                _pad: 0,
            };
            set.count += 1;
        }
        if set.count > 0 {
            let key = LaneKey {
                addr: vip.addr,
                port: vip.port,
                _pad: 0,
                lane,
            };
            self.endpoints.insert(key, set);
        }
    }

    /// Completes the `SERVICES`, `ENROLLED` and `TC_ENROLLED` entries built
    /// for the same snapshot: each pod's lane, and the flag of the ports
    /// the kernel routes always.
    pub fn annotate(
        &self,
        services: &mut HashMap<ServiceKey, ServiceValue>,
        enrolled: &mut HashMap<u64, PodValue>,
        tc_enrolled: &mut HashMap<u32, PodValue>,
    ) {
        for pod in enrolled.values_mut().chain(tc_enrolled.values_mut()) {
            pod.lane = self
                .pod_lanes
                .get(pod.pod_id as usize)
                .copied()
                .unwrap_or(BASE_LANE);
        }
        for (key, service) in services.iter_mut() {
            if self.kernel_routed.contains(key) {
                service.flags |= SERVICE_KERNEL_ROUTED;
            }
        }
    }
}

/// Whether the kernel's plain lane-else-base choice is what the router
/// would do for an L4 stream under `policy`: no canary shares (which apply
/// to untagged streams), no strict lane (which rejects instead of falling
/// back), no external lane (which the kernel never serves) and no
/// `allow-from` rule (which the router checks per caller).
fn policy_free(policy: &Policy) -> bool {
    policy.canary.0.is_empty()
        && policy.external_lanes.is_empty()
        && policy.allow_from.is_none()
        && policy.default_lane_mode == LaneMode::Permissive
        && policy.lanes.0.values().all(|m| *m == LaneMode::Permissive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn snapshot(yaml: &str) -> Snapshot {
        Snapshot::from_config(&Config::parse(yaml).expect("valid"), "t".into(), None, true)
    }

    const LANES: &str = r#"
services:
  - name: reviews
    vips: [10.96.0.10, "fd00:96::10"]
    ports: [{port: 80, target_port: 8080}, {port: 81, protocol: tcp}]
    endpoints:
      - {ip: 10.0.1.2}
      - {ip: 10.0.1.3, tag: joint1}
      - {ip: 10.0.1.4, tag: gray, terminating: true}
      - {ip: 10.0.1.5, serving: false}
      - {ip: "fd00:244::6", tag: joint1}
  - name: ratings
    vips: [10.96.0.11]
    ports: [{port: 80}]
    endpoints:
      - {ip: 10.0.2.2, tag: gray}
      - {ip: 10.0.2.3, tag: joint1}
pods:
  - {name: client, netns: /run/netns/client}
  - {name: client-joint1, tag: joint1, netns: /run/netns/j}
  - {name: client-gray, tag: gray, netns: /run/netns/g}
"#;

    /// The endpoints of `lane` on `vip`, as socket addresses.
    fn entry(lanes: &KernelLanes, vip: &str, lane: u32) -> Option<Vec<String>> {
        let vip: std::net::SocketAddr = vip.parse().expect("vip");
        let key = bpf::service_key(vip.ip(), vip.port());
        let set = lanes.endpoints.get(&LaneKey {
            addr: key.addr,
            port: key.port,
            _pad: 0,
            lane,
        })?;
        Some(
            set.endpoints[..set.count as usize]
                .iter()
                .map(|e| bpf::socket_addr(&e.addr, e.port).to_string())
                .collect(),
        )
    }

    #[test]
    fn each_lane_gets_its_serving_endpoints_and_base_its_own() {
        let s = snapshot(LANES);
        let mut ids = LaneIds::default();
        let lanes = KernelLanes::new(&s, &mut ids);
        let (joint1, gray) = (ids.lane(Some(&tag("joint1"))), ids.lane(Some(&tag("gray"))));
        assert!(joint1 != BASE_LANE && gray != BASE_LANE && joint1 != gray);
        let reviews = "10.96.0.10:80";
        assert_eq!(
            entry(&lanes, reviews, BASE_LANE).unwrap(),
            ["10.0.1.2:8080"]
        );
        assert_eq!(entry(&lanes, reviews, joint1).unwrap(), ["10.0.1.3:8080"]);
        // gray's only endpoint is terminating, the untagged one not serving.
        assert_eq!(entry(&lanes, reviews, gray), None);
        // The IPv6 VIP gets the IPv6 endpoint only; it has no base one.
        assert_eq!(
            entry(&lanes, "[fd00:96::10]:80", joint1).unwrap(),
            ["[fd00:244::6]:8080"]
        );
        assert_eq!(entry(&lanes, "[fd00:96::10]:80", BASE_LANE), None);
        // No base endpoint at all: base takes every serving one.
        assert_eq!(
            entry(&lanes, "10.96.0.11:80", BASE_LANE).unwrap(),
            ["10.0.2.2:80", "10.0.2.3:80"]
        );
        assert_eq!(
            entry(&lanes, "10.96.0.11:80", gray).unwrap(),
            ["10.0.2.2:80"]
        );
    }

    #[test]
    fn pods_get_their_lane_and_tcp_ports_the_kernel_flag() {
        let s = snapshot(LANES);
        let mut ids = LaneIds::default();
        let lanes = KernelLanes::new(&s, &mut ids);
        let mut enrolled: HashMap<u64, PodValue> = (0..3)
            .map(|i| (100 + i as u64, PodValue { pod_id: i, lane: 0 }))
            .collect();
        let mut services: HashMap<ServiceKey, ServiceValue> = ["10.96.0.10", "fd00:96::10"]
            .iter()
            .flat_map(|vip| [80, 81].map(|port| (vip.parse().expect("ip"), port)))
            .map(|(ip, port)| {
                let value = ServiceValue {
                    service_id: 0,
                    flags: 0,
                };
                (bpf::service_key(ip, port), value)
            })
            .collect();
        // TC mode's entries, by veth ifindex, the same pods.
        let mut tc_enrolled: HashMap<u32, PodValue> = enrolled
            .iter()
            .map(|(cookie, pod)| (*cookie as u32 + 1000, *pod))
            .collect();
        lanes.annotate(&mut services, &mut enrolled, &mut tc_enrolled);
        assert_eq!(enrolled[&100].lane, BASE_LANE);
        assert_eq!(enrolled[&101].lane, ids.lane(Some(&tag("joint1"))));
        assert_eq!(enrolled[&102].lane, ids.lane(Some(&tag("gray"))));
        assert_eq!(tc_enrolled[&1100].lane, BASE_LANE);
        assert_eq!(tc_enrolled[&1101].lane, ids.lane(Some(&tag("joint1"))));
        assert_eq!(tc_enrolled[&1102].lane, ids.lane(Some(&tag("gray"))));
        for (key, value) in &services {
            assert_eq!(
                value.flags == SERVICE_KERNEL_ROUTED,
                key.port == 81,
                "{key:?}"
            );
        }
    }

    #[test]
    fn without_caller_tag_inheritance_pods_are_base() {
        let s = snapshot(&format!("tags: {{inherit_caller_tag: false}}\n{LANES}"));
        let lanes = KernelLanes::new(&s, &mut LaneIds::default());
        assert!(lanes.pod_lanes.iter().all(|l| *l == BASE_LANE));
    }

    #[test]
    fn a_tcp_port_with_canary_shares_strict_lanes_or_allow_from_stays_with_the_router() {
        for policy in [
            "{canary: gray=10}",
            "{lanes: gray=strict}",
            "{default_lane_mode: strict}",
            "{allow_from: namespaces=shop}",
            "{external_lanes: 'gray=10.8.0.5:8080', lanes: gray=permissive}",
        ] {
            let yaml = LANES.replacen(
                "    endpoints:",
                &format!("    policy: {policy}\n    endpoints:"),
                1,
            );
            let lanes = KernelLanes::new(&snapshot(&yaml), &mut LaneIds::default());
            assert!(lanes.kernel_routed.is_empty(), "{policy}");
            // Its lanes are still mirrored, for when no router is live.
            assert!(entry(&lanes, "10.96.0.10:81", BASE_LANE).is_some());
        }
    }

    #[test]
    fn external_endpoints_are_never_in_the_kernels_lanes() {
        let yaml = LANES.replacen(
            "    endpoints:",
            "    policy: {external_lanes: 'joint1=10.8.0.5:8080,dev=10.8.0.6:8080'}\n    endpoints:",
            1,
        );
        let mut ids = LaneIds::default();
        let lanes = KernelLanes::new(&snapshot(&yaml), &mut ids);
        let joint1 = ids.lane(Some(&tag("joint1")));
        assert_eq!(
            entry(&lanes, "10.96.0.10:80", joint1),
            Some(vec!["10.0.1.3:8080".to_string()]),
            "the lane's pod, not its laptop"
        );
        let dev = ids.lane(Some(&tag("dev")));
        assert_ne!(dev, BASE_LANE);
        assert_eq!(entry(&lanes, "10.96.0.10:80", dev), None);
    }

    #[test]
    fn an_http2_port_stays_with_the_router_which_routes_each_stream() {
        for protocol in ["http2", "grpc"] {
            let yaml = LANES.replace("protocol: tcp", &format!("protocol: {protocol}"));
            let lanes = KernelLanes::new(&snapshot(&yaml), &mut LaneIds::default());
            assert!(lanes.kernel_routed.is_empty(), "{protocol}");
        }
    }

    #[test]
    fn lane_ids_survive_reloads_and_are_never_reused() {
        let mut ids = LaneIds::default();
        ids.learn(&snapshot(LANES));
        let (joint1, gray) = (ids.lane(Some(&tag("joint1"))), ids.lane(Some(&tag("gray"))));
        // gray goes, alpha comes (it sorts first): old ids stay, and
        // alpha does not take gray's.
        ids.learn(&snapshot(&LANES.replace("gray", "alpha")));
        assert_eq!(ids.lane(Some(&tag("joint1"))), joint1);
        let alpha = ids.lane(Some(&tag("alpha")));
        assert!(alpha != joint1 && alpha != gray && alpha != BASE_LANE);
        assert_eq!(ids.lane(None), BASE_LANE);
        assert_eq!(ids.tag_of(alpha), Some(&tag("alpha")));
        assert_eq!(ids.tag_of(BASE_LANE), None);
    }

    #[test]
    fn a_lane_holds_at_most_the_maps_endpoints() {
        let endpoints: String = (0..MAX_LANE_ENDPOINTS + 5)
            .map(|i| format!("      - {{ip: 10.0.{}.{}}}\n", i / 200, i % 200 + 1))
            .collect();
        let yaml = format!(
            "services:\n  - name: big\n    vips: [10.96.0.20]\n    ports: [{{port: 80}}]\n    endpoints:\n{endpoints}"
        );
        let lanes = KernelLanes::new(&snapshot(&yaml), &mut LaneIds::default());
        let base = entry(&lanes, "10.96.0.20:80", BASE_LANE).unwrap();
        assert_eq!(base.len(), MAX_LANE_ENDPOINTS);
        assert_eq!(base[0], "10.0.0.1:80");
    }

    fn tag(s: &str) -> Tag {
        s.parse().expect("tag")
    }
}
