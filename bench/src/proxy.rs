//! The configurations compared: the direct path, laneway in each redirect
//! mode, laneway's router behind iptables REDIRECT, and HAProxy and nginx as
//! node proxies behind the same REDIRECT, routing on the same tag header to
//! the same endpoints, HTTP/1.1 and HTTP/2 alike.

use std::{fmt::Write as _, net::SocketAddr};

use anyhow::Result;
use laneway_tests::{
    agent::Agent,
    node::{NODE_IP, ROUTER_PORT},
};

use crate::{
    load::Protocol,
    topology::{BenchNode, Process, TAG, scratch, spawn_listening},
};

/// HAProxy's HTTP/1.1, HTTP/2 and L4 ports in the node netns.
const HAPROXY_PORTS: [u16; 3] = [15002, 15004, 15006];
/// nginx's HTTP/1.1 and HTTP/2 ports in the node netns (no L4: Debian's
/// nginx-light has no `stream` module).
const NGINX_PORTS: [u16; 2] = [15003, 15005];

/// One way for the client's requests to reach the endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Config {
    /// kube-proxy's DNAT straight to an endpoint: no proxy, the floor.
    Direct,
    /// laneway, cgroup socket programs redirecting the connect.
    LanewaySocket,
    /// laneway, TC program on the pod's veth.
    LanewayTc,
    /// laneway's router behind iptables REDIRECT (no eBPF steering).
    LanewayRedirect,
    /// HAProxy behind iptables REDIRECT.
    Haproxy,
    /// nginx behind iptables REDIRECT.
    Nginx,
}

impl Config {
    /// Every configuration, in report order.
    pub const ALL: [Config; 6] = [
        Config::Direct,
        Config::LanewaySocket,
        Config::LanewayTc,
        Config::LanewayRedirect,
        Config::Haproxy,
        Config::Nginx,
    ];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Config::Direct => "direct",
            Config::LanewaySocket => "laneway socket",
            Config::LanewayTc => "laneway tc",
            Config::LanewayRedirect => "laneway REDIRECT",
            Config::Haproxy => "HAProxy",
            Config::Nginx => "nginx",
        }
    }

    /// How many connections it can hold open at once, if fewer than the
    /// open-files limit allows.
    pub fn connection_cap(self) -> Option<usize> {
        (self == Config::Haproxy).then(haproxy_maxconn)
    }

    /// Its short name (pod names, `--only`).
    pub fn slug(self) -> &'static str {
        match self {
            Config::Direct => "direct",
            Config::LanewaySocket => "socket",
            Config::LanewayTc => "tc",
            Config::LanewayRedirect => "redirect",
            Config::Haproxy => "haproxy",
            Config::Nginx => "nginx",
        }
    }

    /// Whether it can carry workloads of `protocol` (nginx is set up for
    /// HTTP only).
    pub fn speaks(self, protocol: Protocol) -> bool {
        !(self == Config::Nginx && protocol == Protocol::L4)
    }

    /// Whether it routes on the tag (all but the direct path).
    pub fn routes_lanes(self) -> bool {
        self != Config::Direct
    }

    /// Starts it on `bench`; stopped when the result is dropped.
    pub fn start(self, bench: &BenchNode) -> Result<Running> {
        let client = bench.client(self);
        let running = match self {
            Config::Direct => Running {
                pid: None,
                proxy: Box::new(()),
                _redirects: Vec::new(),
            },
            Config::LanewaySocket | Config::LanewayTc => {
                let mut scenario = bench.scenario.clone();
                scenario.enrolled = vec![(client, None)];
                scenario.router_extra = match self {
                    Config::LanewaySocket => "  mode: socket\n".into(),
                    _ => "  mode: tc\n".into(),
                };
                let agent = Agent::start(&bench.node, &scenario)?;
                Running {
                    pid: Some(agent.pid()),
                    proxy: Box::new(agent),
                    _redirects: Vec::new(),
                }
            }
            Config::LanewayRedirect => {
                // No pod enrolled: nothing is steered by eBPF. The router
                // knows the caller by its source address only if enrolled,
                // so tags from unknown callers must be honoured here.
                let scenario = &bench.scenario;
                let config = bench.node.dir().join("laneway-redirect.yaml");
                std::fs::write(
                    &config,
                    format!(
                        "{}tags:\n  strip_from_unknown_callers: false\n",
                        bench.node.agent_config(scenario)
                    ),
                )?;
                let agent = Agent::start_with(&bench.node, config)?;
                Running {
                    pid: Some(agent.pid()),
                    _redirects: Redirect::install(bench, client, &[ROUTER_PORT; 3])?,
                    proxy: Box::new(agent),
                }
            }
            Config::Haproxy => {
                let process = haproxy(bench)?;
                Running {
                    pid: Some(process.pid()),
                    proxy: Box::new(process),
                    _redirects: Redirect::install(bench, client, &HAPROXY_PORTS)?,
                }
            }
            Config::Nginx => {
                let process = nginx(bench)?;
                Running {
                    pid: Some(process.pid()),
                    proxy: Box::new(process),
                    _redirects: Redirect::install(bench, client, &NGINX_PORTS)?,
                }
            }
        };
        bench.check_routing(self)?;
        Ok(running)
    }
}

