//! laneway's kernel programs (socket mode; TC mode's, `tc_ingress`,
//! `tc_egress` and `tc_lookup`, in `tc`).
//!
//! - `connect4` / `connect6`: a TCP connect from an enrolled pod (its netns
//!   cookie is in `ENROLLED`) to a service VIP:port (in `SERVICES`) is
//!   rewritten to the router's listener, and the original destination is
//!   recorded by socket cookie. v4-mapped IPv6 connects (the JVM's) count as IPv4.
//! - `sock_ops`: once the rewritten connection is established, the record is
//!   also keyed by the connection's 4-tuple, which the router's side can see;
//!   both records go when the connection closes.
//! - `getsockopt`: answers `SO_ORIGINAL_DST` (IPv4 and IPv6) on the
//!   router's accepted sockets from that record, for a proxy written for
//!   iptables REDIRECT; laneway's router reads the record from the map.
//! - `getpeername4` / `getpeername6`: the app sees the VIP it dialled.
//!
//! Every program returns 1 (allow) on every path: laneway never fails a
//! syscall, it only steers or leaves alone. With no live router (stale
//! heartbeat, no listener) the connect programs send a connect straight to an
//! endpoint of the caller's lane, else base, from `LANE_ENDPOINTS` (as they
//! always do for a `protocol: tcp` port), and leave it alone when there is
//! none.
#![no_std]
#![no_main]

mod connect;
mod maps;
mod peername;
mod sockops;
mod sockopt;
mod tc;

use aya_ebpf::{
    macros::{cgroup_sock_addr, cgroup_sockopt, classifier, sk_lookup, sock_ops},
    programs::{SkLookupContext, SockAddrContext, SockOpsContext, SockoptContext, TcContext},
};

/// Allow the syscall: the only verdict these programs give.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is the kernel's, valid for this call.
    unsafe { connect::try_connect4(&ctx) };
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    unsafe { connect::try_connect6(&ctx) };
    ALLOW
}

#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    sockops::try_sock_ops(&ctx);
    ALLOW as u32
}

#[cgroup_sockopt(getsockopt)]
pub fn getsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: as above.
    unsafe { sockopt::try_getsockopt(&ctx) };
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    unsafe { peername::try_getpeername4(&ctx) };
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    unsafe { peername::try_getpeername6(&ctx) };
    ALLOW
}

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    tc::try_tc_ingress(&ctx).unwrap_or(tc::NEXT)
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    tc::try_tc_egress(&ctx).unwrap_or(tc::NEXT)
}

#[sk_lookup]
pub fn tc_lookup(ctx: SkLookupContext) -> u32 {
    tc::try_tc_lookup(&ctx);
    tc::SK_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel needs a GPL-compatible license for some helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
