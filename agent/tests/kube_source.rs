//! The Kubernetes source against a server speaking the real list/watch wire
//! protocol (laneway-kube-fake), with the real kube-rs client in between:
//! what the agent would route by after each change in the cluster.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use laneway::{
    config::Config,
    kube::{Desired, run},
};
use laneway_kube_fake::{
    FakeApiServer, Outage,
    objects::{self, namespace, pod, pod_uid as uid},
};
use tokio::sync::watch;

const NODE: &str = "node-a";

fn service(ns: &str, name: &str, ip: &str, ports: &[i32]) -> Service {
    let ports: Vec<(String, i32, i32)> =
        ports.iter().map(|p| (format!("p{p}"), *p, 8080)).collect();
    let ports: Vec<(&str, i32, i32)> = ports.iter().map(|(n, p, t)| (n.as_str(), *p, *t)).collect();
    objects::service(ns, name, ip, &ports)
}

/// The slice `SVC-abc` of port p80 (8080); endpoints (pod name, ip, terminating).
fn slice(ns: &str, svc: &str, endpoints: &[(&str, &str, bool)]) -> EndpointSlice {
    objects::endpoint_slice(ns, svc, &format!("{svc}-abc"), ("p80", 8080), endpoints)
}

/// A fake /proc where each of `pods` has one process in its pod cgroup.
struct FakeProc(PathBuf);

impl FakeProc {
    fn new(tag: &str, pods: &[&str]) -> Result<Self> {
        let root = std::env::temp_dir().join(format!("laneway-kube-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        let proc = Self(root);
        for (i, name) in pods.iter().enumerate() {
            proc.add(1000 + i, name)?;
        }
        Ok(proc)
    }

    /// Process `pid` of pod `name` appears.
    fn add(&self, pid: usize, name: &str) -> Result<()> {
        let dir = self.0.join(pid.to_string());
        std::fs::create_dir_all(dir.join("ns"))?;
        std::fs::write(
            dir.join("cgroup"),
            format!("0::/kubepods/besteffort/pod{}/c{pid}\n", uid(name)),
        )?;
        std::fs::write(dir.join("ns/net"), "")?;
        Ok(())
    }
}

impl Drop for FakeProc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Source {
    rx: watch::Receiver<Option<Desired>>,
    proc: FakeProc,
}

async fn start(server: &FakeApiServer, proc: FakeProc) -> Result<Source> {
    start_with(server, proc, "").await
}

/// Like [`start`], with more agent config (YAML top-level sections).
async fn start_with(server: &FakeApiServer, proc: FakeProc, extra: &str) -> Result<Source> {
    let client = kube::Client::try_from(kube::Config::new(server.url().parse()?))?;
    let base = Config::parse(&format!(
        "kube:\n  proc_root: {}\n  debounce: 20ms\n{extra}",
        proc.0.display()
    ))
    .map_err(anyhow::Error::msg)?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(run(client, NODE.into(), base, tx));
    Ok(Source { rx, proc })
}

impl Source {
    /// Waits until what the agent would route by satisfies `check`.
    async fn until(&mut self, what: &str, check: impl Fn(&Desired) -> bool) -> Result<Desired> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(d) = self.rx.borrow_and_update().clone()
                && check(&d)
            {
                return Ok(d);
            }
            if tokio::time::timeout_at(deadline, self.rx.changed())
                .await
                .is_err()
            {
                let last = self.rx.borrow().clone();
                bail!("timed out waiting for: {what}; last state: {last:#?}");
            }
        }
    }
}

fn enrolled(d: &Desired) -> Vec<(String, Option<String>)> {
    let mut v: Vec<_> = d
        .config
        .pods
        .iter()
        .map(|p| {
            (
                format!("{}/{}", p.namespace, p.name),
                p.tag.as_ref().map(|t| t.to_string()),
            )
        })
        .collect();
    v.sort();
    v
}

fn endpoints(d: &Desired, svc: &str) -> Vec<(String, Option<String>, bool)> {
    let Some(s) = d.config.services.iter().find(|s| s.name.as_str() == svc) else {
        return Vec::new();
    };
    let mut v: Vec<_> = s
        .endpoints
        .iter()
        .map(|e| {
            (
                e.ip.to_string(),
                e.tag.as_ref().map(|t| t.to_string()),
                e.terminating,
            )
        })
        .collect();
    v.sort();
    v
}

