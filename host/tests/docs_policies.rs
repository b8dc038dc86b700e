//! Every CullingPolicy the docs show (README.md and docs/) is one the controller accepts: it
//! parses into the resource and passes the same validation the controller applies, once the
//! placeholder digest a reader fills in is filled in; and the port ids it names for a kind
//! Kubeflow ships as a sample are that kind's own.

use std::path::{Path, PathBuf};
use workspace_culler_policy::{CullingPolicy, validate};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The fenced `yaml` blocks of `text` that are whole CullingPolicies.
fn policies(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + "```yaml\n".len()..];
        let end = body.find("```").expect("an unclosed code block");
        let block = &body[..end];
        if block.lines().any(|l| l.trim() == "kind: CullingPolicy") {
            found.push(block.to_string());
        }
        rest = &body[end + 3..];
    }
    found
}

#[test]
fn every_policy_in_the_docs_is_accepted() {
    let mut files = vec![repo_root().join("README.md")];
    for entry in std::fs::read_dir(repo_root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut checked = 0;
    let mut oci = 0;
    let mut ported = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for block in policies(&text) {
            let filled = block
                .replace("<the sha256 from probe inspect>", &"a".repeat(64))
                .replace("<the digest probe push printed>", &"b".repeat(64));
            let policy: CullingPolicy = serde_yaml::from_str(&filled)
                .unwrap_or_else(|e| panic!("{}: a CullingPolicy does not parse: {e}\n{block}", file.display()));
            if let Err(errors) = validate(&policy.spec) {
                panic!("{}: a CullingPolicy is refused: {errors:?}\n{block}", file.display());
            }
            // An oci:// location is one the controller can pull (registry first, pinned).
            for module in policy.spec.activity_probe.modules() {
                if workspace_culler::oci::is_oci(&module.location) {
                    let parsed = workspace_culler::oci::parse(&module.location, module.sha256.as_deref());
                    assert!(parsed.is_ok(), "{}: {parsed:?}\n{block}", file.display());
                    oci += 1;
                }
            }
            // A port id is one the kind defines, for the kinds Kubeflow ships as samples.
            let probe = serde_json::to_value(&policy.spec.activity_probe).unwrap();
            for kind in &policy.spec.workspace_kinds {
                let Some(ports) = sample_kind_ports(kind) else { continue };
                for port in port_ids(&probe) {
                    assert!(
                        ports.contains(&port),
                        "{}: portId {port:?} is not a port of Kubeflow's {kind} kind ({ports:?})\n{block}",
                        file.display()
                    );
                    ported += 1;
                }
            }
            checked += 1;
        }
    }
    // README (1), migration (1), one per tutorial (4).
    assert!(checked >= 6, "only {checked} policies found in the docs");
    // Every tutorial ends by pinning what `probe push` printed.
    assert!(oci >= 4, "only {oci} policies pin an oci:// module");
    // jupyterlab (README, migration), codeserver (Go), rstudio (JavaScript).
    assert!(ported >= 4, "only {ported} port ids checked against Kubeflow's kinds");
}

/// The port ids of Kubeflow's sample kind `kind` (`None` for a kind Kubeflow does not ship).
fn sample_kind_ports(kind: &str) -> Option<Vec<String>> {
    let path = repo_root().join(format!("tests/kubeflow/{kind}_v1beta1_workspacekind.yaml"));
    let text = std::fs::read_to_string(path).ok()?;
    let kind: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let ports = kind
        .pointer("/spec/podTemplate/ports")
        .and_then(|p| p.as_array())
        .unwrap();
    Some(ports.iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect())
}

/// Every `portId` set anywhere in an activityProbe (jupyter, a module's config, anyOf).
fn port_ids(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .flat_map(|(key, v)| match (key.as_str(), v.as_str()) {
                ("portId", Some(id)) => vec![id.to_owned()],
                _ => port_ids(v),
            })
            .collect(),
        serde_json::Value::Array(items) => items.iter().flat_map(port_ids).collect(),
        _ => Vec::new(),
    }
}
