//! TC on an enrolled pod's host-side veth (TC mode).
//!
//! `tc_ingress` (packets from the pod): a TCP packet to a service VIP:port is
//! handed to the router's transparent (`IP_TRANSPARENT`) listener with
//! `bpf_sk_assign`, and every later packet of that flow to the router's
//! socket for it, so the router sees the VIP as its local address and the
//! pod sees nothing unusual. The packets are marked so the node delivers
//! them locally (an `ip rule` on the mark) and leaves them untracked (no
//! kube-proxy DNAT). Flows the router does not own (opened before
//! enrolment) pass untouched.
//!
//! While no router is live (stale heartbeat, no transparent listener), a
//! SYN to a VIP:port is not left to kube-proxy, which spreads over every
//! lane: `tc_ingress` picks an endpoint of the pod's lane, else base, from
//! `LANE_ENDPOINTS`, records the flow in `TC_FLOWS` and DNATs it, and every
//! later packet of that flow the same while the record lasts (also once the
//! router is back: a flow stays where it started). `tc_egress` (packets to
//! the pod) gives the endpoint's replies the VIP:port as source again. The
//! node's conntrack sees a plain pod-to-endpoint flow. IPv4 only.
//!
//! `tc_lookup` (an `sk_lookup` program on the node's netns) answers the
//! kernel's listener lookup for a service VIP:port with the transparent
//! listener. The kernel makes that lookup when a pod's SYN meets the
//! router's TIME_WAIT socket of an earlier connection with the same 4-tuple
//! (the router closed first, the pod reused the port): with a listener it
//! kills the TIME_WAIT socket and accepts the SYN as a new connection;
//! without one (a VIP is no local address anyone listens on) it answers
//! with the old connection's ACK, and the pod must send its SYN again.

use aya_ebpf::{
    bindings::{BPF_F_PSEUDO_HDR, bpf_sock_tuple},
    helpers::{bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release, bpf_skc_lookup_tcp},
    programs::{SkLookupContext, TcContext},
};
use laneway_common::{
    ServiceKey, TC_FLOW_OUT, TC_FLOW_REPLY, TC_LISTENER, TC_NAT_MARK, TPROXY_MARK, TcFlow,
    TcFlowKey, is_v4_mapped, stat, v4_mapped,
};

use crate::maps::{
    ROUTER, ROUTER_LISTENER, SERVICES, TC_ENROLLED, TC_FLOWS, count, heartbeat_fresh, pick,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const TCP_LISTEN: u32 = 10;
const AF_INET: u32 = 2;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// Offsets in the IPv4 header: fragment offset, checksum, source,
/// destination.
const IP_FRAG: usize = ETH_HLEN + 6;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SADDR: usize = ETH_HLEN + 12;
const IP_DADDR: usize = ETH_HLEN + 16;
/// Offsets in the TCP header: ports, sequence number, flags, checksum.
const TCP_SPORT: usize = 0;
const TCP_DPORT: usize = 2;
const TCP_SEQ: usize = 4;
const TCP_FLAGS: usize = 13;
const TCP_CSUM: usize = 16;
/// `BPF_F_CURRENT_NETNS`: look sockets up in the packet's netns (the node's).
const CURRENT_NETNS: u64 = -1i64 as u64;

/// "Next, please": the next program on the hook (another component's) still
/// runs, in its place (`TC_ACT_UNSPEC` / `TCX_NEXT`), also for the packets
/// laneway took (the socket assignment, the rewrite and the mark stay).
pub const NEXT: i32 = -1;

/// `tc_lookup`'s only verdict (`SK_PASS`): the lookup goes on, with the
/// socket it assigned if any (other programs' and the kernel's own
/// otherwise). Never `SK_DROP`: laneway steers or leaves alone.
pub const SK_PASS: u32 = 1;

/// The fields of an IPv4 TCP packet laneway looks at, as on the wire
/// (network byte order).
struct Tcp4 {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    /// Host byte order.
    seq: u32,
    flags: u8,
    /// Offset of the TCP header.
    l4: usize,
}

impl Tcp4 {
    /// A SYN that opens a connection (not a SYN-ACK).
    fn opens(&self) -> bool {
        self.flags & TCP_SYN != 0 && self.flags & TCP_ACK == 0
    }
}

/// The IPv4 TCP packet in `ctx`, or `None` for anything else (a fragment
/// past the first has no TCP header).
#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Tcp4>, i64> {
    if u16::from_be(ctx.load::<u16>(12)?) != ETH_P_IP {
        return Ok(None);
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN)?;
    if version_ihl >> 4 != 4
        || ctx.load::<u8>(ETH_HLEN + 9)? != IPPROTO_TCP
        || u16::from_be(ctx.load::<u16>(IP_FRAG)?) & 0x1fff != 0
    {
        return Ok(None);
    }
    let l4 = ETH_HLEN + usize::from(version_ihl & 0x0f) * 4;
    Ok(Some(Tcp4 {
        saddr: ctx.load(IP_SADDR)?,
        daddr: ctx.load(IP_DADDR)?,
        sport: ctx.load(l4 + TCP_SPORT)?,
        dport: ctx.load(l4 + TCP_DPORT)?,
        seq: u32::from_be(ctx.load(l4 + TCP_SEQ)?),
        flags: ctx.load(l4 + TCP_FLAGS)?,
        l4,
    }))
}

