//! Checks the Kubernetes deployment in `deploy/` without a cluster.
//!
//! Every YAML document listed in `deploy/kustomization.yaml` (and in the
//! uninstall overlay, `deploy/uninstall/`) is deserialised into the
//! k8s-openapi type its `kind` names, and must survive a round trip through
//! that type unchanged: a misspelt or misplaced field, which the API server
//! would drop or reject, fails here. Then the facts the agent depends on are
//! asserted: host namespaces, downward-API environment, probes on the admin
//! port, capabilities, mounts, read-only RBAC on exactly what the agent
//! watches, and a config whose `kube` and `admin` sections agree with the
//! DaemonSet. The config is also parsed by the agent's own
//! `Config::parse`, so a field the agent would refuse at start (a typo, a
//! bad value) fails here rather than in a crash-looping DaemonSet.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    Resource,
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount, Volume},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_yaml::Value;

/// The agent's namespace.
const NAMESPACE: &str = "laneway-system";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The objects of one kustomization, by kind.
#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

/// The `resources:` of `dir/kustomization.yaml`, as paths (files only).
fn kustomization_resources(dir: &Path) -> Vec<PathBuf> {
    let file = dir.join("kustomization.yaml");
    let doc: Value = serde_yaml::from_str(&read(&file))
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
    let resources = doc
        .get("resources")
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("{}: no `resources:` list", file.display()));
    assert!(
        !resources.is_empty(),
        "{}: empty `resources:`",
        file.display()
    );
    resources
        .iter()
        .map(|r| {
            let name = r
                .as_str()
                .unwrap_or_else(|| panic!("{}: resource {r:?} is not a string", file.display()));
            let path = dir.join(name);
            assert!(
                path.is_file(),
                "{}: resource {name} is not a file in {}",
                file.display(),
                dir.display()
            );
            path
        })
        .collect()
}

/// Every document of every resource of the kustomization in `dir`, typed.
fn load(dir: &Path) -> Objects {
    let mut objects = Objects::default();
    for path in kustomization_resources(dir) {
        let text = read(&path);
        let mut documents = 0;
        for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let origin = format!("{} (document {index})", path.display());
            let doc =
                Value::deserialize(document).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"));
            if doc.is_null() {
                continue;
            }
            documents += 1;
            let kind = doc
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{origin}: no `kind`"));
            match kind {
                "Namespace" => objects.namespaces.push(typed(&doc, &origin)),
                "ServiceAccount" => objects.service_accounts.push(typed(&doc, &origin)),
                "ClusterRole" => objects.cluster_roles.push(typed(&doc, &origin)),
                "ClusterRoleBinding" => objects.cluster_role_bindings.push(typed(&doc, &origin)),
                "ConfigMap" => objects.config_maps.push(typed(&doc, &origin)),
                "DaemonSet" => objects.daemon_sets.push(typed(&doc, &origin)),
                other => panic!("{origin}: unexpected kind {other:?}"),
            }
        }
        assert!(documents > 0, "{}: no YAML document", path.display());
    }
    objects
}

/// `doc` as a `T`: the apiVersion must be `T`'s, and serialising the typed
/// value must give back every field of the document (k8s-openapi silently
/// ignores fields it does not know).
fn typed<T: Resource + DeserializeOwned + Serialize>(doc: &Value, origin: &str) -> T {
    let api_version = doc.get("apiVersion").and_then(Value::as_str);
    assert_eq!(
        api_version,
        Some(T::API_VERSION),
        "{origin}: apiVersion of a {}",
        T::KIND
    );
    let object: T = serde_yaml::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: not a valid {}: {e}", T::KIND));
    let back = serde_yaml::to_value(&object).expect("k8s-openapi types serialise");
    let mut lost = Vec::new();
    lost_fields(doc, &back, String::new(), &mut lost);
    assert!(
        lost.is_empty(),
        "{origin}: fields a {} does not have (misspelt or misplaced?): {lost:#?}",
        T::KIND
    );
    object
}

/// Paths of `original` that `round_tripped` lacks or changed.
fn lost_fields(original: &Value, round_tripped: &Value, path: String, lost: &mut Vec<String>) {
    match (original, round_tripped) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            for (key, value) in a {
                let key_text = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_owned);
                let sub = if path.is_empty() {
                    key_text
                } else {
                    format!("{path}.{key_text}")
                };
                match b.get(key) {
                    Some(other) => lost_fields(value, other, sub, lost),
                    None => lost.push(sub),
                }
            }
        }
        (Value::Sequence(a), Value::Sequence(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                lost_fields(x, y, format!("{path}[{i}]"), lost);
            }
        }
        (a, b) if a == b => {}
        (a, b) => lost.push(format!("{path}: {a:?} became {b:?}")),
    }
}

