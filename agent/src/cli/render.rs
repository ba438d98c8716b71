//! The table (human) form of each admin document.
//!
//! Every function renders into a `String`; printing is the caller's business,
//! so tests read exactly what people see.

use std::fmt::Write as _;

use super::table::{Table, human_bytes, human_ms, human_us, lane, list, or_dash, percent, yes_no};
use crate::admin::api::{
    BpfStats, Conns, EndpointInfo, Explanation, Maps, Pods, Preflight, Services, Status, TraceEvent,
};

/// `laneway status`.
pub(crate) fn status(s: &Status) -> String {
    let mut out = String::new();
    let mut top = Table::plain();
    top.row(["version:", s.version.as_str()])
        .row(["mode:", s.mode.as_str()])
        .row(["ready:", yes_no(s.ready)])
        .row(["cgroup:", s.cgroup.as_str()])
        .row(["connections:", &format!("{} active", s.connections_active)]);
    out.push_str(&top.render(""));

    out.push_str("\nprograms\n");
    if s.programs.is_empty() {
        out.push_str("  (none attached)\n");
    } else {
        let mut t = Table::new(&["NAME", "HOOK", "ATTACHED TO"]);
        for p in &s.programs {
            t.row([p.name.as_str(), p.hook.as_str(), p.attached_to.as_str()]);
        }
        out.push_str(&t.render("  "));
    }

    out.push_str("\nmaps\n");
    if s.maps.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let mut t = Table::new(&["NAME", "ENTRIES", "FILL"]);
        for m in &s.maps {
            t.row([
                m.name.clone(),
                format!("{}/{}", m.entries, m.capacity),
                percent(m.entries, m.capacity),
            ]);
        }
        out.push_str(&t.render("  "));
    }

    let r = &s.router;
    out.push_str("\nrouter\n");
    let mut redirect = r.redirect_ipv4.clone();
    if let Some(v6) = &r.redirect_ipv6 {
        let _ = write!(redirect, ", {v6}");
    }
    let alive = if r.alive {
        "alive"
    } else {
        "STALE: the programs do not redirect"
    };
    let mut t = Table::plain();
    t.row(["listen:", &list(&r.listen)])
        .row(["redirect:", &redirect])
        .row([
            "heartbeat:".to_owned(),
            format!("{} ago ({alive})", human_ms(r.heartbeat_age_ms)),
        ]);
    out.push_str(&t.render("  "));

    let sn = &s.snapshot;
    out.push_str("\nsnapshot\n");
    let mut t = Table::plain();
    t.row(["source:", sn.source.as_str()])
        .row(["age:".to_owned(), human_ms(sn.age_ms)])
        .row(["updates:".to_owned(), sn.updates.to_string()])
        .row([
            "services:".to_owned(),
            format!(
                "{} ({} VIP ports, {} endpoints)",
                sn.services, sn.service_ports, sn.endpoints
            ),
        ])
        .row([
            "pods:".to_owned(),
            format!(
                "{} enrolled, {} not enrolled",
                sn.pods_enrolled, sn.pods_unenrolled
            ),
        ]);
    out.push_str(&t.render("  "));

    out.push_str("\nbpf stats\n");
    out.push_str(&stats(&s.bpf_stats).render("  "));
    out
}

fn stats(s: &BpfStats) -> Table {
    let mut t = Table::plain();
    t.row(["redirected:".to_owned(), s.redirected.to_string()])
        .row(["fail-open:".to_owned(), s.fail_open.to_string()])
        .row(["kernel-routed:".to_owned(), s.kernel_routed.to_string()])
        .row([
            "origdst answered:".to_owned(),
            s.origdst_answered.to_string(),
        ])
        .row(["origdst missed:".to_owned(), s.origdst_missed.to_string()]);
    t
}