/// Rewrites an address (at `addr_at`) and the TCP port at `port_at` (from
/// the TCP header), fixing the IP and TCP checksums. All values as on the
/// wire.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    l4: usize,
    (addr_at, from_addr, to_addr): (usize, u32, u32),
    (port_at, from_port, to_port): (usize, u16, u16),
) -> Result<(), i64> {
    let csum = l4 + TCP_CSUM;
    ctx.l4_csum_replace(
        csum,
        u64::from(from_addr),
        u64::from(to_addr),
        u64::from(BPF_F_PSEUDO_HDR) | 4,
    )?;
    ctx.l4_csum_replace(csum, u64::from(from_port), u64::from(to_port), 2)?;
    ctx.l3_csum_replace(IP_CSUM, u64::from(from_addr), u64::from(to_addr), 4)?;
    ctx.store(addr_at, &to_addr, 0)?;
    ctx.store(l4 + port_at, &to_port, 0)?;
    Ok(())
}

/// Sends the pod's packet to the flow's endpoint, marked as laneway's.
#[inline(always)]
fn dnat(ctx: &TcContext, packet: &Tcp4, flow: &TcFlow) -> Result<(), i64> {
    rewrite(
        ctx,
        packet.l4,
        (IP_DADDR, packet.daddr, flow.endpoint_addr),
        (TCP_DPORT, packet.dport, flow.endpoint_port.to_be()),
    )?;
    ctx.set_mark(TC_NAT_MARK);
    Ok(())
}

/// The key of the pod's packet's direction.
#[inline(always)]
fn out_key(packet: &Tcp4) -> TcFlowKey {
    TcFlowKey {
        pod_addr: packet.saddr,
        peer_addr: packet.daddr,
        pod_port: u16::from_be(packet.sport),
        peer_port: u16::from_be(packet.dport),
        direction: TC_FLOW_OUT,
    }
}

/// The key of the replies of `flow` to the pod at `pod_addr`:`pod_port`.
#[inline(always)]
fn reply_key(pod_addr: u32, pod_port: u16, flow: &TcFlow) -> TcFlowKey {
    TcFlowKey {
        pod_addr,
        peer_addr: flow.endpoint_addr,
        pod_port,
        peer_port: flow.endpoint_port,
        direction: TC_FLOW_REPLY,
    }
}

