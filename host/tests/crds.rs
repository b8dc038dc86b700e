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

/// Every `int32` field of the CullingPolicy's spec, as `path` → (minimum, maximum).
fn int32_fields(schema: &serde_json::Value, path: &str, found: &mut Vec<(String, Option<f64>, Option<f64>)>) {
    if schema["format"] == "int32" {
        found.push((path.into(), schema["minimum"].as_f64(), schema["maximum"].as_f64()));
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, property) in properties {
            int32_fields(property, &format!("{path}.{name}"), found);
        }
    }
    if !schema["items"].is_null() {
        int32_fields(&schema["items"], &format!("{path}[]"), found);
    }
}

#[test]
fn every_int32_field_is_bounded_so_a_policy_the_apiserver_accepts_always_decodes() {
    // The apiserver does not enforce `format: int32` on custom resources: without bounds of
    // its own, `secondsSinceActive: 3000000000` is accepted, fails to decode, and stops the
    // controller's whole policy cache.
    let crd: serde_json::Value = serde_yaml::from_str(&crds_yaml()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut found = Vec::new();
    int32_fields(spec, "spec", &mut found);
    assert!(found.len() >= 10, "{found:?}");
    let unbounded: Vec<_> = found
        .iter()
        .filter(|(_, min, max)| {
            !(min.is_some_and(|m| m >= f64::from(i32::MIN)) && max.is_some_and(|m| m <= f64::from(i32::MAX)))
        })
        .collect();
    assert!(
        unbounded.is_empty(),
        "int32 fields the apiserver does not bound: {unbounded:?}"
    );
}
