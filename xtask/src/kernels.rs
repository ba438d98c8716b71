//! `cargo xtask test --kernel KVER|all`: the root-only integration tests
//! on Debian's kernels, each booted in a VM.
//!
//! The kernels come from Debian's archive through a private apt sources
//! list and lists directory under `target/kernels/apt` (the machine's own
//! apt sources are never touched), extracted under `target/kernels/root`.
//! virtme-ng (from PyPI, in a venv under `target/kernels/venv`) boots each
//! with qemu and the host's root file system shared read-only (virtio-fs,
//! virtiofsd built from crates.io), so the test binaries built on the host
//! run inside as they are. KVM is used when a
//! stock kernel boots on it, else TCG (software emulation).
//!
//! Inside the VM, `xtask kernel-guest` (see [`guest`]) prepares the guest
//! (bpffs, the cgroup layout, modules) and runs each test with its own
//! timeout, writing its verdict to a file in the shared read-write
//! directory: vng's own exit status is not reliable. The verdicts of every
//! kernel and layout run so far are kept in `target/kernels/results/` and
//! rendered into `KERNELS.md`.

pub mod guest;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{run, step};

/// A kernel of the matrix: Debian's generic `-amd64` flavour of a suite.
pub struct Kernel {
    /// `major.minor`, as `--kernel` takes it.
    pub version: &'static str,
    /// The Debian suite that ships it.
    suite: &'static str,
}

/// Every kernel of the matrix (`--kernel all`).
pub const KERNELS: &[Kernel] = &[
    Kernel {
        version: "5.10",
        suite: "bullseye",
    },
    Kernel {
        version: "6.1",
        suite: "bookworm",
    },
    Kernel {
        version: "6.12",
        suite: "trixie",
    },
];

/// The cgroup layouts a kernel is booted with.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Layout {
    /// cgroup v2 only, at `/sys/fs/cgroup` (systemd's default since 2021).
    V2,
    /// cgroup v1 controllers at `/sys/fs/cgroup/*`, v2 at
    /// `/sys/fs/cgroup/unified` (older distributions' systemd).
    Hybrid,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::Hybrid => "hybrid",
        }
    }
}

/// The tests CI runs on every kernel of the matrix (`suite::name`): the
/// data path in socket, TC and both modes, fail-open, a gray release, a
/// restart (clsact, TC's attachment before Linux 6.6), the netns-cookie
/// probe and preflight. Chosen by their cost under TCG (see KERNELS.md):
/// 10 to 60 s each there. `graceful`'s five-round restarts (about 25 s
/// each under TCG) run on the oldest kernel only ([`CI_OLDEST_EXTRA`]).
pub const CI_SUBSET: &[&str] = &[
    "data_path::socket::tag_header_reaches_the_lane_and_unknown_tags_fall_back_to_base",
    "data_path::tc::tag_header_reaches_the_lane_and_unknown_tags_fall_back_to_base",
    "data_path::both::tag_header_reaches_the_lane_and_unknown_tags_fall_back_to_base",
    "data_path::socket::sigterm_fails_open_and_exits_cleanly",
    "gray::strict_lanes_answer_503_and_permissive_lanes_fall_back",
    "tc_mode::with_clsact_a_filter_installed_before_keeps_its_place_and_restarts_leave_one_filter",
    "netns_probe::the_probe_learns_each_pods_own_cookie_the_one_so_netns_cookie_gives",
    "cli::preflight_passes_on_this_machine",
];

/// What the hybrid cgroup layout changes is where the agent finds cgroup v2
/// and attaches: CI checks it on the oldest kernel with the socket data
/// path and the netns probe only (each VM costs minutes under TCG).
pub const CI_HYBRID_SUBSET: &[&str] = &[
    "data_path::socket::tag_header_reaches_the_lane_and_unknown_tags_fall_back_to_base",
    "netns_probe::the_probe_learns_each_pods_own_cookie_the_one_so_netns_cookie_gives",
];

