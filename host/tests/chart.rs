//! The Helm chart: `helm lint` and `helm template` (helm built from its Go
//! module) for default and non-default values, the schema rejecting a wrong
//! type, every rendered object accepted by the real apiserver, and the
//! controller running as the chart's ServiceAccount on Kubeflow's CRDs — enough to pause an idle
//! workspace and keep its policy's status, and refused what its role does not grant (Secrets
//! outside its own namespace among them). The chart ships the CullingPolicy CRD, never
//! Kubeflow's.

mod e2e;

use e2e::{Env, exec_policy, sample_kind};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const RELEASE: &str = "culler";
const NS: &str = "culler-system";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/workspace-culler")
}

/// `$WORKSPACE_CULLER_HELM` (set by `scripts/test`), or the helm `scripts/ensure-helm` builds.
fn helm() -> PathBuf {
    if let Some(helm) = std::env::var_os("WORKSPACE_CULLER_HELM") {
        return PathBuf::from(helm);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ensure-helm");
    let out = Command::new(script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/ensure-helm failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// `helm template` with `--set` values: (success, stdout, stderr).
fn template(helm: &Path, sets: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(helm);
    cmd.args(["template", RELEASE])
        .arg(chart())
        .args(["--namespace", NS, "--kube-version", "1.34.4"]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn docs(rendered: &str) -> Vec<serde_yaml::Value> {
    rendered
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).ok())
        .filter(|v| v.get("kind").is_some())
        .collect()
}

/// Every `workspace_culler_*` metric name in rendered YAML.
fn metric_names(rendered: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = rendered;
    while let Some(start) = rest.find("workspace_culler_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn kinds(rendered: &str) -> Vec<String> {
    docs(rendered)
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn chart_lints_renders_and_validates_values() {
    let helm = helm();
    let lint = Command::new(&helm).arg("lint").arg(chart()).output().unwrap();
    assert!(
        lint.status.success(),
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let (ok, default, err) = template(&helm, &[]);
    assert!(ok, "{err}");
    let default_kinds = kinds(&default);
    for expected in [
        "CustomResourceDefinition/cullingpolicies.workspace-culler.io",
        "ServiceAccount/culler-workspace-culler",
        "ClusterRole/culler-workspace-culler-cluster",
        "ClusterRole/culler-workspace-culler",
        "ClusterRoleBinding/culler-workspace-culler",
        "Role/culler-workspace-culler-leader",
        "Deployment/culler-workspace-culler",
        "Service/culler-workspace-culler-metrics",
    ] {
        assert!(
            default_kinds.contains(&expected.to_string()),
            "missing {expected} in {default_kinds:?}"
        );
    }
    let crds: Vec<&String> = default_kinds
        .iter()
        .filter(|k| k.starts_with("CustomResourceDefinition/"))
        .collect();
    assert_eq!(crds.len(), 1, "only the CullingPolicy CRD is shipped: {crds:?}");
    assert!(!default.contains("group: kubeflow.org"), "a Kubeflow CRD is shipped");
    assert!(
        !default.contains("pods/portforward"),
        "port-forward is granted only in that mode"
    );
    assert!(default.contains("readOnlyRootFilesystem: true") && default.contains("RuntimeDefault"));
    assert!(
        default.contains("- --leader-elect"),
        "leader election even with one replica: a rolling update runs two"
    );

    assert!(!default.contains("kind: PrometheusRule") && !default.contains("grafana_dashboard"));
    let (ok, monitoring, err) = template(
        &helm,
        &["metrics.dashboard.enabled=true", "metrics.prometheusRule.enabled=true"],
    );
    assert!(ok, "{err}");
    let dashboard = docs(&monitoring)
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a dashboard ConfigMap labelled for Grafana's sidecar");
    let json: serde_json::Value =
        serde_json::from_str(dashboard["data"]["workspace-culler.json"].as_str().unwrap()).unwrap();
    assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 5));
    assert!(kinds(&monitoring).contains(&"PrometheusRule/culler-workspace-culler".to_string()));

    // The CRD outlives the release: deleting it would delete every CullingPolicy.
    let crd = docs(&default)
        .into_iter()
        .find(|d| d["kind"] == "CustomResourceDefinition")
        .unwrap();
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "{:?}",
        crd["metadata"]
    );
    assert_eq!(crd["metadata"]["name"], "cullingpolicies.workspace-culler.io");

    // The alerts hold where they matter: no leader also when no replica is scraped, and a
    // stuck queue also before any probe has finished (the probes' series do not exist yet).
    // Checked as text: no PromQL engine runs here.
    let rules = docs(&monitoring)
        .into_iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .unwrap();
    let expr = |alert: &str| -> String {
        rules["spec"]["groups"][0]["rules"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|r| r["alert"] == alert)
            .unwrap_or_else(|| panic!("no alert {alert}"))["expr"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        expr("WorkspaceCullerNoLeader").contains("absent(workspace_culler_leader)"),
        "{}",
        expr("WorkspaceCullerNoLeader")
    );
    let stuck = expr("WorkspaceCullerDueQueueStuck");
    assert!(
        stuck.contains("workspace_culler_probes_waiting")
            && !stuck.contains("workspace_culler_due_workspaces")
            && stuck.contains("or vector(0)"),
        "{stuck}"
    );

    let (ok, no_crds, err) = template(&helm, &["crds.install=false"]);
    assert!(ok, "{err}");
    assert!(!no_crds.contains("kind: CustomResourceDefinition"));

    let (ok, scoped, err) = template(
        &helm,
        &["rbac.namespaces={team-a,team-b}", "controller.httpMode=port-forward"],
    );
    assert!(ok, "{err}");
    let scoped_kinds = kinds(&scoped);
    assert!(
        !scoped_kinds.contains(&"ClusterRole/culler-workspace-culler".to_string()),
        "{scoped_kinds:?}"
    );
    let roles = docs(&scoped)
        .into_iter()
        .filter(|d| d["kind"] == "Role" && d["metadata"]["name"] == "culler-workspace-culler");
    let role_namespaces: Vec<String> = roles
        .map(|r| r["metadata"]["namespace"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(role_namespaces, ["team-a", "team-b"]);
    assert!(scoped.contains("--namespace=team-a") && scoped.contains("--namespace=team-b"));
    assert!(scoped.contains("pods/portforward"));

    let (ok, dry, err) = template(&helm, &["controller.dryRun=true", "replicas=2"]);
    assert!(ok, "{err}");
    assert!(dry.contains("- --dry-run") && dry.contains("- --leader-elect"));

    let (ok, modules, err) = template(&helm, &["probeModules.configMaps[0].name=vscode-probe"]);
    assert!(ok, "{err}");
    assert!(
        modules.contains("mountPath: /probes/vscode-probe") && modules.contains("name: vscode-probe"),
        "{modules}"
    );

    // The memory limit follows the probes' memory budget and how many run at once, unless
    // it is set; the cache folder's bound follows its volume.
    assert!(
        default.contains("memory: 640Mi")
            && default.contains("--memory-budget-mib=256")
            && default.contains("--concurrency=64"),
        "{default}"
    );
    assert!(
        default.contains("--cache-max-mib=192") && default.contains("sizeLimit: 256Mi"),
        "{default}"
    );
    let (ok, small, err) = template(&helm, &["controller.memoryBudgetMiB=128"]);
    assert!(ok && small.contains("memory: 512Mi"), "{err}");
    let (ok, wide, err) = template(&helm, &["controller.concurrency=256"]);
    assert!(ok && wide.contains("memory: 832Mi"), "{err}");
    let (ok, cache, err) = template(&helm, &["controller.cacheSizeMiB=1024"]);
    assert!(
        ok && cache.contains("--cache-max-mib=768") && cache.contains("sizeLimit: 1024Mi"),
        "{err}"
    );
    // The CullingSoon warning's window (SPEC: configurable).
    assert!(default.contains("--culling-soon-seconds=600"), "{default}");
    let (ok, warned, err) = template(&helm, &["controller.cullingSoonSeconds=120"]);
    assert!(ok && warned.contains("--culling-soon-seconds=120"), "{err}");
    let (ok, set, err) = template(&helm, &["resources.limits.memory=2Gi"]);
    assert!(
        ok && set.contains("memory: 2Gi") && !set.contains("memory: 640Mi"),
        "{err}"
    );

    let (ok, registry, err) = template(
        &helm,
        &[
            "registry.insecure[0]=registry.local:5000",
            "registry.caSecret=registry-ca",
        ],
    );
    assert!(ok, "{err}");
    for line in [
        "- --insecure-registry=registry.local:5000",
        "- --registry-ca-file=/etc/workspace-culler/registry-ca/ca.crt",
        "mountPath: /etc/workspace-culler/registry-ca",
        "secret: {secretName: registry-ca}",
    ] {
        assert!(registry.contains(line), "{line:?} missing in:\n{registry}");
    }
    assert!(!default.contains("registry-ca") && !default.contains("--insecure-registry"));
    let (ok, _, err) = template(&helm, &["registry.insecure[0]=http://registry.local"]);
    assert!(
        !ok && err.contains("insecure"),
        "a registry is host[:port], not a URL: {err}"
    );

    let (ok, _, err) = template(&helm, &["controller.concurrency=many"]);
    assert!(!ok, "a wrong type must be rejected");
    assert!(err.contains("concurrency") && err.contains("integer"), "{err}");
    let (ok, _, err) = template(&helm, &["controller.httpMode=carrier-pigeon"]);
    assert!(!ok && err.contains("httpMode"), "{err}");
    // A misspelt value is refused, not ignored: `dryrun` would leave pauses on.
    let (ok, _, err) = template(&helm, &["controller.dryrun=true"]);
    assert!(!ok && err.contains("dryrun"), "{err}");
    let (ok, _, err) = template(&helm, &["metrics.serviceMonitor.enable=true"]);
    assert!(!ok && err.contains("enable"), "{err}");
    // The cache's size is a number of MiB (`int` of "1Gi" would be 0: no size limit).
    let (ok, _, err) = template(&helm, &["controller.cacheSizeMiB=1Gi"]);
    assert!(!ok && err.contains("cacheSizeMiB"), "{err}");
    // A parent chart's globals are let through.
    let (ok, _, err) = template(&helm, &["global.imageRegistry=mirror.local"]);
    assert!(ok, "{err}");
}

/// Server-side apply of every rendered object, each validated by the apiserver
/// itself (`dry_run`: validated and admitted, but not stored).
async fn apply_all(env: &Env, rendered: &str, dry_run: bool) {
    for doc in docs(rendered) {
        let object: DynamicObject = serde_json::from_value(serde_json::to_value(&doc).unwrap()).unwrap();
        let types = object.types.clone().unwrap();
        let (group, version) = types.api_version.split_once('/').unwrap_or(("", &types.api_version));
        let gvk = GroupVersionKind::gvk(group, version, &types.kind);
        let (resource, caps) = pinned_kind(&env.client, &gvk).await.unwrap();
        let name = object.metadata.name.clone().unwrap();
        let api: Api<DynamicObject> = match (caps.scope, object.metadata.namespace.as_deref()) {
            (kube::discovery::Scope::Namespaced, Some(ns)) => Api::namespaced_with(env.client.clone(), ns, &resource),
            (kube::discovery::Scope::Namespaced, None) => Api::namespaced_with(env.client.clone(), NS, &resource),
            (kube::discovery::Scope::Cluster, _) => Api::all_with(env.client.clone(), &resource),
        };
        let mut params = PatchParams::apply("chart-test").force();
        params.dry_run = dry_run;
        api.patch(&name, &params, &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("the apiserver refused {}/{name}: {e}", types.kind));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_service_account_is_enough_and_no_more() {
    let helm = helm();
    let env = Env::start().await;
    // The release namespace is the controller's (`e2e::CONTROLLER_NS`), made by `Env`.
    assert_eq!(NS, e2e::CONTROLLER_NS);
    for ns in ["team-a", "team-b"] {
        env.namespace(ns, &[]).await;
    }
    // Every object of a namespace-restricted rendering is accepted (dry run)...
    let sets = [
        "rbac.namespaces={team-a,team-b}",
        "networkPolicy.enabled=true",
        "probeModules.configMaps[0].name=p",
    ];
    let (ok, scoped, err) = template(&helm, &sets);
    assert!(ok, "{err}");
    apply_all(&env, &scoped, true).await;
    // ...and the default, cluster-wide one is installed and used below (with port-forward).
    let (ok, cluster, err) = template(&helm, &["controller.httpMode=port-forward"]);
    assert!(ok, "{err}");
    apply_all(&env, &cluster, false).await;

    // A token of the chart's ServiceAccount, and a kubeconfig with it.
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), NS);
    let request: TokenRequest =
        serde_json::from_value(serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).unwrap();
    let token = accounts
        .create_token_request("culler-workspace-culler", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let kubeconfig = env.cp.dir().join("chart-sa.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    insecure-skip-tls-verify: true\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: sa}}\ncurrent-context: c\n",
            env.cp.server
        ),
    )
    .unwrap();

    env.apply_kind(sample_kind("idle")).await;
    env.apply_policy(exec_policy(
        "idle",
        &["idle"],
        "#!/bin/sh\necho '{\"has_activity\": false}' > \"$OUTPUT_JSON_PATH\"\n",
        20,
    ))
    .await;
    env.running_workspace("team-a", "ws", "idle", serde_json::json!({}))
        .await;
    let controller = env.controller_as(&kubeconfig, "controller-sa", &["--leader-elect"]);
    env.wait_paused("team-a", "ws", Duration::from_secs(90), || controller.log())
        .await;
    e2e::eventually(Duration::from_secs(30), "the policy's status", || async {
        let status = env.policy("idle").await.status?;
        (status.paused_total == 1 && status.managed_workspaces == 1).then_some(())
    })
    .await;
    let log = controller.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the role lacked something:\n{log}"
    );

    // Every metric the dashboard and the alerts name exists on a running controller.
    let (ok, monitoring, err) = template(
        &helm,
        &["metrics.dashboard.enabled=true", "metrics.prometheusRule.enabled=true"],
    );
    assert!(ok, "{err}");
    let (_, exposed) = controller.get("/metrics").await;
    let named = metric_names(&monitoring);
    assert!(named.len() >= 8, "{named:?}");
    for name in named {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        assert!(
            exposed.contains(&format!("# TYPE {base} ")),
            "{name} is named by the dashboard or an alert but not exposed:\n{exposed}"
        );
    }
    assert!(exposed.contains("workspace_culler_leader 1"), "{exposed}");

    // What the role does not grant is refused.
    let sa_client = {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap();
        kube::Client::try_from(config).unwrap()
    };
    let pods: Api<Pod> = Api::namespaced(sa_client.clone(), "team-a");
    match pods.delete("ws-ws-0", &DeleteParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("deleting a pod as the culler should be forbidden, got {other:?}"),
    }
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(sa_client.clone(), "team-a");
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "listing secrets: {e:?}"),
        other => panic!("listing secrets as the culler should be forbidden, got {other:?}"),
    }
    match secrets.get("any").await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "reading a workspace namespace's secret: {e:?}"),
        other => panic!("reading secrets outside its namespace should be forbidden, got {other:?}"),
    }
    let own: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(sa_client.clone(), NS);
    match own.get("no-such-secret").await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404, "its own namespace's secrets are readable: {e:?}"),
        other => panic!("expected not found, got {other:?}"),
    }
    // Events go through events.k8s.io only; the core API's are not granted.
    let core_events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(sa_client.clone(), "team-a");
    let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "culler-test"},
        "involvedObject": {"kind": "Pod", "name": "ws-ws-0", "namespace": "team-a"},
        "reason": "Test", "message": "x", "type": "Normal"
    }))
    .unwrap();
    match core_events.create(&PostParams::default(), &event).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "creating a core Event: {e:?}"),
        other => panic!("creating a core Event as the culler should be forbidden, got {other:?}"),
    }
    // A policy's status is patched, never replaced.
    let policies: Api<workspace_culler_policy::CullingPolicy> = Api::all(sa_client.clone());
    let current = policies.get("idle").await.unwrap();
    match policies.replace_status("idle", &PostParams::default(), &current).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "replacing a policy's status: {e:?}"),
        other => panic!("replacing a policy's status as the culler should be forbidden, got {other:?}"),
    }
    let kinds: Api<DynamicObject> = Api::all_with(sa_client, &workspace_culler_support::kubeflow::kind_resource());
    match kinds.delete("idle", &DeleteParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("deleting a WorkspaceKind as the culler should be forbidden, got {other:?}"),
    }
}
