//! `deploy/` checked offline, with no cluster and no Docker engine:
//!
//! - every kustomization of `deploy/kubernetes` renders with `kubectl kustomize`, and every
//!   object passes the Kubernetes JSON schemas, strictly (`deploy/validate.sh`:
//!   `kubernetes-validate` and a pinned kubectl from PyPI in `target/deploy-venv`);
//! - the objects agree with each other (selectors, named ports, service account, autoscaler
//!   targets, network policy), with satmesh's own config (`satmesh check-config` on the
//!   ConfigMap with the pod's environment: the disk queue's directory is a volume larger
//!   than `pipeline.disk.max_bytes`) and with `deploy/Dockerfile`.
//!
//! Not checked here: CRD objects (KEDA's ScaledObject, the Prometheus Operator's
//! PodMonitor) against their CRDs' schemas (only the fields read below), the image build,
//! and what only a live cluster decides (scheduling, DNS, the CNI enforcing the policy).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The label every satmesh object selects pods by.
const APP: (&str, &str) = ("app.kubernetes.io/name", "satmesh");
/// What a user applies: the tier alone, with one of the two autoscalers, or as a
/// StatefulSet (each peer's disk queue on a claim of its own).
const APPLIED: &[&str] = &[
    "base",
    "overlays/hpa",
    "overlays/keda",
    "overlays/statefulset",
];
/// Stand-ins for the downward API when the pod's environment is resolved.
const POD_NAME: &str = "satmesh-5d8f7c9b4-x2k9q";
const POD_IP: &str = "10.1.2.3";

fn repo(path: &str) -> PathBuf {
    Path::new(REPO).join(path)
}

/// The output of `deploy/validate.sh --json`, run once per test process.
fn validated() -> &'static Value {
    static OUT: OnceLock<Value> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo("deploy/validate.sh"))
            .arg("--json")
            .output()
            .expect("run bash deploy/validate.sh");
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{stderr}");
        // On schema errors the JSON is still printed; the schema test reports them.
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "deploy/validate.sh printed no JSON ({e}; it installs kubernetes-validate from \
                 PyPI into target/deploy-venv), status {:?}:\n{stderr}",
                out.status
            )
        })
    })
}

fn objects(root: &str) -> &'static [Value] {
    validated()["renders"][root]
        .as_array()
        .unwrap_or_else(|| panic!("deploy/kubernetes/{root} was not rendered"))
}

fn all_of(root: &str, kind: &str) -> Vec<&'static Value> {
    objects(root).iter().filter(|o| o["kind"] == kind).collect()
}

fn one_of(root: &str, kind: &str) -> &'static Value {
    let found = all_of(root, kind);
    assert_eq!(
        found.len(),
        1,
        "{root}: expected one {kind}, found {}",
        found.len()
    );
    found[0]
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {}", name(value)))
}

fn number(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {}", name(value)))
}

fn name(object: &Value) -> String {
    format!("{} {}", object["kind"], object["metadata"]["name"])
}

/// Whether every label of `selector` (a matchLabels map) is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a label map");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Port of an `ip:port` listen address.
fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("ip:port")
}

fn deployment(root: &str) -> &'static Value {
    one_of(root, "Deployment")
}

/// What runs the pods: the Deployment, or the StatefulSet that replaces it.
fn workload(root: &str) -> &'static Value {
    let found: Vec<_> = objects(root)
        .iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet")
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{root}: expected one Deployment or StatefulSet, found {}",
        found.len()
    );
    found[0]
}

fn pod_labels(root: &str) -> &'static Value {
    &workload(root)["spec"]["template"]["metadata"]["labels"]
}

fn container(root: &str) -> &'static Value {
    let containers = workload(root)["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "{root}: one container, satmesh");
    &containers[0]
}

/// The container port named `name`: (number, protocol).
fn container_port(root: &str, name: &str) -> (u64, String) {
    let port = container(root)["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{root}: no container port named {name}"));
    let protocol = port["protocol"].as_str().unwrap_or("TCP").to_owned();
    (number(port, "/containerPort"), protocol)
}

/// Bytes of a Kubernetes quantity such as `512Mi` or `1Gi`.
fn bytes(quantity: &str) -> u64 {
    let (digits, unit) = quantity.split_at(
        quantity
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(quantity.len()),
    );
    let factor = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("unexpected quantity unit {other}"),
    };
    digits.parse::<u64>().expect("quantity") * factor
}

