//! Probe modules in a real OCI registry (the CNCF distribution registry, built from its Go
//! module), through the commands an author runs — `probe push`, then `probe inspect|test
//! oci://…` — and through the client the controller pulls with: basic auth over TLS with a CA
//! of our own, and every way a pull can go wrong ending in an error that says which.

mod cli;

use oci_client::Reference;
use oci_client::client::{Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use std::path::Path;
use workspace_culler::oci::{self, Registry};
use workspace_culler_support::registry::{self, Options};

const USER: &str = "probe-author";
const PASSWORD: &str = "s3cret-Pass";

fn job_guard() -> &'static Path {
    workspace_culler_support::test_probes::job_guard()
}

/// Runs `workspace-culler <args>` with `password` in the environment (as an author would).
fn run_with_password(args: &[&str], cache: &Path, password: &str) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_workspace-culler"))
        .args(args)
        .env("WORKSPACE_CULLER_CACHE_DIR", cache)
        .env("WORKSPACE_CULLER_REGISTRY_PASSWORD", password)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The value of a `probe push` report line.
fn line<'a>(report: &'a str, key: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{report}"))
}

fn client(registry: &registry::Registry, cache: Option<&Path>, max_bytes: u64) -> Registry {
    Registry::new(oci::Settings {
        insecure: vec![registry.host.clone()],
        ca_file: None,
        cache_dir: cache.map(Path::to_path_buf),
        max_bytes,
        cache_max_bytes: None,
    })
    .unwrap()
}

#[test]
fn an_author_pushes_over_tls_with_credentials_and_pins_what_push_printed() {
    let registry = registry::Registry::start(Options {
        credentials: Some((USER.into(), PASSWORD.into())),
        tls: true,
    })
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let ca = registry.ca_file();
    let ca = ca.to_str().unwrap();
    let target = format!("oci://{}/team/job-guard:v1", registry.host);
    let component = job_guard().to_str().unwrap();
    let tls = ["--registry-ca-file", ca];
    let user = ["--registry-username", USER];

    let (code, text) = run_with_password(
        &["probe", "push", component, &target, user[0], user[1]],
        cache.path(),
        PASSWORD,
    );
    assert_ne!(code, 0, "a registry whose CA is not trusted is refused\n{text}");
    assert!(
        text.contains("cannot reach the registry") && text.to_lowercase().contains("certificate"),
        "{text}"
    );

    let (code, text) = run_with_password(&["probe", "push", component, &target, tls[0], tls[1]], cache.path(), "");
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("the registry refused access"), "{text}");

    let (code, pushed) = run_with_password(
        &["probe", "push", component, &target, tls[0], tls[1], user[0], user[1]],
        cache.path(),
        PASSWORD,
    );
    assert_eq!(code, 0, "{pushed}");
    let digest = line(&pushed, "digest");
    let sha256 = line(&pushed, "sha256");
    assert_eq!(
        sha256,
        workspace_culler_engine::sha256_hex(&std::fs::read(job_guard()).unwrap())
    );
    let pinned = format!("oci://{}/team/job-guard@{digest}", registry.host);
    assert!(line(&pushed, "pin").contains(&pinned), "{pushed}");

    let (code, text) = run_with_password(&["probe", "inspect", &pinned, tls[0], tls[1]], cache.path(), "");
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("the registry refused access"), "{text}");
    let (code, text) = run_with_password(
        &["probe", "inspect", &pinned, tls[0], tls[1], user[0], user[1]],
        cache.path(),
        PASSWORD,
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("name          job-guard\n"), "{text}");
    assert!(text.contains(sha256), "{text}");
}

