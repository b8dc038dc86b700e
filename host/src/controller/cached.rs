//! A Workspace as the controller's watch cache keeps it: decoded once, when it arrives, to the
//! fields the culler reads — not kept as a JSON tree (~9 KiB in memory for Kubeflow's sample
//! workspace, most of it maps that are never read) and decoded again on every reconcile.
//!
//! Decoding never fails the watch: a Workspace that cannot be read is kept as its metadata and
//! the reason, so the reconcile skips and counts that one while the others go on.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use workspace_culler_policy::{DecodeError, Workspace};

/// Annotations the culler reads all start with this; others are not kept.
const OWN_ANNOTATIONS: &str = "workspace-culler.io/";

/// One entry of the Workspace cache.
#[derive(Clone, Debug)]
pub enum CachedWorkspace {
    /// Decoded: what the culler reads of it.
    Read(Box<Workspace>),
    /// Cannot be read: its metadata (to name it) and why.
    Unreadable {
        /// The object's metadata.
        metadata: Box<ObjectMeta>,
        /// Why it cannot be read.
        error: String,
    },
}

impl<'de> Deserialize<'de> for CachedWorkspace {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        match Workspace::deserialize(&value) {
            Ok(workspace) => Ok(Self::Read(Box::new(workspace))),
            Err(source) => {
                // Without readable metadata there is nothing to name it by (the apiserver
                // never serves such an object): that fails like any other undecodable event.
                let metadata = match value.get("metadata") {
                    Some(metadata) => ObjectMeta::deserialize(metadata).map_err(serde::de::Error::custom)?,
                    None => ObjectMeta::default(),
                };
                let metadata = Box::new(metadata);
                let error = DecodeError::new::<Workspace>(&value, source).to_string();
                Ok(Self::Unreadable { metadata, error })
            }
        }
    }
}

impl Resource for CachedWorkspace {
    type DynamicType = ();
    type Scope = <Workspace as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Workspace::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Workspace::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Workspace::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Workspace::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Read(workspace) => &workspace.metadata,
            Self::Unreadable { metadata, .. } => metadata,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Read(workspace) => &mut workspace.metadata,
            Self::Unreadable { metadata, .. } => metadata,
        }
    }
}

impl CachedWorkspace {
    /// The workspace's kind, if it can be read.
    pub fn kind_name(&self) -> Option<&str> {
        match self {
            Self::Read(workspace) => Some(&workspace.spec.kind),
            Self::Unreadable { .. } => None,
        }
    }
}

/// Keep only what the culler reads of the metadata: no managed fields, and only the culler's
/// own annotations (a `kubectl apply`'d workspace carries a whole copy of itself in another).
pub fn trim(workspace: &mut CachedWorkspace) {
    let metadata = workspace.meta_mut();
    metadata.managed_fields = None;
    if let Some(annotations) = &mut metadata.annotations {
        annotations.retain(|key, _| key.starts_with(OWN_ANNOTATIONS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use workspace_culler_policy::{DISABLE_CULLING_ANNOTATION, KEEP_ALIVE_ANNOTATION};

    fn from_watch(value: serde_json::Value) -> CachedWorkspace {
        // As the watch decodes it: from the bytes the apiserver sends.
        serde_json::from_slice(&serde_json::to_vec(&value).unwrap()).unwrap()
    }

    #[test]
    fn a_readable_workspace_is_kept_decoded_and_trimmed() {
        let mut cached = from_watch(serde_json::json!({
            "apiVersion": "kubeflow.org/v1beta1", "kind": "Workspace",
            "metadata": {"name": "a", "namespace": "ns", "resourceVersion": "7",
                         "annotations": {
                             "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(4096),
                             DISABLE_CULLING_ANNOTATION: "true",
                             KEEP_ALIVE_ANNOTATION: "2026-12-01T00:00:00Z"},
                         "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {"kind": "jupyterlab", "paused": false,
                     "podTemplate": {"volumes": {"home": "pvc"}, "options": {"podConfig": "tiny"}}},
            "status": {"state": "Running", "activity": {"lastActivity": 5}},
        }));
        trim(&mut cached);
        let CachedWorkspace::Read(workspace) = &cached else {
            panic!("{cached:?}")
        };
        assert_eq!(workspace.spec.kind, "jupyterlab");
        assert_eq!(workspace.activity().map(|a| a.last_activity), Some(5));
        assert!(workspace.culling_disabled(), "the culler's own annotations stay");
        assert_eq!(cached.meta().resource_version.as_deref(), Some("7"));
        assert_eq!(cached.meta().managed_fields, None);
        let annotations = cached.meta().annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.keys().map(String::as_str).collect::<Vec<_>>(),
            [DISABLE_CULLING_ANNOTATION, KEEP_ALIVE_ANNOTATION]
        );
        assert_eq!(cached.kind_name(), Some("jupyterlab"));
    }

    #[test]
    fn an_unreadable_workspace_is_kept_by_name_with_the_reason() {
        let cached = from_watch(serde_json::json!({
            "apiVersion": "kubeflow.org/v1beta1", "kind": "Workspace",
            "metadata": {"name": "b", "namespace": "ns", "uid": "u"},
            "spec": {"kind": 5, "paused": "yes"},
        }));
        let CachedWorkspace::Unreadable { metadata, error } = &cached else {
            panic!("{cached:?}")
        };
        assert_eq!(metadata.name.as_deref(), Some("b"));
        assert_eq!(metadata.uid.as_deref(), Some("u"));
        assert!(error.contains("ns/b"), "{error}");
        assert_eq!(cached.kind_name(), None);
    }

    #[test]
    fn one_unreadable_workspace_does_not_fail_the_list_it_comes_in() {
        let list: kube::core::ObjectList<CachedWorkspace> = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubeflow.org/v1beta1", "kind": "WorkspaceList", "metadata": {},
            "items": [
                {"metadata": {"name": "a", "namespace": "ns"}, "spec": {"kind": "jupyterlab"}},
                {"metadata": {"name": "b", "namespace": "ns"}, "spec": {"paused": "yes"}},
            ],
        }))
        .unwrap();
        let read: Vec<_> = list
            .items
            .iter()
            .map(|w| matches!(w, CachedWorkspace::Read(_)))
            .collect();
        assert_eq!(read, [true, false]);
    }

    #[test]
    fn a_watch_event_of_an_unreadable_workspace_still_decodes() {
        // The watch's events are tagged: the object arrives through serde's buffered content.
        let event: kube::core::WatchEvent<CachedWorkspace> = serde_json::from_value(serde_json::json!({
            "type": "MODIFIED",
            "object": {"metadata": {"name": "b", "namespace": "ns"}, "status": {"activity": "no"}},
        }))
        .unwrap();
        let kube::core::WatchEvent::Modified(CachedWorkspace::Unreadable { metadata, .. }) = event else {
            panic!("{event:?}")
        };
        assert_eq!(metadata.name.as_deref(), Some("b"));
    }
}