/// Metric names defined in the metrics module, the one place they are defined.
fn metric_defined(metric: &str) -> bool {
    let source = std::fs::read_to_string(repo("src/metrics.rs")).expect("read src/metrics.rs");
    source.contains(&format!("\"{metric}\""))
}

#[test]
fn every_object_passes_the_kubernetes_schemas() {
    let out = validated();
    let errors = out["errors"].as_array().expect("errors");
    assert!(
        errors.is_empty(),
        "deploy/validate.sh found errors:\n{errors:#?}"
    );
    assert!(number(out, "/schema/validated") > 0);
    let versions = &out["schema"]["versions"];
    assert_eq!(
        versions[0], "1.30",
        "the oldest Kubernetes the manifests claim"
    );
    // Only CRD objects go without a schema check; their fields are checked below.
    for skipped in out["schema"]["skipped_crds"].as_array().expect("skipped") {
        let skipped = skipped.as_str().expect("text");
        assert!(
            skipped.contains("keda.sh/v1alpha1 ScaledObject")
                || skipped.contains("monitoring.coreos.com/v1 PodMonitor"),
            "not schema-checked, and not a known CRD: {skipped}"
        );
    }
    let renderer = text(out, "/renderer");
    assert!(
        renderer.contains("Kustomize Version: v5."),
        "rendered by {renderer}"
    );
    for root in APPLIED {
        workload(root);
    }
}

#[test]
fn services_budget_and_probes_select_the_pods_and_their_ports() {
    for root in APPLIED {
        let deploy = workload(root);
        let labels = pod_labels(root);
        assert_eq!(labels[APP.0], APP.1, "{root}: pods carry the app label");
        assert!(selects(&deploy["spec"]["selector"]["matchLabels"], labels));

        let services = all_of(root, "Service");
        assert_eq!(
            services.len(),
            2,
            "{root}: the agents' Service and the gossip Service"
        );
        for service in &services {
            assert!(
                selects(&service["spec"]["selector"], labels),
                "{root}: {} selects no pod",
                name(service)
            );
            for port in service["spec"]["ports"].as_array().expect("ports") {
                let protocol = port["protocol"].as_str().unwrap_or("TCP");
                let target = match &port["targetPort"] {
                    Value::String(named) => container_port(root, named),
                    Value::Number(n) => (n.as_u64().expect("port"), protocol.to_owned()),
                    _ => panic!("{root}: {} port without targetPort", name(service)),
                };
                assert_eq!(
                    target.1,
                    protocol,
                    "{root}: {} port {port} protocol",
                    name(service)
                );
                assert!(
                    container(root)["ports"]
                        .as_array()
                        .expect("ports")
                        .iter()
                        .any(|p| p["containerPort"] == target.0),
                    "{root}: {} targets port {} that no container opens",
                    name(service),
                    target.0
                );
            }
        }
        let headless: Vec<_> = services
            .iter()
            .filter(|s| s["spec"]["clusterIP"] == "None")
            .collect();
        assert_eq!(
            headless.len(),
            1,
            "{root}: one headless Service, the gossip seeds"
        );
        let gossip = headless[0];
        assert_eq!(
            gossip["spec"]["publishNotReadyAddresses"], true,
            "{root}: peers find each other before ready"
        );
        assert_eq!(gossip["spec"]["ports"][0]["protocol"], "UDP");
        assert_eq!(gossip["spec"]["ports"][0]["targetPort"], "gossip");
        let agents = services
            .iter()
            .find(|s| s["spec"]["clusterIP"] != "None")
            .expect("agents' Service");
        assert_eq!(
            agents["spec"]["ports"][0]["port"], 11800,
            "{root}: agents keep the OAP's port"
        );
        assert_eq!(agents["spec"]["ports"][0]["targetPort"], "grpc");

        let pdb = one_of(root, "PodDisruptionBudget");
        assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);

        let c = container(root);
        assert_eq!(text(c, "/readinessProbe/httpGet/path"), "/readyz");
        assert_eq!(text(c, "/livenessProbe/httpGet/path"), "/healthz");
        for probe in ["readinessProbe", "livenessProbe"] {
            container_port(root, text(c, &format!("/{probe}/httpGet/port")));
        }
        let annotations = &deploy["spec"]["template"]["metadata"]["annotations"];
        let scrape_port: u64 = text(annotations, "/prometheus.io~1port")
            .parse()
            .expect("port");
        assert_eq!(
            scrape_port,
            container_port(root, "admin").0,
            "{root}: scrape the admin port"
        );

        let pod = &deploy["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert!(
            pod["topologySpreadConstraints"].is_array()
                || pod["affinity"]["podAntiAffinity"].is_object()
        );
    }
}

