//! Finding a local pod's network namespace from the node: a process of the
//! pod (its cgroup path names the pod UID), then `PROC/PID/ns/net`.
//!
//! Kubelet's cgroup paths carry the UID as `pod<uid>` (cgroupfs driver) or
//! `pod<uid with _ for ->` (systemd driver, e.g.
//! `kubepods-besteffort-pod1234_5678.slice`). Found PIDs are remembered and
//! checked again before reuse, so steady state costs no `/proc` scan.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// Finds pods' network namespaces under a `/proc`.
#[derive(Debug)]
pub struct NetnsFinder {
    proc_root: PathBuf,
    known: HashMap<String, u32>,
}

impl NetnsFinder {
    /// A finder over `proc_root` (the host's `/proc`).
    pub fn new(proc_root: PathBuf) -> Self {
        Self {
            proc_root,
            known: HashMap::new(),
        }
    }

    /// The netns path of each pod UID, or why it was not found.
    pub fn find(&mut self, uids: &[String]) -> HashMap<String, Result<PathBuf, String>> {
        let mut result = HashMap::new();
        let mut missing = Vec::new();
        for uid in uids {
            match self.known.get(uid) {
                Some(&pid) if self.pid_belongs(pid, uid) => {
                    result.insert(uid.clone(), Ok(self.netns_path(pid)));
                }
                _ => missing.push(uid.clone()),
            }
        }
        if !missing.is_empty() {
            self.scan(&missing, &mut result);
        }
        for uid in missing {
            result.entry(uid.clone()).or_insert_with(|| {
                Err(format!(
                    "no process of the pod found in {} (looked for cgroup pod{uid})",
                    self.proc_root.display()
                ))
            });
        }
        self.known.retain(|uid, _| uids.contains(uid));
        result
    }

    fn netns_path(&self, pid: u32) -> PathBuf {
        self.proc_root.join(pid.to_string()).join("ns/net")
    }

    fn pid_belongs(&self, pid: u32, uid: &str) -> bool {
        std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup"))
            .is_ok_and(|cgroup| names_pod(&cgroup, uid))
    }

    fn scan(&mut self, uids: &[String], result: &mut HashMap<String, Result<PathBuf, String>>) {
        let Ok(entries) = std::fs::read_dir(&self.proc_root) else {
            for uid in uids {
                result.insert(
                    uid.clone(),
                    Err(format!("cannot read {}", self.proc_root.display())),
                );
            }
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cgroup) = std::fs::read_to_string(entry.path().join("cgroup")) else {
                continue;
            };
            for uid in uids {
                if !result.contains_key(uid) && names_pod(&cgroup, uid) && has_netns(&entry.path())
                {
                    self.known.insert(uid.clone(), pid);
                    result.insert(uid.clone(), Ok(self.netns_path(pid)));
                }
            }
            if result.len() >= uids.len() && uids.iter().all(|u| result.contains_key(u)) {
                return;
            }
        }
    }
}

fn has_netns(proc_pid: &Path) -> bool {
    proc_pid.join("ns/net").exists()
}

/// Whether a `/proc/PID/cgroup` text puts the process in pod `uid`'s cgroup.
fn names_pod(cgroup: &str, uid: &str) -> bool {
    let dashed = format!("pod{uid}");
    let underscored = format!("pod{}", uid.replace('-', "_"));
    cgroup.lines().any(|line| {
        line.split('/').any(|part| {
            part == dashed || part.starts_with(&format!("{dashed}.")) || part.contains(&underscored)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "4f1e2a3b-1111-2222-3333-444455556666";

    #[test]
    fn recognises_both_cgroup_drivers() {
        let cgroupfs = format!("0::/kubepods/besteffort/pod{UID}/0123abcd\n");
        assert!(names_pod(&cgroupfs, UID));
        let systemd = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-0123.scope\n",
            UID.replace('-', "_")
        );
        assert!(names_pod(&systemd, UID));
        assert!(!names_pod("0::/user.slice/session-1.scope\n", UID));
        assert!(
            !names_pod(&format!("0::/kubepods/pod{UID}x/c\n"), UID),
            "prefix of another UID"
        );
    }

    #[test]
    fn finds_a_process_in_a_fake_proc_and_reports_missing_pods() {
        let dir = std::env::temp_dir().join(format!("laneway-proc-{}", std::process::id()));
        let pid_dir = dir.join("4242");
        std::fs::create_dir_all(pid_dir.join("ns")).unwrap();
        std::fs::write(
            pid_dir.join("cgroup"),
            format!("0::/kubepods/pod{UID}/c1\n"),
        )
        .unwrap();
        std::fs::write(pid_dir.join("ns/net"), "").unwrap();
        let mut finder = NetnsFinder::new(dir.clone());
        let found = finder.find(&[UID.to_owned(), "other-uid".to_owned()]);
        assert_eq!(found[UID], Ok(pid_dir.join("ns/net")));
        let missing = found["other-uid"].clone().unwrap_err();
        assert!(missing.contains("podother-uid"), "{missing}");
        // Cached: still found after the scan.
        assert_eq!(
            finder.find(&[UID.to_owned()])[UID],
            Ok(pid_dir.join("ns/net"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