/// No live router: sends the pod's SYN to an endpoint of `lane`, else base,
/// and records the flow. Without an endpoint (or a record) the packet goes
/// on untouched.
#[inline(always)]
fn route_in_kernel(ctx: &TcContext, packet: &Tcp4, lane: u32) -> Result<(), i64> {
    let key = out_key(packet);
    let Some(endpoint) = pick(v4_mapped(packet.daddr), key.peer_port, lane) else {
        return Ok(());
    };
    // The agent gives an IPv4 VIP IPv4 endpoints only; checked all the same.
    if !is_v4_mapped(&endpoint.addr) {
        return Ok(());
    }
    let flow = TcFlow {
        endpoint_addr: endpoint.addr[3],
        vip_addr: packet.daddr,
        endpoint_port: endpoint.port,
        vip_port: key.peer_port,
        syn_seq: packet.seq,
    };
    // The replies' record first: a flow whose replies could not be
    // rewritten must not be DNATed.
    let reply = reply_key(packet.saddr, key.pod_port, &flow);
    if TC_FLOWS.insert(reply, flow, 0).is_err() || TC_FLOWS.insert(key, flow, 0).is_err() {
        return Ok(());
    }
    dnat(ctx, packet, &flow)?;
    count(stat::KERNEL_ROUTED);
    Ok(())
}

/// The router's transparent listener, if the router is live: a referenced
/// socket the caller must release.
#[inline(always)]
fn live_tc_listener() -> Option<*mut core::ffi::c_void> {
    let router = ROUTER.get(0)?;
    if !heartbeat_fresh(router) {
        return None;
    }
    let index = TC_LISTENER;
    let map = (&raw const ROUTER_LISTENER)
        .cast_mut()
        .cast::<core::ffi::c_void>();
    // SAFETY: a lookup in our own sockmap; a non-null answer is a referenced
    // socket.
    let listener = unsafe { bpf_map_lookup_elem(map, (&raw const index).cast()) };
    (!listener.is_null()).then_some(listener)
}

/// Hands the SYN to the router's transparent listener, if the router is
/// live; whether it did.
#[inline(always)]
fn hand_to_router(ctx: &TcContext) -> bool {
    let Some(listener) = live_tc_listener() else {
        return false;
    };
    // SAFETY: assigning the referenced socket, then releasing our ref.
    unsafe {
        let assigned = bpf_sk_assign(ctx.skb.skb.cast(), listener, 0);
        bpf_sk_release(listener);
        assigned == 0
    }
}

/// Answers the node's listener lookup for a TCP packet to a service
/// VIP:port with the router's transparent listener, if the router is live;
/// anything else is left to the kernel's own lookup. Only packets the node
/// delivers locally are looked up, and a packet to a VIP is delivered
/// locally only when `tc_ingress` marked it for the router.
pub fn try_tc_lookup(ctx: &SkLookupContext) {
    // SAFETY: reading fields of the context, one at a time, at constant
    // offsets.
    let (family, protocol, local_ip4, local_port) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.lookup).family),
            core::ptr::read_volatile(&raw const (*ctx.lookup).protocol),
            core::ptr::read_volatile(&raw const (*ctx.lookup).local_ip4),
            core::ptr::read_volatile(&raw const (*ctx.lookup).local_port),
        )
    };
    if family != AF_INET || protocol != u32::from(IPPROTO_TCP) {
        return;
    }
    let service = ServiceKey {
        addr: v4_mapped(local_ip4),
        // Host byte order in this context.
        port: local_port as u16,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if unsafe { SERVICES.get(service) }.is_none() {
        return;
    }
    let Some(listener) = live_tc_listener() else {
        return;
    };
    // SAFETY: assigning the referenced socket (the kernel refuses anything
    // but a listener of the lookup's protocol), then releasing our ref.
    unsafe {
        bpf_sk_assign(ctx.lookup.cast(), listener, 0);
        bpf_sk_release(listener);
    }
}

/// Gives a packet of a flow the router owns (an accepted or request
/// socket of its, found by 4-tuple) to that socket; whether it did.
#[inline(always)]
fn to_routers_socket(ctx: &TcContext, packet: &Tcp4) -> bool {
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4.saddr = packet.saddr;
    tuple.__bindgen_anon_1.ipv4.daddr = packet.daddr;
    tuple.__bindgen_anon_1.ipv4.sport = packet.sport;
    tuple.__bindgen_anon_1.ipv4.dport = packet.dport;
    let size = core::mem::size_of::<u32>() as u32 * 2 + core::mem::size_of::<u16>() as u32 * 2;
    // SAFETY: the helper takes this program's context and a tuple of `size`.
    let sk = unsafe { bpf_skc_lookup_tcp(ctx.skb.skb.cast(), &mut tuple, size, CURRENT_NETNS, 0) };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a referenced socket from the lookup, released below.
    let state = unsafe { core::ptr::read_volatile(&raw const (*sk).state) };
    if state != TCP_LISTEN {
        // SAFETY: assigning a referenced socket, then releasing our ref.
        unsafe {
            bpf_sk_assign(ctx.skb.skb.cast(), sk.cast(), 0);
            bpf_sk_release(sk.cast());
        }
        return true;
    }
    // SAFETY: releasing the lookup's reference.
    unsafe { bpf_sk_release(sk.cast()) };
    false
}

