//! `cgroup/getsockopt`: answer original-destination queries on the router's
//! accepted sockets, as netfilter would behind iptables REDIRECT.

use core::ptr::read_volatile;

use aya_ebpf::{bindings::bpf_sockopt, programs::SockoptContext};
use laneway_common::{ConnKey, SO_ORIGINAL_DST, is_v4_mapped, stat, v4_mapped};

use crate::maps::{ORIG_BY_CONN, count};

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
const AF_INET: u32 = 2;
const AF_INET6: u16 = 10;

/// `struct sockaddr_in`.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port_be: u16,
    addr_be: u32,
    zero: [u8; 8],
}

/// `struct sockaddr_in6`.
#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port_be: u16,
    flowinfo: u32,
    addr: [u32; 4],
    scope_id: u32,
}

/// Writes `value` as the option's answer, if the caller's buffer holds it.
#[inline(always)]
unsafe fn answer<T>(so: *mut bpf_sockopt, value: T) {
    let len = core::mem::size_of::<T>();
    // SAFETY: the kernel's context; optval..optval_end is the caller's buffer,
    // checked against `len` before the write, as the verifier demands.
    unsafe {
        let optval = (*so).__bindgen_anon_2.optval as *mut u8;
        let end = (*so).__bindgen_anon_3.optval_end as *mut u8;
        if optval.add(len) > end {
            return;
        }
        core::ptr::write_unaligned(optval as *mut T, value);
        // Two separate stores: LLVM would merge plain assignments into one
        // 8-byte store, which the verifier rejects.
        core::ptr::write_volatile(&mut (*so).optlen, len as i32);
        core::ptr::write_volatile(&mut (*so).retval, 0);
    }
    count(stat::ORIGDST_ANSWERED);
}

pub unsafe fn try_getsockopt(ctx: &SockoptContext) {
    let so = ctx.sockopt;
    // SAFETY: the kernel's context, valid for the program's run.
    let (level, optname) = unsafe { ((*so).level, (*so).optname) };
    let known = matches!(
        (level, optname),
        (SOL_IP, SO_ORIGINAL_DST) | (SOL_IPV6, SO_ORIGINAL_DST)
    );
    if !known {
        return;
    }
    // SAFETY: as above; `sk` is the socket queried, never null here.
    let sk = unsafe { (*so).__bindgen_anon_1.sk };
    if sk.is_null() {
        return;
    }
    // The router's accepted socket: source = router, destination = pod.
    // Every field is loaded unconditionally, each its own volatile load at a
    // constant offset from `sk`: the verifier forbids arithmetic on socket
    // pointers, and loads under a branch get merged by LLVM into exactly that.
    // SAFETY: bpf_sock fields, all readable for this program type.
    let key = unsafe {
        let family = read_volatile(&raw const (*sk).family);
        let dst4 = read_volatile(&raw const (*sk).dst_ip4);
        let src4 = read_volatile(&raw const (*sk).src_ip4);
        let dst6 = [
            read_volatile(&raw const (*sk).dst_ip6[0]),
            read_volatile(&raw const (*sk).dst_ip6[1]),
            read_volatile(&raw const (*sk).dst_ip6[2]),
            read_volatile(&raw const (*sk).dst_ip6[3]),
        ];
        let src6 = [
            read_volatile(&raw const (*sk).src_ip6[0]),
            read_volatile(&raw const (*sk).src_ip6[1]),
            read_volatile(&raw const (*sk).src_ip6[2]),
            read_volatile(&raw const (*sk).src_ip6[3]),
        ];
        let dst_port = read_volatile(&raw const (*sk).dst_port);
        let src_port = read_volatile(&raw const (*sk).src_port);
        let v4 = family == AF_INET;
        ConnKey {
            client_addr: if v4 { v4_mapped(dst4) } else { dst6 },
            router_addr: if v4 { v4_mapped(src4) } else { src6 },
            client_port: u16::from_be(dst_port),
            router_port: src_port as u16,
        }
    };
    // SAFETY: copied out at once.
    let Some(original) = (unsafe { ORIG_BY_CONN.get(key) }).copied() else {
        count(stat::ORIGDST_MISSED);
        return;
    };
    // SAFETY: `so` is the kernel's context.
    unsafe {
        match (level, optname) {
            (SOL_IP, SO_ORIGINAL_DST) if is_v4_mapped(&original.addr) => answer(
                so,
                SockaddrIn {
                    family: AF_INET as u16,
                    port_be: original.port.to_be(),
                    addr_be: original.addr[3],
                    zero: [0; 8],
                },
            ),
            (SOL_IPV6, SO_ORIGINAL_DST) => answer(
                so,
                SockaddrIn6 {
                    family: AF_INET6,
                    port_be: original.port.to_be(),
                    flowinfo: 0,
                    addr: original.addr,
                    scope_id: 0,
                },
            ),
            _ => {}
        }
    }
}
