//! A real, local Kubernetes control plane for the end-to-end tests and the
//! `local` demo: etcd → kube-apiserver (TLS, RBAC, token auth) → kwok as
//! the node agent, so pods on its fake node report Running and `pods/exec`
//! and `pods/portforward` go through the real apiserver to kwok, which runs
//! the command or forwards the port on this machine. Binaries come from
//! `scripts/ensure-controlplane`, which builds them from their Go modules.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The fake node's name.
pub const NODE_NAME: &str = "kwok-node-0";

/// A running control plane; everything is stopped and removed on drop.
pub struct ControlPlane {
    processes: Vec<(&'static str, Child)>,
    /// How each process was started (program and arguments), to restart it.
    commands: Vec<(&'static str, Vec<std::ffi::OsString>)>,
    dir: tempfile::TempDir,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// A bearer token of a cluster admin.
    pub admin_token: String,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Stop in reverse order; each process leads its own process group.
        for (_, child) in self.processes.iter_mut().rev() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on a process group this struct started.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = child.wait();
        }
    }
}

/// The last 15 lines of a log, after the line a Go program's crash starts with (`panic: …`,
/// `fatal error: …`) when that is further up: its goroutine dump alone does not say why.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(15);
    let crash = lines[..from]
        .iter()
        .rposition(|l| l.starts_with("panic: ") || l.starts_with("fatal error: "));
    let mut shown: Vec<&str> = crash.map(|i| vec![lines[i], "…"]).unwrap_or_default();
    shown.extend(&lines[from..]);
    shown.join("\n")
}

