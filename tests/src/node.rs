//! The node: a node netns, pod netns on veth pairs, the kube-proxy stand-in,
//! and the test cgroup.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};

use crate::netns::{Netns, run};

/// The node's address as pods see it (on the node netns' loopback); the
/// router's redirect target.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 255, 1);
/// The node's IPv6 address as pods see it.
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0xffff, 0, 0, 0, 0, 1);
/// The router's port.
pub const ROUTER_PORT: u16 = 15001;
/// TC mode's transparent listener port (the agent's default).
pub const TPROXY_PORT: u16 = 15006;
/// The agent's metrics port (its default, on the node's 127.0.0.1).
pub const METRICS_PORT: u16 = 15020;
/// Link-local gateway on every host-side veth (IPv6 next hop for pods).
const GATEWAY6: &str = "fe80::1";
/// The range of hosts outside the pod network that the node reaches (a
/// developer's laptop over a VPN: [`Node::add_outside_host`]); pods route
/// it through the node, as a pod's default route would.
pub const OUTSIDE_RANGE: &str = "10.8.0.0/16";

static NODES: AtomicU32 = AtomicU32::new(0);

/// The cgroup the test process was in before it joined any test cgroup; it
/// goes back there when a node's cgroup is removed.
static HOME_CGROUP: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// How a node is built: its address families, and its place among the
/// nodes of a test.
#[derive(Clone, Copy, Debug)]
pub struct NodeOptions {
    /// The node and its pods have IPv4 addresses and routes.
    pub ipv4: bool,
    /// The node and its pods have IPv6 addresses and routes.
    pub ipv6: bool,
    /// IPv6 is off in the node netns (`net.ipv6.conf.all.disable_ipv6=1`,
    /// and for veths made later), as on a node booted without IPv6. Its
    /// pods get no IPv6 either.
    pub ipv6_disabled: bool,
    /// The node's number among the test's nodes: its address is
    /// 10.244.255.(1+n) (fd00:244:ffff::(1+n)), its pods' 10.244.n.x
    /// (fd00:244:n::x).
    pub number: u8,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            ipv4: true,
            ipv6: true,
            ipv6_disabled: false,
            number: 0,
        }
    }
}

/// A pod: a netns joined to the node by a veth pair.
#[derive(Debug)]
pub struct Pod {
    /// Name (also the endpoint identity its backends answer with).
    pub name: String,
    /// IPv4 address.
    pub ip: Ipv4Addr,
    /// IPv6 address.
    pub ip6: Ipv6Addr,
    /// Its network namespace.
    pub netns: Netns,
    /// Its veth's name on the node side (where TC mode attaches).
    pub veth: String,
}

/// A service for the scenario: VIPs, a port, endpoints (pods with tags).
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// Name.
    pub name: String,
    /// IPv4 VIP.
    pub vip: Ipv4Addr,
    /// IPv6 VIP, if any.
    pub vip6: Option<Ipv6Addr>,
    /// Service port.
    pub port: u16,
    /// Endpoint port.
    pub target_port: u16,
    /// `auto`, `http` or `tcp`.
    pub protocol: &'static str,
    /// The service's gray-release policy as a YAML flow mapping (e.g.
    /// `{canary: gray=10}`), if any.
    pub policy: Option<String>,
    /// Endpoints: pod index in the node and tag.
    pub endpoints: Vec<(usize, Option<String>)>,
}

/// What the agent is told: services, and which pods to enrol with which tag.
#[derive(Clone, Debug, Default)]
pub struct Scenario {
    /// Services.
    pub services: Vec<ServiceSpec>,
    /// Enrolled pods: pod index and tag.
    pub enrolled: Vec<(usize, Option<String>)>,
    /// Enrolled pods in a namespace other than `default`: pod index and
    /// namespace.
    pub namespaces: Vec<(usize, String)>,
    /// Extra YAML under `router:` (e.g. timeouts), indented by the caller.
    pub router_extra: String,
    /// Extra YAML under `bpf:` (e.g. `tc_attach`), indented by the caller.
    pub bpf_extra: String,
}

