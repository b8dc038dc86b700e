use serde_json::{Value, json};

use super::*;
use crate::selector::LabelSelectorRequirement;
use crate::testing::{labels, policy, reference, rule, yaml_to_json};

const KUBEFLOW_SPEC: &str = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties";
const OUR_SPEC: &str = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties";

fn kubeflow_crd() -> Value {
    yaml_to_json(&reference("kubeflow.org_workspacekinds.yaml"))
}

fn our_crd() -> Value {
    serde_json::to_value(crd()).unwrap()
}

fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value.pointer(pointer).unwrap_or_else(|| panic!("no {pointer}"))
}

/// Every constraint of Kubeflow's schema node holds in ours: types, formats, defaults, limits,
/// patterns, required fields, list/map types and CEL rules (descriptions and examples aside).
/// `replaced` names Kubeflow CEL rules ours deliberately replaces.
fn assert_covers(kubeflow: &Value, ours: &Value, path: &str, replaced: &[&str]) {
    let Value::Object(kubeflow) = kubeflow else {
        assert_eq!(kubeflow, ours, "{path}");
        return;
    };
    for (key, expected) in kubeflow {
        let here = format!("{path}.{key}");
        match key.as_str() {
            "description" | "example" => {}
            "properties" => {
                for (name, property) in expected.as_object().unwrap() {
                    let ours = ours.pointer(&format!("/properties/{name}"));
                    let ours = ours.unwrap_or_else(|| panic!("{here}: no property {name}"));
                    assert_covers(property, ours, &format!("{path}.{name}"), replaced);
                }
            }
            "items" | "additionalProperties" => {
                let ours = ours.get(key).unwrap_or_else(|| panic!("{here} missing"));
                assert_covers(expected, ours, &here, replaced);
            }
            "required" => {
                let set = |v: &Value| -> BTreeSet<String> {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| s.as_str().unwrap().to_owned())
                        .collect()
                };
                assert_eq!(set(expected), set(ours.get(key).unwrap_or(&json!([]))), "{here}");
            }
            "x-kubernetes-validations" => {
                let ours = ours.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
                for validation in expected.as_array().unwrap() {
                    let rule = validation["rule"].as_str().unwrap();
                    if replaced.contains(&rule) {
                        continue;
                    }
                    assert!(ours.contains(validation), "{here}: missing CEL rule {validation}");
                }
            }
            _ => assert!(
                same(expected, ours.get(key)),
                "{here}: Kubeflow has {expected}, ours {:?}",
                ours.get(key)
            ),
        }
    }
}

/// JSON equality, with numbers compared by value: the CRD types hold limits as `f64`, so a
/// generated `maximum` serializes as `31536000.0` where Kubeflow's YAML has `31536000`.
fn same(expected: &Value, ours: Option<&Value>) -> bool {
    match (expected, ours) {
        (Value::Number(a), Some(Value::Number(b))) => a.as_f64() == b.as_f64(),
        (_, Some(ours)) => expected == ours,
        (_, None) => false,
    }
}

/// A schema's `required` names, sorted.
fn required(schema: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    names.sort_unstable();
    names
}

fn number(value: Option<&Value>) -> Option<f64> {
    value.and_then(Value::as_f64)
}

#[test]
fn the_activity_probe_schema_is_kubeflows() {
    let kubeflow = kubeflow_crd();
    let ours = our_crd();
    let kubeflow_probe = at(
        &kubeflow,
        &format!("{KUBEFLOW_SPEC}/podTemplate/properties/activityProbe"),
    );
    let our_probe = at(&ours, &format!("{OUR_SPEC}/activityProbe"));
    let exactly_one_of_two = "!(has(self.podExec) && has(self.jupyter)) && (has(self.podExec) || has(self.jupyter))";
    assert_covers(kubeflow_probe, our_probe, "activityProbe", &[exactly_one_of_two]);
    // Spot checks, so a broken comparison cannot pass silently.
    assert_eq!(
        number(our_probe.pointer("/properties/probeIntervalSeconds/maximum")),
        Some(31_536_000.0)
    );
    assert_eq!(
        our_probe.pointer("/properties/minProbeIntervalSeconds/default"),
        Some(&json!(300))
    );
    assert_eq!(
        our_probe.pointer("/properties/podExec/properties/script/maxLength"),
        Some(&json!(2048))
    );
    assert_eq!(
        our_probe.pointer("/properties/jupyter/properties/portId/pattern"),
        Some(&json!(PORT_ID_PATTERN))
    );
}

