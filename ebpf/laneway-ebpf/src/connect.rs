//! `cgroup/connect4|6`: steer enrolled pods' connects to service VIPs to the router.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::SockAddrContext,
};
use laneway_common::{
    HEARTBEAT_TIMEOUT_NS, OriginalDst, RouterInfo, ServiceKey, is_v4_mapped, stat, v4_mapped,
};

use crate::maps::{ENROLLED, ORIG_BY_COOKIE, ROUTER, SERVICES, count, listener_alive};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u32 = 1;

/// What a connect needs to be redirected: the router to send it to, and the
/// record of where it was going.
struct Redirect {
    router: RouterInfo,
    original: OriginalDst,
}

/// Decides whether this connect to `addr`:`port` (as the app gave it) is
/// laneway's to steer. `None` leaves it alone.
#[inline(always)]
unsafe fn redirect_for(
    ctx: &SockAddrContext,
    addr: [u32; 4],
    port: u16,
    family: u16,
) -> Option<Redirect> {
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
    unsafe { SERVICES.get(key) }?;
    let router = *ROUTER.get(0)?;
    if router.port == 0 {
        return None;
    }
    // Loop guard: the router marks its own sockets (it is also never enrolled).
    // SAFETY: `sk` is the socket being connected, readable for sock_addr programs.
    let sk = unsafe { (*sa).__bindgen_anon_1.sk };
    if router.mark != 0 && !sk.is_null() && unsafe { (*sk).mark } == router.mark {
        return None;
    }
    // Fail-open: nobody listens (crashed or stopped agent) or the router is
    // hung (stale heartbeat): let the connect go the normal way.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let listener = if family == AF_INET6 && !is_v4_mapped(&addr) {
        1
    } else {
        0
    };
    if router.heartbeat_ns == 0
        || now.wrapping_sub(router.heartbeat_ns) > HEARTBEAT_TIMEOUT_NS
        || !listener_alive(listener)
    {
        count(stat::FAIL_OPEN);
        return None;
    }
    Some(Redirect {
        router,
        original: OriginalDst {
            addr,
            netns_cookie,
            port,
            family,
            pod_id: pod.pod_id,
        },
    })
}

/// Records the original destination under the socket's cookie.
#[inline(always)]
unsafe fn record(ctx: &SockAddrContext, original: &OriginalDst) -> bool {
    // SAFETY: this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Without the record the router could not route: leave the connect alone.
    ORIG_BY_COOKIE.insert(cookie, original, 0).is_ok()
}

/// IPv4 connects.
pub unsafe fn try_connect4(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's context, valid for the program's run.
    let (ip4, port_be) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    let port = u16::from_be(port_be);
    // SAFETY: as above.
    let Some(redirect) = (unsafe { redirect_for(ctx, v4_mapped(ip4), port, AF_INET) }) else {
        return;
    };
    if redirect.router.addr4 == 0 || !unsafe { record(ctx, &redirect.original) } {
        return;
    }
    // SAFETY: user_ip4 and user_port are writable for connect4.
    unsafe {
        (*sa).user_ip4 = redirect.router.addr4;
        (*sa).user_port = u32::from(redirect.router.port.to_be());
    }
    count(stat::REDIRECTED);
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
    let mapped = is_v4_mapped(&addr);
    // SAFETY: as above.
    let Some(redirect) = (unsafe { redirect_for(ctx, addr, port, AF_INET6) }) else {
        return;
    };
    let to = if mapped {
        if redirect.router.addr4 == 0 {
            return;
        }
        v4_mapped(redirect.router.addr4)
    } else {
        if redirect.router.addr6 == [0; 4] {
            return;
        }
        redirect.router.addr6
    };
    // SAFETY: as above.
    if !unsafe { record(ctx, &redirect.original) } {
        return;
    }
    // SAFETY: user_ip6 (4-byte words) and user_port are writable for connect6.
    unsafe {
        (*sa).user_ip6[0] = to[0];
        (*sa).user_ip6[1] = to[1];
        (*sa).user_ip6[2] = to[2];
        (*sa).user_ip6[3] = to[3];
        (*sa).user_port = u32::from(redirect.router.port.to_be());
    }
    count(stat::REDIRECTED);
}
