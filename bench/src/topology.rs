//! The benchmark's node: a client pod per configuration, three endpoint
//! pods (one base, two `gray`), three services on them (`reviews`: HTTP/1.1,
//! an nginx in each pod serving a small and a 16 KiB answer; `echo`: h2c and
//! gRPC, [`crate::h2::backend`] in each pod; `stream`: an opaque protocol,
//! [`crate::l4::backend`] in each pod), and the kube-proxy stand-in
//! (iptables DNAT, which knows nothing of tags).
//!
//! Each configuration has its own client pod (its own address), so the
//! TIME_WAIT sockets and conntrack entries one leaves on the node cannot
//! meet the next one's connections.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{h2, l4, load::Protocol, proxy::Config};
use laneway_tests::{
    client::Conn,
    node::{NODE_IP, Node, Scenario, ServiceSpec},
};

/// The tag every benchmark request carries.
pub const TAG: &str = "gray";
/// The endpoints' HTTP/1.1 port (`reviews`).
pub const BACKEND_PORT: u16 = 8080;
/// The endpoints' h2c and gRPC port (`echo`).
pub const H2_BACKEND_PORT: u16 = 9090;
/// The endpoints' port of the opaque protocol (`stream`).
pub const L4_BACKEND_PORT: u16 = 7070;
/// Size of the large answer, in bytes.
pub const LARGE_BODY: usize = 16 * 1024;

/// The running node. Dropped in field order: backends, then the node.
pub struct BenchNode {
    _backends: Vec<Process>,
    /// The scenario (`reviews`, `echo`, then `stream`; no pod enrolled yet).
    pub scenario: Scenario,
    /// The client pods' indices, one per configuration (see [`Config::ALL`]).
    clients: Vec<usize>,
    /// The node.
    pub node: Node,
}

impl BenchNode {
    /// Builds the node and starts the backends.
    pub fn start() -> Result<Self> {
        let mut node = Node::new()?;
        let mut clients = Vec::new();
        for config in Config::ALL {
            clients.push(node.add_pod(&format!("client-{}", config.slug()))?);
        }
        let base = node.add_pod("reviews-base")?;
        let gray1 = node.add_pod("reviews-gray-1")?;
        let gray2 = node.add_pod("reviews-gray-2")?;
        // Connection-per-request runs open tens of thousands of connections.
        for pod in &node.pods {
            pod.netns
                .sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
            pod.netns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
            pod.netns.sysctl("net.core.somaxconn", "8192")?;
        }
        node.netns
            .sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
        // The proxies' ports: an upstream connection still closing on one
        // of them would keep the next configuration from listening there.
        node.netns
            .sysctl("net.ipv4.ip_local_reserved_ports", "15000-15010")?;
        node.netns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        node.netns.sysctl("net.core.somaxconn", "8192")?;
        // iptables REDIRECT sends a packet to the first address of the
        // interface it came in on: give the clients' veths the node address.
        for client in &clients {
            node.netns.ip(&[
                "addr",
                "add",
                &format!("{NODE_IP}/32"),
                "dev",
                &node.pods[*client].veth,
            ])?;
        }
        let endpoints = vec![
            (base, None),
            (gray1, Some(TAG.into())),
            (gray2, Some(TAG.into())),
        ];
        let reviews = ServiceSpec {
            name: "reviews".into(),
            vip: "10.96.0.10".parse()?,
            vip6: None,
            port: 80,
            target_port: BACKEND_PORT,
            protocol: "http",
            policy: None,
            endpoints,
        };
        // HTTP/2 with prior knowledge on an HTTP port: the router must
        // recognise the preface itself.
        let echo = ServiceSpec {
            name: "echo".into(),
            vip: "10.96.0.11".parse()?,
            target_port: H2_BACKEND_PORT,
            ..reviews.clone()
        };
        // An opaque protocol on a port that may carry HTTP: the router
        // sniffs, then passes it through.
        let stream = ServiceSpec {
            name: "stream".into(),
            vip: "10.96.0.12".parse()?,
            port: 7000,
            target_port: L4_BACKEND_PORT,
            protocol: "auto",
            ..reviews.clone()
        };
        let scenario = Scenario {
            services: vec![reviews, echo, stream],
            enrolled: Vec::new(),
            router_extra: String::new(),
            bpf_extra: String::new(),
        };
        let large = node.dir().join("large.bin");
        std::fs::write(&large, vec![b'x'; LARGE_BODY])?;
        let mut backends = Vec::new();
        for pod in [base, gray1, gray2] {
            backends.push(backend(&node, pod, &large)?);
            backends.push(own_backend(&node, pod, Protocol::Http2)?);
            backends.push(own_backend(&node, pod, Protocol::L4)?);
        }
        node.install_kube_proxy(&scenario)?;
        Ok(Self {
            _backends: backends,
            scenario,
            clients,
            node,
        })
    }