/// Pushes `layer` to `reference` (a registry over plain HTTP) with oci-client's own push, and
/// the digest the registry then gives the tag.
async fn push_as_oci_client(
    reference: &Reference,
    layer: ImageLayer,
    config: Config,
    manifest: Option<OciImageManifest>,
) -> String {
    let raw = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    raw.push(reference, &[layer], config, &RegistryAuth::Anonymous, manifest)
        .await
        .unwrap();
    raw.fetch_manifest_digest(reference, &RegistryAuth::Anonymous)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_pulled_component_is_verified_and_kept_so_it_is_pulled_once() {
    let mut registry = registry::Registry::start(Options::default()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(job_guard()).unwrap();
    let sha256 = workspace_culler_engine::sha256_hex(&bytes);
    let reference: Reference = format!("{}/probes/job-guard:v1", registry.host).parse().unwrap();
    let pushed = client(&registry, None, 64 << 20)
        .push(&reference, bytes.clone(), &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(pushed.component_sha256, sha256);
    // Pushed again as oci-client itself pushes it, as versions before this one did: the same
    // digest, so pushing an unchanged component again leaves its tag on the manifest pinned.
    let again: Reference = format!("{}/probes/job-guard:again", registry.host).parse().unwrap();
    let layer = ImageLayer::new(bytes.clone(), oci::WASM_LAYER_MEDIA_TYPE.into(), None);
    let config = Config::new(b"{}".to_vec(), oci::WASM_CONFIG_MEDIA_TYPE.into(), None);
    assert_eq!(
        push_as_oci_client(&again, layer, config, None).await,
        pushed.manifest_digest
    );
    let at = |rest: &str| format!("oci://{}/{rest}", registry.host);
    let by_digest = oci::parse(&at(&format!("probes/job-guard@{}", pushed.manifest_digest)), None).unwrap();

    let first = client(&registry, Some(cache.path()), 64 << 20);
    let fetched = first.fetch(&by_digest, &RegistryAuth::Anonymous).await.unwrap();
    assert!(fetched.pulled);
    assert_eq!(fetched.bytes, bytes);
    // The registry logs a request once it has sent the whole response.
    let logged = || async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        registry.requests()
    };
    let requests = logged().await;
    assert_eq!(registry.blob_pulls(), 1, "{requests:?}");
    // A new process with the same cache: no request at all.
    let again = client(&registry, Some(cache.path()), 64 << 20)
        .fetch(&by_digest, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert!(!again.pulled);
    assert_eq!(again.bytes, bytes);
    assert_eq!(logged().await, requests);
    // Pinned by the component's digest and a tag: also served from the cache.
    let by_tag = oci::parse(&at("probes/job-guard:v1"), Some(&sha256)).unwrap();
    assert!(!first.fetch(&by_tag, &RegistryAuth::Anonymous).await.unwrap().pulled);

    let fresh = || client(&registry, None, 64 << 20);
    let problem = |location: oci::Location| {
        let registry = fresh();
        async move {
            let error = registry.fetch(&location, &RegistryAuth::Anonymous).await.unwrap_err();
            assert_eq!(
                registry.problem(&location.text, location.sha256.as_deref()).as_deref(),
                Some(error.as_str())
            );
            error
        }
    };
    let wrong_pin = problem(oci::parse(&at("probes/job-guard:v1"), Some(&"0".repeat(64))).unwrap()).await;
    assert!(
        wrong_pin.contains(&format!("digest mismatch: the artifact's component is sha256:{sha256}")),
        "{wrong_pin}"
    );
    let unknown_digest = format!("sha256:{}", "1".repeat(64));
    let wrong_digest = problem(oci::parse(&at(&format!("probes/job-guard@{unknown_digest}")), None).unwrap()).await;
    assert!(wrong_digest.contains("not found in the registry"), "{wrong_digest}");
    let missing = problem(oci::parse(&at(&format!("probes/nothing@{}", pushed.manifest_digest)), None).unwrap()).await;
    assert!(missing.contains("not found in the registry"), "{missing}");
    let oversize = client(&registry, None, 1000)
        .fetch(&by_digest, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert!(oversize.contains("over the cap of 1000 bytes"), "{oversize}");

    // An image whose single layer is a gzip tarball, not a component.
    let layer = ImageLayer::new(
        bytes.clone(),
        "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        None,
    );
    let config = Config::new(b"{}".to_vec(), "application/vnd.oci.image.config.v1+json".into(), None);
    let manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
    let tarball: Reference = format!("{}/probes/tarball:v1", registry.host).parse().unwrap();
    let digest = push_as_oci_client(&tarball, layer, config, Some(manifest)).await;
    let wrong_type = problem(oci::parse(&at(&format!("probes/tarball@{digest}")), None).unwrap()).await;
    assert!(
        wrong_type.contains("media type is application/vnd.oci.image.layer.v1.tar+gzip"),
        "{wrong_type}"
    );

    registry.stop();
    let down = client(&registry, None, 64 << 20)
        .fetch(&by_digest, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert!(down.contains("cannot reach the registry"), "{down}");
    // The cache still serves what was pulled while it was up.
    assert!(!first.fetch(&by_digest, &RegistryAuth::Anonymous).await.unwrap().pulled);
}

#[tokio::test]
async fn credentials_given_for_one_pull_are_never_used_for_another() {
    let registry = registry::Registry::start(Options {
        credentials: Some((USER.into(), PASSWORD.into())),
        tls: false,
    })
    .unwrap();
    let user = RegistryAuth::Basic(USER.into(), PASSWORD.into());
    let client = client(&registry, None, 64 << 20);
    let bytes = std::fs::read(job_guard()).unwrap();
    let mut pinned = Vec::new();
    for repository in ["team-a/probe", "team-b/probe"] {
        let reference: Reference = format!("{}/{repository}:v1", registry.host).parse().unwrap();
        let pushed = client.push(&reference, bytes.clone(), &user).await.unwrap();
        let location = format!("oci://{}/{repository}@{}", registry.host, pushed.manifest_digest);
        pinned.push(oci::parse(&location, None).unwrap());
    }
    assert!(client.fetch(&pinned[0], &user).await.unwrap().pulled);
    // The same client, the same registry, no credentials: refused, although the registry
    // accepted this client's credentials a moment ago.
    let error = client.fetch(&pinned[1], &RegistryAuth::Anonymous).await.unwrap_err();
    assert!(error.contains("the registry refused access"), "{error}");
}