fn only<'a, T>(items: &'a [T], what: &str) -> &'a T {
    assert_eq!(items.len(), 1, "expected exactly one {what}");
    &items[0]
}

fn base() -> Objects {
    load(&deploy_dir())
}

fn agent_daemon_set(objects: &Objects) -> &DaemonSet {
    only(&objects.daemon_sets, "DaemonSet")
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .template
        .spec
        .as_ref()
        .expect("the DaemonSet has a pod template spec")
}

fn agent_container(ds: &DaemonSet) -> &Container {
    only(&pod_spec(ds).containers, "container in the agent's pod")
}

fn volume<'a>(spec: &'a PodSpec, name: &str) -> &'a Volume {
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name:?}"))
}

/// The mount at `mount_path`: its hostPath source, type and read-only flag.
fn host_mount(spec: &PodSpec, container: &Container, mount_path: &str) -> (String, String, bool) {
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == mount_path)
        .unwrap_or_else(|| panic!("nothing is mounted at {mount_path}"));
    assert_ne!(
        mount.mount_propagation.as_deref(),
        Some("Bidirectional"),
        "{mount_path}: Bidirectional propagation needs a privileged container"
    );
    let host_path = volume(spec, &mount.name)
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("{mount_path}: volume {} is not a hostPath", mount.name));
    (
        host_path.path.clone(),
        host_path.type_.clone().unwrap_or_default(),
        mount.read_only == Some(true),
    )
}

fn env_field_ref<'a>(container: &'a Container, name: &str) -> &'a str {
    let var = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no env {name}"));
    var.value_from
        .as_ref()
        .and_then(|f| f.field_ref.as_ref())
        .map(|f| f.field_path.as_str())
        .unwrap_or_else(|| panic!("env {name} is not from the downward API (fieldRef)"))
}

fn container_port(container: &Container, name: &str) -> i32 {
    let port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no container port named {name:?}"));
    assert_eq!(
        port.host_port, None,
        "port {name}: a hostPort would keep the surge agent off the node (the scheduler \
         refuses a node whose host port is taken), and the old and new agents share \
         these ports on purpose (SO_REUSEPORT)"
    );
    port.container_port
}

/// The agent's config file (`laneway.yaml` of the ConfigMap).
fn agent_config_text(objects: &Objects) -> &str {
    let cm = only(&objects.config_maps, "ConfigMap");
    cm.data
        .as_ref()
        .and_then(|d| d.get("laneway.yaml"))
        .expect("the ConfigMap has a `laneway.yaml` key")
}

/// The agent's config, as YAML.
fn agent_config(objects: &Objects) -> Value {
    serde_yaml::from_str(agent_config_text(objects))
        .unwrap_or_else(|e| panic!("laneway.yaml is not YAML: {e}"))
}

fn port_of(addr: &str) -> i32 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} is not HOST:PORT"))
}

#[test]
fn every_object_of_the_base_parses_into_its_kind() {
    let objects = base();
    let ns = only(&objects.namespaces, "Namespace");
    assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged"),
        "the agent's pods use host namespaces: the namespace must allow them"
    );
    let namespaced = [
        (
            "ServiceAccount",
            &only(&objects.service_accounts, "ServiceAccount").metadata,
        ),
        (
            "ConfigMap",
            &only(&objects.config_maps, "ConfigMap").metadata,
        ),
        ("DaemonSet", &agent_daemon_set(&objects).metadata),
    ];
    for (kind, meta) in namespaced {
        assert_eq!(
            meta.namespace.as_deref(),
            Some(NAMESPACE),
            "{kind}'s namespace"
        );
    }
    only(&objects.cluster_roles, "ClusterRole");
    only(&objects.cluster_role_bindings, "ClusterRoleBinding");
}