/// The test cgroup: the test process joins it; removed on drop.
#[derive(Debug)]
struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    fn create(name: &str) -> Result<Self> {
        let root = cgroup2_root()?;
        sweep_stale_cgroups(&root);
        let path = root.join(name);
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 entry in /proc/self/cgroup")?;
        HOME_CGROUP.get_or_init(|| root.join(rel.trim_start_matches('/')));
        let cgroup = Self { path };
        cgroup.join()?;
        Ok(cgroup)
    }

    /// Moves the whole test process here (cgroup v2 membership is per
    /// process): sockets it creates from now on are this node's.
    fn join(&self) -> Result<()> {
        std::fs::write(
            self.path.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .with_context(|| format!("join {}", self.path.display()))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Some(home) = HOME_CGROUP.get() {
            let _ = std::fs::write(home.join("cgroup.procs"), std::process::id().to_string());
        }
        // Children (agent, clients) are gone by now; retry briefly in case
        // the kernel is still reaping one.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The cgroup v2 mount point, from mountinfo.
pub fn cgroup2_root() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 mount: laneway needs cgroup v2")
}

/// Removes a bpffs pin directory and everything in it.
fn remove_pins(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes netns and cgroups left by test processes that were killed.
fn sweep_stale_cgroups(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("laneway-test-")
            .and_then(|r| r.split('-').next())
            && pid.parse().is_ok_and(|p| !pid_alive(p))
        {
            let _ = std::fs::remove_dir(e.path());
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("lwt").and_then(|r| r.split('x').next())
                && pid.parse().is_ok_and(|p| !pid_alive(p))
            {
                remove_pins(&e.path());
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if let Some(pid) = name.strip_prefix("lwt").and_then(|r| r.split('x').next())
                && pid.parse().is_ok_and(|p| !pid_alive(p))
            {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }
}

/// A node.
#[derive(Debug)]
pub struct Node {
    id: String,
    /// Pods, in creation order (their index is used in [`Scenario`]).
    pub pods: Vec<Pod>,
    /// The node netns (the agent, the kube-proxy stand-in).
    pub netns: Netns,
    /// The node's IPv4 address as pods see it (on its loopback; configured
    /// only with [`NodeOptions::ipv4`]).
    pub ip: Ipv4Addr,
    /// The node's IPv6 address as pods see it (configured only with
    /// [`NodeOptions::ipv6`]).
    pub ip6: Ipv6Addr,
    options: NodeOptions,
    cgroup: TestCgroup,
    dir: PathBuf,
}

impl Node {
    /// Builds an empty dual-stack node: node netns with forwarding, no route
    /// out; the test process joins a fresh cgroup.
    pub fn new() -> Result<Self> {
        Self::with(NodeOptions::default())
    }

    /// Builds an empty node as `options` say.
    pub fn with(options: NodeOptions) -> Result<Self> {
        crate::require_root();
        let n = NODES.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("lwt{pid}x{n}");
        let cgroup = TestCgroup::create(&format!("laneway-test-{pid}-{n}"))?;
        let netns = Netns::create(&format!("{id}node"))?;
        let number = options.number;
        let ip = Ipv4Addr::new(10, 244, 255, 1 + number);
        let ip6 = Ipv6Addr::new(0xfd00, 0x244, 0xffff, 0, 0, 0, 0, 1 + u16::from(number));
        let options = NodeOptions {
            ipv6: options.ipv6 && !options.ipv6_disabled,
            ..options
        };
        if options.ipv4 {
            netns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
        }
        if options.ipv6 {
            netns.ip(&["-6", "addr", "add", &format!("{ip6}/128"), "dev", "lo"])?;
        }
        if options.ipv6_disabled {
            netns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            netns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        netns.sysctl("net.ipv4.ip_forward", "1")?;
        if !options.ipv6_disabled {
            netns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            id,
            pods: Vec::new(),
            netns,
            ip,
            ip6,
            options,
            cgroup,
            dir,
        })
    }

    /// Moves the test process into this node's cgroup, where this node's
    /// agent attaches: client sockets made from now on are seen by this
    /// node's programs (and no longer by another node's).
    pub fn join_cgroup(&self) -> Result<()> {
        self.cgroup.join()
    }

    /// Joins two nodes' netns with a veth pair and routes each node's pod
    /// range and address to the other (nothing else: still no route out).
    pub fn link(&self, other: &Node) -> Result<()> {
        let (here, there) = (self.short_name("n"), other.short_name("n"));
        veth_pair((&here, &self.netns), (&there, &other.netns))?;
        for (node, dev, peer, gw6, peer_gw6) in [
            (self, &here, other, "fe80::a", "fe80::b"),
            (other, &there, self, "fe80::b", "fe80::a"),
        ] {
            node.netns.ip(&["link", "set", dev, "up"])?;
            let n = peer.options.number;
            if node.options.ipv4 && peer.options.ipv4 {
                let gw = peer.ip.to_string();
                node.netns
                    .ip(&["route", "add", &format!("{gw}/32"), "dev", dev])?;
                node.netns.ip(&[
                    "route",
                    "add",
                    &format!("10.244.{n}.0/24"),
                    "via",
                    &gw,
                    "dev",
                    dev,
                ])?;
            }
            if node.options.ipv6 && peer.options.ipv6 {
                let addr = format!("{gw6}/64");
                node.netns
                    .ip(&["-6", "addr", "add", &addr, "dev", dev, "nodad"])?;
                for range in [format!("fd00:244:{n:x}::/48"), format!("{}/128", peer.ip6)] {
                    node.netns
                        .ip(&["-6", "route", "add", &range, "via", peer_gw6, "dev", dev])?;
                }
            }
        }
        Ok(())
    }

    /// An interface name of this node's (at most 15 characters).
    fn short_name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.id.replace("lwt", "l"))
    }

    /// The cgroup the agent attaches to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup.path
    }

    /// The cgroup the test process came from: outside [`Node::cgroup`], so
    /// the programs attached there do not see a process in it.
    pub fn outside_cgroup(&self) -> &Path {
        HOME_CGROUP
            .get()
            .expect("set when the node's cgroup was created")
    }

    /// Where the agent pins its maps and links (removed with the node).
    pub fn pin_path(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/{}", self.id))
    }

    /// Removes what agents left pinned (maps, the cgroup links, so their
    /// programs detach), as an uninstall does.
    pub fn remove_pins(&self) {
        remove_pins(&self.pin_path());
    }

    /// The agent's admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// `GET path` on the agent's admin HTTP listener (`127.0.0.1`,
    /// [`METRICS_PORT`], in the node netns): the status code and the body.
    pub fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        let request = format!("GET {path} HTTP/1.1\r\nhost: laneway\r\nconnection: close\r\n\r\n");
        let text = self.netns.run(move || -> Result<String> {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, METRICS_PORT))?;
            stream.write_all(request.as_bytes())?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })??;
        let (head, body) = text.split_once("\r\n\r\n").context("no response head")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line in {head:?}"))?;
        Ok((status, body.to_owned()))
    }

    /// A scratch directory for this node (configs, logs), removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds a pod; returns its index.
    pub fn add_pod(&mut self, name: &str) -> Result<usize> {
        let index = self.pods.len();
        let host = index + 10;
        let n = self.options.number;
        let pod = Pod {
            name: name.to_owned(),
            ip: Ipv4Addr::new(10, 244, n, host as u8),
            ip6: Ipv6Addr::new(0xfd00, 0x244, u16::from(n), 0, 0, 0, 0, host as u16),
            netns: Netns::create(&format!("{}p{index}", self.id))?,
            veth: self.short_name(&format!("v{index}")),
        };
        self.plug(&pod)?;
        self.pods.push(pod);
        Ok(index)
    }

    /// Adds a host outside the pod network (a developer's laptop reached
    /// over a VPN) at `ip` (in [`OUTSIDE_RANGE`]), joined to the node by a
    /// veth pair: the node routes `ip` to it, it routes the node, pods and
    /// service VIPs through the node. IPv4 only. It is a [`Pod`] for the
    /// harness (backends listen in it, its index is in [`Node::pods`]), but
    /// no service's endpoint and never enrolled. Returns its index.
    pub fn add_outside_host(&mut self, name: &str, ip: Ipv4Addr) -> Result<usize> {
        let index = self.pods.len();
        let host = Pod {
            name: name.to_owned(),
            ip,
            ip6: Ipv6Addr::UNSPECIFIED,
            netns: Netns::create(&format!("{}p{index}", self.id))?,
            veth: self.short_name(&format!("v{index}")),
        };
        veth_pair((&host.veth, &self.netns), ("eth0", &host.netns))?;
        self.netns.ip(&["link", "set", &host.veth, "up"])?;
        self.netns
            .ip(&["route", "add", &format!("{ip}/32"), "dev", &host.veth])?;
        host.netns.ip(&["link", "set", "eth0", "up"])?;
        host.netns
            .ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        let gw = self.ip.to_string();
        host.netns
            .ip(&["route", "add", &format!("{gw}/32"), "dev", "eth0"])?;
        for range in ["10.244.0.0/16", "10.96.0.0/16"] {
            host.netns
                .ip(&["route", "add", range, "via", &gw, "dev", "eth0"])?;
        }
        self.pods.push(host);
        Ok(index)
    }

    /// Deletes the pod's veth pair and makes it again, as a CNI does when a
    /// pod sandbox is recreated: same name, new ifindex.
    pub fn recreate_veth(&self, index: usize) -> Result<()> {
        let pod = &self.pods[index];
        self.netns.ip(&["link", "del", &pod.veth])?;
        self.plug(pod)
    }

    /// Joins a pod to the node: the veth pair, addresses and routes.
    fn plug(&self, pod: &Pod) -> Result<()> {
        let Pod {
            ip,
            ip6,
            netns,
            veth,
            ..
        } = pod;
        veth_pair((veth, &self.netns), ("eth0", netns))?;
        if !self.options.ipv6 {
            // The pod side too: a pod on a node without IPv6 has none.
            netns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        }
        self.netns.ip(&["link", "set", veth, "up"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        if self.options.ipv4 {
            // Node side: a host route to the pod. Pod side: its address,
            // routes to pods, services and the node only.
            self.netns
                .ip(&["route", "add", &format!("{ip}/32"), "dev", veth])?;
            netns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
            let gw = self.ip.to_string();
            netns.ip(&["route", "add", &format!("{gw}/32"), "dev", "eth0"])?;
            for range in ["10.244.0.0/16", "10.96.0.0/16", OUTSIDE_RANGE] {
                netns.ip(&["route", "add", range, "via", &gw, "dev", "eth0"])?;
            }
        }
        if self.options.ipv6 {
            // The same with the link-local gateway on the node side.
            let gateway = format!("{GATEWAY6}/64");
            self.netns
                .ip(&["-6", "addr", "add", &gateway, "dev", veth, "nodad"])?;
            self.netns
                .ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", veth])?;
            let own = format!("{ip6}/128");
            netns.ip(&["-6", "addr", "add", &own, "dev", "eth0", "nodad"])?;
            for range in ["fd00:244::/32", "fd00:96::/64"] {
                netns.ip(&["-6", "route", "add", range, "via", GATEWAY6, "dev", "eth0"])?;
            }
        }
        Ok(())
    }

    /// The pod at `index`.
    pub fn pod(&self, index: usize) -> &Pod {
        &self.pods[index]
    }

    /// Installs the kube-proxy stand-in: per service VIP:port, iptables DNAT
    /// in the node's PREROUTING to its serving endpoints, spread at random
    /// as kube-proxy does (it knows nothing of tags).
    pub fn install_kube_proxy(&self, scenario: &Scenario) -> Result<()> {
        for svc in &scenario.services {
            let n = svc.endpoints.len();
            for (i, (pod, _)) in svc.endpoints.iter().enumerate() {
                let pod = &self.pods[*pod];
                let remaining = (n - i) as f64;
                let rule = |tool: &str, vip: String, dest: String| -> Result<()> {
                    let mut args = vec![
                        "-t".to_owned(),
                        "nat".into(),
                        "-A".into(),
                        "PREROUTING".into(),
                        "-d".into(),
                        vip,
                        "-p".into(),
                        "tcp".into(),
                        "--dport".into(),
                        svc.port.to_string(),
                    ];
                    if i + 1 < n {
                        args.extend([
                            "-m".into(),
                            "statistic".into(),
                            "--mode".into(),
                            "random".into(),
                            "--probability".into(),
                            format!("{:.5}", 1.0 / remaining),
                        ]);
                    }
                    args.extend(["-j".into(), "DNAT".into(), "--to-destination".into(), dest]);
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    self.netns.exec(tool, &args).map(drop)
                };
                rule(
                    "iptables",
                    svc.vip.to_string(),
                    format!("{}:{}", pod.ip, svc.target_port),
                )?;
                if let Some(vip6) = svc.vip6 {
                    rule(
                        "ip6tables",
                        vip6.to_string(),
                        format!("[{}]:{}", pod.ip6, svc.target_port),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The agent's static config for a scenario.
    pub fn agent_config(&self, scenario: &Scenario) -> String {
        let mut y = String::new();
        let _ = writeln!(
            y,
            "router:\n  listen: 0.0.0.0:{ROUTER_PORT}\n  listen_v6: \"[::]:{ROUTER_PORT}\"\n  \
             redirect_ipv4: {}\n  redirect_ipv6: \"{}\"\n{}",
            self.ip, self.ip6, scenario.router_extra
        );
        let _ = writeln!(
            y,
            "bpf:\n  cgroup: {}\n  pin_path: {}\n{}",
            self.cgroup().display(),
            self.pin_path().display(),
            scenario.bpf_extra
        );
        let _ = writeln!(y, "admin:\n  socket: {}", self.admin_socket().display());
        let _ = writeln!(y, "services:");
        for svc in &scenario.services {
            let vips = match svc.vip6 {
                Some(v6) => format!("[{}, \"{v6}\"]", svc.vip),
                None => format!("[{}]", svc.vip),
            };
            let _ = writeln!(
                y,
                "  - name: {}\n    vips: {vips}\n    ports: [{{port: {}, target_port: {}, protocol: {}}}]",
                svc.name, svc.port, svc.target_port, svc.protocol
            );
            if let Some(policy) = &svc.policy {
                let _ = writeln!(y, "    policy: {policy}");
            }
            let _ = writeln!(y, "    endpoints:");
            for (pod, tag) in &svc.endpoints {
                let pod = &self.pods[*pod];
                let tag = tag
                    .as_ref()
                    .map(|t| format!(", tag: {t}"))
                    .unwrap_or_default();
                let _ = writeln!(y, "      - {{ip: {}, name: {}{tag}}}", pod.ip, pod.name);
            }
        }
        let _ = writeln!(y, "pods:");
        for (pod, tag) in &scenario.enrolled {
            let p = &self.pods[*pod];
            let tag = tag
                .as_ref()
                .map(|t| format!(", tag: {t}"))
                .unwrap_or_default();
            let namespace = scenario
                .namespaces
                .iter()
                .find(|(index, _)| index == pod)
                .map_or("default", |(_, ns)| ns.as_str());
            let _ = writeln!(
                y,
                "  - {{name: {}, namespace: {namespace}, netns: {}, ips: [{}, \"{}\"], interface: {}{tag}}}",
                p.name,
                p.netns.path().display(),
                p.ip,
                p.ip6,
                p.veth
            );
        }
        y
    }

    /// Inserts an iptables DNAT rule in the node netns: TCP to `dest` (from
    /// `source`, or anyone) goes to `to` instead. `chain` is `PREROUTING` for
    /// pods' packets, `OUTPUT` for the node's own.
    pub fn dnat(
        &self,
        chain: &str,
        source: Option<IpAddr>,
        dest: SocketAddr,
        to: SocketAddr,
    ) -> Result<()> {
        let (ip, port, to) = (
            dest.ip().to_string(),
            dest.port().to_string(),
            to.to_string(),
        );
        let source = source.map(|s| s.to_string());
        let mut args = vec!["-t", "nat", "-I", chain];
        if let Some(source) = &source {
            args.extend(["-s", source]);
        }
        args.extend([
            "-d",
            &ip,
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ]);
        self.netns.exec("iptables", &args).map(drop)
    }

    /// `ip:port` of a VIP.
    pub fn vip(svc: &ServiceSpec) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(svc.vip), svc.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Pinned links and maps first (the programs detach), pods (their
        // veths go with them), then the node netns, then the cgroup
        // (TestCgroup's own drop).
        remove_pins(&self.pin_path());
        self.pods.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A veth pair: `a.0` in netns `a.1`, its peer `b.0` in netns `b.1`.
fn veth_pair(a: (&str, &Netns), b: (&str, &Netns)) -> Result<()> {
    run(Command::new("ip").args([
        "link",
        "add",
        a.0,
        "netns",
        a.1.name(),
        "type",
        "veth",
        "peer",
        "name",
        b.0,
        "netns",
        b.1.name(),
    ]))?;
    Ok(())
}
