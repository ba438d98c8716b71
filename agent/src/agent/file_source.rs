//! The static file as the source of truth: watched (mtime, size, inode)
//! and reloaded on change or SIGHUP; a bad edit keeps the last good config.

use std::{path::Path, time::SystemTime};

use tracing::{error, info, warn};

use super::reconcile::{Input, Reconciler};
use crate::config::Config;

/// What identifies a version of the config file on disk.
pub fn fingerprint(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Reads the file again and applies its services, pods, tags and policy.
/// Returns the config now in force (the file's, with the running router, bpf,
/// kube and admin settings, which change only at a restart), or `None` when
/// the file was rejected or could not be applied.
pub fn reload(
    path: &Path,
    running: &Config,
    reconciler: &Reconciler,
    reason: &str,
) -> Option<Config> {
    // Read once: the text checked for emptiness is the text parsed.
    let parsed = Config::read_file(path).and_then(|text| {
        // A file rewritten in place (truncated, then written: a shell's
        // `>`, many tools) reads empty for a moment. Applied, that would
        // drop every service and pod; `services: []` says it on purpose.
        if text.trim().is_empty() {
            return Ok(None);
        }
        Config::parse_file_text(path, &text).map(Some)
    });
    let config = match parsed {
        Ok(Some(c)) => c,
        Ok(None) => {
            error!(%reason, path = %path.display(), "config reload rejected: the file is empty (still being written?); still routing by the last good one");
            return None;
        }
        Err(e) => {
            error!(%reason, error = %e, "config reload rejected; still routing by the last good one");
            return None;
        }
    };
    if serde_yaml::to_string(&config.router).ok() != serde_yaml::to_string(&running.router).ok()
        || serde_yaml::to_string(&config.bpf).ok() != serde_yaml::to_string(&running.bpf).ok()
    {
        warn!(
            "router and bpf settings take effect at the next restart; services, pods and tags are reloaded now"
        );
    }
    let input = Input {
        config: config.clone(),
        unenrolled: Vec::new(),
        policy_errors: Vec::new(),
    };
    if !reconciler.apply_or_log(input, reason) {
        return None;
    }
    info!(%reason, "config reloaded");
    Some(Config {
        router: running.router.clone(),
        bpf: running.bpf.clone(),
        kube: running.kube.clone(),
        admin: running.admin.clone(),
        ..config
    })
}