#[test]
fn every_yaml_file_in_deploy_is_a_resource_of_the_base() {
    let dir = deploy_dir();
    let listed: BTreeSet<PathBuf> = kustomization_resources(&dir).into_iter().collect();
    let mut forgotten = Vec::new();
    for entry in fs::read_dir(&dir).expect("deploy/ is readable") {
        let path = entry.expect("deploy/ entry").path();
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        let is_kustomization = path.file_name().is_some_and(|n| n == "kustomization.yaml");
        if yaml && !is_kustomization && !listed.contains(&dir.join(path.file_name().unwrap())) {
            forgotten.push(path);
        }
    }
    assert!(
        forgotten.is_empty(),
        "not in kustomization.yaml: {forgotten:?}"
    );
}

#[test]
fn image_override_in_kustomization_names_the_daemonset_image() {
    let dir = deploy_dir();
    let kustomization: Value = serde_yaml::from_str(&read(&dir.join("kustomization.yaml")))
        .expect("kustomization.yaml is YAML");
    let names: Vec<&str> = kustomization
        .get("images")
        .and_then(Value::as_sequence)
        .expect("kustomization.yaml has `images:`")
        .iter()
        .filter_map(|i| i.get("name").and_then(Value::as_str))
        .collect();
    let objects = base();
    let image = agent_container(agent_daemon_set(&objects))
        .image
        .clone()
        .expect("the agent has an image");
    let (repository, tag) = image.rsplit_once(':').expect("the image has a tag");
    assert_eq!(repository, "ghcr.io/laneway/laneway");
    assert!(
        !tag.is_empty() && tag != "latest",
        "pin the image tag: {image}"
    );
    assert!(
        names.contains(&repository),
        "kustomize `images:` ({names:?}) must name {repository}, or overrides miss it"
    );
}

#[test]
fn daemonset_runs_the_agent_on_every_node_in_host_namespaces() {
    let objects = base();
    let ds = agent_daemon_set(&objects);
    let spec = pod_spec(ds);
    assert_eq!(spec.host_network, Some(true), "hostNetwork");
    assert_eq!(spec.host_pid, Some(true), "hostPID");
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        spec.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
        }),
        "a toleration of every taint (operator Exists, no key, no effect)"
    );
    let grace = spec.termination_grace_period_seconds;
    assert!(
        grace.is_some_and(|g| g >= 30),
        "terminationGracePeriodSeconds {grace:?} leaves no time to drain"
    );
    let strategy = ds.spec.update_strategy.as_ref().expect("an updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(
        rolling.max_unavailable,
        Some(IntOrString::Int(0)),
        "no node is ever without a live agent during a rollout"
    );
    assert_eq!(
        rolling.max_surge,
        Some(IntOrString::Int(1)),
        "the new agent starts beside the old one and takes the node over"
    );
    let selector = ds
        .spec
        .selector
        .match_labels
        .clone()
        .expect("a matchLabels selector");
    let template_labels = ds
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (key, value) in &selector {
        assert_eq!(
            template_labels.get(key),
            Some(value),
            "selector label {key}"
        );
    }
    assert_eq!(
        selector.get("app.kubernetes.io/name").map(String::as_str),
        Some("laneway")
    );
}

#[test]
fn agent_container_command_env_probes_and_resources() {
    let objects = base();
    let ds = agent_daemon_set(&objects);
    let spec = pod_spec(ds);
    let agent = agent_container(ds);
    let args = agent.args.clone().unwrap_or_default();
    assert_eq!(
        args,
        ["agent", "--kube", "--config", "/etc/laneway/laneway.yaml"],
        "the agent's command line"
    );
    assert!(agent.command.is_none(), "keep the image's entrypoint");
    let config_mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/etc/laneway")
        .expect("the config directory is mounted at /etc/laneway");
    assert!(
        config_mount.sub_path.is_none(),
        "a subPath mount never sees ConfigMap updates"
    );
    let config_volume = volume(spec, &config_mount.name);
    let cm = only(&objects.config_maps, "ConfigMap");
    assert_eq!(
        config_volume.config_map.as_ref().map(|c| c.name.as_str()),
        cm.metadata.name.as_deref(),
        "the config volume is the ConfigMap"
    );

    assert_eq!(env_field_ref(agent, "NODE_NAME"), "spec.nodeName");
    assert_eq!(
        env_field_ref(agent, "LANEWAY_GENERATION"),
        "metadata.labels['pod-template-generation']",
        "an old pod's restarted agent must know it is older"
    );
    let after = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "LANEWAY_AFTER_HANDOVER")
        .and_then(|e| e.value.as_deref());
    assert_eq!(
        after,
        Some("wait"),
        "a taken-over agent that exited would be restarted by the kubelet"
    );
    assert_eq!(
        env_field_ref(agent, "LANEWAY_REDIRECT_IPV4"),
        "status.hostIP"
    );

    let admin = container_port(agent, "admin");
    for (probe, path) in [
        (agent.readiness_probe.as_ref(), "/readyz"),
        (agent.liveness_probe.as_ref(), "/healthz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an httpGet probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.host.as_deref(),
            Some("127.0.0.1"),
            "{path}: the admin listener is on loopback"
        );
        let port = match &get.port {
            IntOrString::Int(p) => *p,
            IntOrString::String(name) => container_port(agent, name),
        };
        assert_eq!(port, admin, "{path} probes the admin port");
    }

    let resources = agent.resources.as_ref().expect("resources");
    for (what, list) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        let list = list.clone().unwrap_or_default();
        for key in ["cpu", "memory"] {
            assert!(list.contains_key(key), "resources.{what}.{key}");
        }
    }
}

