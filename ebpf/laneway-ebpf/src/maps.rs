//! The maps the programs share with the agent (see `laneway_common::map_names`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use laneway_common::{
    CONN_MAP_CAPACITY, ConnKey, ENROLLED_CAPACITY, OriginalDst, PodValue, RouterInfo,
    SERVICES_CAPACITY, ServiceKey, ServiceValue, stat,
};

/// Enrolled pods by netns cookie.
#[map]
pub static ENROLLED: HashMap<u64, PodValue> = HashMap::with_max_entries(ENROLLED_CAPACITY, 0);

/// Service VIP:ports to redirect.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(SERVICES_CAPACITY, 0);

/// The router's listener and heartbeat, at index 0.
#[map]
pub static ROUTER: Array<RouterInfo> = Array::with_max_entries(1, 0);

/// Original destination by the pod socket's cookie.
#[map]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OriginalDst> =
    LruHashMap::with_max_entries(CONN_MAP_CAPACITY, 0);

/// Original destination by the established connection's 4-tuple.
#[map]
pub static ORIG_BY_CONN: LruHashMap<ConnKey, OriginalDst> =
    LruHashMap::with_max_entries(CONN_MAP_CAPACITY, 0);

/// Counters, see `laneway_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Adds one to counter `index`.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot: no other writer runs on this CPU meanwhile.
        unsafe { *counter += 1 };
    }
}