/// What CI adds on the oldest kernel with cgroup v2: takeovers under load
/// (about 25 s each under TCG). There the new agent can only share the old
/// one's listening sockets (no `tcp_migrate_req` before Linux 5.14), learns
/// namespaces' cookies through its probe (no `SO_NETNS_COOKIE` before
/// 5.14), here with one namespace slow to open, and in TC mode replaces
/// clsact filters (no TCX before 6.6): five overlapping restarts there
/// found every handover deleting the successor's filters.
pub const CI_OLDEST_EXTRA: &[&str] = &[
    "graceful::a_namespace_slow_to_open_costs_its_pod_nothing_across_a_takeover",
    "graceful::overlapping_restarts_in_tc_mode_share_the_transparent_listener_and_fail_no_request",
];

/// CI's tests for `kernel` and `layout`.
fn ci_subset(kernel: &Kernel, layout: Layout) -> Vec<&'static str> {
    match layout {
        Layout::V2 if kernel.version == KERNELS[0].version => {
            CI_SUBSET.iter().chain(CI_OLDEST_EXTRA).copied().collect()
        }
        Layout::V2 => CI_SUBSET.to_vec(),
        Layout::Hybrid => CI_HYBRID_SUBSET.to_vec(),
    }
}

/// How long one test may take in the VM (TCG is about ten times slower
/// than the host): past it, the test is killed and counted as a timeout.
const TEST_TIMEOUT: Duration = Duration::from_secs(600);
/// How long booting and preparing a VM may take before its first test.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How many times a VM is booted when it ends before the guest starts.
const BOOT_ATTEMPTS: u32 = 2;

/// Which integration tests a VM runs.
pub enum Tests {
    /// CI's: [`CI_SUBSET`] with cgroup v2 (and [`CI_OLDEST_EXTRA`] on the
    /// oldest kernel), [`CI_HYBRID_SUBSET`] with the hybrid layout.
    Ci,
    /// Every one.
    All,
    /// Those whose `suite::name` contains this.
    Matching(String),
}

/// What to run in one VM.
pub struct Run<'a> {
    /// The kernel.
    pub kernel: &'a Kernel,
    /// The cgroup layout.
    pub layout: Layout,
    /// The tests.
    pub tests: &'a Tests,
}

impl Run<'_> {
    fn wants(&self, name: &str) -> bool {
        match self.tests {
            Tests::Ci => ci_subset(self.kernel, self.layout).contains(&name),
            Tests::All => true,
            Tests::Matching(part) => name.contains(part.as_str()),
        }
    }
}

/// One run per kernel and layout: `layouts`, or else cgroup v2 on every
/// kernel and the hybrid layout too on the oldest.
pub fn runs<'a>(kernels: &[&'a Kernel], layouts: &[Layout], tests: &'a Tests) -> Vec<Run<'a>> {
    kernels
        .iter()
        .flat_map(|&kernel| {
            let layouts = if !layouts.is_empty() {
                layouts.to_vec()
            } else if kernel.version == KERNELS[0].version {
                vec![Layout::V2, Layout::Hybrid]
            } else {
                vec![Layout::V2]
            };
            layouts.into_iter().map(move |layout| Run {
                kernel,
                layout,
                tests,
            })
        })
        .collect()
}

/// The kernels `--kernel` names (`all`, or one version).
pub fn select(name: &str) -> Result<Vec<&'static Kernel>> {
    if name == "all" {
        return Ok(KERNELS.iter().collect());
    }
    KERNELS
        .iter()
        .find(|k| k.version == name)
        .map(|k| vec![k])
        .with_context(|| {
            let known: Vec<_> = KERNELS.iter().map(|k| k.version).collect();
            format!(
                "no kernel {name} in the matrix: one of {} or all",
                known.join(", ")
            )
        })
}

