//! The tutorials of `docs/` work as written: the code they show, put into
//! an empty folder the way a reader does, builds with the tutorial's
//! toolchain and passes the tutorial's fixture in the harness.

mod cli;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The fenced code blocks of `docs/tutorial-<name>.md` in language `lang`, in order.
fn blocks(name: &str, lang: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(repo_root().join(format!("docs/tutorial-{name}.md"))).unwrap();
    let fence = format!("```{lang}\n");
    let mut found = Vec::new();
    let mut rest = doc.as_str();
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let end = body.find("```").expect("an unclosed code block");
        found.push(body[..end].to_string());
        rest = &body[end..];
    }
    assert!(!found.is_empty(), "docs/tutorial-{name}.md has no {lang} block");
    found
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn run(command: &mut Command) {
    cli::succeed(command);
}

/// The tutorial's first fixture passes against the component it built.
fn fixture_passes(name: &str, component: &Path, dir: &Path) {
    let fixture = dir.join("fixtures/01.yaml");
    write(&fixture, &blocks(name, "yaml")[0]);
    let (code, text) = cli::run(
        &[
            "probe",
            "test",
            component.to_str().unwrap(),
            "--fixture",
            fixture.to_str().unwrap(),
        ],
        &dir.join("cache"),
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("expect     Success ✔"), "{text}");
}

/// Builds an example, which installs the toolchain its tutorial uses.
fn example_toolchain(example: &str, dir: &Path) {
    run(Command::new("bash")
        .arg(repo_root().join("probes/examples").join(example).join("build.sh"))
        .arg(dir.join("example-out"))
        .env("WORKSPACE_CULLER_ROOT", repo_root()));
}

#[test]
fn the_rust_tutorial_builds_tests_natively_and_passes_its_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("job-guard");
    let sdk = repo_root().join("probe-sdk");
    let manifest = blocks("rust", "toml")[0].replace("/path/to/workspace-culler/probe-sdk", sdk.to_str().unwrap());
    write(&crate_dir.join("Cargo.toml"), &format!("{manifest}\n[workspace]\n"));
    let rust = blocks("rust", "rust");
    write(&crate_dir.join("src/lib.rs"), &rust[0]);
    write(&crate_dir.join("tests/fixtures.rs"), &rust[1]);
    write(&crate_dir.join("fixtures/01.yaml"), &blocks("rust", "yaml")[0]);
    // Its own target dir under the workspace's, kept between runs.
    let target = repo_root().join("target/tutorials");
    let cargo = || {
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(&crate_dir).env("CARGO_TARGET_DIR", &target);
        c
    };
    run(cargo().arg("test"));
    run(cargo().args(["build", "--target", "wasm32-wasip2", "--release"]));
    let component = target.join("wasm32-wasip2/release/job_guard_probe.wasm");
    fixture_passes("rust", &component, &crate_dir);
}

#[test]
fn the_go_tutorial_builds_and_passes_its_fixture() {
    // The tutorial's build steps are the example's build.sh; its probe.go is the tutorial's.
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("code-server-probe");
    std::fs::create_dir_all(project.join("src/export_wit_world")).unwrap();
    let example = repo_root().join("probes/examples/go-code-server");
    std::fs::copy(example.join("build.sh"), project.join("build.sh")).unwrap();
    std::fs::copy(
        example.join("src/export_wit_world/http.go"),
        project.join("src/export_wit_world/http.go"),
    )
    .unwrap();
    write(&project.join("src/export_wit_world/probe.go"), &blocks("go", "go")[0]);
    let out = dir.path().join("out");
    run(Command::new("bash")
        .arg(project.join("build.sh"))
        .arg(&out)
        .env("WORKSPACE_CULLER_ROOT", repo_root()));
    fixture_passes("go", &out.join("code-server.wasm"), &project);
}

#[test]
fn the_javascript_tutorial_builds_and_passes_its_fixture() {
    let dir = tempfile::tempdir().unwrap();
    example_toolchain("js-rstudio", dir.path());
    let project = dir.path().join("rstudio-probe");
    std::fs::create_dir_all(&project).unwrap();
    std::os::unix::fs::symlink(
        repo_root().join("probes/examples/js-rstudio/node_modules"),
        project.join("node_modules"),
    )
    .unwrap();
    run(Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("wit"))
        .arg(project.join("wit")));
    write(&project.join("package.json"), r#"{"type": "module"}"#);
    let js = blocks("javascript", "js");
    write(&project.join("src/rstudio.js"), &js[0]);
    write(&project.join("build.mjs"), &js[1]);
    run(Command::new("node").arg("build.mjs").current_dir(&project));
    fixture_passes("javascript", &project.join("rstudio.wasm"), &project);
}

#[test]
fn the_python_tutorial_builds_and_passes_its_fixture() {
    let dir = tempfile::tempdir().unwrap();
    example_toolchain("python-cpu", dir.path());
    let project = dir.path().join("cpu-probe");
    std::fs::create_dir_all(project.join("app")).unwrap();
    run(Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("wit"))
        .arg(project.join("wit")));
    write(&project.join("app/app.py"), &blocks("python", "python")[0]);
    let componentize_py = repo_root().join("probes/examples/python-cpu/.venv/bin/componentize-py");
    run(Command::new(componentize_py)
        .args([
            "-d",
            "../wit",
            "-w",
            "activity-probe",
            "componentize",
            "app",
            "-p",
            ".",
            "-o",
            "../cpu-time.wasm",
        ])
        .env_remove("VIRTUAL_ENV")
        .current_dir(project.join("app")));
    fixture_passes("python", &project.join("cpu-time.wasm"), &project);
}