    /// The client pod of `config`.
    pub fn client(&self, config: Config) -> usize {
        self.clients[Config::ALL.iter().position(|c| *c == config).unwrap_or(0)]
    }

    /// The VIP of `reviews`, which the HTTP/1.1 workloads dial.
    pub fn vip(&self) -> SocketAddr {
        Node::vip(&self.scenario.services[0])
    }

    /// The VIP of `echo`, which the HTTP/2 and gRPC workloads dial.
    pub fn h2_vip(&self) -> SocketAddr {
        Node::vip(&self.scenario.services[1])
    }

    /// The VIP of `stream`, which the L4 workloads dial.
    pub fn l4_vip(&self) -> SocketAddr {
        Node::vip(&self.scenario.services[2])
    }

    /// The VIPs of the HTTP/1.1, HTTP/2 and L4 services, in that order.
    pub fn vips(&self) -> [SocketAddr; 3] {
        [self.vip(), self.h2_vip(), self.l4_vip()]
    }

    /// The endpoints' addresses for the workloads of `protocol`, with their
    /// tags.
    pub fn endpoints(&self, protocol: Protocol) -> Vec<(SocketAddr, Option<&str>)> {
        let port = match protocol {
            Protocol::Http1 => BACKEND_PORT,
            Protocol::Http2 => H2_BACKEND_PORT,
            Protocol::L4 => L4_BACKEND_PORT,
        };
        self.scenario.services[0]
            .endpoints
            .iter()
            .map(|(pod, tag)| {
                let pod = self.node.pod(*pod);
                (SocketAddr::new(pod.ip.into(), port), tag.as_deref())
            })
            .collect()
    }

    /// Checks that `config` routes every service it carries: see
    /// [`Self::check_http1_routing`], [`h2::client::check_routing`] and
    /// [`Self::check_l4_routing`]. The numbers are worthless otherwise.
    pub fn check_routing(&self, config: Config) -> Result<()> {
        let client = self.client(config);
        self.check_http1_routing(client, config.routes_lanes())
            .context("HTTP/1.1 requests")?;
        h2::client::check_routing(self.node.pod(client), self.h2_vip(), config.routes_lanes())
            .context("HTTP/2 and gRPC streams")?;
        if config.speaks(Protocol::L4) {
            self.check_l4_routing(client, config.routes_lanes())
                .context("L4 streams")?;
        }
        Ok(())
    }

    /// Checks that L4 streams from `client` (an untagged pod) reach the
    /// base endpoint, and that the proxy passes them through at all. `lanes`
    /// is false for the direct path.
    fn check_l4_routing(&self, client: usize, lanes: bool) -> Result<()> {
        for _ in 0..4 {
            let name = l4::endpoint_name(self.node.pod(client), self.l4_vip())?;
            if lanes && name != "reviews-base" {
                bail!("an L4 stream of an untagged pod went to {name}");
            }
        }
        Ok(())
    }

