//! Probe modules in an OCI registry, pinned by digest: `oci://<registry>/<repository>@sha256:<d>`
//! (a manifest digest) or `oci://<registry>/<repository>:<tag>` together with the component's
//! own `sha256`. What is pulled is verified against both before anything runs it, kept on disk
//! by its digest, and read from there afterwards, so a restart pulls nothing.
//!
//! The artifact is the CNCF layout for Wasm (config `application/vnd.wasm.config.v0+json`, one
//! layer `application/vnd.wasm.content.layer.v1+wasm`); an image whose single layer is the
//! component itself (as `oras push` makes by default) is accepted too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use workspace_culler_engine::sha256_hex;

/// The scheme of a location in a registry.
pub const SCHEME: &str = "oci://";
/// The config media type of a Wasm artifact (CNCF TAG Runtime's layout).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The layer media type of a Wasm component.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// Layer media types whose content is taken as the component.
const LAYER_MEDIA_TYPES: &[&str] = &[
    WASM_LAYER_MEDIA_TYPE,
    "application/wasm",
    // `oras push registry/repo:tag probe.wasm` stores the file as is under this type.
    "application/vnd.oci.image.layer.v1.tar",
];
/// Manifest types asked for.
const MANIFEST_MEDIA_TYPES: &[&str] = &[
    oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
];
/// Largest manifest read.
const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// Whether `location` names a module in a registry.
pub fn is_oci(location: &str) -> bool {
    location.starts_with(SCHEME)
}

/// A parsed, pinned `oci://` location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// Registry, repository, tag and digest.
    pub reference: Reference,
    /// The location as written.
    pub text: String,
    /// The component's SHA-256 (hex) the policy pins, if it does.
    pub sha256: Option<String>,
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parse `location` (with the policy's `sha256`, if any). A tag alone can move, so it is
/// refused unless `sha256` pins the component.
pub fn parse(location: &str, sha256: Option<&str>) -> Result<Location, String> {
    let rest = location
        .strip_prefix(SCHEME)
        .ok_or_else(|| format!("{location:?} is not an oci:// location"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if !rest.contains('/') || !(host.contains('.') || host.contains(':') || host == "localhost") {
        return Err(format!(
            "{location}: name the registry first, e.g. oci://registry.example.com/team/probe@sha256:…"
        ));
    }
    let reference: Reference = rest
        .parse()
        .map_err(|e| format!("{location} is not a valid OCI reference: {e}"))?;
    if let Some(digest) = reference.digest() {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        if !is_sha256_hex(hex) {
            return Err(format!(
                "{location}: the digest must be sha256:<64 lowercase hex digits>"
            ));
        }
    } else if sha256.is_none() {
        return Err(format!(
            "{location} names a tag only, which can move: pin the artifact with @sha256:<manifest digest> \
             or the component with module.sha256 (both printed by `workspace-culler probe push`)"
        ));
    }
    if let Some(pin) = sha256.filter(|pin| !is_sha256_hex(pin)) {
        return Err(format!("sha256 must be 64 lowercase hex digits, got {pin:?}"));
    }
    Ok(Location {
        reference,
        text: location.to_string(),
        sha256: sha256.map(str::to_string),
    })
}

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Registries (`host[:port]`) reached over plain HTTP; every other one over TLS.
    pub insecure: Vec<String>,
    /// PEM file of extra CA certificates registries' TLS certificates are checked against.
    pub ca_file: Option<PathBuf>,
    /// Where pulled components are kept (by digest); `None`: nowhere, each process pulls.
    pub cache_dir: Option<PathBuf>,
    /// Largest component pulled.
    pub max_bytes: u64,
    /// The most `cache_dir` may hold (compiled code included): keeping a pulled component
    /// evicts the least recently used files beyond it. `None`: no bound.
    pub cache_max_bytes: Option<u64>,
}

/// What [`Registry::push`] stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The manifest's digest (`sha256:…`): pin it in the location.
    pub manifest_digest: String,
    /// The component's SHA-256 (hex): the same as `probe inspect` prints.
    pub component_sha256: String,
}

/// A component read from the cache or pulled.
#[derive(Clone)]
pub struct Fetched {
    /// The component.
    pub bytes: Vec<u8>,
    /// Its SHA-256 (hex).
    pub sha256: String,
    /// Whether it came from the registry (not the cache).
    pub pulled: bool,
}

/// Pulls and pushes, keeps pulled components on disk, and remembers the last problem with each
/// location (for a policy's condition).
pub struct Registry {
    settings: Settings,
    /// The CA file's certificates, read once.
    ca: Option<Vec<u8>>,
    /// By location and the component's pin: two policies may pin the same location differently,
    /// and one's wrong pin is not the other's problem.
    problems: Mutex<HashMap<(String, Option<String>), String>>,
    /// The longest a pull may take, all of it: the client's timeouts bound each read only,
    /// and a registry that trickles bytes would otherwise hold every probe waiting for it.
    pull_deadline: std::time::Duration,
}

/// [`Registry::pull_deadline`] unless set otherwise: a component of the 64-MiB cap at ~0.5 MB/s.
pub const PULL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("bytes", &self.bytes.len())
            .field("sha256", &self.sha256)
            .field("pulled", &self.pulled)
            .finish()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Every cause of an error, outermost first (a transport error's own text is often bare).
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn explain(error: oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::OciDistributionError as E;
    use oci_client::errors::OciErrorCode as Code;
    let refused = match &error {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => true,
        E::ServerError { code, .. } => matches!(code, 401 | 403),
        E::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, Code::Unauthorized | Code::Denied)),
        _ => false,
    };
    match &error {
        _ if refused => format!(
            "the registry refused access ({}); name a kubernetes.io/dockerconfigjson Secret with \
             credentials for it in module.pullSecretRef",
            describe(&error)
        ),
        E::ImageManifestNotFoundError(_) => format!("not found in the registry ({})", describe(&error)),
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    Code::ManifestUnknown | Code::NameUnknown | Code::BlobUnknown | Code::NotFound
                )
            }) =>
        {
            format!("not found in the registry ({})", describe(&error))
        }
        E::RequestError(_) => format!("cannot reach the registry: {}", describe(&error)),
        _ => describe(&error),
    }
}