/// `laneway pods`.
pub(crate) fn pods(p: &Pods) -> String {
    let mut out = String::new();
    if p.enrolled.is_empty() {
        out.push_str("(no pod is enrolled)\n");
    } else {
        let mut t = Table::new(&["NAMESPACE", "NAME", "TAG", "NETNS-COOKIE", "IPS"]);
        for pod in &p.enrolled {
            t.row([
                pod.namespace.clone(),
                pod.name.clone(),
                lane(pod.tag.as_deref()),
                pod.netns_cookie.to_string(),
                list(&pod.ips),
            ]);
        }
        out.push_str(&t.render(""));
    }
    out.push_str("\nnot enrolled\n");
    if p.unenrolled.is_empty() {
        out.push_str("(none)\n");
    } else {
        let mut t = Table::new(&["POD", "REASON"]);
        for pod in &p.unenrolled {
            t.row([pod.pod.as_str(), pod.reason.as_str()]);
        }
        out.push_str(&t.render(""));
    }
    out
}

/// An endpoint's state: `serving`, `terminating`, `ejected`, `not serving`,
/// or for an endpoint outside the cluster `external` (its health checks
/// connect) or `external-down`.
pub(crate) fn endpoint_state(e: &EndpointInfo) -> &'static str {
    if e.external {
        if e.eligible {
            "external"
        } else {
            "external-down"
        }
    } else if e.terminating {
        "terminating"
    } else if e.ejected {
        "ejected"
    } else if e.serving {
        "serving"
    } else {
        "not serving"
    }
}

fn weight(w: f64) -> String {
    let text = format!("{w:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `laneway services`.
pub(crate) fn services(s: &Services) -> String {
    let mut out = String::new();
    if s.services.is_empty() {
        out.push_str("(no services)\n");
    }
    for (i, svc) in s.services.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "{}/{}  {}", svc.namespace, svc.name, list(&svc.vips));
        let _ = writeln!(
            out,
            "  policy: {}",
            if svc.policy.is_empty() {
                "none"
            } else {
                &svc.policy
            }
        );
        if let Some(e) = &svc.policy_error {
            let _ = writeln!(
                out,
                "  policy error (the last good policy is in force): {e}"
            );
        }
        if svc.ports.is_empty() {
            out.push_str("  (no ports)\n");
        }
        for port in &svc.ports {
            let _ = writeln!(
                out,
                "  port {} -> {} ({})",
                port.port, port.target_port, port.protocol
            );
            let mut t = Table::new(&["TAG", "ENDPOINT", "NAME", "STATE", "IN-FLIGHT", "WEIGHT"]);
            for l in &port.lanes {
                for e in &l.endpoints {
                    t.row([
                        lane(l.tag.as_deref()),
                        e.address.clone(),
                        or_dash(e.name.as_deref()),
                        endpoint_state(e).to_owned(),
                        e.in_flight.to_string(),
                        weight(e.weight),
                    ]);
                }
            }
            if t.is_empty() {
                out.push_str("    (no endpoints)\n");
            } else {
                out.push_str(&t.render("    "));
            }
        }
    }
    out
}

/// `laneway conns`.
pub(crate) fn conns(c: &Conns) -> String {
    if c.connections.is_empty() {
        return "(no redirected connections)\n".to_owned();
    }
    let mut t = Table::new(&[
        "ID",
        "CALLER",
        "DESTINATION",
        "SERVICE",
        "ENDPOINT",
        "TAG",
        "PROTO",
        "REQS",
        "BYTES-IN",
        "BYTES-OUT",
        "AGE",
    ]);
    for conn in &c.connections {
        t.row([
            conn.id.to_string(),
            conn.caller.clone().unwrap_or_else(|| conn.peer.clone()),
            conn.destination.clone(),
            or_dash(conn.service.as_deref()),
            or_dash(conn.endpoint.as_deref()),
            or_dash(conn.tag.as_deref()),
            match conn.protocol.as_str() {
                "h2" => format!("h2 ({} open)", conn.open_streams),
                other => other.to_owned(),
            },
            conn.requests.to_string(),
            human_bytes(conn.bytes_in),
            human_bytes(conn.bytes_out),
            human_ms(conn.age_ms),
        ]);
    }
    t.render("")
}