    /// Checks that tagged HTTP/1.1 requests from `client` reach a `gray`
    /// endpoint, both sizes answer in full, and an untagged one reaches the
    /// base endpoint. `lanes` is false for the direct path, which cannot see
    /// tags.
    fn check_http1_routing(&self, client: usize, lanes: bool) -> Result<()> {
        let mut conn = Conn::open(self.node.pod(client), self.vip())?;
        for (path, size) in [("/small", None), ("/large", Some(LARGE_BODY))] {
            for _ in 0..6 {
                let r = conn.get(path, &[("x-mse-tag", TAG)])?;
                if r.status != 200 {
                    bail!("{path}: status {} from {}", r.status, r.endpoint());
                }
                if lanes && !r.endpoint().starts_with("reviews-gray") {
                    bail!("{path} with tag {TAG} went to {}", r.endpoint());
                }
                if let Some(size) = size
                    && r.body.len() != size
                {
                    bail!("{path}: {} bytes, not {size}", r.body.len());
                }
            }
        }
        if lanes {
            let r = Conn::open(self.node.pod(client), self.vip())?.get("/small", &[])?;
            if r.endpoint() != "reviews-base" {
                bail!("an untagged request went to {}", r.endpoint());
            }
        }
        Ok(())
    }
}

/// A child process killed (and reaped) on drop.
pub struct Process(pub Child);

impl Process {
    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: plain kill(2); SIGTERM first so nginx and HAProxy tidy up.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` (stdout and stderr to `log`) and waits until `probe` (an
/// address in `netns`'s view, checked from a pod) accepts connections.
pub fn spawn_listening(
    mut cmd: Command,
    log: &Path,
    ready: impl Fn() -> bool,
    what: &str,
) -> Result<Process> {
    let file = std::fs::File::create(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("spawn {what}"))?;
    let mut process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        if let Some(status) = process.0.try_wait()? {
            bail!(
                "{what} exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("{what} not listening after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(process)
}

/// An nginx in `pod` answering `/small` with its name and `/large` with
/// 16 KiB, with header `x-endpoint: NAME`, as the tests' backends do.
fn backend(node: &Node, pod: usize, large: &Path) -> Result<Process> {
    let pod = node.pod(pod);
    let name = &pod.name;
    let prefix = scratch(node, name)?;
    let mut conf = String::new();
    let _ = write!(
        conf,
        "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {prefix}/nginx.pid;\n\
         error_log {prefix}/error.log warn;\n\
         events {{ worker_connections 19000; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 600s;\n\
         \x20 server {{\n    listen {ip}:{BACKEND_PORT} backlog=8192;\n\
         \x20   add_header x-endpoint {name} always;\n\
         \x20   location = /small {{ return 200 \"{name}\\n\"; }}\n\
         \x20   location = /large {{ default_type application/octet-stream; alias {large}; }}\n\
         \x20 }}\n}}\n",
        prefix = prefix.display(),
        ip = pod.ip,
        large = large.display(),
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = pod.netns.command("nginx");
    cmd.arg("-p")
        .arg(&prefix)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .arg("-c")
        .arg(&conf_path);
    let addr = SocketAddr::new(pod.ip.into(), BACKEND_PORT);
    let client = &node.pods[0];
    spawn_listening(
        cmd,
        &prefix.join("stdout.log"),
        || laneway_tests::client::connect(client, addr).is_ok(),
        &format!("nginx backend {name}"),
    )
}

/// The benchmark's own endpoint for `protocol` in `pod`, run as
/// `laneway-bench h2-backend` ([`h2::backend`]) or `l4-backend`
/// ([`l4::backend`]) (this program) inside the pod's netns.
fn own_backend(node: &Node, pod: usize, protocol: Protocol) -> Result<Process> {
    let pod = node.pod(pod);
    let (part, port) = match protocol {
        Protocol::Http2 => ("h2-backend", H2_BACKEND_PORT),
        Protocol::L4 => ("l4-backend", L4_BACKEND_PORT),
        Protocol::Http1 => bail!("the HTTP/1.1 endpoints are nginx"),
    };
    let dir = scratch(node, &format!("{}-{part}", pod.name))?;
    let addr = SocketAddr::new(pod.ip.into(), port);
    let mut cmd = pod
        .netns
        .command(&std::env::current_exe()?.to_string_lossy());
    cmd.args([part, "--listen", &addr.to_string(), "--name", &pod.name]);
    let client = &node.pods[0];
    spawn_listening(
        cmd,
        &dir.join("stdout.log"),
        || laneway_tests::client::connect(client, addr).is_ok(),
        &format!("{part} {}", pod.name),
    )
}

/// A fresh scratch directory under the node's.
pub fn scratch(node: &Node, name: &str) -> Result<PathBuf> {
    let dir = node.dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
