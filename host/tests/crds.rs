//! The CRD the project ships is the CullingPolicy CRD generated from the code, never one of
//! Kubeflow's; and Kubeflow's released samples (with every field the culler does not model)
//! parse into the culler's types.

use workspace_culler::crds_yaml;
use workspace_culler_policy::{Workspace, WorkspaceKind};
use workspace_culler_support::kubeflow;

const SHIPPED: &str = "../charts/workspace-culler/files/crds.yaml";

#[test]
fn shipped_crds_match_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED);
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        shipped == crds_yaml(),
        "{} is out of date: regenerate it with `cargo run -- crds > charts/workspace-culler/files/crds.yaml`",
        path.display()
    );
}

#[test]
fn only_the_culling_policy_crd_is_shipped_with_useful_columns() {
    let yaml = crds_yaml();
    let names: Vec<&str> = yaml.lines().filter_map(|l| l.strip_prefix("  name: ")).collect();
    assert_eq!(names, ["cullingpolicies.workspace-culler.io"], "{yaml}");
    assert!(!yaml.contains("kubeflow.org"), "a Kubeflow CRD is shipped");
    for column in ["Kinds", "Managed", "Paused", "Dry-Run", "Ready"] {
        assert!(
            yaml.contains(&format!("name: {column}")),
            "missing printer column {column}"
        );
    }
    assert!(yaml.contains("scope: Cluster"));
}

#[test]
fn kubeflows_samples_parse_into_the_culler_types() {
    let kind: WorkspaceKind = serde_json::from_value(kubeflow::sample(kubeflow::JUPYTERLAB_KIND)).unwrap();
    assert!(kind.kubeflow_probes_it(), "the sample keeps Kubeflow's own probe");
    let moved: WorkspaceKind = serde_json::from_value(kubeflow::kind_without_probe(kubeflow::JUPYTERLAB_KIND)).unwrap();
    assert!(!moved.kubeflow_probes_it());
    assert_eq!(moved.image_port("jupyter-scipy:v1.10.0", "jupyterlab"), Some(8888));
    let ws: Workspace = serde_json::from_value(kubeflow::sample(kubeflow::JUPYTERLAB_WORKSPACE)).unwrap();
    assert_eq!(ws.spec.kind, "jupyterlab");
    assert!(!ws.spec.paused);
    assert_eq!(ws.image_config_in_effect(), Some("jupyter-scipy:v1.10.0"));
    let policy: workspace_culler_policy::CullingPolicy =
        serde_json::from_value(kubeflow::policy_from_kind(kubeflow::JUPYTERLAB_KIND, "notebooks")).unwrap();
    assert_eq!(policy.spec.workspace_kinds, ["jupyterlab"]);
    assert!(policy.spec.activity_probe.jupyter.is_some());
    assert!(!policy.spec.activity_rules.is_empty());
    assert_eq!(
        workspace_culler_policy::validate(&policy.spec),
        Ok(()),
        "cut and paste gives a valid policy"
    );
}
