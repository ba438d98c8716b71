//! `cgroup/getpeername4|6`: a redirected socket's peer reads as the VIP the
//! app dialled, not the router.

use aya_ebpf::{EbpfContext, helpers::bpf_get_socket_cookie, programs::SockAddrContext};
use laneway_common::{OriginalDst, is_v4_mapped};

use crate::maps::ORIG_BY_COOKIE;

#[inline(always)]
unsafe fn original(ctx: &SockAddrContext) -> Option<OriginalDst> {
    // SAFETY: this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    unsafe { ORIG_BY_COOKIE.get(cookie) }.copied()
}

pub unsafe fn try_getpeername4(ctx: &SockAddrContext) {
    // SAFETY: the kernel's context.
    let Some(orig) = (unsafe { original(ctx) }) else {
        return;
    };
    if !is_v4_mapped(&orig.addr) {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: user_ip4 and user_port are writable for getpeername4.
    unsafe {
        (*sa).user_ip4 = orig.addr[3];
        (*sa).user_port = u32::from(orig.port.to_be());
    }
}

pub unsafe fn try_getpeername6(ctx: &SockAddrContext) {
    // SAFETY: the kernel's context.
    let Some(orig) = (unsafe { original(ctx) }) else {
        return;
    };
    let sa = ctx.sock_addr;
    // SAFETY: user_ip6 (4-byte words) and user_port are writable for getpeername6.
    unsafe {
        (*sa).user_ip6[0] = orig.addr[0];
        (*sa).user_ip6[1] = orig.addr[1];
        (*sa).user_ip6[2] = orig.addr[2];
        (*sa).user_ip6[3] = orig.addr[3];
        (*sa).user_port = u32::from(orig.port.to_be());
    }
}
