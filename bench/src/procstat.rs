//! What a proxy costs, read from `/proc`: CPU time and resident memory of a
//! process and all its descendants (nginx's workers, the agent's threads).

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use laneway_tests::proc_stat_fields;

/// CPU seconds (user + system, dead threads included) of `root` and its
/// descendants.
pub fn cpu_seconds(root: i32) -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0u64;
    for pid in tree(root)? {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // Exited since the scan.
        };
        let fields = proc_stat_fields(&stat);
        // Fields 14 and 15 of stat(5): utime, stime (11 and 12 after comm).
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        total += number(11).unwrap_or(0) + number(12).unwrap_or(0);
    }
    Ok(total as f64 / ticks)
}

/// Memory of `root` and its descendants, in KiB: `(VmRSS, VmHWM)` summed
/// (now, and the peak since each process started).
pub fn memory_kib(root: i32) -> Result<(u64, u64)> {
    let (mut rss, mut peak) = (0, 0);
    for pid in tree(root)? {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        rss += field("VmRSS:");
        peak += field("VmHWM:");
    }
    Ok((rss, peak))
}

/// `root` and every process below it.
fn tree(root: i32) -> Result<BTreeSet<i32>> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").context("read /proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(ppid) = proc_stat_fields(&stat)
                .get(1)
                .and_then(|p| p.parse::<i32>().ok())
        {
            parents.push((pid, ppid));
        }
    }
    let mut found = BTreeSet::from([root]);
    loop {
        let before = found.len();
        for (pid, ppid) in &parents {
            if found.contains(ppid) {
                found.insert(*pid);
            }
        }
        if found.len() == before {
            return Ok(found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_time_and_memory() {
        let me = std::process::id() as i32;
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0);
        }
        assert!(cpu_seconds(me).unwrap() > 0.0);
        let (rss, peak) = memory_kib(me).unwrap();
        assert!(rss > 0 && peak >= rss, "{rss} {peak}");
    }
}
