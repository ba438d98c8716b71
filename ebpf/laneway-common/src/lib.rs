//! The ABI between laneway's kernel programs and its agent.
//!
//! Every type here is a BPF map key or value: `#[repr(C)]`, with explicit
//! padding fields so that no byte of a key is left undefined (the kernel hashes
//! keys byte for byte). Addresses are always stored as IPv6 in network byte
//! order, IPv4 as v4-mapped (`::ffff:a.b.c.d`), so one map serves both families
//! and a JVM's v4-mapped connect matches the IPv4 service it means.
#![no_std]

/// Names of the maps, shared so that userspace never misspells one.
pub mod map_names {
    /// [`crate::PodValue`] by network-namespace cookie: the enrolled pods.
    pub const ENROLLED: &str = "ENROLLED";
    /// [`crate::ServiceValue`] by [`crate::ServiceKey`]: the VIP:ports to redirect.
    pub const SERVICES: &str = "SERVICES";
    /// One [`crate::RouterInfo`] at index 0: where to redirect, and whether anyone listens.
    pub const ROUTER: &str = "ROUTER";
    /// [`crate::OriginalDst`] by socket cookie of the pod's socket (LRU).
    pub const ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
    /// [`crate::OriginalDst`] by [`crate::ConnKey`] of the established connection (LRU).
    pub const ORIG_BY_CONN: &str = "ORIG_BY_CONN";
    /// Per-CPU `u64` counters, indexed by [`crate::stat`].
    pub const STATS: &str = "STATS";
    /// Sockmap of the router's listeners: 0 IPv4, 1 IPv6, 2 transparent (TC).
    pub const ROUTER_LISTENER: &str = "ROUTER_LISTENER";
    /// [`crate::PodValue`] by host-side veth ifindex: pods enrolled in TC mode.
    pub const TC_ENROLLED: &str = "TC_ENROLLED";
    /// [`crate::LaneEndpoints`] by [`crate::LaneKey`]: the endpoints the
    /// connect programs pick from themselves (no live router, or a
    /// [`crate::SERVICE_KERNEL_ROUTED`] port).
    pub const LANE_ENDPOINTS: &str = "LANE_ENDPOINTS";
    /// [`crate::TcFlow`] by [`crate::TcFlowKey`] (LRU): TC mode's flows
    /// routed in the kernel (DNATed to an endpoint) while no router was live.
    pub const TC_FLOWS: &str = "TC_FLOWS";
    /// Netns cookie (`u64`) by the socket cookie of the agent's probe socket:
    /// how the agent learns a namespace's cookie without `SO_NETNS_COOKIE`
    /// (Linux 5.10 to 5.13). Not pinned.
    pub const NETNS_PROBE: &str = "NETNS_PROBE";
}

/// Where the agent's netns probe (a UDP socket) connects: `connect4` fills
/// the socket's [`map_names::NETNS_PROBE`] slot with its netns cookie.
/// 127.0.0.1, network byte order as `bpf_sock_addr::user_ip4` holds it.
pub const NETNS_PROBE_ADDR: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// The probe's port (discard): a UDP connect sends nothing.
pub const NETNS_PROBE_PORT: u16 = 9;
/// Slots of [`map_names::NETNS_PROBE`]: probes in flight at once.
pub const NETNS_PROBE_CAPACITY: u32 = 256;

/// Capacity of the per-connection LRU maps. LRU eviction keeps them bounded
/// however many connections churn; sock_ops also deletes entries on close.
pub const CONN_MAP_CAPACITY: u32 = 65_536;
/// Capacity of the enrolment map (pods on one node).
pub const ENROLLED_CAPACITY: u32 = 4_096;
/// Capacity of the services map (VIP:port pairs in the cluster).
pub const SERVICES_CAPACITY: u32 = 65_536;