#[test]
fn agent_has_the_capabilities_it_needs_and_no_more() {
    let objects = base();
    let agent = agent_container(agent_daemon_set(&objects));
    let security = agent.security_context.as_ref().expect("a securityContext");
    assert_ne!(
        security.privileged,
        Some(true),
        "capabilities, not privileged"
    );
    assert_eq!(
        security.run_as_user,
        Some(0),
        "added capabilities need uid 0"
    );
    let caps = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.clone().unwrap_or_default(), ["ALL"]);
    let added: BTreeSet<String> = caps.add.iter().flatten().cloned().collect();
    let expected: BTreeSet<String> = [
        "BPF",
        "PERFMON",
        "NET_ADMIN",
        "SYS_ADMIN",
        "SYS_PTRACE",
        "SYS_RESOURCE",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(added, expected, "capabilities added");
}

#[test]
fn agent_mounts_bpffs_cgroup_proc_and_its_run_directory() {
    let objects = base();
    let ds = agent_daemon_set(&objects);
    let (spec, agent) = (pod_spec(ds), agent_container(ds));
    let expected = [
        // (mount path, host path, hostPath type, read-only)
        ("/sys/fs/bpf", "/sys/fs/bpf", "Directory", false),
        ("/sys/fs/cgroup", "/sys/fs/cgroup", "Directory", true),
        ("/host/proc", "/proc", "Directory", true),
        ("/run/laneway", "/run/laneway", "DirectoryOrCreate", false),
    ];
    for (mount_path, host, kind, read_only) in expected {
        let got = host_mount(spec, agent, mount_path);
        assert_eq!(
            got,
            (host.to_owned(), kind.to_owned(), read_only),
            "{mount_path}: (host path, type, read-only)"
        );
    }
    let config = agent_config(&objects);
    assert_eq!(
        config
            .get("kube")
            .and_then(|k| k.get("proc_root"))
            .and_then(Value::as_str),
        Some("/host/proc"),
        "kube.proc_root is where the host's /proc is mounted"
    );
}

#[test]
fn cluster_role_reads_exactly_what_the_agent_watches() {
    let objects = base();
    let role = only(&objects.cluster_roles, "ClusterRole");
    assert!(role.aggregation_rule.is_none(), "no aggregated rules");
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.non_resource_urls.is_none(), "no non-resource URLs");
        assert!(rule.resource_names.is_none(), "no per-name rules");
        let verbs: BTreeSet<String> = rule.verbs.iter().cloned().collect();
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                granted
                    .entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(verbs.iter().cloned());
            }
        }
    }
    let read: BTreeSet<String> = ["get", "list", "watch"].map(String::from).into();
    let expected: BTreeMap<(String, String), BTreeSet<String>> = [
        ("", "namespaces"),
        ("", "pods"),
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
    ]
    .into_iter()
    .map(|(g, r)| ((g.to_owned(), r.to_owned()), read.clone()))
    .collect();
    assert_eq!(granted, expected, "(group, resource) -> verbs");

    let binding = only(&objects.cluster_role_bindings, "ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let sa = only(&objects.service_accounts, "ServiceAccount");
    let subjects = binding.subjects.clone().unwrap_or_default();
    let subject = only(&subjects, "subject of the ClusterRoleBinding");
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
    assert_eq!(
        pod_spec(agent_daemon_set(&objects))
            .service_account_name
            .as_ref(),
        sa.metadata.name.as_ref(),
        "the agent runs as the bound ServiceAccount"
    );
}

