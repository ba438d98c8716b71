//! `sock_ops`: key each redirected connection's record by its 4-tuple once it
//! is established, and drop both records when it closes.
//!
//! A connection the connect programs sent straight to an endpoint (kernel
//! routed) has a record by cookie too (for `getpeername`), but is not keyed
//! by 4-tuple: only the router asks for original destinations, and the
//! endpoint's side must not learn the caller's netns cookie and pod id.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE,
    },
    helpers::bpf_get_socket_cookie,
    programs::SockOpsContext,
};
use laneway_common::{ConnKey, v4_mapped};

use crate::maps::{ORIG_BY_CONN, ORIG_BY_COOKIE, ROUTER};

const AF_INET: u32 = 2;

/// Reads an IPv6 address field of the context one word at a time: the
/// verifier only allows context loads at a constant offset from the context
/// pointer itself, which a whole-array copy does not compile to.
#[inline(always)]
fn ip6(field: *const [u32; 4]) -> [u32; 4] {
    // SAFETY: `field` points into the kernel's context, valid for this run.
    unsafe {
        [
            read_volatile(&raw const (*field)[0]),
            read_volatile(&raw const (*field)[1]),
            read_volatile(&raw const (*field)[2]),
            read_volatile(&raw const (*field)[3]),
        ]
    }
}

/// The connection as the pod's socket sees it (local = pod, remote = router).
#[inline(always)]
fn conn_key(ctx: &SockOpsContext) -> ConnKey {
    let (client_addr, router_addr) = if ctx.family() == AF_INET {
        (v4_mapped(ctx.local_ip4()), v4_mapped(ctx.remote_ip4()))
    } else {
        // SAFETY: the kernel's context pointer.
        unsafe {
            (
                ip6(&raw const (*ctx.ops).local_ip6),
                ip6(&raw const (*ctx.ops).remote_ip6),
            )
        }
    };
    ConnKey {
        client_addr,
        router_addr,
        client_port: ctx.local_port() as u16,
        // sock_ops gives the remote port in network order in the upper half.
        router_port: u16::from_be((ctx.remote_port() >> 16) as u16),
    }
}

pub fn try_sock_ops(ctx: &SockOpsContext) {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            // SAFETY: this program type's context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            // SAFETY: the value is copied out at once.
            let Some(original) = (unsafe { ORIG_BY_COOKIE.get(cookie) }).copied() else {
                return;
            };
            let key = conn_key(ctx);
            let to_router = ROUTER.get(0).is_some_and(|r| {
                key.router_port == r.port
                    && (key.router_addr == v4_mapped(r.addr4) || key.router_addr == r.addr6)
            });
            if !to_router || ORIG_BY_CONN.insert(key, original, 0).is_ok() {
                // Be told when it closes, to drop the records.
                let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
            }
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            // SAFETY: this program type's context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let _ = ORIG_BY_CONN.remove(conn_key(ctx));
            let _ = ORIG_BY_COOKIE.remove(cookie);
        }
        _ => {}
    }
}