/// The container's environment as the kubelet makes it: downward API values from stand-ins,
/// `$(VAR)` replaced by variables defined earlier in the list.
fn pod_environment(root: &str) -> Vec<(String, String)> {
    let namespace = text(workload(root), "/metadata/namespace");
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container(root)["env"].as_array().expect("env") {
        let value = match var["value"].as_str() {
            Some(value) => env.iter().fold(value.to_owned(), |v, (key, earlier)| {
                v.replace(&format!("$({key})"), earlier)
            }),
            None => match text(var, "/valueFrom/fieldRef/fieldPath") {
                "metadata.name" => POD_NAME.to_owned(),
                "metadata.namespace" => namespace.to_owned(),
                "status.podIP" => POD_IP.to_owned(),
                other => panic!("{root}: no stand-in for fieldRef {other}"),
            },
        };
        env.push((text(var, "/name").to_owned(), value));
    }
    env
}

/// `satmesh check-config` on the ConfigMap's file, in the container's environment: the
/// effective config a pod runs with (unknown keys and bad values fail here).
fn effective_config(root: &str) -> Value {
    let args: Vec<&str> = container(root)["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    let path = Path::new(
        args[args
            .iter()
            .position(|a| *a == "--config")
            .expect("--config")
            + 1],
    );
    let mount = container(root)["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| Path::new(text(m, "/mountPath")) == path.parent().expect("dir"))
        .unwrap_or_else(|| panic!("{root}: nothing mounted at {}", path.display()));
    let volume = workload(root)["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let configmap_name = text(volume, "/configMap/name");
    let configmap = all_of(root, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == configmap_name)
        .unwrap_or_else(|| {
            panic!("{root}: the volume names ConfigMap {configmap_name}, not rendered")
        });
    let file_name = path.file_name().expect("file").to_str().expect("utf-8");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(file_name);
    std::fs::write(&file, text(configmap, &format!("/data/{file_name}"))).expect("write config");

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_satmesh"));
    cmd.arg("check-config").arg(&file);
    for (key, _) in std::env::vars() {
        if key.starts_with("SATMESH__") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(pod_environment(root));
    let out = cmd.output().expect("run satmesh check-config");
    assert!(
        out.status.success(),
        "{root}: satmesh check-config rejects the ConfigMap:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("check-config prints JSON")
}

fn duration(value: &Value, pointer: &str) -> Duration {
    humantime::parse_duration(text(value, pointer)).expect("a humantime duration")
}

#[test]
fn config_map_runs_with_the_pods_ports_peers_and_grace_period() {
    for root in APPLIED {
        let config = effective_config(root);
        assert_eq!(
            port_of(text(&config, "/server/listen")),
            container_port(root, "grpc").0
        );
        assert_eq!(
            port_of(text(&config, "/admin/listen")),
            container_port(root, "admin").0
        );
        let (gossip_port, protocol) = container_port(root, "gossip");
        assert_eq!(protocol, "UDP");
        assert_eq!(
            port_of(text(&config, "/cluster/gossip_listen")),
            gossip_port
        );
        assert_eq!(text(&config, "/cluster/node_id"), POD_NAME);
        assert_eq!(
            text(&config, "/cluster/advertise"),
            format!("{POD_IP}:{gossip_port}")
        );
        let gossip = all_of(root, "Service")
            .into_iter()
            .find(|s| s["spec"]["clusterIP"] == "None")
            .expect("gossip Service");
        let seed = format!(
            "{}.{}.svc:{}",
            text(gossip, "/metadata/name"),
            text(gossip, "/metadata/namespace"),
            number(gossip, "/spec/ports/0/port")
        );
        assert_eq!(
            config["cluster"]["seeds"],
            json!([seed]),
            "{root}: peers join through the gossip Service"
        );

        // `satmesh run` refuses to start without an OAP source.
        let upstream = &config["upstream"];
        assert!(
            upstream["static"].as_array().is_some_and(|s| !s.is_empty())
                || !upstream["dns"].is_null()
                || !upstream["kubernetes"].is_null(),
            "{root}: no OAP source; satmesh run would exit"
        );
        if !upstream["kubernetes"].is_null() {
            // Unset: the pod's own namespace.
            let namespace = upstream["kubernetes"]["namespace"]
                .as_str()
                .unwrap_or_else(|| text(workload(root), "/metadata/namespace"));
            assert_can_watch_endpointslices(root, namespace);
        }

        // The kubelet kills at the grace period, counted from deletion, preStop included.
        let pod = &workload(root)["spec"]["template"]["spec"];
        let grace = Duration::from_secs(number(pod, "/terminationGracePeriodSeconds"));
        let pre_stop =
            Duration::from_secs(number(container(root), "/lifecycle/preStop/sleep/seconds"));
        let deadline = duration(&config, "/shutdown/deadline");
        assert!(
            grace >= pre_stop + deadline + Duration::from_secs(5),
            "{root}: terminationGracePeriodSeconds {grace:?} must exceed preStop {pre_stop:?} + shutdown.deadline {deadline:?} by 5 s"
        );
        assert!(duration(&config, "/shutdown/connection_grace") <= deadline);

        // Queued payload fits well inside the memory limit.
        let limit = bytes(text(container(root), "/resources/limits/memory"));
        assert!(
            number(&config, "/pipeline/queue_bytes") * 2 <= limit,
            "{root}: pipeline.queue_bytes is over half the memory limit"
        );
    }
}

/// The disk queue's directory is a volume of the pod's own, writable by the image's user,
/// and larger than `pipeline.disk.max_bytes` by what may pass that bound: the kubelet
/// evicts a pod whose emptyDir passes its sizeLimit, which would delete the queue before
/// satmesh's own bound slowed the agents.
#[test]
fn disk_queue_is_on_a_volume_larger_than_max_bytes() {
    for root in APPLIED {
        let config = effective_config(root);
        assert_eq!(
            text(&config, "/pipeline/queue"),
            "disk",
            "{root}: the peers run the disk queue"
        );
        let path = text(&config, "/pipeline/disk/path");
        let max_bytes = number(&config, "/pipeline/disk/max_bytes");
        // The segment size satmesh uses (src/peer/parts.rs: at most a quarter of max_bytes).
        let segment = number(&config, "/pipeline/disk/segment_bytes").min(max_bytes / 4);
        // Past max_bytes: .ack entries, 8 bytes per record and still appended at the bound
        // (an eighth of max_bytes when records are 64 bytes or more), and a segment whose
        // header is damaged, set aside uncounted.
        let needed = max_bytes + max_bytes / 8 + segment;

        let c = container(root);
        let mount = c["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| {
                panic!("{root}: no volume at pipeline.disk.path {path} (the root file system is read-only)")
            });
        assert_ne!(mount["readOnly"], true, "{root}: the queue is written");
        let volume_name = text(mount, "/name");
        let workload = workload(root);
        let pod = &workload["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == volume_name);
        let claim = workload["spec"]["volumeClaimTemplates"]
            .as_array()
            .and_then(|claims| claims.iter().find(|c| c["metadata"]["name"] == volume_name));
        match text(workload, "/kind") {
            "Deployment" => {
                let volume = volume.unwrap_or_else(|| panic!("{root}: no volume {volume_name}"));
                assert!(claim.is_none());
                let empty_dir = &volume["emptyDir"];
                assert!(
                    empty_dir.is_object(),
                    "{root}: the queue is an emptyDir, kept across container restarts: {volume}"
                );
                assert_eq!(
                    empty_dir["medium"].as_str().unwrap_or(""),
                    "",
                    "{root}: on the node's disk, not in the memory limit"
                );
                let size_limit = bytes(text(empty_dir, "/sizeLimit"));
                assert!(
                    size_limit >= needed,
                    "{root}: emptyDir sizeLimit {size_limit} must cover max_bytes {max_bytes} and what may pass it ({needed})"
                );
                // The scheduler counts requests, not sizeLimits.
                let request = bytes(text(c, "/resources/requests/ephemeral-storage"));
                assert!(
                    request >= size_limit,
                    "{root}: ephemeral-storage request {request} below the queue's sizeLimit {size_limit}"
                );
            }
            "StatefulSet" => {
                assert!(
                    volume.is_none(),
                    "{root}: {volume_name} comes from the claim template, not a pod volume"
                );
                let claim =
                    claim.unwrap_or_else(|| panic!("{root}: no volumeClaimTemplate {volume_name}"));
                assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteOnce"]));
                let size = bytes(text(claim, "/spec/resources/requests/storage"));
                assert!(
                    size >= needed,
                    "{root}: claim of {size} bytes for max_bytes {max_bytes} and what may pass it ({needed})"
                );
                // What a peer could not deliver by the deadline stays for its ordinal.
                let retention = &workload["spec"]["persistentVolumeClaimRetentionPolicy"];
                assert_eq!(retention["whenScaled"], "Retain", "{root}");
                assert_eq!(retention["whenDeleted"], "Retain", "{root}");
                assert!(
                    c["resources"]["requests"]["ephemeral-storage"].is_null(),
                    "{root}: the queue is not on the node's ephemeral storage"
                );
            }
            other => panic!("{root}: the pods run under a {other}"),
        }
        // A PersistentVolume's root is root's 0755 unless the pod's group owns it.
        let security = &pod["securityContext"];
        assert_eq!(
            security["fsGroup"], security["runAsGroup"],
            "{root}: the queue volume belongs to the group satmesh runs as"
        );
    }
}

/// overlays/statefulset is the base with its Deployment made a StatefulSet: the same pod
/// but for the queue volume, which each peer gets from a claim of its own.
#[test]
fn statefulset_overlay_runs_the_base_pod_with_a_claim_per_peer() {
    let root = "overlays/statefulset";
    assert!(
        all_of(root, "Deployment").is_empty(),
        "{root}: the StatefulSet replaces the Deployment"
    );
    assert!(
        all_of(root, "HorizontalPodAutoscaler").is_empty()
            && all_of(root, "ScaledObject").is_empty(),
        "{root}: no autoscaler (overlays/hpa and overlays/keda aim at the Deployment)"
    );
    let set = one_of(root, "StatefulSet");
    let base = deployment("base");
    let claims: Vec<&str> = set["spec"]["volumeClaimTemplates"]
        .as_array()
        .expect("volumeClaimTemplates")
        .iter()
        .map(|c| text(c, "/metadata/name"))
        .collect();
    assert!(!claims.is_empty());
    let mut expected = base["spec"]["template"].clone();
    expected["spec"]["volumes"]
        .as_array_mut()
        .expect("volumes")
        .retain(|v| !claims.contains(&text(v, "/name")));
    expected["spec"]["containers"][0]["resources"]["requests"]
        .as_object_mut()
        .expect("requests")
        .remove("ephemeral-storage");
    assert_eq!(
        set["spec"]["template"], expected,
        "{root}: the pod template is the base Deployment's, the queue on a claim"
    );
    for field in ["replicas", "selector", "revisionHistoryLimit"] {
        assert_eq!(set["spec"][field], base["spec"][field], "{root}: {field}");
    }
    assert_eq!(set["metadata"]["name"], base["metadata"]["name"]);
    let headless = all_of(root, "Service")
        .into_iter()
        .find(|s| s["spec"]["clusterIP"] == "None")
        .expect("gossip Service");
    assert_eq!(
        set["spec"]["serviceName"], headless["metadata"]["name"],
        "{root}: the pods' names resolve through the headless gossip Service"
    );
    assert_eq!(
        set["spec"]["podManagementPolicy"], "Parallel",
        "{root}: a peer is ready only with an OAP; peers must not wait for each other"
    );
}

/// upstream.kubernetes needs list + watch on EndpointSlices in `namespace` (the OAP's) for
/// the pods' service account.
fn assert_can_watch_endpointslices(root: &str, namespace: &str) {
    let account = text(workload(root), "/spec/template/spec/serviceAccountName");
    let own_namespace = text(workload(root), "/metadata/namespace");
    assert!(
        all_of(root, "ServiceAccount")
            .iter()
            .any(|sa| sa["metadata"]["name"] == account)
    );
    let granted = all_of(root, "RoleBinding").into_iter().any(|binding| {
        let subject =
            json!({"kind": "ServiceAccount", "name": account, "namespace": own_namespace});
        let bound = binding["subjects"]
            .as_array()
            .is_some_and(|s| s.contains(&subject));
        let role = all_of(root, "Role").into_iter().find(|r| {
            r["metadata"]["name"] == binding["roleRef"]["name"]
                && r["metadata"]["namespace"] == namespace
        });
        bound
            && binding["metadata"]["namespace"] == namespace
            && binding["roleRef"]["kind"] == "Role"
            && role.is_some_and(|role| {
                role["rules"].as_array().expect("rules").iter().any(|rule| {
                    rule["apiGroups"] == json!(["discovery.k8s.io"])
                        && rule["resources"]
                            .as_array()
                            .expect("resources")
                            .contains(&json!("endpointslices"))
                        && ["list", "watch"]
                            .iter()
                            .all(|v| rule["verbs"].as_array().expect("verbs").contains(&json!(v)))
                })
            })
    });
    assert!(
        granted,
        "{root}: service account {account} cannot list+watch endpointslices in {namespace}"
    );
}

#[test]
fn each_overlay_has_one_autoscaler_on_the_deployment() {
    assert!(
        all_of("base", "HorizontalPodAutoscaler").is_empty()
            && all_of("base", "ScaledObject").is_empty()
    );
    let replicas = number(deployment("base"), "/spec/replicas");
    let target_ref = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment("base")["metadata"]["name"]});
    assert!(
        container("base")["resources"]["requests"]["cpu"].is_string(),
        "CPU utilisation needs a CPU request"
    );

    // overlays/hpa: connections per pod through prometheus-adapter, and CPU.
    assert!(all_of("overlays/hpa", "ScaledObject").is_empty());
    let hpa = one_of("overlays/hpa", "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"], target_ref);
    assert_eq!(
        number(hpa, "/spec/minReplicas"),
        replicas,
        "re-applying never scales the tier down"
    );
    assert!(number(hpa, "/spec/maxReplicas") > replicas);
    let metrics = hpa["spec"]["metrics"].as_array().expect("metrics");
    let pods = metrics
        .iter()
        .find(|m| m["type"] == "Pods")
        .expect("a Pods metric");
    let metric = text(pods, "/pods/metric/name");
    assert!(
        metric_defined(metric),
        "{metric} is not a metric of src/metrics.rs"
    );
    assert_eq!(text(pods, "/pods/target/type"), "AverageValue");
    let per_pod = text(pods, "/pods/target/averageValue");
    let cpu = metrics
        .iter()
        .find(|m| m["type"] == "Resource")
        .expect("a Resource metric");
    assert_eq!(cpu["resource"]["name"], "cpu");
    assert_eq!(cpu["resource"]["target"]["type"], "Utilization");

    // The adapter serves that metric from the per-pod series.
    let values = &validated()["files"]["prometheus-adapter/values.yaml"][0];
    let rule = values["rules"]["custom"]
        .as_array()
        .expect("rules.custom")
        .iter()
        .find(|r| r["name"]["as"] == metric)
        .unwrap_or_else(|| panic!("no prometheus-adapter rule serves {metric}"));
    assert!(text(rule, "/seriesQuery").starts_with(&format!("{metric}{{")));
    assert_eq!(rule["resources"]["overrides"]["pod"]["resource"], "pod");
    assert_eq!(
        rule["resources"]["overrides"]["namespace"]["resource"],
        "namespace"
    );

    // overlays/keda: the same target through KEDA's prometheus scaler.
    assert!(
        all_of("overlays/keda", "HorizontalPodAutoscaler").is_empty(),
        "KEDA makes its own HPA"
    );
    let scaled = one_of("overlays/keda", "ScaledObject");
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(scaled["spec"]["scaleTargetRef"], target_ref);
    assert_eq!(number(scaled, "/spec/minReplicaCount"), replicas);
    assert!(number(scaled, "/spec/maxReplicaCount") > replicas);
    let triggers = scaled["spec"]["triggers"].as_array().expect("triggers");
    for trigger in triggers {
        // KEDA's trigger metadata is a map of strings.
        assert!(
            trigger["metadata"]
                .as_object()
                .expect("metadata")
                .values()
                .all(Value::is_string),
            "{trigger}"
        );
    }
    let prometheus = triggers
        .iter()
        .find(|t| t["type"] == "prometheus")
        .expect("a prometheus trigger");
    assert!(text(prometheus, "/metadata/serverAddress").starts_with("http"));
    assert_eq!(
        text(prometheus, "/metadata/threshold"),
        per_pod,
        "the same connections per pod as the HPA"
    );
    let query = text(prometheus, "/metadata/query");
    let namespace = text(deployment("overlays/keda"), "/metadata/namespace");
    assert!(
        query.contains(&format!("namespace=\"{namespace}\"")),
        "the query counts this tier only: {query}"
    );
    for word in query
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("satmesh_"))
    {
        assert!(
            metric_defined(word),
            "the KEDA query uses {word}, not a metric of src/metrics.rs"
        );
    }
    let cpu = triggers
        .iter()
        .find(|t| t["type"] == "cpu")
        .expect("a cpu trigger");
    assert_eq!(cpu["metricType"], "Utilization");
}