fn base_cluster(server: &FakeApiServer) {
    server.apply(namespace("shop", true));
    server.apply(namespace("other", false));
    server.apply(pod("shop", "client", NODE, "10.244.0.10", None));
    server.apply(pod("other", "stranger", NODE, "10.244.0.11", None));
    server.apply(pod("shop", "remote-client", "node-b", "10.244.1.10", None));
    server.apply(pod("shop", "reviews-1", "node-b", "10.244.1.20", None));
    server.apply(pod(
        "shop",
        "reviews-2",
        "node-b",
        "10.244.1.21",
        Some("joint1"),
    ));
    server.apply(service("shop", "reviews", "10.96.0.10", &[80]));
    server.apply(slice(
        "shop",
        "reviews",
        &[
            ("reviews-1", "10.244.1.20", false),
            ("reviews-2", "10.244.1.21", false),
        ],
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_enrols_local_pods_of_labelled_namespaces_and_tags_endpoints() -> Result<()> {
    let server = FakeApiServer::start_local();
    base_cluster(&server);
    let mut source = start(
        &server,
        FakeProc::new("first", &["client", "stranger", "remote-client"])?,
    )
    .await?;
    let d = source.until("first sync", |_| true).await?;
    assert_eq!(
        enrolled(&d),
        vec![("shop/client".into(), None)],
        "only this node, only labelled namespaces"
    );
    assert_eq!(
        endpoints(&d, "reviews"),
        vec![
            ("10.244.1.20".into(), None, false),
            ("10.244.1.21".into(), Some("joint1".into()), false)
        ]
    );
    let reviews = d
        .config
        .services
        .iter()
        .find(|s| s.name.as_str() == "reviews")
        .context("reviews")?;
    assert_eq!(
        reviews.vips,
        vec!["10.96.0.10".parse::<std::net::IpAddr>()?]
    );
    assert_eq!(reviews.ports[0].port.0, 80);
    assert_eq!(
        reviews.endpoints[0].ports.get("p80").map(|p| p.0),
        Some(8080)
    );
    let netns = &d.config.pods[0].netns;
    assert!(
        netns.ends_with("1000/ns/net"),
        "netns found through the pod's process: {}",
        netns.display()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelling_and_unlabelling_a_namespace_enrols_and_removes_its_pods() -> Result<()> {
    let server = FakeApiServer::start_local();
    base_cluster(&server);
    let mut source = start(&server, FakeProc::new("label", &["client", "stranger"])?).await?;
    source
        .until("client enrolled", |d| enrolled(d).len() == 1)
        .await?;
    server.apply(namespace("other", true));
    source
        .until("stranger enrolled too", |d| {
            enrolled(d).iter().any(|(p, _)| p == "other/stranger")
        })
        .await?;
    server.apply(namespace("shop", false));
    let d = source
        .until("shop's pods removed", |d| enrolled(d).len() == 1)
        .await?;
    assert_eq!(enrolled(&d), vec![("other/stranger".into(), None)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_tag_changes_reach_enrolment_and_endpoints() -> Result<()> {
    let server = FakeApiServer::start_local();
    base_cluster(&server);
    let mut source = start(&server, FakeProc::new("retag", &["client"])?).await?;
    source.until("first sync", |_| true).await?;
    server.apply(pod("shop", "client", NODE, "10.244.0.10", Some("gray")));
    server.apply(pod(
        "shop",
        "reviews-2",
        "node-b",
        "10.244.1.21",
        Some("joint2"),
    ));
    let d = source
        .until("retagged", |d| {
            enrolled(d) == vec![("shop/client".to_string(), Some("gray".to_string()))]
                && endpoints(d, "reviews")
                    .iter()
                    .any(|e| e.1.as_deref() == Some("joint2"))
        })
        .await?;
    assert!(
        !endpoints(&d, "reviews")
            .iter()
            .any(|e| e.1.as_deref() == Some("joint1"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_added_terminating_and_removed() -> Result<()> {
    let server = FakeApiServer::start_local();
    base_cluster(&server);
    let mut source = start(&server, FakeProc::new("eps", &["client"])?).await?;
    source
        .until("first sync", |d| endpoints(d, "reviews").len() == 2)
        .await?;
    server.apply(pod(
        "shop",
        "reviews-3",
        "node-b",
        "10.244.1.22",
        Some("gray"),
    ));
    server.apply(slice(
        "shop",
        "reviews",
        &[
            ("reviews-1", "10.244.1.20", false),
            ("reviews-2", "10.244.1.21", false),
            ("reviews-3", "10.244.1.22", false),
        ],
    ));
    source
        .until("added", |d| {
            endpoints(d, "reviews").contains(&("10.244.1.22".into(), Some("gray".into()), false))
        })
        .await?;
    server.apply(slice(
        "shop",
        "reviews",
        &[
            ("reviews-1", "10.244.1.20", true),
            ("reviews-2", "10.244.1.21", false),
            ("reviews-3", "10.244.1.22", false),
        ],
    ));
    source
        .until("terminating", |d| {
            endpoints(d, "reviews").contains(&("10.244.1.20".into(), None, true))
        })
        .await?;
    server.apply(slice(
        "shop",
        "reviews",
        &[
            ("reviews-2", "10.244.1.21", false),
            ("reviews-3", "10.244.1.22", false),
        ],
    ));
    let d = source
        .until("removed", |d| endpoints(d, "reviews").len() == 2)
        .await?;
    assert!(
        !endpoints(&d, "reviews")
            .iter()
            .any(|e| e.0 == "10.244.1.20")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_cluster_ip_and_ports_changes_are_followed() -> Result<()> {
    let server = FakeApiServer::start_local();
    base_cluster(&server);
    let mut source = start(&server, FakeProc::new("svc", &["client"])?).await?;
    source.until("first sync", |_| true).await?;
    server.apply(service("shop", "reviews", "10.96.0.99", &[80, 9090]));
    let d = source
        .until("new VIP and ports", |d| {
            d.config.services.iter().any(|s| {
                s.name.as_str() == "reviews"
                    && s.vips == vec!["10.96.0.99".parse::<std::net::IpAddr>().unwrap()]
                    && s.ports.len() == 2
            })
        })
        .await?;
    assert_eq!(d.config.services.len(), 1);
    server.delete::<Service>(Some("shop"), "reviews");
    source
        .until("service gone", |d| d.config.services.is_empty())
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_going_away_and_coming_back_converges_to_the_final_state() -> Result<()> {
    let server = FakeApiServer::start_local();
    base_cluster(&server);
    let mut source = start(&server, FakeProc::new("outage", &["client"])?).await?;
    source.until("first sync", |_| true).await?;
    server.set_down(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The last good state is kept meanwhile.
    assert_eq!(
        enrolled(&source.rx.borrow().clone().context("state")?).len(),
        1
    );
    server.apply(pod("shop", "client", NODE, "10.244.0.10", Some("joint1")));
    server.delete::<EndpointSlice>(Some("shop"), "reviews-abc");
    server.set_down(false);
    source
        .until("converged after the outage", |d| {
            enrolled(d) == vec![("shop/client".to_string(), Some("joint1".to_string()))]
                && endpoints(d, "reviews").is_empty()
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_resource_versions_make_the_watch_relist() -> Result<()> {
    let server = FakeApiServer::start_local();
    base_cluster(&server);
    let mut source = start(&server, FakeProc::new("gone", &["client"])?).await?;
    source.until("first sync", |_| true).await?;
    let lists_before = server
        .requests()
        .iter()
        .filter(|r| r.contains("/pods") && !r.contains("watch="))
        .count();
    // Compaction must hit open watches: wait until all four are open.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.open_watches() < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.open_watches(), 4, "{:?}", server.requests());
    server.expire_watches();
    server.apply(pod("shop", "client", NODE, "10.244.0.10", Some("gray")));
    source
        .until("change after 410 seen", |d| {
            enrolled(d) == vec![("shop/client".to_string(), Some("gray".to_string()))]
        })
        .await?;
    // The 410 may reach the watch after the change did: give the re-list time.
    let relisted = || {
        server
            .requests()
            .iter()
            .filter(|r| r.contains("/pods") && !r.contains("watch="))
            .count()
            > lists_before
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !relisted() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        relisted(),
        "re-listed after 410 Gone: {:?}",
        server.requests()
    );
    // And changes after the re-list still arrive.
    server.apply(pod("shop", "client", NODE, "10.244.0.10", Some("joint1")));
    source
        .until("change after the re-list", |d| {
            enrolled(d) == vec![("shop/client".to_string(), Some("joint1".to_string()))]
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_cannot_be_enrolled_are_reported_not_skipped() -> Result<()> {
    let server = FakeApiServer::start_local();
    base_cluster(&server);
    let mut host = pod("shop", "host-net", NODE, "10.0.0.5", None);
    if let Some(spec) = host.spec.as_mut() {
        spec.host_network = Some(true);
    }
    server.apply(host);
    let mut opted_out = pod("shop", "opted-out", NODE, "10.244.0.12", None);
    opted_out
        .metadata
        .labels
        .as_mut()
        .map(|l| l.insert("laneway.io/enabled".into(), "false".into()));
    server.apply(opted_out);
    server.apply(pod("shop", "no-process", NODE, "10.244.0.13", None));
    // No process of "no-process" in this /proc.
    let mut source = start(
        &server,
        FakeProc::new("report", &["client", "host-net", "opted-out"])?,
    )
    .await?;
    let d = source.until("first sync", |_| true).await?;
    assert_eq!(
        enrolled(&d),
        vec![("shop/client".into(), None)],
        "hostNetwork and opted-out pods are not enrolled"
    );
    assert_eq!(d.unenrolled.len(), 1, "{:?}", d.unenrolled);
    assert_eq!(d.unenrolled[0].pod, "shop/no-process");
    assert!(
        d.unenrolled[0].reason.contains("no process of the pod"),
        "{}",
        d.unenrolled[0].reason
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_annotation_keeps_the_last_good_policy_and_is_reported() -> Result<()> {
    let server = FakeApiServer::start_local();
    base_cluster(&server);
    let annotated = |canary: &str| {
        let mut svc = service("shop", "reviews", "10.96.0.10", &[80]);
        svc.metadata.annotations = Some(BTreeMap::from([(
            "laneway.io/canary".to_string(),
            canary.to_string(),
        )]));
        svc
    };
    server.apply(annotated("gray=10"));
    let mut source = start(&server, FakeProc::new("policy", &["client"])?).await?;
    let canary = |d: &Desired| {
        d.config
            .services
            .iter()
            .find(|s| s.name.as_str() == "reviews")
            .and_then(|s| s.policy.as_ref())
            .and_then(|p| p.canary.as_ref())
            .map(|c| c.to_string())
    };
    let d = source.until("policy read", |d| canary(d).is_some()).await?;
    assert_eq!(canary(&d).as_deref(), Some("gray=10"));
    assert!(d.policy_errors.is_empty());

    server.apply(annotated("gray=200"));
    let d = source
        .until("bad annotation reported", |d| !d.policy_errors.is_empty())
        .await?;
    assert_eq!(
        canary(&d).as_deref(),
        Some("gray=10"),
        "last good policy kept"
    );
    let (svc, error) = &d.policy_errors[0];
    assert_eq!(svc, "shop/reviews");
    assert!(
        error.contains("laneway.io/canary") && error.contains("0-100"),
        "{error}"
    );

    server.apply(annotated("gray=25"));
    let d = source
        .until("fixed", |d| {
            d.policy_errors.is_empty() && canary(d).as_deref() == Some("gray=25")
        })
        .await?;
    assert!(d.policy_errors.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_pods_are_neither_enrolled_nor_reported() -> Result<()> {
    let server = FakeApiServer::start_local();
    base_cluster(&server);
    // Finished Job pods keep their node, IP and labels but have no process left.
    for (name, ip, phase) in [
        ("job-done", "10.244.0.20", "Succeeded"),
        ("job-failed", "10.244.0.21", "Failed"),
    ] {
        let mut p = pod("shop", name, NODE, ip, None);
        if let Some(status) = p.status.as_mut() {
            status.phase = Some(phase.into());
        }
        server.apply(p);
    }
    let mut source = start(&server, FakeProc::new("completed", &["client"])?).await?;
    let d = source.until("first sync", |_| true).await?;
    assert_eq!(enrolled(&d), vec![("shop/client".into(), None)]);
    assert!(
        d.unenrolled.is_empty(),
        "completed pods are not looked for: {:?}",
        d.unenrolled
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_tag_label_drives_pod_and_endpoint_tags() -> Result<()> {
    const MSE_LABEL: &str = "alicloud.service.tag";
    let server = FakeApiServer::start_local();
    base_cluster(&server);
    let label = |name: &str, node: &str, ip: &str, tag: &str| {
        let mut p = pod("shop", name, node, ip, None);
        p.metadata
            .labels
            .get_or_insert_default()
            .insert(MSE_LABEL.into(), tag.into());
        p
    };
    server.apply(label("client", NODE, "10.244.0.10", "gray"));
    server.apply(label("reviews-1", "node-b", "10.244.1.20", "joint2"));
    // reviews-2 keeps only `laneway.io/tag: joint1`, which is not the tag label now.
    let mut source = start_with(
        &server,
        FakeProc::new("mse", &["client"])?,
        &format!("tags:\n  pod_label: {MSE_LABEL}\n"),
    )
    .await?;
    let d = source.until("first sync", |_| true).await?;
    assert_eq!(
        enrolled(&d),
        vec![("shop/client".into(), Some("gray".into()))]
    );
    assert_eq!(
        endpoints(&d, "reviews"),
        vec![
            ("10.244.1.20".into(), Some("joint2".into()), false),
            ("10.244.1.21".into(), None, false)
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_created_after_the_first_sync_is_enrolled_and_removed_when_deleted() -> Result<()> {
    let server = FakeApiServer::start_local();
    base_cluster(&server);
    let mut source = start(&server, FakeProc::new("late-pod", &["client", "newcomer"])?).await?;
    let d = source.until("first sync", |_| true).await?;
    assert_eq!(enrolled(&d), vec![("shop/client".into(), None)]);
    server.apply(pod("shop", "newcomer", NODE, "10.244.0.30", Some("joint1")));
    let d = source
        .until("newcomer enrolled", |d| enrolled(d).len() == 2)
        .await?;
    assert_eq!(
        enrolled(&d),
        vec![
            ("shop/client".into(), None),
            ("shop/newcomer".into(), Some("joint1".into()))
        ]
    );
    let newcomer = d
        .config
        .pods
        .iter()
        .find(|p| p.name.as_str() == "newcomer")
        .context("newcomer")?;
    assert!(newcomer.netns.ends_with("1001/ns/net"));
    assert_eq!(
        newcomer.ips,
        vec!["10.244.0.30".parse::<std::net::IpAddr>()?]
    );
    server.delete::<k8s_openapi::api::core::v1::Pod>(Some("shop"), "newcomer");
    let d = source
        .until("newcomer removed", |d| enrolled(d).len() == 1)
        .await?;
    assert_eq!(enrolled(&d), vec![("shop/client".into(), None)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_process_appears_late_is_enrolled_on_the_retry() -> Result<()> {
    let server = FakeApiServer::start_local();
    base_cluster(&server);
    let proc = FakeProc::new("late-process", &["client"])?;
    server.apply(pod("shop", "slow-start", NODE, "10.244.0.31", None));
    let mut source = start(&server, proc).await?;
    let d = source.until("first sync", |_| true).await?;
    assert_eq!(
        d.unenrolled
            .iter()
            .map(|u| u.pod.as_str())
            .collect::<Vec<_>>(),
        vec!["shop/slow-start"],
        "reported while its process is missing"
    );
    // Nothing changes in the API: only the periodic retry can find it.
    let requests = server.requests().len();
    source.proc.add(2000, "slow-start")?;
    let d = source
        .until("enrolled on the retry", |d| enrolled(d).len() == 2)
        .await?;
    assert!(d.unenrolled.is_empty(), "{:?}", d.unenrolled);
    assert!(
        enrolled(&d).contains(&("shop/slow-start".into(), None)),
        "{:?}",
        enrolled(&d)
    );
    assert!(
        !server.requests()[requests..]
            .iter()
            .any(|r| !r.contains("watch=")),
        "no re-list needed: {:?}",
        &server.requests()[requests..]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_back_off_and_recover_when_the_api_drops_connections() -> Result<()> {
    let server = FakeApiServer::start_local();
    base_cluster(&server);
    let mut source = start(&server, FakeProc::new("closing", &["client"])?).await?;
    source.until("first sync", |_| true).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.open_watches() < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A crashed API server: open watches end, every new request gets a
    // transport error, which kube's client does not retry: the watchers' own
    // backoff does.
    server.clear_requests();
    server.set_outage(Some(Outage::CloseConnections));
    server.apply(pod("shop", "client", NODE, "10.244.0.10", Some("joint1")));
    server.delete::<EndpointSlice>(Some("shop"), "reviews-abc");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let last = source.rx.borrow().clone().context("state")?;
    assert_eq!(
        enrolled(&last),
        vec![("shop/client".into(), None)],
        "the last good state is kept"
    );
    assert_eq!(endpoints(&last, "reviews").len(), 2);
    let attempts = server.requests().len();
    // Four watchers, each failing at once and then retrying with kube's
    // default backoff (first retry after 0.8-1.6 s, the next 1.6-3.2 s
    // later): two or three attempts each within 3 s. A loop without backoff
    // would make thousands.
    assert!(
        (8..=12).contains(&attempts),
        "{attempts} requests during the outage: {:?}",
        server.requests()
    );
    server.set_outage(None);
    source
        .until("converged after the outage", |d| {
            enrolled(d) == vec![("shop/client".to_string(), Some("joint1".to_string()))]
                && endpoints(d, "reviews").is_empty()
        })
        .await?;
    Ok(())
}