#[test]
fn the_activity_rules_schema_is_kubeflows() {
    let kubeflow = kubeflow_crd();
    let ours = our_crd();
    let kubeflow_rules = at(&kubeflow, &format!("{KUBEFLOW_SPEC}/activityRules"));
    let our_rules = at(&ours, &format!("{OUR_SPEC}/activityRules"));
    assert_covers(kubeflow_rules, our_rules, "activityRules", &[]);
    assert_eq!(
        number(our_rules.pointer("/items/properties/config/properties/secondsSinceActive/minimum")),
        Some(16.0)
    );
    assert_eq!(
        our_rules
            .pointer("/items/properties/match/properties/matchNamespace/properties/selector/x-kubernetes-map-type"),
        Some(&json!("atomic"))
    );
}

#[test]
fn the_schema_adds_module_token_any_of_and_a_four_way_choice() {
    let ours = our_crd();
    let probe = at(&ours, &format!("{OUR_SPEC}/activityProbe"));
    let rules: Vec<&str> = probe["x-kubernetes-validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rule"].as_str().unwrap())
        .collect();
    assert!(rules.contains(
        &"(has(self.podExec) ? 1 : 0) + (has(self.jupyter) ? 1 : 0) + (has(self.module) ? 1 : 0) + (has(self.anyOf) ? 1 : 0) == 1"
    ));
    let any_of = at(probe, "/properties/anyOf");
    assert_eq!(any_of.pointer("/maxItems"), Some(&json!(MAX_ANY_OF)));
    assert_eq!(
        any_of.pointer("/items/x-kubernetes-validations/0/rule"),
        Some(&json!(
            "(has(self.podExec) ? 1 : 0) + (has(self.jupyter) ? 1 : 0) + (has(self.module) ? 1 : 0) == 1"
        ))
    );
    let module = at(probe, "/properties/module");
    assert_eq!(module.pointer("/required"), Some(&json!(["location"])));
    assert_eq!(
        module.pointer("/properties/sha256/pattern"),
        Some(&json!(SHA256_PATTERN))
    );
    assert_eq!(
        module.pointer("/properties/config/x-kubernetes-preserve-unknown-fields"),
        Some(&json!(true))
    );
    assert_eq!(module.pointer("/properties/config/type"), Some(&json!("object")));
    assert_eq!(number(module.pointer("/properties/timeoutSeconds/minimum")), Some(1.0));
    let token = at(probe, "/properties/jupyter/properties/tokenSecretRef");
    assert_eq!(required(token), ["key", "name"]);
}

#[test]
fn the_crd_is_cluster_scoped_with_status_and_printer_columns() {
    let crd = crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("cullingpolicies.workspace-culler.io")
    );
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.kind, "CullingPolicy");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
    let columns: Vec<(&str, &str)> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Kinds", ".spec.workspaceKinds"),
            ("Managed", ".status.managedWorkspaces"),
            ("Paused", ".status.pausedTotal"),
            ("Dry-Run", ".spec.dryRun"),
            ("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );
    let ours = our_crd();
    let spec = at(&ours, "/spec/versions/0/schema/openAPIV3Schema/properties/spec");
    assert_eq!(required(spec), ["activityProbe", "workspaceKinds"]);
    assert_eq!(number(spec.pointer("/properties/workspaceKinds/minItems")), Some(1.0));
    assert_eq!(
        spec.pointer("/properties/workspaceKinds/items/pattern"),
        Some(&json!(NAME_PATTERN))
    );
    assert_eq!(spec.pointer("/properties/dryRun/default"), Some(&json!(false)));
    let status = at(
        &ours,
        "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties",
    );
    assert_eq!(
        status.pointer("/conditions/x-kubernetes-list-map-keys"),
        Some(&json!(["type"]))
    );
    assert_eq!(status.pointer("/observedGeneration/format"), Some(&json!("int64")));
}

#[test]
fn optional_fields_are_not_nullable() {
    let ours = our_crd();
    let spec = at(&ours, "/spec/versions/0/schema/openAPIV3Schema/properties/spec");
    let status = at(
        &ours,
        "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties",
    );
    for schema in [spec, status] {
        let text = schema.to_string();
        assert!(!text.contains("nullable"), "{text}");
        assert!(!text.contains("\"null\""), "{text}");
    }
    assert_eq!(
        spec.pointer("/properties/activityProbe/properties/jupyter/type"),
        Some(&json!("object"))
    );
}