/// Runs `runs` (the test binaries already built), writes KERNELS.md, and
/// fails if any test failed; else returns how many passed.
pub fn matrix(root: &Path, runs: &[Run]) -> Result<u64> {
    let dir = root.join("target/kernels");
    let vng = install_tools(&dir)?;
    let binaries = test_binaries(root)?;
    let kvm = kvm_boots(&dir, &vng, runs.first().map(|r| r.kernel))?;
    let (mut passed, mut failed) = (0, 0);
    for r in runs {
        let vmlinuz = fetch_kernel(&dir, r.kernel)?;
        let verdicts = boot_and_test(root, &vng, &vmlinuz, kvm, r, &binaries)?;
        let ok = verdicts.iter().filter(|v| v.result == "pass").count();
        passed += ok as u64;
        failed += verdicts.len() - ok;
    }
    render(root)?;
    if failed > 0 {
        bail!(
            "{failed} test(s) failed in the kernel matrix: see KERNELS.md and target/kernels/out/"
        );
    }
    Ok(passed)
}

/// qemu, kmod and busybox (virtme-ng's initramfs) from apt; virtme-ng from
/// PyPI into a venv; virtiofsd (Rust) from crates.io. Returns the path of
/// `vng`, with `virtiofsd` next to it.
fn install_tools(dir: &Path) -> Result<PathBuf> {
    let virtiofsd = dir.join("venv/bin/virtiofsd");
    let mut missing: Vec<&str> = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("depmod", "kmod"),
        ("busybox", "busybox-static"),
    ]
    .into_iter()
    .filter(|(bin, _)| !crate::have(bin) && !Path::new(&format!("/usr/sbin/{bin}")).exists())
    .map(|(_, pkg)| pkg)
    .collect();
    if !virtiofsd.exists() {
        // What building virtiofsd links against.
        missing.extend(["libseccomp-dev", "libcap-ng-dev"]);
    }
    if !missing.is_empty() {
        step(&format!("apt-get install {}", missing.join(" ")));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let venv = dir.join("venv");
    let vng = venv.join("bin/vng");
    if !vng.exists() {
        step("pip install virtme-ng (venv in target/kernels/venv)");
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args(["install", "-q", "virtme-ng==1.42"]))?;
    }
    if !virtiofsd.exists() {
        // vng shares the root file system over virtio-fs with it (cached:
        // about ten times faster under TCG than its fallback, 9p), and
        // Debian 12's qemu has only the old C daemon, which vng refuses.
        step("cargo install virtiofsd (into target/kernels/venv)");
        run(Command::new(env!("CARGO"))
            .args([
                "install",
                "virtiofsd",
                "--version",
                "^1.14",
                "--locked",
                "--root",
            ])
            .arg(&venv))?;
    }
    Ok(vng)
}

/// The integration test binaries (`cargo test -p laneway-tests --no-run`),
/// by suite name.
fn test_binaries(root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let out = Command::new(env!("CARGO"))
        .args([
            "test",
            "-p",
            "laneway-tests",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(root)
        .env("PATH", crate::tools_path(root))
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    let mut binaries = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // Plain string matching: one JSON object per line, and the fields
        // used are simple strings.
        let field = |name: &str| {
            let start = line.find(&format!("\"{name}\":\""))? + name.len() + 4;
            let end = line[start..].find('"')? + start;
            Some(line[start..end].to_owned())
        };
        if !line.contains("\"kind\":[\"test\"]") || !line.contains("laneway-tests") {
            continue;
        }
        if let (Some(name), Some(exe)) = (field("name"), field("executable")) {
            binaries.insert(name, PathBuf::from(exe));
        }
    }
    if binaries.is_empty() {
        bail!("no integration test binaries found");
    }
    Ok(binaries)
}

/// Private apt configuration: Debian's suites of the matrix, without
/// touching the machine's sources.
fn apt(dir: &Path, tool: &str) -> Result<Command> {
    let apt = dir.join("apt");
    std::fs::create_dir_all(apt.join("lists/partial"))?;
    std::fs::create_dir_all(apt.join("cache/archives/partial"))?;
    let sources = apt.join("sources.list");
    let text: String = KERNELS
        .iter()
        .map(|k| {
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://deb.debian.org/debian {} main\n",
                k.suite
            )
        })
        .collect();
    std::fs::write(&sources, text)?;
    let mut cmd = Command::new(tool);
    for (key, value) in [
        ("Dir::Etc::sourcelist", sources),
        ("Dir::Etc::sourceparts", PathBuf::from("-")),
        ("Dir::State::Lists", apt.join("lists")),
        ("Dir::Cache", apt.join("cache")),
    ] {
        cmd.arg("-o").arg(format!("{key}={}", value.display()));
    }
    Ok(cmd)
}

