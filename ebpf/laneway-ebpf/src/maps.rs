//! The maps the programs share with the agent (see `laneway_common::map_names`).
//!
//! All are pinned by name in the agent's bpffs directory, so they outlive an
//! agent restart: the next agent finds enrolment, services and the records
//! of connections in flight where the last one left them.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_map_lookup_elem, bpf_sk_release},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockMap},
};
use laneway_common::{
    BASE_LANE, CONN_MAP_CAPACITY, ConnKey, ENROLLED_CAPACITY, HEARTBEAT_TIMEOUT_NS, KernelEndpoint,
    LANE_ENDPOINTS_CAPACITY, LaneEndpoints, LaneKey, NETNS_PROBE_CAPACITY, OriginalDst, PodValue,
    RouterInfo, SERVICES_CAPACITY, ServiceKey, ServiceValue, TcFlow, TcFlowKey, stat,
};

/// `BPF_F_NO_PREALLOC`: entries are allocated when written.
const NO_PREALLOC: u32 = 1;

/// Enrolled pods by netns cookie.
#[map]
pub static ENROLLED: HashMap<u64, PodValue> = HashMap::pinned(ENROLLED_CAPACITY, 0);

/// TC mode: enrolled pods by the ifindex of their host-side veth.
#[map]
pub static TC_ENROLLED: HashMap<u32, PodValue> = HashMap::pinned(ENROLLED_CAPACITY, 0);

/// Service VIP:ports to redirect.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(SERVICES_CAPACITY, 0);

/// Endpoints by (VIP:port, lane), for the connects the programs route
/// themselves. Not preallocated: a value is over a kilobyte, and most
/// clusters fill a small part of the capacity.
#[map]
pub static LANE_ENDPOINTS: HashMap<LaneKey, LaneEndpoints> =
    HashMap::pinned(LANE_ENDPOINTS_CAPACITY, NO_PREALLOC);

/// The router's listener and heartbeat, at index 0.
#[map]
pub static ROUTER: Array<RouterInfo> = Array::pinned(1, 0);

/// Original destination by the pod socket's cookie.
#[map]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OriginalDst> = LruHashMap::pinned(CONN_MAP_CAPACITY, 0);

/// Original destination by the established connection's 4-tuple.
#[map]
pub static ORIG_BY_CONN: LruHashMap<ConnKey, OriginalDst> =
    LruHashMap::pinned(CONN_MAP_CAPACITY, 0);

/// TC mode: the flows `tc_ingress` DNATed to an endpoint, both directions.
#[map]
pub static TC_FLOWS: LruHashMap<TcFlowKey, TcFlow> = LruHashMap::pinned(CONN_MAP_CAPACITY, 0);

/// The router's listening sockets: index 0 IPv4, 1 IPv6, 2 the transparent
/// listener of TC mode. The kernel removes
/// a socket from a sockmap when it closes, so an entry here means someone
/// listens: redirecting to a dead port is impossible, even after a crash.
#[map]
pub static ROUTER_LISTENER: SockMap = SockMap::pinned(3, 0);

/// The agent's netns probes: netns cookie by probe socket cookie. The agent
/// adds a slot, `connect4` fills it (see `connect::probe`). Not pinned: a
/// probe lives for one connect of one agent.
#[map]
pub static NETNS_PROBE: HashMap<u64, u64> = HashMap::with_max_entries(NETNS_PROBE_CAPACITY, 0);

/// Counters, see `laneway_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::COUNT, 0);

/// Whether the router's listener at `index` exists (is in
/// [`ROUTER_LISTENER`]).
#[inline(always)]
pub fn listener_alive(index: u32) -> bool {
    let map = (&raw const ROUTER_LISTENER).cast_mut().cast::<c_void>();
    // SAFETY: a lookup in our own sockmap with a valid key; a non-null answer
    // is a referenced socket, released at once as the verifier demands.
    unsafe {
        let sk = bpf_map_lookup_elem(map, (&raw const index).cast());
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk);
    }
    true
}

/// Whether the router's heartbeat is set and younger than
/// [`HEARTBEAT_TIMEOUT_NS`].
#[inline(always)]
pub fn heartbeat_fresh(router: &RouterInfo) -> bool {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    router.heartbeat_ns != 0 && now.wrapping_sub(router.heartbeat_ns) <= HEARTBEAT_TIMEOUT_NS
}

/// Picks an endpoint of `lane` for `addr`:`port` at random, else of base.
#[inline(always)]
pub fn pick(addr: [u32; 4], port: u16, lane: u32) -> Option<KernelEndpoint> {
    let mut key = LaneKey {
        addr,
        port,
        _pad: 0,
        lane,
    };
    if lane != BASE_LANE
        && let Some(endpoint) = pick_in(&key)
    {
        return Some(endpoint);
    }
    key.lane = BASE_LANE;
    pick_in(&key)
}

#[inline(always)]
fn pick_in(key: &LaneKey) -> Option<KernelEndpoint> {
    // SAFETY: the value is only read; the endpoint is copied out at once.
    let set = unsafe { LANE_ENDPOINTS.get(key) }?;
    let n = u64::from(set.count);
    // SAFETY: a helper without arguments.
    let random = u64::from(unsafe { bpf_get_prandom_u32() });
    // Scaling instead of `%`: no division, so no division-by-zero branch.
    let index = ((random * n) >> 32) as usize;
    set.endpoints.get(index).copied()
}

/// Adds one to counter `index`.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot: no other writer runs on this CPU meanwhile.
        unsafe { *counter += 1 };
    }
}