#[test]
fn the_crd_renders_as_yaml() {
    let yaml = crd_yaml().unwrap();
    assert!(yaml.contains("kind: CustomResourceDefinition"));
    assert!(yaml.contains("x-kubernetes-validations"));
    let back: Value = yaml_to_json(&yaml);
    assert_eq!(back, our_crd());
}

#[test]
fn kubeflows_sample_probe_and_rules_paste_into_a_policy() {
    for (file, kind) in [
        ("jupyterlab_v1beta1_workspacekind.yaml", "jupyterlab"),
        ("codeserver_v1beta1_workspacekind.yaml", "codeserver"),
        ("rstudio_v1beta1_workspacekind.yaml", "rstudio"),
    ] {
        let sample = yaml_to_json(&reference(file));
        let spec: CullingPolicySpec = serde_json::from_value(json!({
            "workspaceKinds": [kind],
            "activityProbe": sample["spec"]["podTemplate"]["activityProbe"],
            "activityRules": sample["spec"]["activityRules"],
        }))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(spec.activity_probe.methods().is_some(), "{file}");
        assert!(!spec.activity_rules.is_empty(), "{file}");
        // podExec's 60 s default fits Kubeflow's sample windows (7200 s and more).
        assert_eq!(validate(&spec), Ok(()), "{file}");
    }
}

#[test]
fn defaults_are_kubeflows() {
    let spec: CullingPolicySpec = serde_json::from_value(json!({
        "workspaceKinds": ["jupyterlab"],
        "activityProbe": {"podExec": {"script": "#!/bin/sh\nexit 0"}},
        "activityRules": [{"config": {"secondsSinceActive": 7200}, "effect": {"pauseWorkspace": true}}]
    }))
    .unwrap();
    assert!(!spec.dry_run);
    assert_eq!(spec.activity_probe.min_probe_interval_seconds, 300);
    assert_eq!(spec.activity_probe.probe_interval_seconds, 3600);
    assert_eq!(spec.activity_probe.pod_exec.as_ref().unwrap().timeout_seconds, 60);
    assert_eq!(spec.activity_rules[0].config.min_running_seconds, 0);
    assert_eq!(spec.activity_rules[0].match_, None);
    let module: ModuleProbe = serde_json::from_value(json!({"location": "jupyter"})).unwrap();
    assert_eq!(module.timeout_seconds, DEFAULT_MODULE_TIMEOUT_SECONDS);
}

#[test]
fn module_config_is_kept_as_given() {
    let config = json!({"threshold": 0.5, "nested": {"list": [1, "two", null]}});
    let module: ModuleProbe = serde_json::from_value(json!({
        "location": "gpu-idle.wasm", "sha256": "ab".repeat(32), "config": config, "timeoutSeconds": 12
    }))
    .unwrap();
    assert_eq!(module.config.as_ref().map(|c| Value::Object(c.clone())), Some(config));
    assert_eq!(ProbeMethod::Module(&module).deadline_seconds(), 12);
}

fn valid() -> CullingPolicySpec {
    policy("p", &["jupyterlab"]).spec
}

fn errors(spec: &CullingPolicySpec) -> String {
    validate(spec)
        .expect_err("expected the policy to be refused")
        .join("\n")
}

#[test]
fn a_valid_policy_passes() {
    assert_eq!(validate(&valid()), Ok(()));
}

#[test]
fn exactly_one_probe_method_is_required() {
    let mut none = valid();
    none.activity_probe.jupyter = None;
    assert_eq!(none.activity_probe.methods(), None);
    assert!(errors(&none).contains("exactly one of 'podExec', 'jupyter', 'module' or 'anyOf'"));

    let mut two = valid();
    two.activity_probe.module = Some(ModuleProbe {
        location: "jupyter".into(),
        sha256: None,
        config: None,
        timeout_seconds: 5,
        pull_secret_ref: None,
    });
    assert_eq!(two.activity_probe.methods(), None);
    assert!(errors(&two).contains("exactly one of"));
}

fn any_of(sources: Value) -> CullingPolicySpec {
    let mut spec = valid();
    spec.activity_probe.jupyter = None;
    spec.activity_probe.any_of = Some(serde_json::from_value(sources).unwrap());
    spec
}

