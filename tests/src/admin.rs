//! The agent's admin side as an operator uses it: the `laneway` CLI against
//! the node's admin socket, and `/metrics` on the admin listener.

use std::process::{Command, Output};

use anyhow::{Context, Result};
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