impl Registry {
    /// A client for `settings`.
    pub fn new(settings: Settings) -> Result<Registry, String> {
        // reqwest's TLS needs a process-wide crypto provider; the controller's is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = match &settings.ca_file {
            Some(path) => Some(
                std::fs::read(path).map_err(|e| format!("cannot read the registry CA file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(Registry {
            settings,
            ca,
            problems: Mutex::default(),
            pull_deadline: PULL_DEADLINE,
        })
    }

    /// The same registry with another deadline for a whole pull.
    pub fn with_pull_deadline(mut self, deadline: std::time::Duration) -> Registry {
        self.pull_deadline = deadline;
        self
    }

    /// A client of its own for each pull or push: a client keeps the credentials it was given
    /// per registry, and one policy must never pull with another's.
    fn client(&self) -> Client {
        let mut config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.settings.insecure.clone()),
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        if let Some(pem) = &self.ca {
            config.extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone(),
            });
        }
        Client::new(config)
    }

    /// The last problem fetching `location` pinned to `sha256` (`None` after a success, or
    /// before any fetch).
    pub fn problem(&self, location: &str, sha256: Option<&str>) -> Option<String> {
        self.problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(location.to_owned(), sha256.map(str::to_owned)))
            .cloned()
    }

    fn blob_path(&self, sha256: &str) -> Option<PathBuf> {
        Some(self.settings.cache_dir.as_ref()?.join("oci/sha256").join(sha256))
    }

    fn manifest_path(&self, manifest_digest: &str) -> Option<PathBuf> {
        let hex = manifest_digest.strip_prefix("sha256:")?;
        Some(self.settings.cache_dir.as_ref()?.join("oci/manifests").join(hex))
    }

    /// The cached component with this digest, checked (a damaged file is ignored). Read and
    /// hashed off the async workers: tens of MB for an interpreter, and a volume may hang.
    async fn cached(&self, sha256: &str) -> Option<Vec<u8>> {
        let path = self.blob_path(sha256)?;
        let sha256 = sha256.to_owned();
        blocking(move || {
            let bytes = std::fs::read(&path).ok()?;
            if sha256_hex(&bytes) != sha256 {
                return None;
            }
            workspace_culler_engine::cache::touch(&path);
            Some(bytes)
        })
        .await
        .flatten()
    }

    /// The component the manifest `location` pins named when it was last pulled, if cached.
    async fn cached_manifest(&self, location: &Location) -> Option<String> {
        let path = self.manifest_path(location.reference.digest()?)?;
        blocking(move || std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()))
            .await
            .flatten()
    }

    /// The component `location` names: from the cache when its digest is known and cached,
    /// else pulled and verified. Every problem is an error whose text says what to fix.
    pub async fn fetch(&self, location: &Location, auth: &RegistryAuth) -> Result<Fetched, String> {
        let result = self.fetch_unrecorded(location, auth).await;
        let mut problems = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        let key = (location.text.clone(), location.sha256.clone());
        match &result {
            Ok(_) => problems.remove(&key),
            Err(problem) => problems.insert(key, problem.clone()),
        };
        result
    }

    async fn fetch_unrecorded(&self, location: &Location, auth: &RegistryAuth) -> Result<Fetched, String> {
        let known = match &location.sha256 {
            Some(sha256) => Some(sha256.clone()),
            None => self.cached_manifest(location).await,
        };
        if let Some(sha256) = known
            && let Some(bytes) = self.cached(&sha256).await
        {
            return Ok(Fetched {
                sha256,
                bytes,
                pulled: false,
            });
        }
        let fetched = tokio::time::timeout(self.pull_deadline, self.pull(location, auth))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the registry did not serve it within {} s",
                    self.pull_deadline.as_secs()
                ))
            })
            .map_err(|e| format!("pulling {}: {e}", location.text))?;
        self.keep(location, fetched).await
    }

    async fn pull(&self, location: &Location, auth: &RegistryAuth) -> Result<Fetched, String> {
        let reference = &location.reference;
        let mut pull = Pull::new(self, reference)?;
        pull.authorize(auth).await?;
        let raw = pull.manifest().await?;
        let actual = format!("sha256:{}", sha256_hex(&raw));
        if let Some(pinned) = reference.digest().filter(|pinned| *pinned != actual) {
            return Err(format!(
                "digest mismatch: the registry served a manifest whose digest is {actual}, not the pinned {pinned}"
            ));
        }
        let manifest: OciImageManifest =
            serde_json::from_slice(&raw).map_err(|e| format!("the manifest {actual} is not an image manifest: {e}"))?;
        let layer = component_layer(&manifest, self.settings.max_bytes)?;
        let layer_sha256 = layer.digest.strip_prefix("sha256:").unwrap_or_default().to_string();
        if let Some(pin) = location.sha256.as_ref().filter(|pin| **pin != layer_sha256) {
            return Err(format!(
                "digest mismatch: the artifact's component is sha256:{layer_sha256}, not the pinned sha256 {pin}"
            ));
        }
        let bytes = pull.blob(layer, self.settings.max_bytes).await?;
        let sha256 = sha256_hex(&bytes);
        if sha256 != layer_sha256 {
            return Err(format!(
                "digest mismatch: the layer's content is sha256:{sha256}, its descriptor says {}",
                layer.digest
            ));
        }
        if !bytes.starts_with(b"\0asm") {
            return Err("the layer is not a WebAssembly component (no \\0asm header)".into());
        }
        Ok(Fetched {
            bytes,
            sha256,
            pulled: true,
        })
    }

    /// Keeps a pulled component (and which manifest named it), off the async workers; a cache
    /// that cannot be written only costs a pull next time.
    async fn keep(&self, location: &Location, fetched: Fetched) -> Result<Fetched, String> {
        let blob = self.blob_path(&fetched.sha256);
        let manifest = location.reference.digest().and_then(|d| self.manifest_path(d));
        let bound = self.settings.cache_dir.clone().zip(self.settings.cache_max_bytes);
        let text = location.text.clone();
        blocking(move || {
            let kept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                keep_in_cache(&text, &fetched, blob, manifest, bound);
            }));
            if kept.is_err() {
                tracing::warn!(location = %text, "cannot cache a pulled probe module: writing it failed");
            }
            fetched
        })
        .await
        .ok_or_else(|| format!("keeping the module pulled from {} failed", location.text))
    }

    /// Push `component` to `reference` as a Wasm artifact.
    pub async fn push(&self, reference: &Reference, component: Vec<u8>, auth: &RegistryAuth) -> Result<Pushed, String> {
        if !component.starts_with(b"\0asm") {
            return Err("not a WebAssembly component (no \\0asm header)".into());
        }
        let component_sha256 = sha256_hex(&component);
        let layer = ImageLayer::new(component, WASM_LAYER_MEDIA_TYPE.to_string(), None);
        let config = Config::new(b"{}".to_vec(), WASM_CONFIG_MEDIA_TYPE.to_string(), None);
        let manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
        let client = self.client();
        client.store_auth_if_needed(reference.resolve_registry(), auth).await;
        client
            .push_blob(reference, layer.data, &manifest.layers[0].digest)
            .await
            .map_err(explain)?;
        client
            .push_blob(reference, config.data, &manifest.config.digest)
            .await
            .map_err(explain)?;
        // The digest is that of the manifest as sent, not asked of the registry by tag
        // afterwards, when another push of the same tag may have landed and would be named.
        // Canonical JSON (keys sorted), as oci-client sends it: the same component pushed
        // again gives the same digest.
        let mut body = Vec::new();
        let mut encoder = serde_json::Serializer::with_formatter(&mut body, olpc_cjson::CanonicalFormatter::new());
        serde::Serialize::serialize(&manifest, &mut encoder).map_err(|e| format!("cannot encode the manifest: {e}"))?;
        let manifest_digest = format!("sha256:{}", sha256_hex(&body));
        let media_type = manifest.media_type.as_deref().unwrap_or(OCI_IMAGE_MEDIA_TYPE);
        let media_type =
            http::HeaderValue::from_str(media_type).map_err(|e| format!("the manifest's media type: {e}"))?;
        client
            .push_manifest_raw(reference, body, media_type)
            .await
            .map_err(explain)?;
        Ok(Pushed {
            manifest_digest,
            component_sha256,
        })
    }
}