#[test]
fn network_policy_opens_gossip_to_peers_only() {
    for root in APPLIED {
        let labels = pod_labels(root);
        let policy = one_of(root, "NetworkPolicy");
        assert!(selects(
            &policy["spec"]["podSelector"]["matchLabels"],
            labels
        ));
        assert!(
            policy["spec"]["policyTypes"]
                .as_array()
                .expect("policyTypes")
                .contains(&json!("Ingress"))
        );
        let rules = policy["spec"]["ingress"].as_array().expect("ingress rules");
        let opens = |rule: &Value, port: (u64, &str)| match rule["ports"].as_array() {
            None => true, // no ports: every port
            Some(ports) => ports
                .iter()
                .any(|p| p["port"] == port.0 && p["protocol"].as_str().unwrap_or("TCP") == port.1),
        };
        let (gossip, _) = container_port(root, "gossip");
        let gossip_rules: Vec<_> = rules.iter().filter(|r| opens(r, (gossip, "UDP"))).collect();
        assert!(!gossip_rules.is_empty(), "{root}: peers cannot gossip");
        for rule in gossip_rules {
            let from = rule["from"]
                .as_array()
                .unwrap_or_else(|| panic!("{root}: gossip open to everyone: {rule}"));
            for peer in from {
                assert_eq!(
                    peer.as_object().expect("peer").len(),
                    1,
                    "{root}: gossip peer must be a podSelector alone: {peer}"
                );
                assert_eq!(
                    peer["podSelector"]["matchLabels"][APP.0], APP.1,
                    "{root}: gossip from non-satmesh pods: {peer}"
                );
                assert!(selects(&peer["podSelector"]["matchLabels"], labels));
            }
        }
        let grpc = container_port(root, "grpc").0;
        assert!(
            rules
                .iter()
                .any(|r| r["from"].is_null() && opens(r, (grpc, "TCP"))),
            "{root}: agents (anywhere) cannot reach {grpc}"
        );
        let admin = container_port(root, "admin").0;
        let admin_rule = rules
            .iter()
            .find(|r| !r["from"].is_null() && opens(r, (admin, "TCP")))
            .expect("an admin rule");
        let from = admin_rule["from"].as_array().expect("from");
        assert!(
            from.iter().any(|p| p["namespaceSelector"].is_object()),
            "{root}: the monitoring namespace scrapes"
        );
        assert!(
            from.iter()
                .any(|p| p["podSelector"]["matchLabels"][APP.0] == APP.1),
            "{root}: peers reach /status"
        );
    }
}

