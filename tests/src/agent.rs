//! The laneway agent as a child process running in the node's netns (and,
//! like its parent, in the test cgroup), with a static config.

use std::{
    ffi::OsString,
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    kube::Cluster,
    node::{Node, Scenario},
    view::AgentView,
};

/// Agents started by this process: each writes its own log file.
static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The `laneway` binary under test: `LANEWAY_BIN`, else the workspace's
/// debug build.
pub fn binary() -> PathBuf {
    std::env::var_os("LANEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/laneway")
        })
}

/// How [`Agent::spawn`] starts an agent.
#[derive(Debug, Default)]
pub struct Launch {
    /// Its config file on the host (what [`Agent::rewrite_config`] edits).
    pub config: PathBuf,
    /// Every argument after the binary. With `--ready-file` readiness is
    /// that file; without, `/readyz` on the admin listener.
    pub args: Vec<OsString>,
    /// Environment besides `RUST_LOG` (which these override).
    pub env: Vec<(OsString, OsString)>,
    /// The agent's own view of the node's files (else the host's, and the
    /// host's mount namespace).
    pub view: Option<AgentView>,
    /// The cgroup the agent's process runs in (else its node's, where its
    /// programs attach).
    pub cgroup: Option<PathBuf>,
    /// Started once its log has this line, instead of once ready (an agent
    /// that stands by is never ready).
    pub started_when_logged: Option<&'static str>,
}