/// A started configuration. Dropped in field order: the REDIRECT rules,
/// then the proxy.
pub struct Running {
    /// The proxy's pid (`None` for the direct path).
    pub pid: Option<i32>,
    _redirects: Vec<Redirect>,
    proxy: Box<dyn std::any::Any>,
}

impl Running {
    /// The proxy's own log, for a failure report.
    pub fn log(&self) -> String {
        self.proxy
            .downcast_ref::<Agent>()
            .map(Agent::log)
            .unwrap_or_default()
    }
}

/// An iptables REDIRECT of the client's connections to the VIP to a local
/// port of the node, as a node proxy's install does; removed on drop.
struct Redirect {
    /// The rule after `PREROUTING`.
    rule: Vec<String>,
    /// The node netns' name.
    netns: String,
}

impl Redirect {
    /// Redirects the client's connections to each VIP (see
    /// [`BenchNode::vips`]) to the port at the same index; VIPs past the
    /// ports' end are not redirected.
    fn install(bench: &BenchNode, client: usize, ports: &[u16]) -> Result<Vec<Self>> {
        bench
            .vips()
            .into_iter()
            .zip(ports.iter().copied())
            .map(|(vip, port)| Self::install_one(bench, client, vip, port))
            .collect()
    }

    fn install_one(bench: &BenchNode, client: usize, vip: SocketAddr, port: u16) -> Result<Self> {
        let rule: Vec<String> = [
            "-s".into(),
            bench.node.pod(client).ip.to_string(),
            "-d".into(),
            vip.ip().to_string(),
            "-p".into(),
            "tcp".into(),
            "--dport".into(),
            vip.port().to_string(),
            "-j".into(),
            "REDIRECT".into(),
            "--to-ports".into(),
            port.to_string(),
        ]
        .into();
        let redirect = Self {
            rule,
            netns: bench.node.netns.name().to_owned(),
        };
        // First in the chain: ahead of the kube-proxy stand-in's DNAT.
        laneway_tests::netns::run(&mut redirect.iptables(&["-I", "PREROUTING", "1"]))?;
        Ok(redirect)
    }

    /// `iptables -t nat OP RULE` in the node netns.
    fn iptables(&self, op: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "iptables", "-t", "nat"])
            .args(op)
            .args(&self.rule);
        cmd
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        let _ = self.iptables(&["-D", "PREROUTING"]).output();
    }
}

/// The two lanes' backend names and endpoints for the service of
/// `protocol` (names end in `_h2` for HTTP/2, `_l4` for L4).
fn named_lanes(bench: &BenchNode, protocol: Protocol) -> [(String, Vec<SocketAddr>); 2] {
    let suffix = match protocol {
        Protocol::Http1 => "",
        Protocol::Http2 => "_h2",
        Protocol::L4 => "_l4",
    };
    let endpoints = bench.endpoints(protocol);
    let pick = |tagged: bool| {
        endpoints
            .iter()
            .filter(|(_, tag)| tag.is_some() == tagged)
            .map(|(addr, _)| *addr)
            .collect()
    };
    [
        (format!("lane_{TAG}{suffix}"), pick(true)),
        (format!("base{suffix}"), pick(false)),
    ]
}