/// How long a registry may take to accept a connection, pushing or pulling.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a registry may leave a read of its answer waiting (a pull's whole deadline is
/// longer: a registry that trickles meets that one).
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Who asks, in every request to a registry.
const USER_AGENT: &str = concat!("workspace-culler/", env!("CARGO_PKG_VERSION"));

/// Largest answer read from a registry besides a manifest and a layer: a token, an error.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Runs `work` on tokio's blocking threads, off the async workers (`None` if it panicked).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}

/// Writes a pulled component (and which manifest named it) into the cache, keeping the cache
/// within its bound.
fn keep_in_cache(
    location: &str,
    fetched: &Fetched,
    blob: Option<PathBuf>,
    manifest: Option<PathBuf>,
    bound: Option<(PathBuf, u64)>,
) {
    let write = |path: PathBuf, bytes: &[u8]| -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.persist(&path).map_err(|e| e.error)?;
        Ok(())
    };
    let results = [
        blob.clone().map(|path| write(path, &fetched.bytes)),
        manifest.clone().map(|path| write(path, fetched.sha256.as_bytes())),
    ];
    for error in results.into_iter().flatten().filter_map(Result::err) {
        tracing::warn!(%location, error = %error, "cannot cache a pulled probe module");
    }
    if let Some((dir, max)) = bound {
        let keep: Vec<&Path> = [&blob, &manifest].into_iter().flatten().map(PathBuf::as_path).collect();
        workspace_culler_engine::cache::bound(&dir, max, &keep);
    }
}

/// One pull's requests to a registry: a client of its own (no credentials or tokens shared with
/// another pull), and every answer read within a cap as it arrives — the manifest within
/// [`MAX_MANIFEST_BYTES`], the layer within the component's cap, a token or an error within
/// [`MAX_ANSWER_BYTES`]. (oci-client read them whole before a cap could be checked: a broken
/// registry, or anything on the path to one reached over plain HTTP, could fill the
/// controller's memory.)
struct Pull {
    http: reqwest::Client,
    /// `{scheme}://{registry}`.
    origin: String,
    repository: String,
    /// The manifest's reference: its digest, or its tag.
    reference: String,
    /// The `Authorization` header the registry asked for, once known.
    authorization: Option<String>,
}