/// `laneway explain`.
pub(crate) fn explanation(e: &Explanation) -> String {
    let mut out = String::new();
    let caller = match (&e.caller, &e.caller_tag) {
        (Some(c), Some(t)) => format!("{c} (tag {t})"),
        (Some(c), None) => format!("{c} (base)"),
        (None, _) => "not an enrolled pod".to_owned(),
    };
    let mut t = Table::plain();
    t.row(["from:".to_owned(), caller])
        .row([
            "to:".to_owned(),
            format!("{} at {}", e.service, e.destination),
        ])
        .row([
            "tag:".to_owned(),
            format!("{} ({})", or_dash(e.tag.as_deref()), e.tag_source),
        ])
        .row(["candidates:".to_owned(), list(&e.candidates)]);
    out.push_str(&t.render(""));
    out.push('\n');
    let width = e.steps.len().to_string().len();
    for (i, step) in e.steps.iter().enumerate() {
        let _ = writeln!(out, "{:>width$}. {step}", i + 1);
    }
    if !e.steps.is_empty() {
        out.push('\n');
    }
    match (&e.endpoint, &e.reject) {
        (_, Some(reason)) if e.decision.as_deref() == Some("denied") => {
            let _ = writeln!(out, "=> denied: {reason} (the router answers 403)");
        }
        (_, Some(reason)) => {
            let _ = writeln!(
                out,
                "=> no endpoint: {reason} (decision {}; the router answers 503)",
                e.decision.as_deref().unwrap_or("none")
            );
        }
        (Some(endpoint), None) => {
            let _ = writeln!(
                out,
                "=> endpoint {endpoint} (decision {})",
                or_dash(e.decision.as_deref())
            );
        }
        (None, None) => {
            let _ = writeln!(
                out,
                "=> no endpoint (decision {})",
                or_dash(e.decision.as_deref())
            );
        }
    }
    out
}

/// One `laneway trace` line:
/// `TIME CALLER -> SERVICE tag=T (SOURCE) DECISION -> ENDPOINT STATUS DURATION`.
pub(crate) fn trace_line(e: &TraceEvent) -> String {
    let status = match (e.status, e.grpc_status) {
        (0, _) => "L4".to_owned(),
        (status, Some(grpc)) => format!("{status}/grpc-{grpc}"),
        (status, None) => status.to_string(),
    };
    let mut line = format!(
        "{} {} -> {} tag={} ({}) {} -> {} {} {}",
        clock(e.time_ms),
        or_dash(e.caller.as_deref()),
        e.service,
        or_dash(e.tag.as_deref()),
        e.tag_source,
        e.decision.as_deref().unwrap_or("none"),
        match (&e.endpoint, e.external) {
            (Some(endpoint), true) => format!("{endpoint} (external)"),
            (endpoint, _) => or_dash(endpoint.as_deref()),
        },
        status,
        human_us(e.duration_us),
    );
    if let Some(err) = &e.error {
        let _ = write!(line, " error: {}", err.replace(['\n', '\r'], " "));
    }
    line
}

/// Local wall-clock time of a Unix time in ms: `HH:MM:SS.mmm`.
fn clock(time_ms: u64) -> String {
    let secs = (time_ms / 1_000) as libc::time_t;
    let millis = time_ms % 1_000;
    // SAFETY: `tm` is plain data; localtime_r writes it or returns null.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    let local = unsafe { libc::localtime_r(&secs, &mut tm) };
    if local.is_null() {
        let day = time_ms / 1_000 % 86_400;
        return format!(
            "{:02}:{:02}:{:02}.{millis:03}Z",
            day / 3600,
            day % 3600 / 60,
            day % 60
        );
    }
    format!(
        "{:02}:{:02}:{:02}.{millis:03}",
        tm.tm_hour, tm.tm_min, tm.tm_sec
    )
}