/// Capacity of the lane endpoints map ((VIP:port, lane) pairs with
/// endpoints). Its entries are allocated as they are written
/// (`BPF_F_NO_PREALLOC`), so the capacity costs nothing until used.
pub const LANE_ENDPOINTS_CAPACITY: u32 = 65_536;
/// Endpoints a [`LaneEndpoints`] holds; a lane with more is given its first
/// this many (in the source's order).
pub const MAX_LANE_ENDPOINTS: usize = 64;
/// The lane id of base (untagged) in [`PodValue::lane`] and [`LaneKey::lane`].
pub const BASE_LANE: u32 = 0;
/// [`ServiceValue::flags`]: the port is always routed in the kernel from
/// [`map_names::LANE_ENDPOINTS`], also while the router is live (a
/// `protocol: tcp` port, which the router would only pass through at L4).
pub const SERVICE_KERNEL_ROUTED: u32 = 1;

/// A router heartbeat older than this makes the programs stop redirecting
/// (fail-open): pods then reach services the normal way. Four missed beats
/// (the agent writes one every 200 ms, from a thread of its own), so that a
/// hung router is bypassed well within a second, with room for the first
/// retried connect.
pub const HEARTBEAT_TIMEOUT_NS: u64 = 800_000_000;

/// Index of the transparent (TC mode) listener in `ROUTER_LISTENER`.
pub const TC_LISTENER: u32 = 2;
/// Mark of packets the TC program hands to the router: the node delivers
/// them locally (an `ip rule`) and leaves them untracked (no kube-proxy DNAT).
pub const TPROXY_MARK: u32 = 0x4c57_0001;
/// Mark of the router's transparent sockets: their replies skip conntrack
/// too (not [`TPROXY_MARK`], whose rule would route the replies locally).
pub const TPROXY_REPLY_MARK: u32 = 0x4c57_0002;

/// Mark of the packets `tc_ingress` DNATed to an endpoint itself (no live
/// router): nothing else of laneway's steers them (a second `tc_ingress`,
/// e.g. an outgoing agent's, leaves them alone), and no rule of the node
/// matches it, so they are forwarded and tracked as any pod's packet.
pub const TC_NAT_MARK: u32 = 0x4c57_0003;
/// [`TcFlowKey::direction`] of the pod's packets: `peer` is the VIP.
pub const TC_FLOW_OUT: u32 = 0;
/// [`TcFlowKey::direction`] of the endpoint's replies: `peer` is the endpoint.
pub const TC_FLOW_REPLY: u32 = 1;

/// `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`, as netfilter defines it.
pub const SO_ORIGINAL_DST: i32 = 80;

/// Indices of the [`map_names::STATS`] counters.
pub mod stat {
    /// Connects rewritten to the router (socket mode), or SYNs handed to its
    /// transparent listener (TC mode).
    pub const REDIRECTED: u32 = 0;
    /// Connects (or TC-mode SYNs) from enrolled pods to services left alone
    /// because the router's heartbeat was stale or no router listens
    /// (fail-open).
    pub const FAIL_OPEN: u32 = 1;
    /// Original-destination queries answered from `ORIG_BY_CONN`.
    pub const ORIGDST_ANSWERED: u32 = 2;
    /// Original-destination queries on sockets laneway does not know.
    pub const ORIGDST_MISSED: u32 = 3;
    /// Connects the connect programs sent straight to an endpoint of the
    /// caller's lane (or base), from `LANE_ENDPOINTS`: while no router was
    /// live (these count in [`FAIL_OPEN`] too), or to a
    /// [`crate::SERVICE_KERNEL_ROUTED`] port; and TC-mode SYNs `tc_ingress`
    /// DNATed to such an endpoint while no router was live.
    pub const KERNEL_ROUTED: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
}

/// Key of [`map_names::SERVICES`]: a service VIP and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// The VIP, IPv6 in network byte order (IPv4 v4-mapped).
    pub addr: [u32; 4],
    /// The service port, host byte order.
    pub port: u16,
    /// Zero: makes the key's size a multiple of 4 without an implicit hole.
    pub _pad: u16,
}

