//! Every CullingPolicy the docs show (README.md and docs/) is one the controller accepts: it
//! parses into the resource and passes the same validation the controller applies, once the
//! placeholder digest a reader fills in is filled in.

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
            checked += 1;
        }
    }
    // README (1), migration (1), one per tutorial (4).
    assert!(checked >= 6, "only {checked} policies found in the docs");
    // Every tutorial ends by pinning what `probe push` printed.
    assert!(oci >= 4, "only {oci} policies pin an oci:// module");
}