/// A TCP port on loopback that was free a moment ago.
///
/// The port lies below the kernel's ephemeral range (32768–60999 by
/// default): a port the kernel hands out is free now, but an outgoing
/// connection opened meanwhile (the apiserver to etcd, a test to a server)
/// may take it before the server binds it.
///
/// A port is handed out once per process: one handed out and not bound yet (a control plane
/// draws its four before starting any) is free as far as the kernel knows.
pub fn free_port() -> anyhow::Result<u16> {
    use std::hash::BuildHasher;
    static DRAWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    // Randomly keyed per process, so parallel test processes draw different ports.
    let random = std::collections::hash_map::RandomState::new();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..200 {
        let draw = random.hash_one(DRAWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let port = 20_000 + (draw % 12_768) as u16;
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
}

/// Where the control-plane binaries are: `$WORKSPACE_CULLER_CONTROLPLANE`,
/// or built by `scripts/ensure-controlplane` from the repository.
pub fn binaries() -> anyhow::Result<PathBuf> {
    ensured("WORKSPACE_CULLER_CONTROLPLANE", "ensure-controlplane")
}

/// Where a `jupyter-server` is: `$WORKSPACE_CULLER_JUPYTER_BIN`, or the
/// virtualenv `scripts/ensure-jupyter` creates.
pub fn jupyter_binaries() -> anyhow::Result<PathBuf> {
    ensured("WORKSPACE_CULLER_JUPYTER_BIN", "ensure-jupyter")
}

/// The path in `$var`, or the one `scripts/<script>` builds (once) and prints.
pub(crate) fn ensured(var: &str, script: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(var) {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts").join(script);
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed", script.display());
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

impl ControlPlane {
    /// Start etcd, kube-apiserver and kwok from `bin`, and wait until the
    /// apiserver is ready and the fake node is registered.
    pub async fn start(bin: &Path) -> anyhow::Result<ControlPlane> {
        ControlPlane::start_with_pod_cidr(bin, "10.244.0.1/24").await
    }

    /// Start one whose pods get IPs from `cidr` (e.g. `127.64.0.1/16`: loopback addresses, so
    /// a server on this machine answers every pod's IP).
    pub async fn start_with_pod_cidr(bin: &Path, cidr: &str) -> anyhow::Result<ControlPlane> {
        let dir = tempfile::Builder::new().prefix("workspace-culler-cp").tempdir()?;
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        let admin_token = format!("admin-{}", std::process::id());
        std::fs::write(
            d.join("tokens.csv"),
            format!("{admin_token},admin,admin-uid,system:masters\n"),
        )?;
        let key = rcgen::KeyPair::generate()?;
        std::fs::write(d.join("sa.key"), key.serialize_pem())?;
        std::fs::write(d.join("sa.pub"), key.public_key_pem())?;

        let mut cp = ControlPlane {
            processes: Vec::new(),
            commands: Vec::new(),
            server: String::new(),
            admin_token,
            dir,
        };
        let (etcd_port, etcd_peer, api_port, kwok_port) = (free_port()?, free_port()?, free_port()?, free_port()?);
        let etcd = format!("http://127.0.0.1:{etcd_port}");
        let peer = format!("http://127.0.0.1:{etcd_peer}");
        cp.spawn(
            "etcd",
            Command::new(bin.join("etcd")).args([
                "--data-dir",
                &path(&d.join("etcd")),
                "--listen-client-urls",
                &etcd,
                "--advertise-client-urls",
                &etcd,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("default={peer}"),
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ]),
        )?;

        cp.server = format!("https://127.0.0.1:{api_port}");
        cp.spawn(
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver")).args([
                "--etcd-servers",
                &etcd,
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                &api_port.to_string(),
                "--cert-dir",
                &path(&d.join("certs")),
                "--token-auth-file",
                &path(&d.join("tokens.csv")),
                "--authorization-mode",
                "RBAC",
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file",
                &path(&d.join("sa.pub")),
                "--service-account-signing-key-file",
                &path(&d.join("sa.key")),
                "--service-cluster-ip-range",
                "10.96.0.0/16",
                // No controller-manager runs, so no namespace gets a default ServiceAccount.
                "--disable-admission-plugins",
                "ServiceAccount",
                "--allow-privileged",
            ]),
        )?;
        let kubeconfig = cp.write_kubeconfig()?;
        cp.wait_ready().await?;

        cp.install_crds(&std::fs::read_to_string(bin.join("kwok-crds.yaml"))?)
            .await?;
        let config = d.join("kwok.yaml");
        std::fs::copy(bin.join("stages.yaml"), &config)
            .context("kwok stages are missing from the control plane build")?;
        cp.spawn(
            "kwok",
            Command::new(bin.join("kwok")).args([
                "--kubeconfig",
                &path(&kubeconfig),
                "--config",
                &path(&config),
                "--manage-all-nodes=true",
                "--node-ip",
                "127.0.0.1",
                "--node-port",
                &kwok_port.to_string(),
                "--server-address",
                &format!("127.0.0.1:{kwok_port}"),
                "--cidr",
                cidr,
                "--enable-crds",
                "ClusterExec,Exec,ClusterPortForward,PortForward",
            ]),
        )?;
        cp.add_node().await?;
        if let Err(first) = cp.wait_node_ready().await {
            // kwok (test infrastructure, not the product) has been seen to exit while it starts
            // (a Go panic, once in many runs): it gets one more start.
            if cp.running("kwok") {
                return Err(first);
            }
            eprintln!("control plane: {first:#}\nstarting kwok once more");
            cp.restart("kwok").await?;
            cp.wait_node_ready().await?;
        }
        Ok(cp)
    }

    /// The kubeconfig file for the admin.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A scratch directory that lives as long as the control plane.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self, name: &'static str, command: &mut Command) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))?;
        let argv: Vec<std::ffi::OsString> = std::iter::once(command.get_program().to_owned())
            .chain(command.get_args().map(ToOwned::to_owned))
            .collect();
        self.commands.retain(|(n, _)| *n != name);
        self.commands.push((name, argv));
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.processes.push((name, child));
        Ok(())
    }

    fn signal(&self, name: &str, signal: i32) {
        for (_, child) in self.processes.iter().filter(|(n, _)| *n == name) {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on a process group this struct started.
                unsafe { libc::kill(-pid, signal) };
            }
        }
    }

    /// Whether a component is started and has not exited.
    fn running(&mut self, name: &str) -> bool {
        self.processes
            .iter_mut()
            .any(|(n, child)| *n == name && matches!(child.try_wait(), Ok(None)))
    }

    /// The process id of a component.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.processes.iter().find(|(n, _)| *n == name).map(|(_, c)| c.id())
    }

    /// Freeze a component (`etcd`, `kube-apiserver`, `kwok`): it holds its connections and
    /// answers nothing until [`ControlPlane::resume`].
    pub fn pause(&self, name: &str) {
        self.signal(name, libc::SIGSTOP);
    }

    /// Let a paused component go on.
    pub fn resume(&self, name: &str) {
        self.signal(name, libc::SIGCONT);
    }

    /// Kill a component and start it again with the same command line (the apiserver: waits
    /// until it is ready again).
    pub async fn restart(&mut self, name: &'static str) -> anyhow::Result<()> {
        self.stop(name);
        self.start_again(name).await
    }

    /// Kill a component (its port refuses connections until [`ControlPlane::start_again`]).
    pub fn stop(&mut self, name: &str) {
        self.signal(name, libc::SIGKILL);
        for (_, child) in self.processes.iter_mut().filter(|(n, _)| *n == name) {
            let _ = child.wait();
        }
        self.processes.retain(|(n, _)| *n != name);
    }

    /// Start a stopped component with its command line (the apiserver: waits until ready).
    pub async fn start_again(&mut self, name: &'static str) -> anyhow::Result<()> {
        let argv = self
            .commands
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, argv)| argv.clone())
            .with_context(|| format!("no component named {name}"))?;
        self.spawn(name, Command::new(&argv[0]).args(&argv[1..]))?;
        if name == "kube-apiserver" {
            self.wait_ready().await?;
        }
        Ok(())
    }

    /// The last lines a component logged, for error messages.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
        tail(&text)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for i in 0..self.processes.len() {
            let name = self.processes[i].0;
            if let Some(status) = self.processes[i].1.try_wait()? {
                bail!("{name} exited ({status}):\n{}", self.log_tail(name));
            }
        }
        Ok(())
    }

    /// A client authenticated as the admin.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig())?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Poll `ready` until it holds, failing early if a component exits and
    /// after `limit` with the last lines `component` logged.
    async fn wait_until<F, Fut>(
        &mut self,
        limit: Duration,
        what: &str,
        component: &str,
        mut ready: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            self.check_alive()?;
            if ready().await? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{what} within {} s:\n{}", limit.as_secs(), self.log_tail(component));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = self.client().await?;
        self.wait_until(
            Duration::from_secs(90),
            "kube-apiserver was not ready",
            "kube-apiserver",
            || {
                let client = client.clone();
                async move {
                    let request = http::Request::get("/readyz").body(Vec::new())?;
                    Ok(client.request_text(request).await.is_ok_and(|body| body.trim() == "ok"))
                }
            },
        )
        .await
    }

    /// Create CustomResourceDefinitions from multi-document YAML and wait until they are served.
    pub async fn install_crds(&self, yaml: &str) -> anyhow::Result<()> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let api: kube::Api<CustomResourceDefinition> = kube::Api::all(self.client().await?);
        let mut names = Vec::new();
        for doc in yaml
            .split("\n---")
            .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
        {
            let crd: CustomResourceDefinition = serde_yaml::from_str(doc).context("a CRD does not parse")?;
            names.push(crd.metadata.name.clone().unwrap_or_default());
            api.create(&Default::default(), &crd)
                .await
                .context("cannot create a CRD")?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for name in names {
            loop {
                let crd = api.get(&name).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"));
                if established {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("CRD {name} was not established within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Register the fake node kwok manages.
    async fn add_node(&mut self) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Node;
        let nodes: kube::Api<Node> = kube::Api::all(self.client().await?);
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"kubernetes.io/hostname": NODE_NAME, "type": "kwok"},
            },
        }))?;
        nodes
            .create(&Default::default(), &node)
            .await
            .context("cannot register the kwok node")?;
        Ok(())
    }

    /// Wait until kwok reports its node Ready.
    async fn wait_node_ready(&mut self) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Node;
        let nodes: kube::Api<Node> = kube::Api::all(self.client().await?);
        self.wait_until(
            Duration::from_secs(60),
            "the kwok node did not become Ready",
            "kwok",
            || {
                let nodes = nodes.clone();
                async move {
                    let node = nodes.get(NODE_NAME).await?;
                    Ok(node
                        .status
                        .and_then(|s| s.conditions)
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
                }
            },
        )
        .await
    }

    fn write_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        let path = self.kubeconfig();
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: admin\ncurrent-context: local\n",
                self.server, self.admin_token
            ),
        )?;
        Ok(path)
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::{ControlPlane, NODE_NAME, binaries, free_port, tail};

    #[test]
    fn a_port_is_handed_out_once_per_process_though_nothing_bound_it_yet() {
        // 2 000 draws of 12 768 ports would repeat one ~150 times by chance.
        let ports: Vec<u16> = (0..2000).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[tokio::test]
    async fn kwok_that_exits_while_it_starts_is_started_once_more() {
        use std::os::unix::fs::PermissionsExt;
        // The real binaries, but a kwok that panics at its first start and is the real one after.
        let real = binaries().expect("control plane binaries");
        let bin = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&real).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != "kwok" {
                std::os::unix::fs::symlink(entry.path(), bin.path().join(entry.file_name())).unwrap();
            }
        }
        let started = bin.path().join("started-once");
        let kwok = bin.path().join("kwok");
        std::fs::write(
            &kwok,
            format!(
                "#!/bin/sh\nif [ ! -e '{started}' ]; then : > '{started}'; echo 'panic: exits at its first start' >&2; exit 2; fi\nexec '{real}' \"$@\"\n",
                started = started.display(),
                real = real.join("kwok").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&kwok, std::fs::Permissions::from_mode(0o755)).unwrap();

        let cp = ControlPlane::start(bin.path())
            .await
            .expect("started, kwok at its second try");
        assert!(started.exists(), "kwok's first start ran");
        let log = std::fs::read_to_string(cp.dir().join("kwok.log")).unwrap();
        assert!(log.contains("panic: exits at its first start"), "{log}");
        use k8s_openapi::api::core::v1::Node;
        let nodes: kube::Api<Node> = kube::Api::all(cp.client().await.unwrap());
        nodes.get(NODE_NAME).await.expect("kwok's node");
    }

    #[test]
    fn a_log_tail_keeps_the_line_that_says_why_a_go_program_crashed() {
        let mut log = vec!["I1201 starting", "panic: runtime error: index out of range", ""];
        let dump: Vec<String> = (0..40).map(|i| format!("\tgoroutine frame {i}")).collect();
        log.extend(dump.iter().map(String::as_str));
        let shown = tail(&log.join("\n"));
        assert!(
            shown.starts_with("panic: runtime error: index out of range\n…\n"),
            "{shown}"
        );
        assert!(shown.ends_with("goroutine frame 39"), "{shown}");
        assert_eq!(shown.lines().count(), 17);
        // A log without a crash: its last lines only.
        let quiet: Vec<String> = (0..30).map(|i| format!("line {i}")).collect();
        let shown = tail(&quiet.join("\n"));
        assert_eq!(shown.lines().next(), Some("line 15"));
        assert_eq!(tail("one\ntwo"), "one\ntwo");
    }
}