/// HAProxy with two threads (as many as the router's workers): the tag
/// header picks the lane, power-of-two-choices within it, pooled server
/// connections. A second frontend speaks HTTP/2 (h2c) to clients and
/// endpoints (`proto h2`), streams multiplexed on the server connections. A
/// third passes the opaque protocol through (`mode tcp`) to the base lane,
/// where laneway sends an untagged pod's L4 streams.
fn haproxy(bench: &BenchNode) -> Result<Process> {
    let dir = scratch(&bench.node, "haproxy")?;
    let maxconn = haproxy_maxconn();
    let mut conf = format!(
        "global\n  maxconn {maxconn}\n  nbthread 2\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\n  \
         option http-keep-alive\n  http-reuse always\n"
    );
    let [http1_port, h2_port, l4_port] = HAPROXY_PORTS;
    for (protocol, port) in [(Protocol::Http1, http1_port), (Protocol::Http2, h2_port)] {
        let [(lane, _), (base, _)] = named_lanes(bench, protocol);
        let proto = if protocol == Protocol::Http2 {
            " proto h2"
        } else {
            ""
        };
        let _ = write!(
            conf,
            "frontend node{port}\n  bind 0.0.0.0:{port}{proto}\n  \
             use_backend {lane} if {{ req.hdr(x-mse-tag) -m str {TAG} }}\n  default_backend {base}\n"
        );
        for (name, endpoints) in named_lanes(bench, protocol) {
            let _ = writeln!(conf, "backend {name}\n  balance random(2)");
            for (i, addr) in endpoints.iter().enumerate() {
                let _ = writeln!(conf, "  server e{i} {addr}{proto}");
            }
        }
    }
    let [_, (base, endpoints)] = named_lanes(bench, Protocol::L4);
    let _ = writeln!(
        conf,
        "frontend node{l4_port}\n  mode tcp\n  bind 0.0.0.0:{l4_port}\n  default_backend {base}\n\
         backend {base}\n  mode tcp\n  balance random(2)"
    );
    for (i, addr) in endpoints.iter().enumerate() {
        let _ = writeln!(conf, "  server e{i} {addr}");
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    let mut cmd = bench.node.netns.command("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    spawn_listening(
        cmd,
        &dir.join("haproxy.log"),
        || HAPROXY_PORTS.iter().all(|port| node_listens(bench, *port)),
        "haproxy",
    )
}

/// HAProxy counts two descriptors per connection (client and server side)
/// and will not start if the open-files limit cannot hold its `maxconn`.
fn haproxy_maxconn() -> usize {
    (crate::fd_limit() as usize).saturating_sub(300) / 2
}

/// nginx with two workers: a `map` on the tag header picks the upstream,
/// `random two least_conn` within it, upstream keep-alive. A second server
/// speaks HTTP/2 (h2c) to clients and passes streams on with `grpc_pass`
/// (HTTP/2 to the endpoints, but one stream per upstream connection at a
/// time: it keeps enough idle ones for every stream in flight at full
/// speed, else it opens a connection for one stream in ten).
fn nginx(bench: &BenchNode) -> Result<Process> {
    let dir = scratch(&bench.node, "nginx")?;
    let mut conf = format!(
        "worker_processes 2;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 19000; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 600s;\n",
        dir = dir.display()
    );
    for h2 in [false, true] {
        let protocol = if h2 { Protocol::Http2 } else { Protocol::Http1 };
        let [(lane, _), (base, _)] = named_lanes(bench, protocol);
        let variable = if h2 { "lane_h2" } else { "lane" };
        let _ = writeln!(
            conf,
            "  map $http_x_mse_tag ${variable} {{ default {base}; {TAG} {lane}; }}"
        );
        for (name, endpoints) in named_lanes(bench, protocol) {
            let _ = writeln!(conf, "  upstream {name} {{\n    random two least_conn;");
            for addr in endpoints {
                let _ = writeln!(conf, "    server {addr};");
            }
            let _ = writeln!(conf, "    keepalive {};\n  }}", if h2 { 256 } else { 64 });
        }
    }
    let [http1_port, h2_port] = NGINX_PORTS;
    let _ = write!(
        conf,
        "  server {{\n    listen 0.0.0.0:{http1_port} backlog=8192;\n    location / {{\n      \
         proxy_pass http://$lane;\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n    }}\n  }}\n\
         \x20 server {{\n    listen 0.0.0.0:{h2_port} http2 backlog=8192;\n    location / {{\n      \
         grpc_pass grpc://$lane_h2;\n    }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let mut cmd = bench.node.netns.command("nginx");
    cmd.arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&path);
    spawn_listening(
        cmd,
        &dir.join("stdout.log"),
        || NGINX_PORTS.iter().all(|port| node_listens(bench, *port)),
        "nginx",
    )
}

/// Whether something accepts connections on `port` of the node (as seen
/// from a pod).
fn node_listens(bench: &BenchNode, port: u16) -> bool {
    laneway_tests::client::connect(bench.node.pod(0), SocketAddr::new(NODE_IP.into(), port)).is_ok()
}
