//! Finding the cgroup v2 hierarchy the programs attach to.
//!
//! Its mount point differs between machines (`/sys/fs/cgroup` on most
//! Kubernetes nodes, `/sys/fs/cgroup/unified` on hybrid layouts), so it is read
//! from `/proc/self/mountinfo`, never assumed.

use std::path::{Path, PathBuf};

/// Why no cgroup v2 hierarchy was found.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// mountinfo could not be read.
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(#[source] std::io::Error),
    /// No cgroup2 mount.
    #[error(
        "no cgroup v2 (cgroup2) filesystem is mounted: laneway's socket programs attach to a \
         cgroup v2 hierarchy (mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`)"
    )]
    NotMounted,
}

/// The mount point of the cgroup v2 hierarchy.
pub fn v2_root() -> Result<PathBuf, Error> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(Error::MountInfo)?;
    v2_root_in(&text).ok_or(Error::NotMounted)
}

/// Parses mountinfo text: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS... - FSTYPE SOURCE SUPEROPTS`.
fn v2_root_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether `path` is a cgroup v2 directory (has `cgroup.procs`).
pub fn is_cgroup_dir(path: &Path) -> bool {
    path.join("cgroup.procs").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_layouts() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs ro\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            v2_root_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(v2_root_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(v2_root_in("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/x\\"), r"/x\\");
    }

    #[test]
    fn this_machine_has_cgroup_v2() {
        // Every machine laneway runs on has it; a clear error is the contract otherwise.
        match v2_root() {
            Ok(root) => assert!(
                is_cgroup_dir(&root),
                "{} has no cgroup.procs",
                root.display()
            ),
            Err(e) => assert!(e.to_string().contains("cgroup2"), "{e}"),
        }
    }
}
