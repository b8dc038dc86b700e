//! End-to-end with probe modules pulled from a real OCI registry (the CNCF distribution
//! registry, requiring basic auth) by digest: an idle workspace is paused by a probe the
//! controller pulled with the credentials of a `kubernetes.io/dockerconfigjson` Secret named by
//! its policy; a restarted controller probes with it again without a single request to the
//! registry. A pull without credentials, a wrong pin, a missing artifact and a registry that is
//! down each end as a probe `Failure` saying why, with the policy not Ready — and no pause.

mod e2e;

use e2e::{CONTROLLER_NS, Env, condition, sample_kind};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use oci_client::secrets::RegistryAuth;
use std::time::Duration;
use workspace_culler::oci::{self, Registry};
use workspace_culler_policy::ProbeResult;
use workspace_culler_support::registry::{self, Options};

const NS: &str = "oci";
const IDLE_SECONDS: i64 = 16;
const USER: &str = "culler";
const PASSWORD: &str = "pull-Secret-1";

fn policy(kind: &str, location: &str, sha256: Option<&str>, pull_secret: Option<&str>) -> serde_json::Value {
    let no_job = serde_json::json!({"patterns": [format!("no-such-job-{}", std::process::id())]});
    let mut module = serde_json::json!({"location": location, "config": no_job, "timeoutSeconds": 10});
    if let Some(sha256) = sha256 {
        module["sha256"] = sha256.into();
    }
    if let Some(name) = pull_secret {
        module["pullSecretRef"] = serde_json::json!({"name": name});
    }
    e2e::module_policy(kind, module, IDLE_SECONDS as i32)
}