#[test]
fn pod_monitor_component_scrapes_the_admin_port() {
    let monitor = one_of("components/podmonitor", "PodMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        monitor["metadata"]["namespace"],
        workload("base")["metadata"]["namespace"]
    );
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        pod_labels("base")
    ));
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(container_port("base", text(endpoint, "/port")).1, "TCP");
    let annotations = &workload("base")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(endpoint["path"], annotations["prometheus.io/path"]);
}

/// The instructions of a Dockerfile stage, continuation lines joined.
fn dockerfile_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

#[test]
fn dockerfile_agrees_with_the_manifests() {
    let dockerfile =
        std::fs::read_to_string(repo("deploy/Dockerfile")).expect("read deploy/Dockerfile");
    let lines = dockerfile_lines(&dockerfile);
    let instruction = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .map(str::trim)
            .collect()
    };
    let stages = instruction("FROM");
    assert_eq!(stages.len(), 2, "a builder and a runtime stage");
    let rust: Vec<u32> = stages[0]
        .strip_prefix("rust:")
        .expect("the builder is rust:<version>")
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .map(|n| n.parse().expect("version"))
        .collect();
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).expect("read Cargo.toml");
    let msrv: Vec<u32> = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .expect("rust-version")
        .trim_end_matches('"')
        .split('.')
        .take(2)
        .map(|n| n.parse().expect("version"))
        .collect();
    assert!(
        rust >= msrv,
        "builder Rust {rust:?} is older than rust-version {msrv:?}"
    );
    assert!(
        instruction("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked -p satmesh"))
    );

    // The image exposes what the pod opens, runs as the pod's user, reads the same file.
    let mut exposed: Vec<String> = instruction("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(str::to_lowercase)
        .collect();
    let mut opened: Vec<String> = ["grpc", "admin", "gossip"]
        .iter()
        .map(|p| {
            let (port, protocol) = container_port("base", p);
            format!("{port}/{}", protocol.to_lowercase())
        })
        .collect();
    exposed.sort();
    opened.sort();
    assert_eq!(exposed, opened);
    let pod_security = &workload("base")["spec"]["template"]["spec"]["securityContext"];
    let user = format!(
        "{}:{}",
        number(pod_security, "/runAsUser"),
        number(pod_security, "/runAsGroup")
    );
    assert_eq!(instruction("USER"), vec![user.as_str()]);
    let cmd: Vec<String> = serde_json::from_str(instruction("CMD")[0]).expect("CMD in exec form");
    assert_eq!(
        json!(cmd),
        container("base")["args"],
        "the pod runs the image's own command"
    );
    let config_path = &cmd[cmd.iter().position(|a| a == "--config").expect("--config") + 1];
    assert!(
        instruction("COPY").contains(&format!("config/satmesh.yaml {config_path}").as_str()),
        "the image runs alone with the default config"
    );
    let entrypoint: Vec<String> =
        serde_json::from_str(instruction("ENTRYPOINT")[0]).expect("ENTRYPOINT in exec form");
    assert!(
        instruction("COPY")
            .iter()
            .any(|c| c.ends_with(&format!(" {}", entrypoint[0])))
    );
    if stages[1].contains("distroless") {
        assert!(
            container("base")["lifecycle"]["preStop"]["exec"].is_null(),
            "distroless has no shell or sleep binary for an exec hook"
        );
    }

    // The build context keeps every workspace member, or cargo cannot load the workspace.
    let ignore = std::fs::read_to_string(repo("deploy/Dockerfile.dockerignore"))
        .expect("read deploy/Dockerfile.dockerignore");
    let kept: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .collect();
    let members_line = manifest
        .lines()
        .find(|l| l.starts_with("members"))
        .expect("workspace members");
    for member in members_line.split('"').skip(1).step_by(2) {
        let wanted: Vec<String> = match member {
            "." => ["Cargo.toml", "Cargo.lock", "src/"]
                .map(String::from)
                .to_vec(),
            other => vec![format!("{other}/")],
        };
        for path in wanted {
            assert!(
                kept.contains(&path.as_str()),
                "deploy/Dockerfile.dockerignore drops {path} (workspace member {member})"
            );
        }
    }
    // And every crate patched in from the repository ([patch.crates-io] paths).
    let patches = manifest
        .split("[patch.crates-io]")
        .nth(1)
        .expect("the workspace patches h2");
    for line in patches.lines().take_while(|l| !l.starts_with('[')) {
        if let Some((_, path)) = line.split_once("path = \"") {
            let dir = path.split('"').next().unwrap();
            let top = format!("{}/", dir.split('/').next().unwrap());
            assert!(
                kept.contains(&top.as_str()),
                "deploy/Dockerfile.dockerignore drops {top} (patched crate {dir})"
            );
        }
    }
    assert!(
        kept.contains(&"config/satmesh.yaml"),
        "the image copies config/satmesh.yaml"
    );
}
