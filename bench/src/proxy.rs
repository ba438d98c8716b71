//! The configurations compared: the direct path, laneway in each redirect
//! mode, laneway's router behind iptables REDIRECT, and HAProxy and nginx as
//! node proxies behind the same REDIRECT, routing on the same tag header to
//! the same endpoints.

use std::{fmt::Write as _, net::SocketAddr};

use anyhow::Result;
use laneway_tests::{
    agent::Agent,
    node::{NODE_IP, ROUTER_PORT},
};

use crate::topology::{BenchNode, Process, TAG, scratch, spawn_listening};

/// HAProxy's port in the node netns.
const HAPROXY_PORT: u16 = 15002;
/// nginx's port in the node netns.
const NGINX_PORT: u16 = 15003;

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
                _redirect: None,
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
                    _redirect: None,
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
                    _redirect: Some(Redirect::install(bench, client, ROUTER_PORT)?),
                    proxy: Box::new(agent),
                }
            }
            Config::Haproxy => {
                let process = haproxy(bench)?;
                Running {
                    pid: Some(process.pid()),
                    proxy: Box::new(process),
                    _redirect: Some(Redirect::install(bench, client, HAPROXY_PORT)?),
                }
            }
            Config::Nginx => {
                let process = nginx(bench)?;
                Running {
                    pid: Some(process.pid()),
                    proxy: Box::new(process),
                    _redirect: Some(Redirect::install(bench, client, NGINX_PORT)?),
                }
            }
        };
        bench.check_routing(client, self.routes_lanes())?;
        Ok(running)
    }
}

/// A started configuration. Dropped in field order: the REDIRECT rule, then
/// the proxy.
pub struct Running {
    /// The proxy's pid (`None` for the direct path).
    pub pid: Option<i32>,
    _redirect: Option<Redirect>,
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
    fn install(bench: &BenchNode, client: usize, port: u16) -> Result<Self> {
        let vip = bench.vip();
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

/// Endpoints of the tag's lane and the base endpoints.
fn lanes(bench: &BenchNode) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let endpoints = bench.endpoints();
    let pick = |tagged: bool| {
        endpoints
            .iter()
            .filter(|(_, _, tag)| tag.is_some() == tagged)
            .map(|(addr, _, _)| *addr)
            .collect()
    };
    (pick(true), pick(false))
}

/// HAProxy with two threads (as many as the router's workers): the tag
/// header picks the lane, power-of-two-choices within it, pooled server
/// connections.
fn haproxy(bench: &BenchNode) -> Result<Process> {
    let dir = scratch(&bench.node, "haproxy")?;
    let (gray, base) = lanes(bench);
    let maxconn = haproxy_maxconn();
    let mut conf = format!(
        "global\n  maxconn {maxconn}\n  nbthread 2\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\n  \
         option http-keep-alive\n  http-reuse always\n\
         frontend node\n  bind 0.0.0.0:{HAPROXY_PORT}\n  \
         use_backend lane_{TAG} if {{ req.hdr(x-mse-tag) -m str {TAG} }}\n  default_backend base\n"
    );
    for (name, endpoints) in [(format!("lane_{TAG}"), &gray), ("base".into(), &base)] {
        let _ = writeln!(conf, "backend {name}\n  balance random(2)");
        for (i, addr) in endpoints.iter().enumerate() {
            let _ = writeln!(conf, "  server e{i} {addr}");
        }
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    let mut cmd = bench.node.netns.command("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    spawn_listening(
        cmd,
        &dir.join("haproxy.log"),
        || node_listens(bench, HAPROXY_PORT),
        "haproxy",
    )
}

/// HAProxy counts two descriptors per connection (client and server side)
/// and will not start if the open-files limit cannot hold its `maxconn`.
fn haproxy_maxconn() -> usize {
    (crate::fd_limit() as usize).saturating_sub(300) / 2
}

/// nginx with two workers: a `map` on the tag header picks the upstream,
/// `random two least_conn` within it, upstream keep-alive.
fn nginx(bench: &BenchNode) -> Result<Process> {
    let dir = scratch(&bench.node, "nginx")?;
    let (gray, base) = lanes(bench);
    let mut conf = format!(
        "worker_processes 2;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 19000; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 600s;\n  \
         map $http_x_mse_tag $lane {{ default base; {TAG} lane_{TAG}; }}\n",
        dir = dir.display()
    );
    for (name, endpoints) in [(format!("lane_{TAG}"), &gray), ("base".into(), &base)] {
        let _ = writeln!(conf, "  upstream {name} {{\n    random two least_conn;");
        for addr in endpoints {
            let _ = writeln!(conf, "    server {addr};");
        }
        let _ = writeln!(conf, "    keepalive 64;\n  }}");
    }
    let _ = write!(
        conf,
        "  server {{\n    listen 0.0.0.0:{NGINX_PORT} backlog=8192;\n    location / {{\n      \
         proxy_pass http://$lane;\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
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
        || node_listens(bench, NGINX_PORT),
        "nginx",
    )
}

/// Whether something accepts connections on `port` of the node (as seen
/// from a pod).
fn node_listens(bench: &BenchNode, port: u16) -> bool {
    laneway_tests::client::connect(bench.node.pod(0), SocketAddr::new(NODE_IP.into(), port)).is_ok()
}
