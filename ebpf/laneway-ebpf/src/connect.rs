//! `cgroup/connect4|6`: steer enrolled pods' connects to service VIPs to the
//! router, or, when no router is live (and always for a
//! [`SERVICE_KERNEL_ROUTED`] port), straight to an endpoint of the caller's
//! lane, else base, from `LANE_ENDPOINTS`.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use laneway_common::{
    KernelEndpoint, NETNS_PROBE_ADDR, NETNS_PROBE_PORT, OriginalDst, RouterInfo,
    SERVICE_KERNEL_ROUTED, ServiceKey, is_v4_mapped, stat, v4_mapped,
};

use crate::maps::{
    ENROLLED, NETNS_PROBE, ORIG_BY_COOKIE, ROUTER, SERVICES, count, heartbeat_fresh,
    listener_alive, pick,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

/// Where a connect goes instead, and the record of where it was going.
struct Steer {
    /// The new destination, in the maps' form (IPv4 v4-mapped).
    to: [u32; 4],
    /// The new destination port, host byte order.
    port: u16,
    original: OriginalDst,
    /// The counter to add one to: `REDIRECTED` or `KERNEL_ROUTED`.
    counter: u32,
}

/// Whether the router can take a connect to `addr` of `family`: its
/// heartbeat is fresh and its listener for that family is open.
#[inline(always)]
fn router_live(router: &RouterInfo, addr: &[u32; 4], family: u16) -> bool {
    let listener = if family == AF_INET6 && !is_v4_mapped(addr) {
        1
    } else {
        0
    };
    router.port != 0 && heartbeat_fresh(router) && listener_alive(listener)
}

/// The router's address for a connect to `addr` (all zero: none).
#[inline(always)]
fn router_addr(router: &RouterInfo, addr: &[u32; 4], family: u16) -> [u32; 4] {
    if family == AF_INET6 && !is_v4_mapped(addr) {
        router.addr6
    } else if router.addr4 == 0 {
        [0; 4]
    } else {
        v4_mapped(router.addr4)
    }
}

/// Decides where this connect to `addr`:`port` (as the app gave it) goes.
/// `None` leaves it alone.
#[inline(always)]
unsafe fn steer(ctx: &SockAddrContext, addr: [u32; 4], port: u16, family: u16) -> Option<Steer> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel's context, valid for the program's run.
    if unsafe { (*sa).type_ } != SOCK_STREAM {
        return None;
    }
    // SAFETY: both helpers take this program type's context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: map values are only read, and copied out at once.
    let pod = unsafe { ENROLLED.get(netns_cookie) }.copied()?;
    let key = ServiceKey {
        addr,
        port,
        _pad: 0,
    };
    // SAFETY: as above.
    let service = unsafe { SERVICES.get(key) }.copied()?;
    let router = ROUTER.get(0).copied().unwrap_or_default();
    // Loop guard: the router marks its own sockets (it is also never enrolled).
    // SAFETY: `sk` is the socket being connected, readable for sock_addr programs.
    let sk = unsafe { (*sa).__bindgen_anon_1.sk };
    if router.mark != 0 && !sk.is_null() && unsafe { (*sk).mark } == router.mark {
        return None;
    }
    let original = OriginalDst {
        addr,
        netns_cookie,
        port,
        family,
        pod_id: pod.pod_id,
    };
    let kernel = |endpoint: KernelEndpoint, original| Steer {
        to: endpoint.addr,
        port: endpoint.port,
        original,
        counter: stat::KERNEL_ROUTED,
    };
    // A port the router would only pass through: no need for the router.
    if service.flags & SERVICE_KERNEL_ROUTED != 0
        && let Some(endpoint) = pick(addr, port, pod.lane)
    {
        return Some(kernel(endpoint, original));
    }
    let to = router_addr(&router, &addr, family);
    if to != [0; 4] && router_live(&router, &addr, family) {
        return Some(Steer {
            to,
            port: router.port,
            original,
            counter: stat::REDIRECTED,
        });
    }
    // No live router (crashed, stopped, hung, or none for this family):
    // keep the lane here rather than leave the connect to kube-proxy, which
    // spreads it over every lane. Without endpoints, leave it alone.
    count(stat::FAIL_OPEN);
    pick(addr, port, pod.lane).map(|endpoint| kernel(endpoint, original))
}

/// Records the original destination under the socket's cookie.
#[inline(always)]
unsafe fn record(ctx: &SockAddrContext, original: &OriginalDst) -> bool {
    // SAFETY: this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Without the record the router could not route, nor getpeername show
    // the VIP: leave the connect alone.
    ORIG_BY_COOKIE.insert(cookie, original, 0).is_ok()
}

/// The agent's netns probe (a UDP connect to [`NETNS_PROBE_ADDR`]:
/// [`NETNS_PROBE_PORT`] from a socket it made in a pod's namespace): fills
/// the socket's slot in [`NETNS_PROBE`] with the namespace's cookie. Only a
/// slot the agent added is filled. Before Linux 5.14 (`SO_NETNS_COOKIE`)
/// this is how the agent learns a cookie.
#[inline(always)]
unsafe fn probe(ctx: &SockAddrContext) {
    // SAFETY: both helpers take this program type's context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(slot) = NETNS_PROBE.get_ptr_mut(socket_cookie) {
        // SAFETY: as above; the slot is this probe's alone.
        unsafe { *slot = bpf_get_netns_cookie(ctx.as_ptr()) };
    }
}

/// IPv4 connects.
pub unsafe fn try_connect4(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's context, valid for the program's run.
    let (ip4, port_be, kind) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16, (*sa).type_) };
    let port = u16::from_be(port_be);
    if kind == SOCK_DGRAM && ip4 == NETNS_PROBE_ADDR && port == NETNS_PROBE_PORT {
        // SAFETY: as above.
        unsafe { probe(ctx) };
        return;
    }
    // SAFETY: as above.
    let Some(steer) = (unsafe { steer(ctx, v4_mapped(ip4), port, AF_INET) }) else {
        return;
    };
    // The agent gives an IPv4 VIP IPv4 endpoints only; checked all the same.
    if !is_v4_mapped(&steer.to) || !unsafe { record(ctx, &steer.original) } {
        return;
    }
    // SAFETY: user_ip4 and user_port are writable for connect4.
    unsafe {
        (*sa).user_ip4 = steer.to[3];
        (*sa).user_port = u32::from(steer.port.to_be());
    }
    count(steer.counter);
}

/// IPv6 connects, including v4-mapped ones.
pub unsafe fn try_connect6(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's context; user_ip6 is read one 4-byte word at a time.
    let (addr, port_be) = unsafe {
        (
            [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ],
            (*sa).user_port as u16,
        )
    };
    let port = u16::from_be(port_be);
    // SAFETY: as above.
    let Some(steer) = (unsafe { steer(ctx, addr, port, AF_INET6) }) else {
        return;
    };
    // A v4-mapped VIP goes to a v4-mapped destination, a native one to a
    // native one: the socket's family decides what it can reach.
    if is_v4_mapped(&steer.to) != is_v4_mapped(&addr) || !unsafe { record(ctx, &steer.original) } {
        return;
    }
    let to = steer.to;
    // SAFETY: user_ip6 (4-byte words) and user_port are writable for connect6.
    unsafe {
        (*sa).user_ip6[0] = to[0];
        (*sa).user_ip6[1] = to[1];
        (*sa).user_ip6[2] = to[2];
        (*sa).user_ip6[3] = to[3];
        (*sa).user_port = u32::from(steer.port.to_be());
    }
    count(steer.counter);
}
