//! Write workspace-culler activity probes in Rust.
//!
//! A probe is a plain type implementing [`Probe`]; [`export_probe!`] turns it
//! into the `activity-probe` component export. Probe logic talks to the
//! workspace only through a [`Host`], so the same code runs against the real
//! imports when compiled to `wasm32-wasip2` and against
//! [`testing::FakeHost`] in a native `cargo test`.

pub mod activity;
pub mod host;
pub mod testing;

pub use activity::Activity;
pub use host::{Command, ExecError, ExecOutput, Host, HttpError, HttpRequest, HttpResponse, LogLevel, WasiHost};

/// Bindings generated from `wit/` (the single source of the contract).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "activity-probe",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_activity_probe",
        default_bindings_module: "::probe_sdk::bindings",
    });
}

/// The workspace a probe is asked about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workspace {
    /// Namespace of the Workspace.
    pub namespace: String,
    /// Name of the Workspace.
    pub name: String,
    /// Name of its pod.
    pub pod_name: String,
    /// IP of its pod: the only host HTTP may reach. It may be IPv6: use `base_url` rather
    /// than writing `http://{pod_ip}:…` yourself.
    pub pod_ip: String,
    /// The container exec runs in.
    pub container: String,
    /// Port ids of the kind resolved to numbers.
    pub ports: Vec<(String, u16)>,
}

impl Workspace {
    /// The port number for a port id of the WorkspaceKind.
    pub fn port(&self, id: &str) -> Option<u16> {
        self.ports.iter().find(|(p, _)| p == id).map(|(_, n)| *n)
    }

    /// `http://<pod-ip>:<port>` for a port id (an IPv6 address in brackets), or a failure
    /// naming what is missing.
    pub fn base_url(&self, port_id: &str) -> Result<String, ProbeError> {
        let port = self.port(port_id).ok_or_else(|| {
            let known: Vec<&str> = self.ports.iter().map(|(p, _)| p.as_str()).collect();
            ProbeError::Failure(format!(
                "port id {port_id:?} does not resolve to a port of this workspace (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })?;
        if self.pod_ip.is_empty() {
            return Err(ProbeError::Failure("the workspace's pod has no IP yet".into()));
        }
        if self.pod_ip.contains(':') {
            Ok(format!("http://[{}]:{port}", self.pod_ip))
        } else {
            Ok(format!("http://{}:{port}", self.pod_ip))
        }
    }
}

/// Why a probe produced no activity result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// Failed; the text becomes `lastProbe.message`.
    Failure(String),
    /// Ran out of time; the text becomes `lastProbe.message`.
    Timeout(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Failure(m) | ProbeError::Timeout(m) => f.write_str(m),
        }
    }
}

/// What a probe says about itself.
#[derive(Clone, Debug)]
pub struct ProbeInfo {
    /// Short name.
    pub name: &'static str,
    /// The probe's own version.
    pub version: &'static str,
    /// One line on what it detects.
    pub description: &'static str,
    /// Capabilities it uses: "exec", "http", "log".
    pub capabilities: &'static [&'static str],
}

/// An activity probe.
pub trait Probe {
    /// Name, version and capabilities.
    const INFO: ProbeInfo;

    /// Probe the workspace once; `config` is the kind's JSON config, unchanged.
    fn probe(host: &dyn Host, workspace: &Workspace, config: &str) -> Result<Reply, ProbeError>;
}

/// What a probe hands back to the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A result the probe determined itself.
    Activity(Activity),
    /// Contract JSON produced elsewhere (e.g. by a user's script), relayed
    /// unchanged so the host's validator judges it and names any mistake.
    Json(String),
}

impl From<Activity> for Reply {
    fn from(activity: Activity) -> Self {
        Reply::Activity(activity)
    }
}

impl Reply {
    /// The text returned across the WIT boundary.
    pub fn into_json(self) -> String {
        match self {
            Reply::Activity(a) => a.to_json(),
            Reply::Json(j) => j,
        }
    }
}

/// Parse a probe's JSON config into `T`, as a failure that names the problem.
pub fn parse_config<T: serde::de::DeserializeOwned>(probe: &str, config: &str) -> Result<T, ProbeError> {
    let text = if config.trim().is_empty() { "{}" } else { config };
    serde_json::from_str(text).map_err(|e| ProbeError::Failure(format!("{probe} probe config is invalid: {e}")))
}

#[doc(hidden)]
pub fn __info<P: Probe>() -> bindings::workspace_culler::probe::types::ProbeInfo {
    bindings::workspace_culler::probe::types::ProbeInfo {
        name: P::INFO.name.into(),
        version: P::INFO.version.into(),
        description: P::INFO.description.into(),
        capabilities: P::INFO.capabilities.iter().map(|c| c.to_string()).collect(),
    }
}

#[doc(hidden)]
pub fn __probe<P: Probe>(
    workspace: bindings::workspace_culler::probe::types::Workspace,
    config: String,
) -> Result<String, bindings::workspace_culler::probe::types::ProbeError> {
    use bindings::workspace_culler::probe::types::ProbeError as Wit;
    let workspace = Workspace {
        namespace: workspace.namespace,
        name: workspace.name,
        pod_name: workspace.pod_name,
        pod_ip: workspace.pod_ip,
        container: workspace.container,
        ports: workspace.ports.into_iter().map(|p| (p.id, p.number)).collect(),
    };
    match P::probe(&WasiHost, &workspace, &config) {
        Ok(reply) => Ok(reply.into_json()),
        Err(ProbeError::Failure(m)) => Err(Wit::Failure(m)),
        Err(ProbeError::Timeout(m)) => Err(Wit::Timeout(m)),
    }
}

/// Export a [`Probe`] type as this component's `activity-probe` implementation.
///
/// ```ignore
/// probe_sdk::export_probe!(MyProbe);
/// ```
#[macro_export]
macro_rules! export_probe {
    ($probe:ty) => {
        #[doc(hidden)]
        pub struct __ActivityProbeExport;

        impl $crate::bindings::Guest for __ActivityProbeExport {
            fn info() -> $crate::bindings::workspace_culler::probe::types::ProbeInfo {
                $crate::__info::<$probe>()
            }
            fn probe(
                workspace: $crate::bindings::workspace_culler::probe::types::Workspace,
                config: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::bindings::workspace_culler::probe::types::ProbeError,
            > {
                $crate::__probe::<$probe>(workspace, config)
            }
        }

        $crate::bindings::__export_activity_probe!(__ActivityProbeExport with_types_in $crate::bindings);
    };
}
