//! Network namespaces made with `ip netns`, and running code inside them.
//!
//! Code runs inside a namespace on a short-lived thread that `setns`es into
//! it: the process stays in the host's mount namespace (where the cgroup v2
//! mount is), and a socket made there stays in the namespace it was made in.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Output},
};

use anyhow::{Context, Result, bail};

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` (it must not exist) with loopback up.
    pub fn create(name: &str) -> Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its file, for `setns` and for the agent's config.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `ip ARGS` inside.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        self.exec("ip", args).map(drop)
    }

    /// Runs a program inside (`ip netns exec`), failing on a non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args))
    }

    /// A command that runs `program` inside (for the caller to spawn).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        run_in(&self.file()?, f).with_context(|| format!("in netns {}", self.name))
    }

    /// Its file, open: a handle that code running later (e.g. a connector
    /// called from an async runtime) can enter with [`run_in`].
    pub fn file(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("open {}", self.path().display()))
    }

    /// Sets a sysctl inside.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs `f` on a thread inside the namespace `file` and returns its result.
pub fn run_in<T: Send>(file: &File, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<T> {
                enter(file)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in a netns panicked"))?
    })
}

/// Moves the calling thread into the namespace `file`.
pub fn enter(file: &File) -> Result<()> {
    // SAFETY: plain syscall on a valid fd; affects the calling thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs a command, failing with its stderr on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