#[test]
fn any_of_combines_probes_each_checked_where_it_is() {
    let spec = any_of(json!([
        {"jupyter": {"lastActivity": true, "portId": "jupyterlab"}},
        {"module": {"location": "nvidia-gpu", "timeoutSeconds": 40}},
    ]));
    assert_eq!(validate(&spec), Ok(()));
    assert_eq!(spec.activity_probe.methods().map(|m| m.len()), Some(2));
    assert_eq!(
        spec.activity_probe.deadline_seconds(),
        Some(40),
        "side by side: the longest"
    );
    assert_eq!(spec.activity_probe.modules().count(), 1);

    let broken = any_of(json!([
        {"jupyter": {"lastActivity": true, "portId": "Bad Port"}},
        {},
        {"module": {"location": "../x.wasm"}},
    ]));
    assert_eq!(broken.activity_probe.methods(), None);
    let text = errors(&broken);
    for expected in [
        "spec.activityProbe.anyOf[0].jupyter.portId: \"Bad Port\" is not a port id",
        "spec.activityProbe.anyOf[1] must specify exactly one of 'podExec', 'jupyter' or 'module'",
        "spec.activityProbe.anyOf[2].module.location \"../x.wasm\" must not contain '..'",
    ] {
        assert!(text.contains(expected), "{expected}\n{text}");
    }
    assert!(errors(&any_of(json!([]))).contains("anyOf must list 1 to 4 probes, got 0"));
    let five = Value::Array(vec![json!({"module": {"location": "nvidia-gpu"}}); 5]);
    assert!(errors(&any_of(five)).contains("anyOf must list 1 to 4 probes, got 5"));

    let mut both = any_of(json!([{"module": {"location": "nvidia-gpu"}}]));
    both.activity_probe.pod_exec = Some(PodExecProbe {
        script: "#!/bin/sh\n".into(),
        timeout_seconds: 5,
    });
    assert!(errors(&both).contains("exactly one of 'podExec', 'jupyter', 'module' or 'anyOf'"));
}

#[test]
fn the_deadline_of_any_of_is_its_longest_probe() {
    let mut spec = any_of(json!([
        {"jupyter": {"lastActivity": true, "portId": "jupyterlab"}},
        {"module": {"location": "nvidia-gpu", "timeoutSeconds": 4000}},
    ]));
    assert!(
        errors(&spec)
            .contains("the probe's deadline (4000 s) must be shorter than the shortest secondsSinceActive (3600 s")
    );
    spec.activity_probe.any_of.as_mut().unwrap()[1]
        .module
        .as_mut()
        .unwrap()
        .timeout_seconds = 30;
    assert_eq!(validate(&spec), Ok(()));
}

#[test]
fn min_probe_interval_must_not_exceed_the_interval() {
    let mut spec = valid();
    spec.activity_probe.min_probe_interval_seconds = 4000;
    assert!(
        errors(&spec)
            .contains("minProbeIntervalSeconds (4000) must be less than or equal to probeIntervalSeconds (3600)")
    );
    let mut spec = valid();
    spec.activity_probe.probe_interval_seconds = MAX_PROBE_INTERVAL_SECONDS + 1;
    assert!(errors(&spec).contains("probeIntervalSeconds must be between 1 and 31536000"));
}

#[test]
fn a_probe_deadline_must_be_shorter_than_the_shortest_window() {
    let with_exec = |timeout: i32, windows: &[i32]| {
        let mut spec = valid();
        spec.activity_probe.jupyter = None;
        spec.activity_probe.pod_exec = Some(PodExecProbe {
            script: "#!/bin/sh\nexit 0".into(),
            timeout_seconds: timeout,
        });
        spec.activity_rules = windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let r = rule(*w, 0, Some(true));
                // Only the last rule may be a catch-all.
                if i + 1 < windows.len() {
                    r.in_namespaces(&[("n", i.to_string().as_str())])
                } else {
                    r
                }
            })
            .collect();
        spec
    };
    assert_eq!(validate(&with_exec(59, &[7200, 60])), Ok(()));
    let message = errors(&with_exec(60, &[7200, 60]));
    assert!(
        message.contains("the probe's deadline (60 s) must be shorter than the shortest secondsSinceActive (60 s, spec.activityRules[1])"),
        "{message}"
    );
    // A Jupyter probe's fixed deadline fits under Kubeflow's smallest window.
    let mut spec = valid();
    spec.activity_rules = vec![rule(MIN_SECONDS_SINCE_ACTIVE, 0, Some(true))];
    assert_eq!(validate(&spec), Ok(()));
    // Without rules there is no window to fit.
    assert_eq!(validate(&with_exec(100_000, &[])), Ok(()));
}