/// Value of [`map_names::SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// The service's index in the agent's snapshot (for counters and `maps`).
    pub service_id: u32,
    /// [`SERVICE_KERNEL_ROUTED`], or zero.
    pub flags: u32,
}

/// Value of [`map_names::ENROLLED`], keyed by the pod's netns cookie (`u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodValue {
    /// The pod's index in the agent's snapshot.
    pub pod_id: u32,
    /// The pod's lane: the id the agent gave its tag ([`BASE_LANE`] for
    /// none), as in [`LaneKey::lane`].
    pub lane: u32,
}

/// Key of [`map_names::LANE_ENDPOINTS`]: a service VIP and port, and a lane.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LaneKey {
    /// The VIP, IPv6 in network byte order (IPv4 v4-mapped).
    pub addr: [u32; 4],
    /// The service port, host byte order.
    pub port: u16,
    /// Zero: keeps `lane` 4-aligned without an implicit hole.
    pub _pad: u16,
    /// The lane id ([`BASE_LANE`] for base).
    pub lane: u32,
}

/// An endpoint in a [`LaneEndpoints`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelEndpoint {
    /// The endpoint's address, IPv6 network byte order (IPv4 v4-mapped),
    /// always of the VIP's family.
    pub addr: [u32; 4],
    /// The endpoint's port, host byte order.
    pub port: u16,
    /// Zero: makes the size a multiple of 4 without an implicit hole.
    pub _pad: u16,
}

/// Value of [`map_names::LANE_ENDPOINTS`]: the serving, non-terminating
/// endpoints a connect from that lane to that VIP:port may go to (for the
/// base lane: base endpoints, or every one when the service has no base
/// endpoint).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneEndpoints {
    /// How many of `endpoints` are set (1..=[`MAX_LANE_ENDPOINTS`]).
    pub count: u32,
    /// The endpoints; those past `count` are zero.
    pub endpoints: [KernelEndpoint; MAX_LANE_ENDPOINTS],
}

/// Value of [`map_names::ROUTER`] at index 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterInfo {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the router last said it is
    /// alive; 0 after a clean shutdown. Stale by [`HEARTBEAT_TIMEOUT_NS`] means
    /// fail-open.
    pub heartbeat_ns: u64,
    /// Router listener for IPv6 connects, network byte order; all zero when the
    /// router has no IPv6 listener (native IPv6 connects then are not redirected).
    pub addr6: [u32; 4],
    /// Router listener for IPv4 (and v4-mapped) connects, network byte order.
    pub addr4: u32,
    /// `SO_MARK` the router puts on its own sockets; never redirected (loop guard).
    pub mark: u32,
    /// Router listener port, host byte order.
    pub port: u16,
    /// Zero.
    pub _pad0: u16,
    /// Zero: keeps the size a multiple of 8 without an implicit tail hole.
    pub _pad1: u32,
}

/// The destination a pod dialled before laneway rewrote it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginalDst {
    /// The VIP the app dialled, IPv6 network byte order (IPv4 v4-mapped).
    pub addr: [u32; 4],
    /// Network-namespace cookie of the calling pod.
    pub netns_cookie: u64,
    /// The port the app dialled, host byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`: the family of the app's socket.
    pub family: u16,
    /// The calling pod's index, from [`PodValue::pod_id`].
    pub pod_id: u32,
}

/// Key of [`map_names::ORIG_BY_CONN`]: a redirected connection as both of its
/// ends see it (client = the pod's socket, router = the router's listener).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The pod's address, IPv6 network byte order (IPv4 v4-mapped).
    pub client_addr: [u32; 4],
    /// The router's address, IPv6 network byte order (IPv4 v4-mapped).
    pub router_addr: [u32; 4],
    /// The pod's port, host byte order.
    pub client_port: u16,
    /// The router's port, host byte order.
    pub router_port: u16,
}

