//! The CRDs the project ships match the code, and real Kubeflow objects
//! (with fields the culler does not model) parse.

use workspace_culler::crd::{Workspace, WorkspaceKind, crds_yaml};

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
fn crds_preserve_unknown_fields_and_print_useful_columns() {
    let yaml = crds_yaml();
    assert!(yaml.contains("x-kubernetes-preserve-unknown-fields: true"));
    for column in ["State", "Paused", "Last Probe", "Last Activity"] {
        assert!(
            yaml.contains(&format!("name: {column}")),
            "missing printer column {column}"
        );
    }
    assert!(yaml.contains("- ws\n") && yaml.contains("- wsk\n"), "short names");
}

#[test]
fn a_kubeflow_workspace_kind_parses_with_defaults() {
    let kind: WorkspaceKind =
        serde_yaml::from_str(include_str!("../../tests/e2e/workspacekind-jupyterlab.yaml")).unwrap();
    let culling = kind.spec.pod_template.culling.clone().unwrap();
    assert!(culling.enabled);
    assert_eq!(culling.min_probe_interval, 60);
    assert_eq!(culling.max_probe_interval, 300);
    assert_eq!(culling.activity_probe.jupyter.unwrap().port_id, "jupyterlab");
    let ws: Workspace = serde_yaml::from_str(include_str!("../../tests/e2e/workspace-jupyterlab.yaml")).unwrap();
    assert_eq!(ws.spec.kind, "jupyterlab");
    assert!(!ws.spec.paused && !ws.spec.disable_culling);
}
