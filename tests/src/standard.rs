//! The standard scenario shared by the integration tests and the demo: a
//! client pod, a lane-tagged client pod, a bystander pod that is not
//! enrolled; service `reviews` with base, `joint1` and `gray` endpoints (IPv4
//! and IPv6 VIPs), service `ratings` with only a base endpoint, and an opaque
//! TCP `echo` service; the kube-proxy stand-in; and the agent.

use anyhow::Result;

use crate::{
    agent::Agent,
    backend::Backend,
    node::{Node, Scenario, ServiceSpec},
};

/// A running standard node. Dropped in field order: agent, backends, node.
#[derive(Debug)]
pub struct Standard {
    /// The agent.
    pub agent: Agent,
    /// The backends.
    pub backends: Vec<Backend>,
    /// The scenario the agent was given.
    pub scenario: Scenario,
    /// Pod indices.
    pub pods: Pods,
    /// The node.
    pub node: Node,
}

impl Standard {
    /// Builds the node, starts backends, the kube-proxy stand-in and the agent.
    pub fn start() -> Result<Self> {
        Self::start_with(|_| {})
    }

    /// Like [`Standard::start`], with the agent steering pods as `mode` says.
    pub fn start_in(mode: Mode) -> Result<Self> {
        Self::start_with(|sc| mode.apply(sc))
    }

    /// Like [`Standard::start`], letting the caller adjust the scenario first.
    pub fn start_with(adjust: impl FnOnce(&mut Scenario)) -> Result<Self> {
        let mut node = Node::new()?;
        let (mut scenario, pods) = scenario(&mut node)?;
        adjust(&mut scenario);
        let mut backends = http_backends(&node, &pods)?;
        backends.push(Backend::echo(node.pod(pods.base), 9000)?);
        node.install_kube_proxy(&scenario)?;
        let agent = Agent::start(&node, &scenario)?;
        Ok(Self {
            agent,
            backends,
            scenario,
            pods,
            node,
        })
    }

    /// The `reviews` VIP (IPv4).
    pub fn reviews(&self) -> std::net::SocketAddr {
        Node::vip(&self.scenario.services[0])
    }

    /// The `ratings` VIP.
    pub fn ratings(&self) -> std::net::SocketAddr {
        Node::vip(&self.scenario.services[1])
    }

    /// The `echo` VIP.
    pub fn echo(&self) -> std::net::SocketAddr {
        Node::vip(&self.scenario.services[2])
    }
}

/// How the agent steers pods to the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The connect hooks.
    Socket,
    /// TC, attached the way this kernel prefers (TCX on 6.6+).
    Tc,
    /// TC, attached as a clsact filter (the way before Linux 6.6).
    TcNetlink,
    /// The connect hooks, and TC for what they did not see.
    Both,
}

impl Mode {
    /// Whether TC programs steer.
    pub fn tc(self) -> bool {
        self != Mode::Socket
    }

    /// Sets the scenario's router and program settings for this mode.
    pub fn apply(self, scenario: &mut Scenario) {
        scenario.router_extra = match self {
            Mode::Socket => "  mode: socket\n",
            Mode::Tc | Mode::TcNetlink => "  mode: tc\n",
            Mode::Both => "  mode: both\n",
        }
        .into();
        if self == Mode::TcNetlink {
            scenario.bpf_extra = "  tc_attach: netlink\n".into();
        }
    }
}

/// One `#[test]` per mode and test function: `in_modes! { socket => Socket:
/// [a, b], tc => Tc: [a] }` makes `socket::a`, `socket::b` and `tc::a`, each
/// calling `a` (of the module it is used in) with its [`Mode`];
/// `in_modes! { [socket => Socket, tc => Tc]: [a, b] }` runs the same list in
/// each mode.
#[macro_export]
macro_rules! in_modes {
    ([$($mode:ident => $variant:ident),* $(,)?]: $names:tt $(,)?) => {
        $crate::in_modes! { $($mode => $variant: $names),* }
    };
    ($($mode:ident => $variant:ident: [$($name:ident),* $(,)?]),* $(,)?) => {$(
        mod $mode {
            $(
                #[test]
                fn $name() -> anyhow::Result<()> {
                    super::$name($crate::standard::Mode::$variant)
                }
            )*
        }
    )*};
}

/// The standard scenario on a fresh node with its HTTP backends and the
/// kube-proxy stand-in, and no agent: for tests that start their own.
/// Bind the result as `(node, scenario, pods, _backends)`: the backends go
/// before the node.
pub fn prepare() -> Result<(Node, Scenario, Pods, Vec<Backend>)> {
    let mut node = Node::new()?;
    let (scenario, pods) = scenario(&mut node)?;
    let backends = http_backends(&node, &pods)?;
    node.install_kube_proxy(&scenario)?;
    Ok((node, scenario, pods, backends))
}

/// The HTTP backends of the scenario's endpoints (`reviews` and `ratings`).
pub fn http_backends(node: &Node, pods: &Pods) -> Result<Vec<Backend>> {
    [pods.base, pods.joint1, pods.gray, pods.ratings]
        .into_iter()
        .map(|p| Backend::http(node.pod(p), 8080))
        .collect()
}

/// The standard scenario on a fresh node.
pub fn scenario(node: &mut Node) -> Result<(Scenario, Pods)> {
    let client = node.add_pod("client")?;
    let client_joint1 = node.add_pod("client-joint1")?;
    let bystander = node.add_pod("bystander")?;
    let base = node.add_pod("reviews-base")?;
    let joint1 = node.add_pod("reviews-joint1")?;
    let gray = node.add_pod("reviews-gray")?;
    let ratings = node.add_pod("ratings-base")?;
    let scenario = Scenario {
        services: vec![
            ServiceSpec {
                name: "reviews".into(),
                vip: "10.96.0.10".parse()?,
                vip6: Some("fd00:96::10".parse()?),
                port: 80,
                target_port: 8080,
                protocol: "auto",
                policy: None,
                endpoints: vec![
                    (base, None),
                    (joint1, Some("joint1".into())),
                    (gray, Some("gray".into())),
                ],
            },
            ServiceSpec {
                name: "ratings".into(),
                vip: "10.96.0.11".parse()?,
                vip6: None,
                port: 80,
                target_port: 8080,
                protocol: "auto",
                policy: None,
                endpoints: vec![(ratings, None)],
            },
            ServiceSpec {
                name: "echo".into(),
                vip: "10.96.0.12".parse()?,
                vip6: None,
                port: 9000,
                target_port: 9000,
                protocol: "auto",
                policy: None,
                endpoints: vec![(base, None)],
            },
        ],
        enrolled: vec![(client, None), (client_joint1, Some("joint1".into()))],
        namespaces: Vec::new(),
        router_extra: String::new(),
        bpf_extra: String::new(),
    };
    Ok((
        scenario,
        Pods {
            client,
            client_joint1,
            bystander,
            base,
            joint1,
            gray,
            ratings,
        },
    ))
}

/// Pod indices of [`standard`].
#[derive(Clone, Copy, Debug)]
pub struct Pods {
    /// Enrolled, untagged.
    pub client: usize,
    /// Enrolled, tagged joint1.
    pub client_joint1: usize,
    /// Not enrolled.
    pub bystander: usize,
    /// reviews base endpoint (also the echo endpoint).
    pub base: usize,
    /// reviews joint1 endpoint.
    pub joint1: usize,
    /// reviews gray endpoint.
    pub gray: usize,
    /// ratings base endpoint.
    pub ratings: usize,
}
