//! laneway's tasks: `cargo xtask setup | build | test | demo | bench`.
//!
//! Every task does its own setup first (idempotent): Debian packages the
//! tests and demo use, `rust-src` for the nightly toolchain, and bpf-linker
//! built against nightly's own LLVM into `target/tools`.

mod kernels;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// laneway's build, setup, test and demo tasks.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (apt packages, rust-src,
    /// bpf-linker); safe to run again.
    Setup,
    /// Build the kernel programs and the `laneway` binary (release).
    Build,
    /// fmt and clippy checks, unit tests, and the root-only integration tests
    /// on a node made of network namespaces.
    ///
    /// Without a filter, also the kernel matrix's CI subset on every kernel
    /// of the matrix (see KERNELS.md).
    Test {
        /// Only run integration tests whose name contains this.
        filter: Option<String>,
        /// Only the integration tests, in a VM booting Debian's kernel
        /// KVER (5.10, 6.1, 6.12) or `all` of them; writes KERNELS.md.
        #[arg(long, value_name = "KVER")]
        kernel: Option<String>,
        /// With --kernel: every integration test, not CI's subset.
        #[arg(long, requires = "kernel")]
        whole_suite: bool,
        /// With --kernel: these cgroup layouts (default: v2, and hybrid
        /// too on the oldest kernel, there with CI's smaller hybrid subset).
        #[arg(long, requires = "kernel", value_delimiter = ',')]
        layout: Vec<kernels::Layout>,
    },
    /// Inside a kernel-matrix VM: prepare it and run the plan in OUT.
    #[command(hide = true)]
    KernelGuest {
        #[arg(long)]
        layout: kernels::Layout,
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Build a demo node, run the agent, send tagged and untagged requests,
    /// print where each went and the lane map; exit 0 only if every answer
    /// is right.
    Demo {
        /// Keep the demo node up afterwards, with some traffic, and serve
        /// the lane map at http://127.0.0.1:15080/ui until Enter is pressed.
        #[arg(long)]
        hold: bool,
    },
    /// Benchmark laneway against the direct path, its router behind iptables
    /// REDIRECT, HAProxy and nginx (release builds; about 15 minutes); writes
    /// target/bench/ and BENCHMARKS.md. `--smoke`: a one-minute check that
    /// the harness works (debug builds; numbers not kept).
    Bench {
        /// The short check CI runs.
        #[arg(long)]
        smoke: bool,
        /// Passed to the harness (`cargo xtask bench -- --help` lists them).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// Debian packages: the binary each provides, and the package.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("ip6tables", "iptables"),
    ("bpftool", "bpftool"),
    ("curl", "curl"),
    ("socat", "socat"),
    // The benchmark's baselines (and its backends).
    ("haproxy", "haproxy"),
    ("nginx", "nginx-light"),
    // The benchmark's HTTP/2 and gRPC load generator.
    ("h2load", "nghttp2-client"),
    // The lane map's test: a real browser, headless.
    ("chromium", "chromium"),
];

fn main() -> Result<()> {
    STARTED.get_or_init(Instant::now);
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup(&root),
        Task::Build => {
            setup(&root)?;
            cargo(&root, &["build", "--release", "-p", "laneway"])
        }
        Task::Test {
            filter,
            kernel: Some(kernel),
            whole_suite,
            layout,
        } => {
            setup(&root)?;
            require_root("the kernel matrix")?;
            cargo(&root, &["build", "-p", "laneway", "-p", "laneway-tests"])?;
            let selected = kernels::select(&kernel)?;
            let tests = match (&filter, whole_suite) {
                (Some(f), _) => kernels::Tests::Matching(f.clone()),
                (None, true) => kernels::Tests::All,
                (None, false) => kernels::Tests::Ci,
            };
            let runs = kernels::runs(&selected, &layout, &tests);
            let passed = kernels::matrix(&root, &runs)?;
            println!("summary: {passed} passed, 0 failed");
            Ok(())
        }
        Task::Test { filter, .. } => {
            setup(&root)?;
            test(&root, filter.as_deref())
        }
        Task::KernelGuest { layout, root, out } => kernels::guest::main(layout, &root, &out),
        Task::Demo { hold } => {
            setup(&root)?;
            require_root("the demo")?;
            cargo(
                &root,
                &["build", "--release", "-p", "laneway", "-p", "laneway-tests"],
            )?;
            let status = Command::new(root.join("target/release/laneway-demo"))
                .args(hold.then_some("--hold"))
                .env("LANEWAY_BIN", root.join("target/release/laneway"))
                .status()
                .context("run laneway-demo")?;
            if !status.success() {
                bail!("the demo failed ({status})");
            }
            Ok(())
        }
        Task::Bench { smoke, args } => {
            setup(&root)?;
            bench(&root, smoke, &args)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ is in the workspace root")
        .to_owned()
}

fn require_root(what: &str) -> Result<()> {
    let out = Command::new("id").arg("-u").output().context("run id -u")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("{what} needs root: it loads BPF programs and creates network namespaces");
    }
    Ok(())
}

/// Announces a step, with the minutes and seconds since xtask started (a
/// slow CI run shows where its time went).
fn step(what: &str) {
    let elapsed = STARTED.get_or_init(Instant::now).elapsed().as_secs();
    eprintln!("==> [+{}m{:02}s] {what}", elapsed / 60, elapsed % 60);
}

/// When xtask started (set first thing in `main`).
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// `cargo ARGS` in the workspace, with bpf-linker on PATH.
fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    step(&format!("cargo {}", args.join(" ")));
    run(Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root)
        .env("PATH", tools_path(root)))
}

