//! Inside the VM (`xtask kernel-guest`): prepare the guest as a node would
//! be (bpffs, the cgroup layout, the modules the node harness uses), then
//! run the plan's tests one at a time, each with its own timeout, appending
//! each verdict to `verdicts.tsv` in the shared directory as it comes.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use super::{Layout, TEST_TIMEOUT, Verdict};

/// The modules the node harness (veths, TC, iptables REDIRECT/TPROXY/NAT)
/// needs: loaded up front, so a missing one shows before any test.
const MODULES: &[&str] = &[
    "veth",
    "sch_ingress",
    "cls_bpf",
    "act_bpf",
    "nf_nat",
    "iptable_nat",
    "iptable_raw",
    "ip6table_nat",
    "ip6table_raw",
    "xt_REDIRECT",
    "xt_statistic",
    "xt_CT",
    "xt_mark",
    "xt_socket",
    "xt_TPROXY",
];

/// The cgroup v1 hierarchies of the hybrid layout (systemd's set).
const V1_HIERARCHIES: &[&str] = &[
    "cpu,cpuacct",
    "memory",
    "pids",
    "blkio",
    "devices",
    "freezer",
    "net_cls,net_prio",
    "perf_event",
];

/// Each test to run: `suite::name`, and the binary of its suite.
pub type Plan = Vec<(String, PathBuf)>;

/// The tests of `binaries` (`suite::name`) that `wanted` takes.
pub fn plan(binaries: &BTreeMap<String, PathBuf>, wanted: impl Fn(&str) -> bool) -> Result<Plan> {
    let mut plan = Plan::new();
    for (suite, binary) in binaries {
        let out = Command::new(binary)
            .args(["--list", "--format=terse"])
            .output()
            .with_context(|| format!("{} --list", binary.display()))?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(test) = line.strip_suffix(": test") {
                let name = format!("{suite}::{test}");
                if wanted(&name) {
                    plan.push((name, binary.clone()));
                }
            }
        }
    }
    if plan.is_empty() {
        bail!("no integration test selected");
    }
    Ok(plan)
}

/// The plan as the guest reads it: `suite::name\tbinary` lines.
pub fn render_plan(plan: &Plan) -> String {
    plan.iter()
        .map(|(name, binary)| format!("{name}\t{}\n", binary.display()))
        .collect()
}

/// The verdicts written so far (none if the file is missing).
pub fn read_verdicts(path: &Path) -> Vec<Verdict> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split('\t');
            Some(Verdict {
                name: fields.next()?.to_owned(),
                result: fields.next()?.to_owned(),
                seconds: fields.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The guest's entry point: prepare, then run `out/plan.tsv`.
pub fn main(layout: Layout, root: &Path, out: &Path) -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    std::fs::write(out.join("release"), &release)?;
    prepare(layout, root, out)?;
    let plan = std::fs::read_to_string(out.join("plan.tsv"))?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut verdicts = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("verdicts.tsv"))?;
    for line in plan.lines() {
        let Some((name, binary)) = line.split_once('\t') else {
            continue;
        };
        let test = name.split_once("::").map_or(name, |(_, t)| t);
        let log = logs.join(format!("{}.log", name.replace("::", "-")));
        let started = Instant::now();
        let result = run_test(root, Path::new(binary), test, &log)?;
        writeln!(
            verdicts,
            "{name}\t{result}\t{:.1}",
            started.elapsed().as_secs_f64()
        )?;
        verdicts.sync_all()?;
    }
    Ok(())
}

/// Mounts what a node has and the VM lacks, in `layout`; loads the modules.
/// `root` (the checkout, with the test binaries) stays visible.
fn prepare(layout: Layout, root: &Path, out: &Path) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mounted = |point: &str, kind: &str| {
        mounts.lines().any(|l| {
            let mut f = l.split_whitespace().skip(1);
            f.next() == Some(point) && f.next() == Some(kind)
        })
    };
    let mount = |kind: &str, options: Option<&str>, point: &str| -> Result<()> {
        std::fs::create_dir_all(point)?;
        let mut cmd = Command::new("mount");
        cmd.args(["-t", kind]);
        if let Some(o) = options {
            cmd.args(["-o", o]);
        }
        crate::run(cmd.args([kind, point]))
    };
    if !mounted("/sys/fs/bpf", "bpf") {
        mount("bpf", None, "/sys/fs/bpf")?;
    }
    // A checkout under /tmp (a CI clone, say) would vanish under the
    // guest's own /tmp: keep the host's /tmp at /mnt and bind the checkout
    // back to its path (with the shared `out` directory under it).
    let checkout_in_tmp = root.starts_with("/tmp");
    if checkout_in_tmp {
        crate::run(Command::new("mount").args(["--rbind", "/tmp", "/mnt"]))?;
    }
    for point in ["/tmp", "/run/netns"] {
        mount("tmpfs", None, point)?;
    }
    if checkout_in_tmp {
        let host = Path::new("/mnt").join(root.strip_prefix("/tmp")?);
        std::fs::create_dir_all(root)?;
        crate::run(Command::new("mount").arg("--rbind").arg(&host).arg(root))?;
    }
    // The tests' scratch files and `ip netns`' mounts need writable places.
    if mounted("/sys/fs/cgroup", "cgroup2") {
        crate::run(Command::new("umount").arg("/sys/fs/cgroup"))?;
    }
    match layout {
        Layout::V2 => mount("cgroup2", None, "/sys/fs/cgroup")?,
        Layout::Hybrid => {
            mount("tmpfs", None, "/sys/fs/cgroup")?;
            for controllers in V1_HIERARCHIES {
                // A controller this kernel lacks stays out, as with systemd.
                if let Err(e) = mount(
                    "cgroup",
                    Some(controllers),
                    &format!("/sys/fs/cgroup/{controllers}"),
                ) {
                    eprintln!("cgroup v1 {controllers}: {e}");
                }
            }
            mount("cgroup2", None, "/sys/fs/cgroup/unified")?;
        }
    }
    let mut missing = Vec::new();
    for module in MODULES {
        let loaded = Command::new("modprobe")
            .arg(module)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !loaded {
            missing.push(*module);
        }
    }
    // What the tests will see, for the record.
    let cgroups: String = std::fs::read_to_string("/proc/self/mounts")?
        .lines()
        .filter(|l| l.contains("cgroup"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(
        out.join("prepared"),
        format!("layout {layout:?}; modules missing: {missing:?}\n{cgroups}"),
    )?;
    Ok(())
}

/// Runs one test, killed past [`TEST_TIMEOUT`]: `pass`, `fail` or `timeout`.
fn run_test(root: &Path, binary: &Path, test: &str, log: &Path) -> Result<&'static str> {
    let status = super::run_for(
        Command::new(binary)
            .args([test, "--exact", "--test-threads=1", "--nocapture"])
            .current_dir(root.join("tests"))
            .env("PATH", crate::tools_path(root))
            .env("LANEWAY_BIN", root.join("target/debug/laneway"))
            .env("TMPDIR", "/tmp"),
        TEST_TIMEOUT,
        log,
    )?;
    let Some(status) = status else {
        return Ok("timeout");
    };
    // One test ran and passed: a name that matched nothing passes
    // vacuously, so the count is checked too.
    let ran = std::fs::read_to_string(log).is_ok_and(|t| t.contains("test result: ok. 1 passed"));
    Ok(if status.success() && ran {
        "pass"
    } else {
        "fail"
    })
}