/// Push `component` to `repository:v1`; (manifest digest, component sha256).
async fn push(registry: &registry::Registry, repository: &str, component: Vec<u8>) -> (String, String) {
    let client = Registry::new(oci::Settings {
        insecure: vec![registry.host.clone()],
        max_bytes: 64 << 20,
        ..Default::default()
    })
    .unwrap();
    let reference = format!("{}/{repository}:v1", registry.host).parse().unwrap();
    let pushed = client
        .push(
            &reference,
            component,
            &RegistryAuth::Basic(USER.into(), PASSWORD.into()),
        )
        .await
        .unwrap();
    (pushed.manifest_digest, pushed.component_sha256)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_pulled_by_digest_pauses_and_a_restart_pulls_nothing() {
    let mut registry = registry::Registry::start(Options {
        credentials: Some((USER.into(), PASSWORD.into())),
        tls: false,
    })
    .unwrap();
    let read = |path: &std::path::Path| std::fs::read(path).unwrap();
    let (digest, sha256) = push(
        &registry,
        "probes/job-guard",
        read(workspace_culler_support::test_probes::job_guard()),
    )
    .await;
    // Two more artifacts, never pulled with credentials before they are asked for.
    let (other_digest, other_sha256) = push(
        &registry,
        "probes/other",
        read(workspace_culler_support::test_probes::hostile()),
    )
    .await;
    let gpu = workspace_culler_engine::builtin::builtin("nvidia-gpu")
        .unwrap()
        .component
        .to_vec();
    let (gpu_digest, _) = push(&registry, "probes/gpu", gpu).await;
    let host = registry.host.clone();
    let at = |rest: &str| format!("oci://{host}/{rest}");
    let pinned = at(&format!("probes/job-guard@{digest}"));

    let env = Env::start().await;
    env.namespace(NS, &[]).await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), CONTROLLER_NS);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "registry-pull"}, "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": registry.docker_config_json()},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let unknown = format!("sha256:{}", "1".repeat(64));
    for policy in [
        policy("pulled", &pinned, None, Some("registry-pull")),
        policy("unauthorised", &at(&format!("probes/other@{other_digest}")), None, None),
        policy(
            "wrong-pin",
            &at("probes/job-guard:v1"),
            Some(&"0".repeat(64)),
            Some("registry-pull"),
        ),
        policy(
            "missing",
            &at(&format!("probes/job-guard@{unknown}")),
            None,
            Some("registry-pull"),
        ),
        // Its pull Secret does not exist: nothing can be pulled, and the policy is not Ready.
        policy(
            "no-secret",
            &at(&format!("probes/other@{other_digest}")),
            Some(&other_sha256),
            Some("absent"),
        ),
    ] {
        env.apply_policy(policy).await;
    }
    for kind in ["pulled", "unauthorised", "wrong-pin", "missing", "no-secret", "down"] {
        env.apply_kind(sample_kind(kind)).await;
    }
    for kind in ["pulled", "unauthorised", "wrong-pin", "missing", "no-secret"] {
        env.running_workspace(NS, kind, kind, serde_json::json!({})).await;
    }
    let insecure = ["--insecure-registry", host.as_str()];
    let mut controller = env.controller("controller", &insecure);
    env.wait_paused(NS, "pulled", Duration::from_secs(90), || controller.log())
        .await;
    let log = controller.log();
    for (name, message) in [
        ("unauthorised", "the registry refused access"),
        (
            "wrong-pin",
            &format!("digest mismatch: the artifact's component is sha256:{sha256}"),
        ),
        ("missing", "not found in the registry"),
        ("no-secret", "/absent: not found"),
    ] {
        let status = env.activity(NS, name).await;
        let probe = status.last_probe.unwrap();
        assert_eq!(
            (probe.result, status.last_activity),
            (ProbeResult::Failure, 0),
            "{name}\n{log}"
        );
        assert!(probe.message.contains(message), "{name}: {}", probe.message);
        assert!(!env.workspace(NS, name).await.spec.paused, "{name} was paused");
        let ready = e2e::eventually(Duration::from_secs(10), "the policy's Ready condition", || async {
            let policy = env.policy(name).await;
            condition(&policy, "Ready").filter(|c| c.status == "False").cloned()
        })
        .await;
        assert!(ready.message.contains(message), "{name}: {}", ready.message);
    }
    assert_eq!(condition(&env.policy("pulled").await, "Ready").unwrap().status, "True");

    // Restarted (its disk cache kept, as the chart's volume keeps it), the controller probes a
    // new workspace with the same module and asks the registry for nothing of it.
    controller.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // What the registry served of the pinned artifact (the other policies keep failing).
    let of_job_guard = |registry: &registry::Registry| {
        registry
            .served()
            .into_iter()
            .filter(|(_, uri)| uri.contains(&digest) || uri.contains(&sha256))
            .count()
    };
    let before = of_job_guard(&registry);
    let controller = env.controller("controller-restarted", &insecure);
    env.running_workspace(NS, "pulled-again", "pulled", serde_json::json!({}))
        .await;
    e2e::eventually(Duration::from_secs(60), "a probe of pulled-again", || async {
        let probe = env.activity(NS, "pulled-again").await.last_probe?;
        assert_eq!(
            probe.result,
            ProbeResult::Success,
            "{}\n{}",
            probe.message,
            controller.log()
        );
        Some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(of_job_guard(&registry), before, "{:?}", registry.requests());

    // A registry that is down: a module never pulled before fails, saying so.
    registry.stop();
    env.apply_policy(policy(
        "down",
        &at(&format!("probes/gpu@{gpu_digest}")),
        None,
        Some("registry-pull"),
    ))
    .await;
    env.running_workspace(NS, "down", "down", serde_json::json!({})).await;
    let probe = e2e::eventually(Duration::from_secs(60), "a probe of down", || async {
        env.activity(NS, "down").await.last_probe
    })
    .await;
    assert_eq!(probe.result, ProbeResult::Failure, "{}", controller.log());
    assert!(probe.message.contains("cannot reach the registry"), "{}", probe.message);
    assert!(!env.workspace(NS, "down").await.spec.paused);
}
