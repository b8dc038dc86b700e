//! A real OCI registry for the tests: the CNCF distribution registry, built from its Go module
//! by `scripts/ensure-registry`, on a free local port, storing into a folder of its own. It can
//! require basic auth (an htpasswd file) and serve TLS with a CA made here. Every request it
//! answered is in its JSON log, so a test can count what was pulled.

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::controlplane::free_port;

/// How the registry is started.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Require these credentials (basic auth).
    pub credentials: Option<(String, String)>,
    /// Serve TLS with a certificate of a CA made for it (see [`Registry::ca_file`]).
    pub tls: bool,
}

/// A running registry; stopped and removed on drop.
pub struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`: the registry part of its references.
    pub host: String,
    options: Options,
}

/// Where the registry binary is: `$WORKSPACE_CULLER_REGISTRY`, or built by
/// `scripts/ensure-registry`.
pub fn binary() -> anyhow::Result<PathBuf> {
    crate::controlplane::ensured("WORKSPACE_CULLER_REGISTRY", "ensure-registry")
}

impl Registry {
    /// Start a registry and wait until it answers.
    pub fn start(options: Options) -> anyhow::Result<Registry> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut registry = Registry {
            child: None,
            dir,
            host: format!("127.0.0.1:{port}"),
            options,
        };
        registry.write_config()?;
        registry.run()?;
        Ok(registry)
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let mut config = serde_json::json!({
            "version": 0.1,
            "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": true}},
            "storage": {"filesystem": {"rootdirectory": d.join("data")}, "delete": {"enabled": true}},
            "http": {"addr": self.host, "secret": "workspace-culler-test"},
        });
        if let Some((user, password)) = &self.options.credentials {
            let hash = bcrypt::hash(password, 5)?;
            std::fs::write(d.join("htpasswd"), format!("{user}:{hash}\n"))?;
            config["auth"] = serde_json::json!({"htpasswd": {"realm": "test", "path": d.join("htpasswd")}});
        }
        if self.options.tls {
            let ca_key = rcgen::KeyPair::generate()?;
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "workspace-culler test registry CA");
            let ca_cert = ca_params.self_signed(&ca_key)?;
            let issuer = rcgen::Issuer::new(ca_params, ca_key);
            let key = rcgen::KeyPair::generate()?;
            let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?
                .signed_by(&key, &issuer)?;
            std::fs::write(d.join("ca.crt"), ca_cert.pem())?;
            std::fs::write(d.join("tls.crt"), cert.pem())?;
            std::fs::write(d.join("tls.key"), key.serialize_pem())?;
            config["http"]["tls"] = serde_json::json!({"certificate": d.join("tls.crt"), "key": d.join("tls.key")});
        }
        std::fs::write(d.join("config.yml"), serde_json::to_string(&config)?)?;
        Ok(())
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("registry.log"))?;
        let child = Command::new(binary()?)
            .args(["serve"])
            .arg(d.join("config.yml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the registry")?;
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(&self.host).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the registry did not listen on {} within 30 s:\n{}",
                    self.host,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stop it (a registry that is down); [`Registry::restart`] starts it again on the same
    /// port with the same content.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again after [`Registry::stop`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.run()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `(method, path)` of every request it answered, in order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.answered()
            .into_iter()
            .map(|(method, uri, _)| (method, uri))
            .collect()
    }

    /// `(method, path)` of every request it served (a 2xx answer), in order.
    pub fn served(&self) -> Vec<(String, String)> {
        self.answered()
            .into_iter()
            .filter(|(_, _, status)| (200..300).contains(status))
            .map(|(method, uri, _)| (method, uri))
            .collect()
    }

    fn answered(&self) -> Vec<(String, String, u64)> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|entry| entry["msg"] == "response completed")
            .map(|entry| {
                let text = |key: &str| entry[key].as_str().unwrap_or_default().to_string();
                let status = entry["http.response.status"].as_u64().unwrap_or_default();
                (text("http.request.method"), text("http.request.uri"), status)
            })
            .collect()
    }

    /// Blob downloads it served (`GET …/blobs/…`).
    pub fn blob_pulls(&self) -> usize {
        self.requests()
            .iter()
            .filter(|(method, uri)| method == "GET" && uri.contains("/blobs/"))
            .count()
    }

    /// The PEM of its CA (with [`Options::tls`]).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A `.dockerconfigjson` holding its credentials (with [`Options::credentials`]).
    pub fn docker_config_json(&self) -> String {
        let (user, password) = self.options.credentials.clone().unwrap_or_default();
        let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:{password}"));
        serde_json::json!({"auths": {&self.host: {"auth": auth}}}).to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