#[test]
fn a_catch_all_rule_must_be_last_and_alone() {
    let mut spec = valid();
    spec.activity_rules = vec![
        rule(3600, 0, Some(true)),
        rule(7200, 0, Some(true)).in_namespaces(&[("a", "b")]),
    ];
    assert!(errors(&spec).contains("spec.activityRules[0]: a catch-all rule (no match) must be the last rule"));
    spec.activity_rules = vec![
        rule(3600, 0, Some(true)).in_namespaces(&[("a", "b")]),
        rule(3600, 0, Some(true)),
    ];
    assert_eq!(validate(&spec), Ok(()));
    // An empty `match: {}` is a catch-all too.
    spec.activity_rules = vec![
        ActivityRule {
            match_: Some(RuleMatchSpec::default()),
            ..rule(3600, 0, Some(true))
        },
        rule(7200, 0, Some(true)),
    ];
    assert!(errors(&spec).contains("only one catch-all rule"));
}

#[test]
fn rule_limits_and_effects_are_checked() {
    let mut spec = valid();
    spec.activity_rules = vec![rule(15, -1, None)];
    let message = errors(&spec);
    assert!(
        message.contains("secondsSinceActive must be at least 16, got 15"),
        "{message}"
    );
    assert!(message.contains("minRunningSeconds must not be negative"), "{message}");
    assert!(message.contains("effect must specify at least one effect"), "{message}");
}

#[test]
fn invalid_selectors_are_refused() {
    let mut spec = valid();
    let mut bad = rule(3600, 0, Some(true)).with_pod_config(&[]);
    if let Some(m) = bad.match_.as_mut().and_then(|m| m.match_pod_config.as_mut()) {
        m.selector.match_expressions.push(LabelSelectorRequirement {
            key: "gpu".into(),
            operator: "Exists".into(),
            values: vec!["1".into()],
        });
    }
    spec.activity_rules = vec![bad];
    let message = errors(&spec);
    assert!(
        message.contains(
            "spec.activityRules[0].match.matchPodConfig.selector: operator Exists on key \"gpu\" takes no values"
        ),
        "{message}"
    );
    let mut ok = rule(3600, 0, Some(true)).in_namespaces(&[]);
    if let Some(m) = ok.match_.as_mut().and_then(|m| m.match_namespace.as_mut()) {
        m.selector.match_labels = labels(&[("tier", "development")]);
    }
    spec.activity_rules = vec![ok];
    assert_eq!(validate(&spec), Ok(()));
}

#[test]
fn workspace_kinds_must_be_valid_and_distinct() {
    let mut spec = valid();
    spec.workspace_kinds = vec![];
    assert!(errors(&spec).contains("must name at least one WorkspaceKind"));
    spec.workspace_kinds = vec!["jupyterlab".into(), "JupyterLab".into(), "jupyterlab".into()];
    let message = errors(&spec);
    assert!(
        message.contains("spec.workspaceKinds[1]: \"JupyterLab\" is not a valid WorkspaceKind name"),
        "{message}"
    );
    assert!(
        message.contains("spec.workspaceKinds[2]: \"jupyterlab\" is named more than once"),
        "{message}"
    );
}

#[test]
fn jupyter_settings_are_checked() {
    let mut spec = valid();
    if let Some(j) = spec.activity_probe.jupyter.as_mut() {
        j.last_activity = false;
        j.port_id = "Jupyter Lab".into();
        j.token_secret_ref = Some(SecretKeyRef {
            name: "jupyter_token".into(),
            key: "token/value".into(),
        });
    }
    let message = errors(&spec);
    assert!(message.contains("'lastActivity' must be true"), "{message}");
    assert!(message.contains("\"Jupyter Lab\" is not a port id"), "{message}");
    assert!(message.contains("tokenSecretRef.name"), "{message}");
    assert!(message.contains("tokenSecretRef.key"), "{message}");
}

#[test]
fn module_settings_are_checked() {
    let mut spec = valid();
    spec.activity_probe.jupyter = None;
    spec.activity_probe.module = Some(ModuleProbe {
        location: "../etc/probe.wasm".into(),
        sha256: Some("ABC".into()),
        config: None,
        timeout_seconds: 0,
        pull_secret_ref: None,
    });
    let message = errors(&spec);
    assert!(message.contains("must not contain '..'"), "{message}");
    assert!(message.contains("sha256 must be 64 lowercase hex digits"), "{message}");
    assert!(
        message.contains("module.timeoutSeconds must be at least 1"),
        "{message}"
    );
    spec.activity_probe.module = Some(ModuleProbe {
        location: "probes/gpu..idle.wasm".into(),
        sha256: Some("0".repeat(64)),
        config: None,
        timeout_seconds: 5,
        pull_secret_ref: None,
    });
    assert_eq!(validate(&spec), Ok(()), "'..' inside a file name is fine");
}