/// `laneway maps`.
pub(crate) fn maps(m: &Maps) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "ENROLLED ({} entries)", m.enrolled.len());
    let mut t = Table::new(&["NETNS-COOKIE", "POD-ID", "POD"]);
    for e in &m.enrolled {
        t.row([
            e.netns_cookie.to_string(),
            e.pod_id.to_string(),
            or_dash(e.pod.as_deref()),
        ]);
    }
    out.push_str(&t.render("  "));

    let _ = writeln!(out, "\nSERVICES ({} entries)", m.services.len());
    let mut t = Table::new(&["VIP", "SERVICE-ID", "SERVICE"]);
    for e in &m.services {
        t.row([
            e.vip.clone(),
            e.service_id.to_string(),
            or_dash(e.service.as_deref()),
        ]);
    }
    out.push_str(&t.render("  "));

    let r = &m.router;
    out.push_str("\nROUTER[0]\n");
    let heartbeat = if r.heartbeat_ns == 0 {
        "0 (shut down: the programs do not redirect)".to_owned()
    } else {
        format!("{} ns (CLOCK_MONOTONIC)", r.heartbeat_ns)
    };
    let mut t = Table::plain();
    t.row(["addr4:", r.addr4.as_str()])
        .row(["addr6:", r.addr6.as_str()])
        .row(["port:".to_owned(), r.port.to_string()])
        .row(["mark:".to_owned(), format!("{:#x}", r.mark)])
        .row(["heartbeat:".to_owned(), heartbeat]);
    out.push_str(&t.render("  "));

    let _ = writeln!(out, "\nORIG_BY_COOKIE ({} entries)", m.orig_by_cookie.len());
    let mut t = Table::new(&["SOCKET-COOKIE", "DESTINATION", "NETNS-COOKIE", "POD-ID"]);
    for e in &m.orig_by_cookie {
        t.row([
            e.socket_cookie.to_string(),
            e.destination.clone(),
            e.netns_cookie.to_string(),
            e.pod_id.to_string(),
        ]);
    }
    out.push_str(&t.render("  "));

    let _ = writeln!(out, "\nORIG_BY_CONN ({} entries)", m.orig_by_conn.len());
    let mut t = Table::new(&["CLIENT", "ROUTER", "DESTINATION", "NETNS-COOKIE"]);
    for e in &m.orig_by_conn {
        t.row([
            e.client.clone(),
            e.router.clone(),
            e.destination.clone(),
            e.netns_cookie.to_string(),
        ]);
    }
    out.push_str(&t.render("  "));

    let _ = writeln!(out, "\nLANE_ENDPOINTS ({} entries)", m.lane_endpoints.len());
    let mut t = Table::new(&["VIP", "LANE", "ENDPOINTS"]);
    for e in &m.lane_endpoints {
        let lane = match &e.tag {
            Some(tag) => format!("{} ({tag})", e.lane),
            None if e.lane == 0 => "0 (base)".to_owned(),
            None => e.lane.to_string(),
        };
        t.row([e.vip.clone(), lane, e.endpoints.join(", ")]);
    }
    out.push_str(&t.render("  "));

    out.push_str("\nSTATS\n");
    out.push_str(&stats(&m.stats).render("  "));
    out
}

/// `laneway preflight`.
pub(crate) fn preflight(p: &Preflight) -> String {
    let mut t = Table::new(&["RESULT", "CHECK", "DETAIL"]);
    for c in &p.checks {
        t.row([c.result.as_str(), c.name.as_str(), c.detail.as_str()]);
        if c.result != "pass"
            && let Some(fix) = &c.fix
        {
            t.note(format!("fix: {fix}"));
        }
    }
    let mut out = t.render("");
    let count = |r: &str| p.checks.iter().filter(|c| c.result == r).count();
    let _ = writeln!(
        out,
        "\n{} passed, {} warnings, {} failed",
        count("pass"),
        count("warn"),
        count("fail")
    );
    out
}
