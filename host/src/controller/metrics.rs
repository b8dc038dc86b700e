//! Prometheus metrics of the culler.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The culler's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    /// Where the metrics are registered.
    pub registry: Registry,
    /// Probes by result (`Success`, `Failure`, `Timeout`) and WorkspaceKind.
    pub probes: IntCounterVec,
    /// Probe latency in seconds.
    pub probe_seconds: Histogram,
    /// Workspaces paused (or, in dry-run, that would have been).
    pub culls: IntCounterVec,
    /// Workspaces waiting for a later probe.
    pub due_queue: IntGauge,
    /// Reconcile errors by kind.
    pub errors: IntCounterVec,
    /// Probes under way: waiting for a free evaluation slot, or running in one.
    pub probes_waiting: IntGauge,
    /// Pause patches retried after a conflict.
    pub conflicts: IntCounter,
    /// Objects that could not be read and were skipped, by resource.
    pub skipped: IntCounterVec,
    /// Requests sent to the apiserver, by verb and resource.
    pub api_requests: IntCounterVec,
    /// 1 while this replica leads (acts), 0 while it stands by.
    pub leader: IntGauge,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("workspace_culler".into()), None)?;
        let probes = IntCounterVec::new(
            Opts::new("probes_total", "Probes run, by result and WorkspaceKind"),
            &["result", "kind"],
        )?;
        let probe_seconds = Histogram::with_opts(
            HistogramOpts::new("probe_duration_seconds", "Time a probe took")
                .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
        )?;
        let culls = IntCounterVec::new(
            Opts::new("culls_total", "Workspaces paused for inactivity"),
            &["dry_run"],
        )?;
        let due_queue = IntGauge::new("due_workspaces", "Workspaces scheduled for a later probe")?;
        let errors = IntCounterVec::new(Opts::new("reconcile_errors_total", "Reconcile errors"), &["error"])?;
        let probes_waiting = IntGauge::new(
            "probes_waiting",
            "Probes under way: waiting for a free evaluation slot, or running in one",
        )?;
        let conflicts = IntCounter::new("cull_conflicts_total", "Cull patches retried after a conflict")?;
        registry.register(Box::new(probes.clone()))?;
        registry.register(Box::new(probe_seconds.clone()))?;
        registry.register(Box::new(culls.clone()))?;
        registry.register(Box::new(due_queue.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(probes_waiting.clone()))?;
        let skipped = IntCounterVec::new(
            Opts::new(
                "objects_skipped_total",
                "Objects that could not be read and were skipped",
            ),
            &["resource"],
        )?;
        registry.register(Box::new(conflicts.clone()))?;
        registry.register(Box::new(skipped.clone()))?;
        let api_requests = IntCounterVec::new(
            Opts::new(
                "api_requests_total",
                "Requests sent to the apiserver, by verb and resource",
            ),
            &["verb", "resource"],
        )?;
        registry.register(Box::new(api_requests.clone()))?;
        let leader = IntGauge::new("leader", "1 while this replica leads and acts, 0 while it stands by")?;
        registry.register(Box::new(leader.clone()))?;
        // Every series an alert or the dashboard needs exists from the start, at 0.
        for dry_run in ["true", "false"] {
            culls.with_label_values(&[dry_run]);
        }
        for error in ["kube", "not_leading"] {
            errors.with_label_values(&[error]);
        }
        for resource in ["Workspace", "WorkspaceKind"] {
            skipped.with_label_values(&[resource]);
        }
        Ok(Metrics {
            registry,
            probes,
            probe_seconds,
            culls,
            due_queue,
            errors,
            probes_waiting,
            conflicts,
            skipped,
            api_requests,
            leader,
        })
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}