/// Downloads and extracts `kernel` (once); returns its `vmlinuz`, with the
/// modules next to it where virtme-ng finds them.
fn fetch_kernel(dir: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let extracted = dir.join("root").join(kernel.version);
    if let Some(vmlinuz) = find_vmlinuz(&extracted) {
        return Ok(vmlinuz);
    }
    step(&format!(
        "apt-get download Debian {} kernel ({})",
        kernel.version, kernel.suite
    ));
    let lists = dir.join("apt/lists");
    let fresh = std::fs::read_dir(&lists).is_ok_and(|d| d.count() > 2);
    if !fresh {
        run(apt(dir, "apt-get")?.args(["update", "-qq"]))?;
    }
    let out = apt(dir, "apt-cache")?
        .args(["show", "linux-image-amd64"])
        .output()
        .context("apt-cache show linux-image-amd64")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Each suite's linux-image-amd64 depends on that suite's kernel package.
    let package = text
        .split("\n\n")
        .filter(|record| {
            record.lines().any(|l| {
                l.strip_prefix("Version: ")
                    .is_some_and(|v| v.starts_with(&format!("{}.", kernel.version)))
            })
        })
        .find_map(|record| {
            record.lines().find_map(|l| {
                l.strip_prefix("Depends: ")
                    .and_then(|d| d.split([' ', ',']).next())
                    .map(str::to_owned)
            })
        })
        .with_context(|| {
            format!(
                "no linux-image-amd64 {} in Debian {}",
                kernel.version, kernel.suite
            )
        })?;
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    run(apt(dir, "apt-get")?
        .args(["download", "-qq", &package])
        .current_dir(&debs))?;
    let deb = std::fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .with_context(|| format!("{package} was not downloaded"))?;
    std::fs::create_dir_all(&extracted)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
    find_vmlinuz(&extracted).with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))
}

