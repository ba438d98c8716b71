//! A real browser for the lane map: Debian's Chromium, headless, run inside
//! the node's network namespace (where the admin listener is), driven over
//! the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
//! ending in NUL on fds 3 and 4), so a test can let the page poll in real
//! time, read the DOM its script rendered, type into it and take a
//! screenshot.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::{Value, json};

use crate::{Node, node::METRICS_PORT};

/// The Chromium binary. Missing is a failure, not a skip: CI installs it
/// (`cargo xtask setup`), so a test that needs it never passes without it.
pub fn chromium() -> Result<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context(
            "Chromium is not installed: the lane map is tested in a real browser \
             (`apt-get install chromium`, which `cargo xtask setup` does)",
        )
}

/// The lane map's address as the node sees it; `query` is appended as is
/// (`?q=reviews`).
pub fn ui_url(query: &str) -> String {
    format!("http://127.0.0.1:{METRICS_PORT}/ui{query}")
}

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// A headless Chromium showing one page; killed on drop.
pub struct Browser {
    child: Child,
    to_browser: File,
    from_browser: mpsc::Receiver<Value>,
    session: String,
    next_id: u64,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

/// A pipe: (read end, write end), both close-on-exec.
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two fds on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both were just opened and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Browser {
    /// Starts Chromium in `node`'s netns with a `width` x `height` window
    /// and opens `url`.
    pub fn open(node: &Node, url: &str, (width, height): (u32, u32)) -> Result<Self> {
        let profile = node.dir().join("chromium");
        std::fs::create_dir_all(&profile)?;
        let (commands_read, commands_write) = pipe()?;
        let (events_read, events_write) = pipe()?;
        let (theirs_in, theirs_out) = (commands_read.as_raw_fd(), events_write.as_raw_fd());
        let mut cmd = node.netns.command(chromium()?.to_str().context("path")?);
        cmd.args([
            "--headless",
            // Root in a test: Chromium's sandbox refuses to run as root.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg("about:blank")
        .env("HOME", &profile)
        // Its own process group: its helper processes go with it on drop.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(File::create(node.dir().join("chromium.log"))?));
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork
        // and exec. The pipe ends go to fds 3 and 4, where Chromium looks
        // for them; duplicated out of the way first, in case one already
        // is 3 or 4.
        unsafe {
            cmd.pre_exec(move || {
                let input = libc::fcntl(theirs_in, libc::F_DUPFD, 10);
                let output = libc::fcntl(theirs_out, libc::F_DUPFD, 10);
                if input < 0 || output < 0 || libc::dup2(input, 3) < 0 || libc::dup2(output, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("start chromium")?;
        drop((commands_read, events_write));
        let (tx, from_browser) = mpsc::channel();
        let mut reader = BufReader::new(File::from(events_read));
        std::thread::spawn(move || {
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|b| *b == 0);
                if let Ok(value) = serde_json::from_slice(&message)
                    && tx.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        let mut browser = Self {
            child,
            to_browser: File::from(commands_write),
            from_browser,
            session: String::new(),
            next_id: 0,
        };
        let target = browser.command("Target.createTarget", json!({"url": "about:blank"}))?;
        let target = target["targetId"].as_str().context("targetId")?.to_owned();
        let attached = browser.command(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        )?;
        browser.session = attached["sessionId"]
            .as_str()
            .context("sessionId")?
            .to_owned();
        browser.command("Page.enable", json!({}))?;
        browser.navigate(url)?;
        Ok(browser)
    }

    /// Sends a DevTools command (to the page once attached) and waits for
    /// its answer.
    fn command(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .with_context(|| format!("send {method} to chromium"))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .from_browser
                .recv_timeout(left)
                .with_context(|| format!("chromium did not answer {method}"))?;
            if answer["id"].as_u64() != Some(id) {
                continue; // an event, or the answer to another command
            }
            if let Some(error) = answer.get("error") {
                bail!("{method}: {error}");
            }
            return Ok(answer["result"].clone());
        }
    }

    /// Loads `url` and waits until it has loaded.
    pub fn navigate(&mut self, url: &str) -> Result<()> {
        self.command("Page.navigate", json!({"url": url}))?;
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(10),
        )
    }

    /// Evaluates `expression` in the page; its value.
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let result = self.command(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            bail!("{expression}: {exception}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Waits until `predicate` (JavaScript) is true in the page.
    pub fn wait_for(&mut self, predicate: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.eval(predicate)? != Value::Bool(true) {
            if Instant::now() > deadline {
                bail!("the page never had {predicate} in {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The text of the first element matching the CSS `selector`, as the
    /// page shows it (`innerText`); `None` when there is none.
    pub fn text(&mut self, selector: &str) -> Result<Option<String>> {
        let expression = format!(
            "(() => {{ const e = document.querySelector({}); return e ? e.innerText : null; }})()",
            serde_json::to_string(selector)?
        );
        Ok(self.eval(&expression)?.as_str().map(str::to_owned))
    }

    /// Types `text` into the element matching `selector` (replacing what it
    /// held), as a person would: the page sees an `input` event.
    pub fn type_into(&mut self, selector: &str, text: &str) -> Result<()> {
        let selector = serde_json::to_string(selector)?;
        self.eval(&format!("document.querySelector({selector}).focus()"))?;
        self.eval(&format!("document.querySelector({selector}).select()"))?;
        self.command("Input.insertText", json!({"text": text}))?;
        Ok(())
    }

    /// A PNG of the whole page, written to `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<()> {
        let shot = self.command(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().context("screenshot data")?)
            .context("screenshot base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: a signal to the process group this browser leads.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