#[test]
fn a_pod_exec_script_must_start_with_a_valid_shebang() {
    // Kubeflow's webhook (and its CRD's description of `script`) requires a shebang line.
    let with_script = |script: &str| {
        let mut spec = valid();
        spec.activity_probe.jupyter = None;
        spec.activity_probe.pod_exec = Some(PodExecProbe {
            script: script.into(),
            timeout_seconds: 60,
        });
        spec
    };
    for script in [
        "#!/bin/sh\nexit 0",
        "#!/usr/bin/env bash\r\necho '{}' > \"$OUTPUT_JSON_PATH\"",
        "#! /usr/bin/env python3 -u\nprint()",
        "#!/bin/sh",
    ] {
        assert_eq!(validate(&with_script(script)), Ok(()), "{script:?}");
    }
    for script in [
        "echo '{\"has_activity\": true}' > \"$OUTPUT_JSON_PATH\"",
        " #!/bin/sh\nexit 0",
        "#!\nexit 0",
        "#!  \nexit 0",
        "\n#!/bin/sh\nexit 0",
    ] {
        let message = errors(&with_script(script));
        assert!(
            message.contains("spec.activityProbe.podExec.script: the first line must be a shebang"),
            "{script:?}: {message}"
        );
    }
    // The kernel reads at most 255 characters after "#!".
    let longest = format!("#!/{}\nexit 0", "a".repeat(254));
    assert_eq!(validate(&with_script(&longest)), Ok(()));
    let message = errors(&with_script(&format!("#!/{}\nexit 0", "a".repeat(255))));
    assert!(
        message.contains("shebang line exceeds the 255 character limit"),
        "{message}"
    );
}

#[test]
fn a_maximum_lifetime_must_be_a_minute_or_more_and_beyond_min_running_seconds() {
    let mut spec = policy("p", &["k"]).spec;
    spec.activity_rules[0].config.max_running_seconds = Some(30);
    let errors = validate(&spec).unwrap_err();
    assert!(
        errors[0].contains("maxRunningSeconds must be at least 60, got 30"),
        "{errors:?}"
    );
    spec.activity_rules[0].config.min_running_seconds = 600;
    spec.activity_rules[0].config.max_running_seconds = Some(600);
    let errors = validate(&spec).unwrap_err();
    assert!(
        errors[0].contains("maxRunningSeconds (600) must be more than minRunningSeconds (600)"),
        "{errors:?}"
    );
    spec.activity_rules[0].config.max_running_seconds = Some(8 * 3600);
    assert_eq!(validate(&spec), Ok(()));
}

#[test]
fn an_oci_module_is_pinned_and_only_it_takes_a_pull_secret() {
    let module = |location: &str, sha256: Option<String>, secret: Option<&str>| {
        let mut spec = valid();
        spec.activity_probe.jupyter = None;
        spec.activity_probe.module = Some(ModuleProbe {
            location: location.into(),
            sha256,
            config: None,
            timeout_seconds: 5,
            pull_secret_ref: secret.map(|name| SecretRef { name: name.into() }),
        });
        spec
    };
    let digest = format!("sha256:{}", "a".repeat(64));
    let pinned = module(
        &format!("oci://registry.example/team/probe@{digest}"),
        None,
        Some("pull"),
    );
    assert_eq!(validate(&pinned), Ok(()));
    let tag_and_sha = module("oci://registry.example/team/probe:v1", Some("b".repeat(64)), None);
    assert_eq!(validate(&tag_and_sha), Ok(()));
    let tag_only = module("oci://registry.example/team/probe:v1", None, None);
    assert!(errors(&tag_only).contains("names a tag only, which can move"));
    let file_with_secret = module("team/probe.wasm", None, Some("pull"));
    assert!(errors(&file_with_secret).contains("pullSecretRef applies to oci:// locations only"));
    let bad_secret = module(&format!("oci://registry.example/p@{digest}"), None, Some("Not A Name"));
    assert!(errors(&bad_secret).contains("pullSecretRef.name: \"Not A Name\" is not a valid Secret name"));
}
