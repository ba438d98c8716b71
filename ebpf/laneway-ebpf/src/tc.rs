//! TC ingress on an enrolled pod's host-side veth (TC mode): a TCP packet
//! from the pod to a service VIP:port is handed to the router's transparent
//! (`IP_TRANSPARENT`) listener with `bpf_sk_assign`, and every later packet
//! of that flow to the router's socket for it, so the router sees the VIP as
//! its local address and the pod sees nothing unusual. The packets are
//! marked so the node delivers them locally (an `ip rule` on the mark) and
//! leaves them untracked (no kube-proxy DNAT). Flows the router does not own
//! (opened before enrolment) and everything when no router listens pass
//! untouched (fail-open).

use aya_ebpf::{
    bindings::bpf_sock_tuple,
    helpers::{
        bpf_ktime_get_ns, bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release, bpf_skc_lookup_tcp,
    },
    programs::TcContext,
};
use laneway_common::{HEARTBEAT_TIMEOUT_NS, ServiceKey, TC_LISTENER, TPROXY_MARK, stat, v4_mapped};

use crate::maps::{ROUTER, ROUTER_LISTENER, SERVICES, TC_ENROLLED, count};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const TCP_LISTEN: u32 = 10;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// `BPF_F_CURRENT_NETNS`: look sockets up in the packet's netns (the node's).
const CURRENT_NETNS: u64 = -1i64 as u64;

/// "Next, please": the next program on the hook (another component's) still
/// runs, in its place (`TC_ACT_UNSPEC` / `TCX_NEXT`), also for the packets
/// laneway took (the socket assignment and the mark stay).
pub const NEXT: i32 = -1;

/// Handles a packet; always lets the next program run.
pub fn try_tc_ingress(ctx: &TcContext) -> Result<i32, i64> {
    const OK: i32 = NEXT;
    // SAFETY: reading the skb's ingress ifindex field of the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: copied out at once.
    if unsafe { TC_ENROLLED.get(ifindex) }.is_none() {
        return Ok(OK);
    }
    if u16::from_be(ctx.load::<u16>(12)?) != ETH_P_IP {
        return Ok(OK);
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN)?;
    if version_ihl >> 4 != 4 || ctx.load::<u8>(ETH_HLEN + 9)? != IPPROTO_TCP {
        return Ok(OK);
    }
    let saddr: u32 = ctx.load(ETH_HLEN + 12)?;
    let daddr: u32 = ctx.load(ETH_HLEN + 16)?;
    let l4 = ETH_HLEN + usize::from(version_ihl & 0x0f) * 4;
    let sport: u16 = ctx.load(l4)?;
    let dport: u16 = ctx.load(l4 + 2)?;
    let flags: u8 = ctx.load(l4 + 13)?;
    let key = ServiceKey {
        addr: v4_mapped(daddr),
        port: u16::from_be(dport),
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if unsafe { SERVICES.get(key) }.is_none() {
        return Ok(OK);
    }
    // A packet of a flow the router already owns goes to its socket.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4.saddr = saddr;
    tuple.__bindgen_anon_1.ipv4.daddr = daddr;
    tuple.__bindgen_anon_1.ipv4.sport = sport;
    tuple.__bindgen_anon_1.ipv4.dport = dport;
    let size = core::mem::size_of::<u32>() as u32 * 2 + core::mem::size_of::<u16>() as u32 * 2;
    // SAFETY: the helper takes this program's context and a tuple of `size`.
    let sk = unsafe { bpf_skc_lookup_tcp(ctx.skb.skb.cast(), &mut tuple, size, CURRENT_NETNS, 0) };
    if !sk.is_null() {
        // SAFETY: a referenced socket from the lookup, released below.
        let state = unsafe { core::ptr::read_volatile(&raw const (*sk).state) };
        if state != TCP_LISTEN {
            // SAFETY: assigning a referenced socket, then releasing our ref.
            unsafe {
                bpf_sk_assign(ctx.skb.skb.cast(), sk.cast(), 0);
                bpf_sk_release(sk.cast());
            }
            ctx.set_mark(TPROXY_MARK);
            return Ok(OK);
        }
        // SAFETY: releasing the lookup's reference.
        unsafe { bpf_sk_release(sk.cast()) };
    }
    // Only a new connection (a SYN) is taken over; anything else is not ours.
    if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 {
        return Ok(OK);
    }
    let Some(router) = ROUTER.get(0) else {
        return Ok(OK);
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if router.heartbeat_ns == 0 || now.wrapping_sub(router.heartbeat_ns) > HEARTBEAT_TIMEOUT_NS {
        count(stat::FAIL_OPEN);
        return Ok(OK);
    }
    let index = TC_LISTENER;
    let map = (&raw const ROUTER_LISTENER)
        .cast_mut()
        .cast::<core::ffi::c_void>();
    // SAFETY: a lookup in our own sockmap; a non-null answer is a referenced
    // socket, assigned and released at once.
    unsafe {
        let listener = bpf_map_lookup_elem(map, (&raw const index).cast());
        if listener.is_null() {
            count(stat::FAIL_OPEN);
            return Ok(OK);
        }
        let assigned = bpf_sk_assign(ctx.skb.skb.cast(), listener, 0);
        bpf_sk_release(listener);
        if assigned != 0 {
            count(stat::FAIL_OPEN);
            return Ok(OK);
        }
    }
    count(stat::REDIRECTED);
    ctx.set_mark(TPROXY_MARK);
    Ok(OK)
}
