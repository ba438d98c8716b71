//! The agent's admin side as an operator uses it: the `laneway` CLI against
//! the node's admin socket, and `/metrics` on the admin listener.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use laneway::admin::api;
use serde::de::DeserializeOwned;

use crate::{Node, agent::binary};

/// Runs `laneway ARGS --socket <the node's admin socket>`.
pub fn laneway(node: &Node, args: &[&str]) -> Result<Output> {
    Command::new(binary())
        .args(args)
        .arg("--socket")
        .arg(node.admin_socket())
        .output()
        .context("run laneway")
}

/// Runs `laneway ARGS -o json`; fails unless it succeeds.
pub fn json<T: DeserializeOwned>(node: &Node, args: &[&str]) -> Result<T> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = laneway(node, &all)?;
    anyhow::ensure!(
        out.status.success(),
        "laneway {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The agent's `/metrics` text, from inside the node netns; fails unless it
/// answers 200.
pub fn scrape(node: &Node) -> Result<String> {
    let (status, text) = node.admin_get("/metrics")?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {text}");
    Ok(text)
}

/// Runs `laneway trace ARGS --count N -o json` while `send` makes requests;
/// returns the events. Fails (instead of hanging) if fewer than `count`
/// arrive within 10 s.
pub fn trace(
    node: &Node,
    args: &[&str],
    count: usize,
    send: impl FnOnce() -> Result<()>,
) -> Result<Vec<api::TraceEvent>> {
    let mut child = Command::new(binary())
        .arg("trace")
        .args(args)
        .args(["--count", &count.to_string(), "-o", "json", "--socket"])
        .arg(node.admin_socket())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    send()?;
    let mut events = Vec::new();
    while events.len() < count {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => events.push(serde_json::from_str::<api::TraceEvent>(&line)?),
            Err(_) => {
                let _ = child.kill();
                anyhow::bail!("trace {args:?} printed only {events:?}");
            }
        }
    }
    assert!(child.wait()?.success(), "trace exits 0 after --count");
    Ok(events)
}
