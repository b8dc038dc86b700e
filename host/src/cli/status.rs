//! `workspace-culler status`: the managed workspaces of the cluster (or one namespace) as the
//! culler sees them, read from the API — so it works from a laptop with a kubeconfig.

use clap::Args;
use kube::api::{Api, DynamicObject};
use std::path::PathBuf;
use std::process::ExitCode;
use workspace_culler::controller::{self, command, metrics::Metrics};
use workspace_culler::status;
use workspace_culler_policy::{CullingPolicy, Management, Workspace, WorkspaceKind, decode};

/// `status`'s command line.
#[derive(Args)]
pub struct StatusArgs {
    /// A kubeconfig file (default: `$KUBECONFIG` — one file or several, merged as kubectl
    /// does — else ~/.kube/config, else the in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Only this namespace (default: all).
    #[arg(long)]
    namespace: Option<String>,
}

/// Prints the table.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = command::kube_client(args.kubeconfig.as_deref(), &Metrics::new()?).await?;
    let policies = Api::<CullingPolicy>::all(client.clone())
        .list(&Default::default())
        .await?
        .items;
    let kinds: Vec<WorkspaceKind> = Api::<DynamicObject>::all_with(client.clone(), &controller::kind_resource())
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|k| serde_json::to_value(k).ok().and_then(|v| decode(v).ok()))
        .collect();
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .list(&Default::default())
        .await?
        .items;
    let workspaces_api = match &args.namespace {
        Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &controller::workspace_resource()),
        None => Api::all_with(client.clone(), &controller::workspace_resource()),
    };
    let management = Management::compute(&policies, &kinds);
    let now = chrono::Utc::now().timestamp_millis();
    let mut rows = Vec::new();
    let mut unreadable = Vec::new();
    for object in workspaces_api.list(&Default::default()).await?.items {
        let workspace: Workspace = match serde_json::to_value(object)
            .map_err(|e| e.to_string())
            .and_then(|v| decode(v).map_err(|e| e.to_string()))
        {
            Ok(workspace) => workspace,
            Err(e) => {
                unreadable.push(e);
                continue;
            }
        };
        let labels = namespaces
            .iter()
            .find(|n| n.metadata.name == workspace.metadata.namespace)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        rows.push(status::row(&workspace, &management, &policies, &kinds, &labels, now));
    }
    rows.sort_by(|a, b| a.workspace.cmp(&b.workspace));
    print!("{}", status::render(&rows));
    for error in unreadable {
        eprintln!("skipped: {error}");
    }
    Ok(ExitCode::SUCCESS)
}