fn tools_path(root: &Path) -> String {
    format!(
        "{}:{}",
        root.join("target/tools/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The fuzz targets (`fuzz/`, cargo fuzz with nightly), each for a bounded
/// time (`LANEWAY_FUZZ_SECS`, default 20) from the committed seed corpus.
fn fuzz(root: &Path) -> Result<()> {
    if !root.join("target/tools/bin/cargo-fuzz").exists() {
        step("cargo install cargo-fuzz");
        run(Command::new(env!("CARGO"))
            .args(["install", "cargo-fuzz", "--locked", "--root"])
            .arg(root.join("target/tools")))?;
    }
    let secs = std::env::var("LANEWAY_FUZZ_SECS").unwrap_or_else(|_| "20".into());
    let dir = root.join("fuzz");
    for target in ["request_head", "chunked", "tags", "config"] {
        step(&format!("cargo fuzz run {target} ({secs} s)"));
        // New inputs go to target/, the committed seeds stay as they are.
        let corpus = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        run(nightly_cargo(root, &dir)
            .args(["fuzz", "run", "-O", target])
            .arg(&corpus)
            .arg(dir.join("corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={secs}")))?;
    }
    Ok(())
}

/// `cargo` of the nightly toolchain in `dir` (the kernel programs' crate),
/// free of the outer stable cargo's environment.
fn nightly_cargo(root: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"])
        .current_dir(dir)
        .env("PATH", tools_path(root));
    for key in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(key);
    }
    cmd
}

fn have(binary: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {binary} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn setup(root: &Path) -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(bin, _)| !have(bin) && !Path::new(&format!("/usr/sbin/{bin}")).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        step(&format!("apt-get install {}", missing.join(" ")));
        require_root("installing packages")?;
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !is_bpffs("/sys/fs/bpf") {
        // Only for pinning maps at run time; a build (e.g. in a container
        // image build) goes on without it.
        step("mount bpffs at /sys/fs/bpf");
        std::fs::create_dir_all("/sys/fs/bpf").ok();
        if let Err(e) = run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"])) {
            eprintln!(
                "    warning: cannot mount bpffs ({e}); building goes on, pinning maps will not work"
            );
        }
    }
    let sysroot = nightly_sysroot()?;
    if !sysroot.join("lib/rustlib/src/rust/library").exists() {
        step("rustup component add rust-src --toolchain nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker = root.join("target/tools/bin/bpf-linker");
    if !linker.exists() {
        install_bpf_linker(root, &sysroot)?;
    }
    Ok(())
}

fn is_bpffs(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            l.split_whitespace().nth(1) == Some(path) && l.split_whitespace().nth(2) == Some("bpf")
        })
    })
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("rustc +nightly: the nightly toolchain is needed for the kernel programs")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// bpf-linker must use the LLVM nightly's rustc uses: link nightly's own
/// libLLVM where bpf-linker's build looks for it, then build it from crates.io.
fn install_bpf_linker(root: &Path, sysroot: &Path) -> Result<()> {
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .trim_start_matches("libLLVM-")
        .split(['.', '-'])
        .next()
        .unwrap_or_default()
        .to_owned();
    // Kept under target/: the linker keeps an rpath to it.
    let prefix = root.join("target/tools/llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(lib.join(&llvm), &link)?;
    step(&format!(
        "cargo install bpf-linker (LLVM {major}, from {llvm})"
    ));
    run(Command::new(env!("CARGO"))
        .args([
            "install",
            "bpf-linker",
            "--version",
            "^0.13",
            "--locked",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .arg("--root")
        .arg(root.join("target/tools"))
        .env("LLVM_PREFIX", &prefix))
}

/// Test counts summed over every `cargo test` run of a task.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// Runs `cmd` (a `cargo test`), echoing its output as it comes and
    /// adding up its `test result:` lines.
    fn run(&mut self, cmd: &mut Command) -> Result<()> {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        let stdout = child.stdout.take().context("test output")?;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let number = |word: &str| {
                    rest.split(';')
                        .find_map(|part| part.trim().strip_suffix(word))
                        .and_then(|n| n.trim().rsplit(' ').next())
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                self.passed += number("passed");
                self.failed += number("failed");
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("{cmd:?} failed ({status})");
        }
        Ok(())
    }
}

fn test(root: &Path, filter: Option<&str>) -> Result<()> {
    require_root("the integration tests")?;
    let mut tally = Tally::default();
    let ebpf = root.join("ebpf/laneway-ebpf");
    if filter.is_none() {
        cargo(root, &["fmt", "--all", "--check"])?;
        step("cargo fmt --check (kernel programs)");
        run(nightly_cargo(root, &ebpf).args(["fmt", "--check"]))?;
        cargo(
            root,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        )?;
        step("clippy (kernel programs, nightly, bpfel-unknown-none)");
        run(nightly_cargo(root, &ebpf)
            .args(["clippy", "--release", "--", "-D", "warnings"])
            .env("CARGO_TARGET_DIR", root.join("target/ebpf-clippy")))?;
        step("cargo test (unit tests, no root needed)");
        tally.run(
            Command::new(env!("CARGO"))
                .arg("test")
                .current_dir(root)
                .env("PATH", tools_path(root)),
        )?;
        fuzz(root)?;
        step("kubectl kustomize deploy/ and deploy/uninstall/ (the manifests render)");
        if !have("kubectl") {
            bail!(
                "kubectl is needed to render deploy/ (it ships on these machines at /usr/bin/kubectl)"
            );
        }
        // The install base and the uninstall overlay a platform engineer applies.
        for dir in ["deploy/", "deploy/uninstall/"] {
            let out = Command::new("kubectl")
                .args(["kustomize", dir])
                .current_dir(root)
                .output()
                .context("run kubectl kustomize")?;
            if !out.status.success() {
                bail!(
                    "kubectl kustomize {dir} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let objects = String::from_utf8_lossy(&out.stdout)
                .matches("\nkind: ")
                .count()
                + 1;
            eprintln!("    {dir}: rendered {objects} objects");
        }
    }
    cargo(root, &["build", "-p", "laneway", "-p", "laneway-tests"])?;
    let mut args = vec!["test", "-p", "laneway-tests"];
    // A suite's file name (`data_path`, `user_configs`) runs that whole
    // suite: test names carry no file name, so as a name filter it would
    // match nothing.
    let suite = filter.filter(|f| root.join(format!("tests/tests/{f}.rs")).is_file());
    if let Some(suite) = suite {
        args.extend(["--test", suite]);
    }
    args.push("--");
    if let Some(f) = filter.filter(|_| suite.is_none()) {
        args.push(f);
    }
    // One at a time: each test's process joins the cgroup its agent attaches to.
    args.push("--test-threads=1");
    step("integration tests (root, real kernel)");
    tally.run(
        Command::new(env!("CARGO"))
            .args(&args)
            .current_dir(root)
            .env("PATH", tools_path(root))
            .env("LANEWAY_BIN", root.join("target/debug/laneway")),
    )?;
    if filter.is_none() {
        // The README's first command, as a user runs it (only the build
        // profile differs: the debug build is already there).
        step("the demo (cargo xtask demo's program)");
        let status = Command::new(root.join("target/debug/laneway-demo"))
            .env("LANEWAY_BIN", root.join("target/debug/laneway"))
            .env("PATH", tools_path(root))
            .status()
            .context("run laneway-demo")?;
        if !status.success() {
            bail!("the demo failed ({status})");
        }
        tally.passed += 1;
        bench(root, true, &[])?;
        tally.passed += 1;
        step("kernel matrix: CI's subset on every kernel (KERNELS.md)");
        let all = kernels::select("all")?;
        tally.passed += kernels::matrix(root, &kernels::runs(&all, &[], &kernels::Tests::Ci))?;
    }
    // One closing line for every test run above.
    println!("summary: {} passed, {} failed", tally.passed, tally.failed);
    Ok(())
}

/// `cargo xtask bench`: builds oha (the load generator, from crates.io) into
/// `target/tools`, then runs the harness (`bench/`) as root.
fn bench(root: &Path, smoke: bool, args: &[String]) -> Result<()> {
    require_root("the benchmark")?;
    let oha = root.join("target/tools/bin/oha");
    if !oha.exists() {
        step("cargo install oha (the load generator)");
        run(Command::new(env!("CARGO"))
            .args(["install", "oha", "--version", "^1.16", "--locked", "--root"])
            .arg(root.join("target/tools")))?;
    }
    // The smoke run checks the harness, not the numbers: debug builds
    // (already there after the tests) will do.
    let profile = if smoke { "debug" } else { "release" };
    let mut build = vec!["build", "-p", "laneway", "-p", "laneway-bench"];
    if !smoke {
        build.push("--release");
    }
    cargo(root, &build)?;
    step(&format!(
        "benchmark{}",
        if smoke {
            " (smoke: numbers not kept)"
        } else {
            ""
        }
    ));
    let mut cmd = Command::new(root.join("target").join(profile).join("laneway-bench"));
    cmd.current_dir(root)
        .env(
            "LANEWAY_BIN",
            root.join("target").join(profile).join("laneway"),
        )
        .env("LANEWAY_OHA", &oha)
        .env("LANEWAY_TEST_LOG", "warn")
        .args(["--out", "target/bench"]);
    if smoke {
        cmd.arg("--smoke");
        cmd.env("LANEWAY_BENCH_COMMAND", "cargo xtask bench --smoke");
    } else {
        cmd.args(["--benchmarks", "BENCHMARKS.md"]);
        cmd.env("LANEWAY_BENCH_COMMAND", "cargo xtask bench");
    }
    run(cmd.args(args))
}
