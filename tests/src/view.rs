//! The agent in a mount namespace of its own, so that it runs with the paths
//! a user's config or the DaemonSet name (`/run/laneway`, `/sys/fs/bpf`,
//! `/etc/laneway`, `/host/proc`, `/run/netns/NAME`) without the test touching
//! the machine's files there.
//!
//! The child unshares its mount namespace in `pre_exec`, makes every mount
//! private (nothing propagates back to the host) and changes its root to an
//! overlay of the host's root file system whose writable layer is a tmpfs:
//! it sees every file of the machine, and whatever it (or the view) creates
//! lands in memory. `/proc`, `/sys` and `/dev` are the host's, bound
//! recursively, so the cgroup v2 mount stays visible where mountinfo says;
//! `/sys/fs/bpf` is a fresh bpffs instance, so pins made under the default
//! `bpf.pin_path` are the agent's alone and go (and its links detach) when
//! the namespace goes with the agent's exit. Then each bind asked for is
//! made, creating its mount point inside the overlay.
//!
//! `pre_exec` runs between fork and exec of a multithreaded process, so it
//! must not allocate: every path is prepared as a `CString` beforehand and
//! the closure only makes system calls.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// What the agent's own view adds to the host's files.
#[derive(Clone, Debug, Default)]
pub struct AgentView {
    /// Bind mounts: a host path, and where the agent sees it.
    pub binds: Vec<(PathBuf, PathBuf)>,
}

impl AgentView {
    /// Adds a bind mount of host path `host` at `inside` (builder style).
    pub fn bind(mut self, host: impl Into<PathBuf>, inside: impl Into<PathBuf>) -> Self {
        self.binds.push((host.into(), inside.into()));
        self
    }
}

/// One step, with every path ready for the system call.
#[derive(Debug)]
enum Step {
    /// `mount(source, target, fstype, flags, data)`.
    Mount {
        source: CString,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// `mkdir(path)`; an existing directory is fine.
    Mkdir(CString),
    /// Creates an empty file (a mount point for a file).
    Touch(CString),
}

/// The steps for a view, prepared before the fork; `stage` is an empty
/// directory of the test's for the overlay's layers.
#[derive(Debug)]
pub struct Prepared {
    steps: Vec<Step>,
    root: CString,
}

fn c(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).context("a path with a NUL byte")
}

impl AgentView {
    /// Prepares the steps; `stage` must exist and be empty, `keep` are host
    /// directories the agent must share with the test as they are (its
    /// config, its ready file), bound at the same path.
    pub fn prepare(&self, stage: &Path, keep: &[&Path]) -> Result<Prepared> {
        let root = stage.join("root");
        let mut steps = vec![Step::Mount {
            source: c(Path::new("none"))?,
            target: c(Path::new("/"))?,
            fstype: None,
            flags: libc::MS_REC | libc::MS_PRIVATE,
            data: None,
        }];
        steps.push(mount("tmpfs", stage, "tmpfs", "mode=0700")?);
        for dir in ["upper", "work", "root"] {
            steps.push(Step::Mkdir(c(&stage.join(dir))?));
        }
        let layers = format!(
            "lowerdir=/,upperdir={},workdir={}",
            stage.join("upper").display(),
            stage.join("work").display()
        );
        steps.push(mount("overlay", &root, "overlay", &layers)?);
        for dir in ["/proc", "/sys", "/dev"] {
            steps.push(bind(Path::new(dir), &inside(&root, Path::new(dir)), true)?);
        }
        steps.push(mount(
            "bpf",
            &inside(&root, Path::new("/sys/fs/bpf")),
            "bpf",
            "",
        )?);
        // The kept directories hold `stage`: bound without what is mounted
        // below them, or the overlay would appear inside itself.
        let keep = keep
            .iter()
            .map(|dir| (dir.to_path_buf(), dir.to_path_buf(), false));
        let binds = self.binds.iter().map(|(h, a)| (h.clone(), a.clone(), true));
        for (host, at, recursive) in keep.chain(binds) {
            let target = inside(&root, &at);
            for dir in at.ancestors().skip(1).collect::<Vec<_>>().into_iter().rev() {
                steps.push(Step::Mkdir(c(&inside(&root, dir))?));
            }
            match host.is_dir() {
                true => steps.push(Step::Mkdir(c(&target)?)),
                false => steps.push(Step::Touch(c(&target)?)),
            }
            steps.push(bind(&host, &target, recursive)?);
        }
        Ok(Prepared {
            steps,
            root: c(&root)?,
        })
    }
}

/// `root` + absolute `path`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn mount(source: &str, target: &Path, fstype: &str, data: &str) -> Result<Step> {
    Ok(Step::Mount {
        source: CString::new(source)?,
        target: c(target)?,
        fstype: Some(CString::new(fstype)?),
        flags: 0,
        data: (!data.is_empty()).then(|| CString::new(data)).transpose()?,
    })
}

fn bind(source: &Path, target: &Path, recursive: bool) -> Result<Step> {
    Ok(Step::Mount {
        source: c(source)?,
        target: c(target)?,
        fstype: None,
        flags: libc::MS_BIND | if recursive { libc::MS_REC } else { 0 },
        data: None,
    })
}

impl Prepared {
    /// Enters a new mount namespace and makes the view; for `pre_exec`
    /// (system calls only, no allocation).
    pub fn enter(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| match rc {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        };
        // SAFETY: plain system calls on NUL-terminated strings that live as
        // long as `self`.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            for step in &self.steps {
                match step {
                    Step::Mount {
                        source,
                        target,
                        fstype,
                        flags,
                        data,
                    } => check(libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
                        *flags,
                        data.as_ref()
                            .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
                    ))?,
                    Step::Mkdir(path) => {
                        if libc::mkdir(path.as_ptr(), 0o755) != 0
                            && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Step::Touch(path) => {
                        let fd = libc::open(
                            path.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o644,
                        );
                        if fd < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        libc::close(fd);
                    }
                }
            }
            check(libc::chroot(self.root.as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
        }
        Ok(())
    }
}