/// `agent-N` of a log file `agent-N.log`.
fn log_stem(log: &std::path::Path) -> String {
    log.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A running agent; killed on drop.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    /// Its config file (rewrite it to reload).
    pub config: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Writes the scenario's config and starts the agent; returns once it
    /// says it routes.
    pub fn start(node: &Node, scenario: &Scenario) -> Result<Self> {
        let config = node.dir().join("laneway.yaml");
        std::fs::write(&config, node.agent_config(scenario))?;
        Self::start_with(node, config)
    }

    /// Starts the agent with the Kubernetes source (`--kube`): the config
    /// file holds only the scenario's router settings.
    pub fn start_kube(node: &Node, scenario: &Scenario, cluster: &Cluster) -> Result<Self> {
        Self::start_kube_as(node, scenario, cluster, &[], None)
    }

    /// Like [`Agent::start_kube`], with `extra` arguments, returning once
    /// its log has `logged` (else once it is ready).
    pub fn start_kube_as(
        node: &Node,
        scenario: &Scenario,
        cluster: &Cluster,
        extra: &[&str],
        logged: Option<&'static str>,
    ) -> Result<Self> {
        let config = node.dir().join("laneway.yaml");
        let settings = Scenario {
            services: Vec::new(),
            enrolled: Vec::new(),
            namespaces: Vec::new(),
            router_extra: scenario.router_extra.clone(),
            bpf_extra: scenario.bpf_extra.clone(),
        };
        let text = node
            .agent_config(&settings)
            .replace("services:\n", "")
            .replace("pods:\n", "");
        std::fs::write(&config, text)?;
        let mut args: Vec<OsString> = vec!["--kube".into(), "--kubeconfig".into()];
        args.push(cluster.kubeconfig.clone().into_os_string());
        args.extend(["--node-name".into(), crate::kube::NODE_NAME.into()]);
        args.extend(extra.iter().map(OsString::from));
        Self::launch_in(node, config, &args, |l| l.started_when_logged = logged)
    }

    /// Starts the agent with an existing config file.
    pub fn start_with(node: &Node, config: PathBuf) -> Result<Self> {
        Self::launch(node, config, &[])
    }

    /// Like [`Agent::start`], with the agent's process in the cgroup the
    /// test came from, outside the one its programs attach to (as when
    /// `bpf.cgroup` is set to a child cgroup and the agent runs elsewhere).
    pub fn start_outside_cgroup(node: &Node, scenario: &Scenario) -> Result<Self> {
        let config = node.dir().join("laneway.yaml");
        std::fs::write(&config, node.agent_config(scenario))?;
        let outside = node.outside_cgroup().to_owned();
        Self::launch_in(node, config, &[], |l| l.cgroup = Some(outside))
    }

    fn launch(node: &Node, config: PathBuf, extra: &[OsString]) -> Result<Self> {
        Self::launch_in(node, config, extra, |_| {})
    }

    /// `laneway agent --config CONFIG --ready-file ... EXTRA`, the launch
    /// adjusted by `adjust`.
    fn launch_in(
        node: &Node,
        config: PathBuf,
        extra: &[OsString],
        adjust: impl FnOnce(&mut Launch),
    ) -> Result<Self> {
        let ready = node.dir().join("ready");
        let mut args: Vec<OsString> = vec!["agent".into(), "--config".into()];
        args.extend([config.clone().into(), "--ready-file".into(), ready.into()]);
        args.extend_from_slice(extra);
        let mut launch = Launch {
            config,
            args,
            ..Launch::default()
        };
        adjust(&mut launch);
        Self::spawn(node, launch)
    }

    /// Starts the agent as `launch` says, in the node's netns; returns once
    /// it is ready (its ready file, or `/readyz` as the kubelet probes it).
    pub fn spawn(node: &Node, launch: Launch) -> Result<Self> {
        let ready = node.dir().join("ready");
        let _ = std::fs::remove_file(&ready);
        let log = node.dir().join(format!(
            "agent-{}.log",
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let log_file = File::create(&log)?;
        let netns = File::open(node.netns.path())?;
        let bin = binary();
        if !bin.exists() {
            bail!(
                "{} not found: build it first (`cargo xtask test` does)",
                bin.display()
            );
        }
        let view = match &launch.view {
            Some(view) => {
                let stage = node.dir().join(format!("view-{}", log_stem(&log)));
                std::fs::create_dir(&stage)?;
                Some(view.prepare(&stage, &[node.dir()])?)
            }
            None => None,
        };
        let mut cmd = Command::new(&bin);
        cmd.args(&launch.args)
            .env(
                "RUST_LOG",
                std::env::var("LANEWAY_TEST_LOG").unwrap_or_else(|_| "info,laneway=debug".into()),
            )
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let fd = netns.as_raw_fd();
        // The agent lives in its node's cgroup (unless told otherwise),
        // whichever node's the test process is in now, as each node's agent
        // runs on its own node.
        let cgroup = launch.cgroup.as_deref().unwrap_or(node.cgroup());
        let procs_file = std::fs::OpenOptions::new()
            .write(true)
            .open(cgroup.join("cgroup.procs"))?;
        let procs = procs_file.as_raw_fd();
        // SAFETY: setns, write and the view's steps are system calls only
        // (no allocation); the fds and the view stay alive in the parent
        // until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                // "0": the writing process itself.
                if libc::write(procs, c"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                match &view {
                    Some(view) => view.enter(),
                    None => Ok(()),
                }
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut agent = Self {
            child,
            config: launch.config,
            log,
        };
        let probe_args = launch.args.iter().any(|a| a == "--ready-file");
        let log = agent.log.clone();
        agent.wait_ready(|| match (launch.started_when_logged, probe_args) {
            (Some(line), _) => std::fs::read_to_string(&log).is_ok_and(|l| l.contains(line)),
            (None, true) => ready.exists(),
            (None, false) => node.admin_get("/readyz").is_ok_and(|(code, _)| code == 200),
        })?;
        Ok(agent)
    }

    fn wait_ready(&mut self, ready: impl Fn() -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready() {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "agent exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!("agent not ready after 20 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running (not exited).
    pub fn is_running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Its PID.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its resident memory (`VmRSS`) in KiB, 0 if it is gone.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// Its peak resident memory so far (`VmHWM`) in KiB, 0 if it is gone.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Freezes it (SIGSTOP): programs stay attached, the heartbeat goes stale.
    /// Returns once every thread is stopped: the signal is only delivered
    /// when a thread next runs, and until then a worker thread may still
    /// serve a request.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stopped() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether every thread is in the stopped state (`T` in `/proc`).
    fn stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return false;
        };
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat"))
                .is_ok_and(|stat| crate::proc_stat_fields(&stat).first() == Some(&"T"))
        })
    }

    /// Asks it to read its config file again (SIGHUP).
    pub fn hangup(&self) {
        self.signal(libc::SIGHUP);
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM; waits for the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(15))
    }

    /// Waits for the agent to exit by itself (e.g. after handing over).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("agent did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Rewrites its config file with `edit` applied to the current text and
    /// waits until the agent has reloaded it.
    pub fn rewrite_config(&self, edit: impl FnOnce(&str) -> String) -> Result<()> {
        let before = self.log().matches("config reloaded").count();
        let text = std::fs::read_to_string(&self.config)?;
        std::fs::write(&self.config, edit(&text))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.log().matches("config reloaded").count() == before {
            if Instant::now() > deadline {
                bail!("the agent did not reload its config:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits until its log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if Instant::now() > deadline {
                bail!(
                    "agent log has no {needle:?} after {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}