impl Pull {
    fn new(registry: &Registry, reference: &Reference) -> Result<Pull, String> {
        let host = reference.resolve_registry();
        let scheme = if registry.settings.insecure.iter().any(|r| r == host) {
            "http"
        } else {
            "https"
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(USER_AGENT);
        if let Some(pem) = &registry.ca {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("the registry CA file is not PEM certificates: {}", describe(&e)))?;
            builder = builder.tls_certs_merge(certificates);
        }
        Ok(Pull {
            http: builder
                .build()
                .map_err(|e| format!("cannot make an HTTP client: {}", describe(&e)))?,
            origin: format!("{scheme}://{host}"),
            repository: reference.repository().to_string(),
            reference: reference
                .digest()
                .or_else(|| reference.tag())
                .unwrap_or("latest")
                .to_string(),
            authorization: None,
        })
    }

    /// Learn how the registry wants to be asked (its challenge at `/v2/`) and get a token for
    /// pulling the repository if it hands them out, with `auth`'s credentials if any.
    async fn authorize(&mut self, auth: &RegistryAuth) -> Result<(), String> {
        let basic = |user: &str, password: &str| {
            use base64::Engine;
            let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {pair}")
        };
        match auth {
            RegistryAuth::Bearer(token) => {
                self.authorization = Some(format!("Bearer {token}"));
                return Ok(());
            }
            RegistryAuth::Basic(user, password) => self.authorization = Some(basic(user, password)),
            RegistryAuth::Anonymous => {}
        }
        let answer = send(self.http.get(format!("{}/v2/", self.origin))).await?;
        // A Bearer challenge among them, if any (a registry may offer Basic first).
        let challenge = answer
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(bearer_challenge);
        let Some((realm, service)) = challenge else {
            // No token service: the credentials, if any, go with each request.
            return Ok(());
        };
        token_service_allowed(&self.origin, &realm, auth)?;
        let mut query = vec![("scope", format!("repository:{}:pull", self.repository))];
        query.extend(service.map(|service| ("service", service)));
        let mut request = self.http.get(&realm).query(&query);
        if let RegistryAuth::Basic(user, password) = auth {
            request = request.basic_auth(user, Some(password));
        }
        let answer = send(request).await?;
        let status = answer.status();
        let body = read_capped(answer, MAX_ANSWER_BYTES, "the registry's token").await?;
        if !status.is_success() {
            return Err(refused(&format!(
                "its token service answered {status}: {}",
                excerpt(&body)
            )));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token = serde_json::from_slice::<Token>(&body)
            .ok()
            .and_then(|t| t.token.or(t.access_token))
            .filter(|token| !token.is_empty())
            // Not quoted: the answer may hold a credential under another name.
            .ok_or_else(|| format!("the registry's token service answered no token ({} bytes)", body.len()))?;
        self.authorization = Some(format!("Bearer {token}"));
        Ok(())
    }

    /// GET `path` (under the repository), with `accept`; an answer other than a success is the
    /// error it explains.
    async fn get(&self, path: &str, accept: Option<&str>) -> Result<reqwest::Response, String> {
        let url = format!("{}/v2/{}/{path}", self.origin, self.repository);
        let mut request = self.http.get(&url);
        if let Some(accept) = accept {
            request = request.header(reqwest::header::ACCEPT, accept);
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let answer = send(request).await?;
        let status = answer.status();
        if status == reqwest::StatusCode::OK {
            return Ok(answer);
        }
        let body = read_capped(answer, MAX_ANSWER_BYTES, "the registry's error")
            .await
            .unwrap_or_default();
        Err(unsuccessful(status, &body, &url))
    }

    /// The manifest the reference names, within [`MAX_MANIFEST_BYTES`].
    async fn manifest(&self) -> Result<Vec<u8>, String> {
        let answer = self
            .get(
                &format!("manifests/{}", self.reference),
                Some(&MANIFEST_MEDIA_TYPES.join(", ")),
            )
            .await?;
        read_capped(answer, MAX_MANIFEST_BYTES, "the manifest").await
    }

    /// The layer `layer` describes, within `max_bytes` whatever its descriptor says.
    async fn blob(&self, layer: &OciDescriptor, max_bytes: u64) -> Result<Vec<u8>, String> {
        let mut answer = self.get(&format!("blobs/{}", layer.digest), None).await?;
        let mut bytes = Vec::with_capacity(usize::try_from(layer.size).unwrap_or(0));
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|e| format!("reading the layer: {}", describe(&e)))?
        {
            if (bytes.len() + chunk.len()) as u64 > max_bytes {
                return Err(format!(
                    "the layer is larger than the cap of {max_bytes} bytes (its descriptor said {})",
                    layer.size
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

/// Sends `request`; an error is one of reaching the registry.
async fn send(request: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
    request
        .send()
        .await
        .map_err(|e| format!("cannot reach the registry: {}", describe(&e)))
}

/// `answer`'s body, refused once it is over `cap` bytes (`what` names it in the error).
async fn read_capped(mut answer: reqwest::Response, cap: usize, what: &str) -> Result<Vec<u8>, String> {
    let over = || format!("{what} is over the cap of {cap} bytes");
    if answer.content_length().is_some_and(|length| length > cap as u64) {
        return Err(over());
    }
    let mut body = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|e| format!("reading {what}: {}", describe(&e)))?
    {
        if body.len() + chunk.len() > cap {
            return Err(over());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether `auth`'s credentials may go to the token service at `realm` of the registry at
/// `origin`: not over plain HTTP when the registry itself is reached over TLS.
fn token_service_allowed(origin: &str, realm: &str, auth: &RegistryAuth) -> Result<(), String> {
    if matches!(auth, RegistryAuth::Basic(..)) && realm.starts_with("http://") && origin.starts_with("https://") {
        return Err(format!(
            "the registry's token service is at {}, over plain HTTP: its credentials are not sent there",
            excerpt(realm.as_bytes())
        ));
    }
    Ok(())
}

/// The realm and service of a `Bearer` challenge (`Bearer realm="…",service="…",scope="…"`).
fn bearer_challenge(header: &str) -> Option<(String, Option<String>)> {
    let (scheme, parameters) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut rest = parameters.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after
                .split_once(',')
                .map_or((after, ""), |(value, after)| (value, after)),
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_string()),
            "service" => service = Some(value.to_string()),
            _ => {}
        }
        rest = after.trim_start_matches([',', ' ']);
    }
    realm
        .filter(|realm| realm.starts_with("https://") || realm.starts_with("http://"))
        .map(|realm| (realm, service))
}

/// The start of a registry's answer, as text for a message.
fn excerpt(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    text.trim().to_string()
}

/// A refusal, and what to do about it.
fn refused(detail: &str) -> String {
    format!(
        "the registry refused access ({detail}); name a kubernetes.io/dockerconfigjson Secret with \
         credentials for it in module.pullSecretRef"
    )
}

/// What an answer other than `200 OK` to `url` means (the OCI error codes in `body`, if any).
fn unsuccessful(status: reqwest::StatusCode, body: &[u8], url: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
        #[serde(default)]
        message: Option<String>,
    }
    let codes: Vec<Entry> = serde_json::from_slice::<Envelope>(body)
        .map(|envelope| envelope.errors)
        .unwrap_or_default();
    // At most a few codes, each cut, and the whole cut again: a registry's words end up in a
    // policy's condition and the workspaces' Events.
    let said = if codes.is_empty() {
        excerpt(body)
    } else {
        let said = codes
            .iter()
            .take(3)
            .map(|e| {
                let code = excerpt(e.code.as_bytes());
                format!("{code} {}", e.message.as_deref().unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("; ");
        excerpt(said.as_bytes())
    };
    let detail = format!("{status} for {url}: {said}");
    let detail = detail.trim_end_matches([':', ' ']);
    let has = |wanted: &[&str]| codes.iter().any(|e| wanted.contains(&e.code.as_str()));
    if matches!(status.as_u16(), 401 | 403) || has(&["UNAUTHORIZED", "DENIED"]) {
        refused(detail)
    } else if status.as_u16() == 404 || has(&["MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN", "NOT_FOUND"]) {
        format!("not found in the registry ({detail})")
    } else {
        format!("the registry answered {detail}")
    }
}

/// The layer that holds the component: the only one, of a Wasm (or raw file) type, under the
/// size cap.
fn component_layer(manifest: &OciImageManifest, max_bytes: u64) -> Result<&OciDescriptor, String> {
    let [layer] = &manifest.layers[..] else {
        return Err(format!(
            "the artifact has {} layers; a probe artifact has exactly one, the component",
            manifest.layers.len()
        ));
    };
    if !LAYER_MEDIA_TYPES.contains(&layer.media_type.as_str()) {
        return Err(format!(
            "the layer's media type is {}, not a Wasm component ({WASM_LAYER_MEDIA_TYPE})",
            layer.media_type
        ));
    }
    if u64::try_from(layer.size).map_or(true, |size| size > max_bytes) {
        return Err(format!(
            "the layer is {} bytes, over the cap of {max_bytes} bytes",
            layer.size
        ));
    }
    Ok(layer)
}

/// The credentials for `registry` in a `kubernetes.io/dockerconfigjson` Secret's
/// `.dockerconfigjson` (an `auths` entry keyed by the registry's host, with or without a scheme).
pub fn auth_from_docker_config(config: &[u8], registry: &str) -> Result<RegistryAuth, String> {
    #[derive(serde::Deserialize)]
    struct DockerConfig {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        username: Option<String>,
        password: Option<String>,
        auth: Option<String>,
    }
    let config: DockerConfig =
        serde_json::from_slice(config).map_err(|e| format!("the .dockerconfigjson is not valid: {e}"))?;
    let host = |key: &str| {
        key.trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let entry = config
        .auths
        .iter()
        .find(|(key, _)| host(key) == registry)
        .map(|(_, entry)| entry)
        .ok_or_else(|| format!("the .dockerconfigjson has no credentials for {registry}"))?;
    match (&entry.username, &entry.password, &entry.auth) {
        (Some(user), Some(password), _) => Ok(RegistryAuth::Basic(user.clone(), password.clone())),
        (_, _, Some(auth)) => {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| format!("the auth of {registry} is not base64: {e}"))?;
            let text = String::from_utf8(decoded).map_err(|_| format!("the auth of {registry} is not UTF-8"))?;
            let (user, password) = text
                .split_once(':')
                .ok_or_else(|| format!("the auth of {registry} is not user:password"))?;
            Ok(RegistryAuth::Basic(user.into(), password.into()))
        }
        _ => Err(format!(
            "the .dockerconfigjson entry of {registry} has neither auth nor username and password"
        )),
    }
}

/// A registry for tests: answers as a test says, including answers a real registry never gives.
#[cfg(test)]
pub(crate) mod fake {
    /// What the fake registry answers to a path.
    pub(crate) enum Answer {
        /// A status line, headers and a body, then the connection closes.
        Whole(&'static str, String, String),
        /// A status line and a body that never ends, as fast as it is read (chunked, no length).
        Endless(&'static str),
    }

    /// A registry at `127.0.0.1` answering each request as `answer` says (given its origin, the
    /// request's path and the whole request in lower case); its address.
    pub(crate) async fn fake_registry(answer: fn(&str, &str, &str) -> Answer) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let origin = format!("http://{address}");
        let server = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let origin = origin.clone();
                tokio::spawn(async move {
                    let mut request = vec![0u8; 8192];
                    let n = socket.read(&mut request).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&request[..n]).to_string();
                    let path = request.split(' ').nth(1).unwrap_or_default().to_string();
                    match answer(&origin, &path, &request.to_ascii_lowercase()) {
                        Answer::Whole(status, headers, body) => {
                            let head = format!(
                                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = socket.write_all(format!("{head}{body}").as_bytes()).await;
                        }
                        Answer::Endless(status) => {
                            let head = format!(
                                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                            );
                            if socket.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            let chunk = format!("1000\r\n{}\r\n", " ".repeat(0x1000));
                            while socket.write_all(chunk.as_bytes()).await.is_ok() {}
                        }
                    }
                });
            }
        });
        (address, server)
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{Answer, fake_registry};
    use super::*;

    #[tokio::test]
    async fn a_registry_that_trickles_its_answer_fails_the_pull_at_its_deadline() {
        // Answers every request with a long body, one byte a second: no single read waits
        // long enough for the client's read timeout.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
                                Content-Length: 100000\r\n\r\n";
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    while socket.write_all(b" ").await.is_ok() {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                });
            }
        });
        let registry = Registry::new(Settings {
            insecure: vec![address.clone()],
            ..Settings::default()
        })
        .unwrap()
        .with_pull_deadline(std::time::Duration::from_secs(2));
        let location = parse(&format!("oci://{address}/probe@{DIGEST}"), None).unwrap();
        let fetched = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            registry.fetch(&location, &RegistryAuth::Anonymous),
        )
        .await
        .expect("the pull outlived its deadline");
        let problem = fetched.unwrap_err();
        assert!(problem.contains("did not serve it within 2 s"), "{problem}");
        assert_eq!(registry.problem(&location.text, None), Some(problem));
        server.abort();
    }

    #[test]
    fn a_cached_module_is_read_off_the_async_workers() {
        // The cached component is a FIFO no one writes to yet: reading it waits, as on a volume
        // that hangs.
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("oci/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let sha256 = "2".repeat(64);
        let fifo = blobs.join(&sha256);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let registry = Registry::new(Settings {
            cache_dir: Some(dir.path().into()),
            insecure: vec!["127.0.0.1:9".into()],
            ..Settings::default()
        })
        .unwrap()
        .with_pull_deadline(std::time::Duration::from_secs(2));
        let location = parse(&format!("oci://127.0.0.1:9/probe@{DIGEST}"), Some(&sha256)).unwrap();
        // The FIFO gets its writer once the runtime has gone on meanwhile, or after 5 s.
        let (went_on, heard) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let runtime_went_on = heard.recv_timeout(std::time::Duration::from_secs(5)).is_ok();
            std::fs::write(&fifo, b"not the module").unwrap();
            runtime_went_on
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let fetched = runtime.block_on(async move {
            let fetch = tokio::spawn(async move { registry.fetch(&location, &RegistryAuth::Anonymous).await });
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let _ = went_on.send(());
            fetch.await.unwrap()
        });
        assert!(writer.join().unwrap(), "the runtime waited for the cache's read");
        // What the FIFO gave is not the module: it is pulled (here from no registry).
        let problem = fetched.unwrap_err();
        assert!(problem.contains("pulling oci://127.0.0.1:9/probe"), "{problem}");
    }

    #[tokio::test]
    async fn a_push_names_the_digest_of_the_manifest_it_sent() {
        // A registry that takes every upload, and whose tag names another manifest by the time
        // it is asked (another push of the same tag landed meanwhile).
        const OTHER: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let (address, server) = fake_registry(|origin, path, request| {
            let location = format!("Location: {origin}/v2/probe/blobs/uploads/1\r\n");
            match request.split(' ').next().unwrap_or_default() {
                "post" | "patch" => Answer::Whole("202 Accepted", format!("{location}Range: 0-0\r\n"), String::new()),
                "put" => Answer::Whole("201 Created", location, String::new()),
                _ if path == "/v2/" => open(),
                _ => Answer::Whole(
                    "200 OK",
                    format!("Docker-Content-Digest: {OTHER}\r\nContent-Type: {OCI_IMAGE_MEDIA_TYPE}\r\n"),
                    String::new(),
                ),
            }
        })
        .await;
        let registry = Registry::new(Settings {
            insecure: vec![address.clone()],
            ..Settings::default()
        })
        .unwrap();
        let reference: Reference = format!("{address}/probe:v1").parse().unwrap();
        let component = b"\0asm\x0d\0\x01\0".to_vec();
        let pushed = registry
            .push(&reference, component.clone(), &RegistryAuth::Anonymous)
            .await
            .unwrap();
        server.abort();
        // Not the tag's: that it is the manifest's own, a real registry checks when it is
        // pulled by it (`tests/oci_registry.rs`).
        assert_ne!(pushed.manifest_digest, OTHER);
        assert_eq!(pushed.component_sha256, sha256_hex(&component));
    }

    /// The problem pulling from the fake registry at `address` (its deadline long enough for
    /// any cap to be met many times over, short enough that an answer read without one cannot
    /// fill the memory first).
    async fn pull_problem(address: &str) -> String {
        let registry = Registry::new(Settings {
            insecure: vec![address.to_string()],
            max_bytes: 1 << 20,
            ..Settings::default()
        })
        .unwrap()
        .with_pull_deadline(std::time::Duration::from_secs(5));
        let location = parse(&format!("oci://{address}/probe@{DIGEST}"), None).unwrap();
        registry.fetch(&location, &RegistryAuth::Anonymous).await.unwrap_err()
    }

    /// The problem pulling from a fake registry answering as `answer` says.
    async fn problem_with(answer: fn(&str, &str, &str) -> Answer) -> String {
        let (address, server) = fake_registry(answer).await;
        let problem = pull_problem(&address).await;
        server.abort();
        problem
    }

    /// `/v2/` answered with no challenge: no credentials needed.
    fn open() -> Answer {
        Answer::Whole("200 OK", String::new(), String::new())
    }

    /// `/v2/` answered with a Bearer challenge naming the token service at `origin`/token.
    fn bearer(origin: &str) -> Answer {
        let challenge = format!("WWW-Authenticate: Bearer realm=\"{origin}/token\",service=\"fake\"\r\n");
        Answer::Whole("401 Unauthorized", challenge, String::new())
    }

    #[tokio::test]
    async fn every_answer_of_a_registry_is_read_within_a_cap() {
        let manifest = problem_with(|_, path, _| {
            if path == "/v2/" {
                open()
            } else {
                Answer::Endless("200 OK")
            }
        })
        .await;
        assert!(
            manifest.contains("the manifest is over the cap of 262144 bytes"),
            "{manifest}"
        );
        let token = problem_with(|origin, path, _| {
            if path == "/v2/" {
                bearer(origin)
            } else {
                Answer::Endless("200 OK")
            }
        })
        .await;
        assert!(
            token.contains("the registry's token is over the cap of 65536 bytes"),
            "{token}"
        );
        // An error that never ends is cut, and its status still explained.
        let error = problem_with(|_, path, _| {
            if path == "/v2/" {
                open()
            } else {
                Answer::Endless("404 Not Found")
            }
        })
        .await;
        assert!(
            error.contains("not found in the registry (404 Not Found for http://"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_token_is_asked_for_the_repository_and_sent_with_the_requests_for_it() {
        fn errors(code: &str, message: &str) -> String {
            format!(r#"{{"errors": [{{"code": "{code}", "message": "{message}"}}]}}"#)
        }
        // The token service gives a token for `probe`; the manifest is looked for only with it
        // (and not found), and refused without.
        let problem = problem_with(|origin, path, request| match path {
            "/v2/" => bearer(origin),
            "/token?scope=repository%3Aprobe%3Apull&service=fake" => {
                Answer::Whole("200 OK", String::new(), r#"{"token": "let-me-in"}"#.into())
            }
            _ if request.contains("\r\nauthorization: bearer let-me-in\r\n") => Answer::Whole(
                "404 Not Found",
                String::new(),
                errors("MANIFEST_UNKNOWN", "manifest unknown"),
            ),
            _ => Answer::Whole(
                "401 Unauthorized",
                String::new(),
                errors("UNAUTHORIZED", "authentication required"),
            ),
        })
        .await;
        assert!(
            problem.contains("not found in the registry (404 Not Found for http://"),
            "{problem}"
        );
        assert!(problem.contains("MANIFEST_UNKNOWN manifest unknown"), "{problem}");

        // A token service that refuses: the refusal is explained.
        let problem = problem_with(|origin, path, _| match path {
            "/v2/" => bearer(origin),
            _ => Answer::Whole("401 Unauthorized", String::new(), "bad credentials".into()),
        })
        .await;
        let refusal = "the registry refused access (its token service answered 401 Unauthorized: bad credentials)";
        assert!(problem.contains(refusal), "{problem}");

        // An answer without a token, under another name: not quoted (it may be the credential).
        let problem = problem_with(|origin, path, _| match path {
            "/v2/" => bearer(origin),
            _ => Answer::Whole("200 OK", String::new(), r#"{"accessToken": "s3cr3t"}"#.into()),
        })
        .await;
        assert!(problem.contains("answered no token (25 bytes)"), "{problem}");
        assert!(!problem.contains("s3cr3t"), "{problem}");
    }

    #[test]
    fn credentials_go_to_a_token_service_over_tls_when_the_registry_is_reached_over_tls() {
        let basic = RegistryAuth::Basic("user".into(), "password".into());
        let refused = token_service_allowed("https://r.example", "http://auth.example/token", &basic).unwrap_err();
        assert!(refused.contains("over plain HTTP"), "{refused}");
        assert!(token_service_allowed("https://r.example", "https://auth.example/token", &basic).is_ok());
        assert!(token_service_allowed("http://r.example:5000", "http://r.example:5000/token", &basic).is_ok());
        let anonymous = RegistryAuth::Anonymous;
        assert!(token_service_allowed("https://r.example", "http://auth.example/token", &anonymous).is_ok());
    }

    #[test]
    fn a_registry_s_error_is_cut_before_it_reaches_a_condition() {
        let many: Vec<_> = (0..1000)
            .map(|i| serde_json::json!({"code": format!("CODE{i}\n\u{1b}[31m"), "message": "x".repeat(1000)}))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({"errors": many})).unwrap();
        let said = unsuccessful(
            reqwest::StatusCode::BAD_REQUEST,
            &body,
            "http://r.example/v2/p/manifests/x",
        );
        assert!(said.len() < 400, "{} bytes: {said}", said.len());
        assert!(!said.chars().any(char::is_control), "{said:?}");
        assert!(
            said.starts_with("the registry answered 400 Bad Request for http://r.example"),
            "{said}"
        );
    }

    #[test]
    fn a_bearer_challenge_gives_its_realm_and_service() {
        assert_eq!(
            bearer_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:p:pull""#
            ),
            Some(("https://auth.example/token".into(), Some("registry.example".into())))
        );
        assert_eq!(
            bearer_challenge(r#"bearer realm="http://r.example/t""#),
            Some(("http://r.example/t".into(), None))
        );
        assert_eq!(bearer_challenge(r#"Basic realm="registry""#), None);
        assert_eq!(
            bearer_challenge(r#"Bearer realm="file:///etc/passwd""#),
            None,
            "only http(s)"
        );
        assert_eq!(bearer_challenge(r#"Bearer service="x""#), None, "no realm");
        assert_eq!(bearer_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[tokio::test]
    async fn a_problem_is_kept_for_the_pin_it_was_met_with_not_every_pin_of_the_location() {
        // Nothing listens there: every pull fails at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap().to_string();
        drop(closed);
        let registry = Registry::new(Settings {
            insecure: vec![address.clone()],
            ..Settings::default()
        })
        .unwrap();
        let text = format!("oci://{address}/probe:v1");
        let (wrong, right) = ("a".repeat(64), "b".repeat(64));
        let location = parse(&text, Some(&wrong)).unwrap();
        assert!(registry.fetch(&location, &RegistryAuth::Anonymous).await.is_err());
        assert!(registry.problem(&text, Some(&wrong)).is_some());
        assert_eq!(registry.problem(&text, Some(&right)), None, "another policy's pin");
    }

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_location_is_pinned_by_its_digest_or_the_components() {
        let by_digest = parse(&format!("oci://registry.example:5000/team/probe@{DIGEST}"), None).unwrap();
        assert_eq!(by_digest.reference.registry(), "registry.example:5000");
        assert_eq!(by_digest.reference.repository(), "team/probe");
        assert_eq!(by_digest.reference.digest(), Some(DIGEST));
        let pin = "ab".repeat(32);
        let by_tag = parse("oci://localhost:5000/probe:v1", Some(&pin)).unwrap();
        assert_eq!(by_tag.reference.tag(), Some("v1"));
        assert_eq!(by_tag.sha256.as_deref(), Some(pin.as_str()));

        let tag_only = parse("oci://localhost:5000/probe:v1", None).unwrap_err();
        assert!(tag_only.contains("names a tag only"), "{tag_only}");
        let no_registry = parse(&format!("oci://team/probe@{DIGEST}"), None).unwrap_err();
        assert!(no_registry.contains("name the registry first"), "{no_registry}");
        let short = parse("oci://localhost:5000/probe@sha256:abc", None).unwrap_err();
        assert!(
            short.contains("not a valid OCI reference") || short.contains("64"),
            "{short}"
        );
    }

    #[test]
    fn credentials_come_from_the_auths_entry_of_the_registry() {
        let config = br#"{"auths": {
            "https://other.example/v1/": {"auth": "eDp5"},
            "localhost:5000": {"auth": "YWxpY2U6czNjcmV0"},
            "registry.example": {"username": "bob", "password": "pw"}
        }}"#;
        assert_eq!(
            format!("{:?}", auth_from_docker_config(config, "localhost:5000").unwrap()),
            format!("{:?}", RegistryAuth::Basic("alice".into(), "s3cret".into()))
        );
        assert!(matches!(
            auth_from_docker_config(config, "registry.example").unwrap(),
            RegistryAuth::Basic(user, _) if user == "bob"
        ));
        assert!(matches!(
            auth_from_docker_config(config, "other.example"),
            Ok(RegistryAuth::Basic(..))
        ));
        let missing = auth_from_docker_config(config, "nowhere.example").unwrap_err();
        assert!(missing.contains("no credentials for nowhere.example"), "{missing}");
    }

    #[test]
    fn the_component_layer_is_the_only_one_of_a_wasm_type_under_the_cap() {
        let layer = |media_type: &str, size: i64| OciDescriptor {
            media_type: media_type.into(),
            digest: DIGEST.into(),
            size,
            ..OciDescriptor::default()
        };
        let manifest = |layers: Vec<OciDescriptor>| OciImageManifest {
            layers,
            ..OciImageManifest::default()
        };
        let problem = |layers: Vec<OciDescriptor>| component_layer(&manifest(layers), 100).err();
        assert_eq!(problem(vec![layer(WASM_LAYER_MEDIA_TYPE, 10)]), None);
        assert_eq!(problem(vec![layer("application/vnd.oci.image.layer.v1.tar", 10)]), None);
        let gzip = problem(vec![layer("application/vnd.oci.image.layer.v1.tar+gzip", 10)]).unwrap();
        assert!(
            gzip.contains("media type is application/vnd.oci.image.layer.v1.tar+gzip"),
            "{gzip}"
        );
        let big = problem(vec![layer(WASM_LAYER_MEDIA_TYPE, 101)]).unwrap();
        assert!(big.contains("over the cap of 100 bytes"), "{big}");
        let two = problem(vec![layer(WASM_LAYER_MEDIA_TYPE, 1); 2]).unwrap();
        assert!(two.contains("has 2 layers"), "{two}");
    }
}