/// Handles a packet from the pod; always lets the next program run.
pub fn try_tc_ingress(ctx: &TcContext) -> Result<i32, i64> {
    // SAFETY: reading two fields of the context, at constant offsets.
    let (ifindex, mark) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.skb.skb).ifindex),
            core::ptr::read_volatile(&raw const (*ctx.skb.skb).mark),
        )
    };
    // SAFETY: copied out at once.
    let Some(pod) = (unsafe { TC_ENROLLED.get(ifindex) }).copied() else {
        return Ok(NEXT);
    };
    // Already DNATed (by another laneway program on this hook).
    if mark == TC_NAT_MARK {
        return Ok(NEXT);
    }
    let Some(packet) = parse(ctx)? else {
        return Ok(NEXT);
    };
    let key = out_key(&packet);
    // SAFETY: copied out at once.
    if let Some(flow) = unsafe { TC_FLOWS.get(key) }.copied() {
        if !packet.opens() || flow.syn_seq == packet.seq {
            dnat(ctx, &packet, &flow)?;
            return Ok(NEXT);
        }
        // A new connection on a reused 4-tuple: decided afresh.
        let _ = TC_FLOWS.remove(reply_key(packet.saddr, key.pod_port, &flow));
        let _ = TC_FLOWS.remove(key);
    } else if packet.opens() {
        // A connection of the pod's straight to an address and port that
        // were the endpoint of one of its DNATed flows, from the same
        // port: that flow is over (a 4-tuple is one connection at a time),
        // and its replies' record must not rewrite this one's.
        let _ = TC_FLOWS.remove(TcFlowKey {
            direction: TC_FLOW_REPLY,
            ..key
        });
    }
    let service = ServiceKey {
        addr: v4_mapped(packet.daddr),
        port: key.peer_port,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if unsafe { SERVICES.get(service) }.is_none() {
        return Ok(NEXT);
    }
    if to_routers_socket(ctx, &packet) {
        ctx.set_mark(TPROXY_MARK);
        return Ok(NEXT);
    }
    // Only a new connection (a SYN) is taken over; anything else is not ours.
    if !packet.opens() {
        return Ok(NEXT);
    }
    if hand_to_router(ctx) {
        count(stat::REDIRECTED);
        ctx.set_mark(TPROXY_MARK);
        return Ok(NEXT);
    }
    count(stat::FAIL_OPEN);
    route_in_kernel(ctx, &packet, pod.lane)?;
    Ok(NEXT)
}

/// Handles a packet to the pod: an endpoint's reply on a flow
/// `tc_ingress` DNATed gets the VIP:port back as its source.
pub fn try_tc_egress(ctx: &TcContext) -> Result<i32, i64> {
    let Some(packet) = parse(ctx)? else {
        return Ok(NEXT);
    };
    let key = TcFlowKey {
        pod_addr: packet.daddr,
        peer_addr: packet.saddr,
        pod_port: u16::from_be(packet.dport),
        peer_port: u16::from_be(packet.sport),
        direction: TC_FLOW_REPLY,
    };
    // SAFETY: copied out at once.
    let Some(flow) = (unsafe { TC_FLOWS.get(key) }).copied() else {
        return Ok(NEXT);
    };
    rewrite(
        ctx,
        packet.l4,
        (IP_SADDR, packet.saddr, flow.vip_addr),
        (TCP_SPORT, packet.sport, flow.vip_port.to_be()),
    )?;
    Ok(NEXT)
}