#[test]
fn config_map_holds_a_kube_mode_config_that_matches_the_daemonset() {
    let objects = base();
    let config = agent_config(&objects);
    let sections = config.as_mapping().expect("laneway.yaml is a mapping");
    let known = ["router", "tags", "bpf", "kube", "admin"];
    for (key, value) in sections {
        let key = key.as_str().expect("section names are strings");
        assert!(
            known.contains(&key),
            "unexpected section {key:?} in kube mode"
        );
        assert!(
            value.is_mapping(),
            "section {key} is empty or not a mapping"
        );
    }
    let kube = config.get("kube").expect("a `kube` section");
    assert_eq!(
        kube.get("namespace_label").and_then(Value::as_str),
        Some("laneway.io/enabled")
    );
    let admin_listen = config
        .get("admin")
        .and_then(|a| a.get("listen"))
        .and_then(Value::as_str)
        .expect("admin.listen");
    assert!(
        admin_listen.starts_with("127.0.0.1:"),
        "the probes reach the admin endpoint on 127.0.0.1, not {admin_listen}"
    );
    let ds = agent_daemon_set(&objects);
    let agent = agent_container(ds);
    assert_eq!(port_of(admin_listen), container_port(agent, "admin"));
    let router_listen = config
        .get("router")
        .and_then(|r| r.get("listen"))
        .and_then(Value::as_str)
        .expect("router.listen");
    assert_eq!(port_of(router_listen), container_port(agent, "router"));
    assert!(
        config
            .get("router")
            .and_then(|r| r.get("redirect_ipv4"))
            .is_none(),
        "router.redirect_ipv4 comes from LANEWAY_REDIRECT_IPV4 (the node's address)"
    );
}

#[test]
fn config_map_config_is_accepted_by_the_agent() {
    let objects = base();
    let config = laneway::config::Config::parse(agent_config_text(&objects))
        .unwrap_or_else(|e| panic!("the agent refuses deploy/configmap.yaml's laneway.yaml: {e}"));
    assert!(
        config.services.is_empty() && config.pods.is_empty(),
        "`agent --kube` refuses a file with services or pods"
    );
    assert_eq!(
        config.kube.proc_root,
        Path::new("/host/proc"),
        "parsed as written"
    );
}

#[test]
fn dockerfile_builds_with_rust_1_95_and_xtask() {
    let path = deploy_dir().join("Dockerfile");
    let text = read(&path);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let from: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert!(
        from.first().is_some_and(|f| f.starts_with("rust:1.95")),
        "the builder stage is rust:1.95 (FROM lines: {from:?})"
    );
    assert!(
        from.len() >= 2,
        "a multi-stage build (FROM lines: {from:?})"
    );
    assert!(
        lines.iter().any(|l| l.contains("cargo xtask build")),
        "the binary is built with `cargo xtask build`"
    );
    assert!(
        lines.contains(&r#"ENTRYPOINT ["/usr/local/bin/laneway"]"#),
        "ENTRYPOINT is the laneway binary"
    );
}

#[test]
fn uninstall_overlay_removes_pinned_maps_on_every_node_and_checks() {
    let objects = load(&deploy_dir().join("uninstall"));
    let ds = only(&objects.daemon_sets, "cleanup DaemonSet");
    let spec = pod_spec(ds);
    let cleanup = only(&spec.containers, "cleanup container");
    assert!(
        spec.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "the cleanup runs on every node"
    );
    assert_eq!(
        spec.host_pid,
        Some(true),
        "it waits for the agent to be gone"
    );
    let (host, _, read_only) = host_mount(spec, cleanup, "/sys/fs/bpf");
    assert_eq!((host.as_str(), read_only), ("/sys/fs/bpf", false));
    let script = cleanup.args.clone().unwrap_or_default().join("\n");
    assert!(
        script.lines().any(
            |l| l.contains("laneway uninstall --pin-path /sys/fs/bpf/laneway")
                && l.contains("rm -rf /sys/fs/bpf/laneway")
        ),
        "the cleanup removes /sys/fs/bpf/laneway: {script}"
    );
    assert!(script.contains("bpftool cgroup tree"), "{script}");
    for program in [
        "connect4",
        "connect6",
        "sock_ops",
        "getsockopt",
        "getpeername4",
        "getpeername6",
    ] {
        assert!(script.contains(program), "the check looks for {program}");
    }
    let ns = only(&objects.namespaces, "Namespace");
    assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
    assert_eq!(ds.metadata.namespace.as_deref(), Some(NAMESPACE));
}