fn find_vmlinuz(extracted: &Path) -> Option<PathBuf> {
    std::fs::read_dir(extracted.join("boot"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// `vng` booting `vmlinuz` with `exec`, the host's root read-only and
/// `rwdir` writable.
fn vng(vng: &Path, vmlinuz: &Path, kvm: bool, rwdir: &Path, exec: &str) -> Command {
    let mut cmd = Command::new(vng);
    let venv_bin = vng.parent().expect("vng is in the venv's bin/");
    cmd.env(
        "PATH",
        format!(
            "{}:{}",
            venv_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    )
    .arg("--run")
    .arg(vmlinuz)
    .args(["--cpus", "2", "--memory", "4G", "--disable-monitor"])
    .arg(format!("--rwdir={}", rwdir.display()))
    .args(["--exec", exec])
    .stdin(Stdio::null());
    if !kvm {
        cmd.arg("--disable-kvm");
    }
    cmd
}

/// Runs `cmd`, its output to `log`, in a process group of its own; kills
/// the whole group (vng and qemu, or a test and its agents) past `limit`.
/// Returns its exit status, or `None` when it was killed.
fn run_for(cmd: &mut Command, limit: Duration, log: &Path) -> Result<Option<ExitStatus>> {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::create(log)?;
    let mut child = cmd
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if started.elapsed() > limit {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether a stock kernel boots under KVM here (a paravirtual `/dev/kvm`
/// for nested guests may accept the VM and hang in early boot).
fn kvm_boots(dir: &Path, vng_bin: &Path, kernel: Option<&Kernel>) -> Result<bool> {
    let Some(kernel) = kernel else {
        return Ok(false);
    };
    if !Path::new("/dev/kvm").exists() {
        eprintln!("    no /dev/kvm: VMs run under TCG (software emulation)");
        return Ok(false);
    }
    let vmlinuz = fetch_kernel(dir, kernel)?;
    let rwdir = dir.join("out/kvm-check");
    std::fs::create_dir_all(&rwdir)?;
    let marker = rwdir.join("booted");
    let _ = std::fs::remove_file(&marker);
    step("does a stock kernel boot under KVM here? (60 s at most)");
    run_for(
        &mut vng(
            vng_bin,
            &vmlinuz,
            true,
            &rwdir,
            &format!("echo yes > {}", marker.display()),
        ),
        Duration::from_secs(60),
        &rwdir.join("vng.log"),
    )?;
    let kvm = marker.exists();
    eprintln!(
        "    {}",
        if kvm {
            "yes: VMs use KVM"
        } else {
            "no: VMs run under TCG (software emulation, about ten times slower)"
        }
    );
    Ok(kvm)
}

/// One test's verdict, as the guest writes it (`name\tresult\tseconds`).
pub struct Verdict {
    /// `suite::name`.
    pub name: String,
    /// `pass`, `fail` or `timeout`; `not run` when the VM died first.
    pub result: String,
    /// How long it took in the VM.
    pub seconds: f64,
}

/// Boots `r.kernel` with `r.layout` and runs its tests; writes the verdicts
/// to `target/kernels/results/KVER-LAYOUT.tsv`.
fn boot_and_test(
    root: &Path,
    vng_bin: &Path,
    vmlinuz: &Path,
    kvm: bool,
    r: &Run,
    binaries: &BTreeMap<String, PathBuf>,
) -> Result<Vec<Verdict>> {
    let label = format!("{}-{}", r.kernel.version, r.layout.name());
    let out = root.join("target/kernels/out").join(&label);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let plan = guest::plan(binaries, |name| r.wants(name))?;
    if let Tests::Ci = r.tests
        && let Some(missing) = ci_subset(r.kernel, r.layout)
            .into_iter()
            .find(|n| !plan.iter().any(|(p, _)| p == *n))
    {
        bail!("CI's kernel subset names {missing}, which is no integration test");
    }
    std::fs::write(out.join("plan.tsv"), guest::render_plan(&plan))?;
    step(&format!(
        "Linux {} ({}), cgroup {}: {} tests under {}",
        r.kernel.version,
        vmlinuz.display(),
        r.layout.name(),
        plan.len(),
        if kvm { "KVM" } else { "TCG" }
    ));
    let xtask = std::env::current_exe()?;
    let exec = format!(
        "{} kernel-guest --layout {} --root {} --out {}",
        xtask.display(),
        r.layout.name(),
        root.display(),
        out.display()
    );
    let limit = BOOT_TIMEOUT + TEST_TIMEOUT * plan.len() as u32;
    let started = Instant::now();
    for attempt in 1..=BOOT_ATTEMPTS {
        let log = out.join("vng.log");
        let status = run_for(&mut vng(vng_bin, vmlinuz, kvm, &out, &exec), limit, &log)?;
        // The guest writes `release` before anything else: without it the
        // VM died before our code ran (seen once in CI under TCG: qemu
        // gone after 16 s with no output), which says nothing about the
        // kernel under test, so boot it again.
        if out.join("release").exists() || attempt == BOOT_ATTEMPTS {
            break;
        }
        let kept = out.join(format!("vng-attempt{attempt}.log"));
        std::fs::rename(&log, &kept)?;
        eprintln!(
            "    the VM ended before the guest started ({}; log in {}): booting again",
            status.map_or("killed at the time limit".to_owned(), |s| s.to_string()),
            kept.display()
        );
    }
    let mut verdicts = guest::read_verdicts(&out.join("verdicts.tsv"));
    for (name, _) in &plan {
        if !verdicts.iter().any(|v| &v.name == name) {
            verdicts.push(Verdict {
                name: name.clone(),
                result: "not run".into(),
                seconds: 0.0,
            });
        }
    }
    let passed = verdicts.iter().filter(|v| v.result == "pass").count();
    eprintln!(
        "    Linux {} cgroup {}: {passed}/{} passed in {:.0} s (boot included); logs in {}",
        r.kernel.version,
        r.layout.name(),
        verdicts.len(),
        started.elapsed().as_secs_f64(),
        out.display()
    );
    for v in verdicts.iter().filter(|v| v.result != "pass") {
        eprintln!("    {}: {}", v.name, v.result);
    }
    let release = std::fs::read_to_string(out.join("release")).unwrap_or_default();
    let results = root.join("target/kernels/results");
    std::fs::create_dir_all(&results)?;
    // Merged into what earlier runs on this kernel and layout found: a
    // filtered run updates its own tests only.
    let path = results.join(format!("{label}.tsv"));
    let mut merged = guest::read_verdicts(&path);
    merged.retain(|old| !verdicts.iter().any(|v| v.name == old.name));
    let mut text = format!(
        "# {}\t{}\t{}\n",
        release.trim(),
        if kvm { "KVM" } else { "TCG" },
        r.layout.name(),
    );
    for v in merged.iter().chain(&verdicts) {
        text.push_str(&format!("{}\t{}\t{:.1}\n", v.name, v.result, v.seconds));
    }
    std::fs::write(path, text)?;
    Ok(verdicts)
}

/// KERNELS.md: a table of every test by kernel and layout, from the
/// results of the runs so far.
fn render(root: &Path) -> Result<()> {
    let results = root.join("target/kernels/results");
    let mut columns = Vec::new();
    let mut rows: BTreeMap<String, BTreeMap<usize, String>> = BTreeMap::new();
    let mut totals: Vec<f64> = Vec::new();
    let mut labels: Vec<_> = std::fs::read_dir(&results)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tsv"))
        .collect();
    labels.sort();
    for path in labels {
        let text = std::fs::read_to_string(&path)?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|l| l.strip_prefix("# "))
            .unwrap_or_default()
            .split('\t')
            .collect();
        let column = columns.len();
        totals.push(0.0);
        columns.push(header.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        for line in lines {
            let fields: Vec<&str> = line.split('\t').collect();
            if let [name, result, seconds] = fields[..] {
                totals[column] += seconds.parse::<f64>().unwrap_or(0.0);
                let cell = if result == "pass" {
                    format!("pass ({seconds} s)")
                } else {
                    format!("**{result}** ({seconds} s)")
                };
                rows.entry(name.to_owned())
                    .or_default()
                    .insert(column, cell);
            }
        }
    }
    let mut md = String::from(
        "# Kernel matrix\n\nWritten by `cargo xtask test --kernel KVER|all` (see xtask/src/kernels.rs): \
         each column is one Debian kernel booted in a VM (virtme-ng, the host's root file system \
         read-only) with one cgroup layout, running the root-only integration tests built on \
         the host. Times are each test's wall-clock time in the VM (TCG: software emulation); \
         booting a VM adds 15 to 40 s. A blank cell: not run on that kernel.\n\n",
    );
    md.push_str(&format!(
        "`cargo xtask test` (CI) runs, on every kernel with cgroup v2: {}; also on {}: {}; and \
         with the hybrid layout on {}: {}. `--whole-suite` runs every test.\n\n",
        CI_SUBSET.join(", "),
        KERNELS[0].version,
        CI_OLDEST_EXTRA.join(", "),
        KERNELS[0].version,
        CI_HYBRID_SUBSET.join(", ")
    ));
    md.push_str("| test |");
    for c in &columns {
        md.push_str(&format!(
            " {} ({}, cgroup {}) |",
            c.first().map_or("", String::as_str),
            c.get(1).map_or("", String::as_str),
            c.get(2).map_or("", String::as_str),
        ));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(columns.len()));
    md.push('\n');
    md.push_str("| *sum of the times* |");
    for total in &totals {
        md.push_str(&format!(" {total:.0} s |"));
    }
    md.push('\n');
    for (name, cells) in rows {
        md.push_str(&format!("| {name} |"));
        for column in 0..columns.len() {
            md.push_str(&format!(
                " {} |",
                cells.get(&column).map_or("", String::as_str)
            ));
        }
        md.push('\n');
    }
    std::fs::write(root.join("KERNELS.md"), md)?;
    eprintln!("    wrote KERNELS.md");
    Ok(())
}