/// Key of [`map_names::TC_FLOWS`]: one direction of a TCP flow (IPv4) that
/// `tc_ingress` DNATed, as its packets on the pod's veth name it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcFlowKey {
    /// The pod's address, network byte order.
    pub pod_addr: u32,
    /// The VIP ([`TC_FLOW_OUT`]) or the endpoint ([`TC_FLOW_REPLY`]),
    /// network byte order.
    pub peer_addr: u32,
    /// The pod's port, host byte order.
    pub pod_port: u16,
    /// The VIP's or the endpoint's port, host byte order.
    pub peer_port: u16,
    /// [`TC_FLOW_OUT`] or [`TC_FLOW_REPLY`]: keeps a pod's flow to a VIP
    /// and a reply from an endpoint apart, whatever the addresses.
    pub direction: u32,
}

/// Value of [`map_names::TC_FLOWS`] (both directions of a flow): where the
/// pod's packets go instead of the VIP, and what the replies show.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcFlow {
    /// The endpoint chosen, network byte order.
    pub endpoint_addr: u32,
    /// The VIP the pod dialled, network byte order.
    pub vip_addr: u32,
    /// The endpoint's port, host byte order.
    pub endpoint_port: u16,
    /// The VIP's port, host byte order.
    pub vip_port: u16,
    /// Sequence number of the pod's SYN (host byte order): a SYN with the
    /// same is a retransmission (same endpoint), another a new connection
    /// on a reused 4-tuple (decided afresh).
    pub syn_seq: u32,
}

/// The v4-mapped IPv6 form of an IPv4 address given in network byte order.
#[inline(always)]
pub const fn v4_mapped(addr4_be: u32) -> [u32; 4] {
    [0, 0, u32::from_be(0x0000_ffff), addr4_be]
}

/// Whether an IPv6 address (network byte order) is v4-mapped.
#[inline(always)]
pub const fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == u32::from_be(0x0000_ffff)
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: all of these are #[repr(C)] plain data with explicit padding and
    // no implicit holes, valid for any bit pattern.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::PodValue {}
    unsafe impl aya::Pod for super::RouterInfo {}
    unsafe impl aya::Pod for super::OriginalDst {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::LaneKey {}
    unsafe impl aya::Pod for super::KernelEndpoint {}
    unsafe impl aya::Pod for super::LaneEndpoints {}
    unsafe impl aya::Pod for super::TcFlowKey {}
    unsafe impl aya::Pod for super::TcFlow {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn map_types_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 16 + 2 + 2);
        assert_eq!(size_of::<ServiceValue>(), 8);
        assert_eq!(size_of::<PodValue>(), 8);
        assert_eq!(size_of::<RouterInfo>(), 8 + 16 + 4 + 4 + 2 + 2 + 4);
        assert_eq!(size_of::<OriginalDst>(), 16 + 8 + 2 + 2 + 4);
        assert_eq!(size_of::<ConnKey>(), 16 + 16 + 2 + 2);
        assert_eq!(size_of::<LaneKey>(), 16 + 2 + 2 + 4);
        assert_eq!(size_of::<KernelEndpoint>(), 16 + 2 + 2);
        assert_eq!(size_of::<TcFlowKey>(), 4 + 4 + 2 + 2 + 4);
        assert_eq!(size_of::<TcFlow>(), 4 + 4 + 2 + 2 + 4);
        assert_eq!(
            size_of::<LaneEndpoints>(),
            4 + MAX_LANE_ENDPOINTS * size_of::<KernelEndpoint>()
        );
    }

    #[test]
    fn v4_mapped_round_trips() {
        let a = u32::from_be_bytes([10, 96, 0, 10]).to_be();
        let m = v4_mapped(a);
        assert!(is_v4_mapped(&m));
        assert_eq!(m[3], a);
        assert!(!is_v4_mapped(&[0, 0, 0, 1u32.to_be()]));
    }
}
