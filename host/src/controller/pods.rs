//! The pods labelled for workspaces, from a watch, with an index by workspace: finding a
//! workspace's pod looks up its few pods instead of scanning every pod of the cluster (a scan
//! per probe is O(N²) per round: 10⁸ pod visits at 10 000 workspaces).
//!
//! The cache keeps each pod as a [`CachedPod`]: the few fields the culler reads, decoded as the
//! pod arrives. A `Pod` of `k8s-openapi` is 2.2 KiB before any of its strings and each of its
//! containers 2.1 KiB more, most of it options the culler never reads: at 10 000 workspaces,
//! ~45 MiB for one pod each.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use super::{Key, WORKSPACE_LABEL, lock};

/// A pod as the cache keeps it: what finding the workspace's pod and reaching it read.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "PodJson")]
pub struct CachedPod {
    /// Its name, namespace and deletion timestamp (and the resourceVersion the watch resumes
    /// from); no labels, annotations, owners or managed fields.
    pub metadata: ObjectMeta,
    /// The value of its [`WORKSPACE_LABEL`].
    pub workspace: Option<String>,
    /// The `apps/v1` StatefulSet that controls it.
    pub statefulset: Option<String>,
    /// Its containers' names.
    pub containers: Vec<String>,
    /// `status.phase`.
    pub phase: Option<String>,
    /// `status.podIP`.
    pub pod_ip: Option<String>,
}

/// The fields of a pod's JSON that a [`CachedPod`] is made of; the rest is skipped unread.
#[derive(Deserialize)]
struct PodJson {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<SpecJson>,
    #[serde(default)]
    status: Option<StatusJson>,
}

#[derive(Deserialize)]
struct SpecJson {
    #[serde(default)]
    containers: Vec<NamedJson>,
}

#[derive(Deserialize)]
struct NamedJson {
    name: String,
}

#[derive(Deserialize)]
struct StatusJson {
    #[serde(default)]
    phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
}

impl From<PodJson> for CachedPod {
    fn from(pod: PodJson) -> Self {
        let PodJson {
            mut metadata,
            spec,
            status,
        } = pod;
        let workspace = metadata
            .labels
            .take()
            .and_then(|mut labels| labels.remove(WORKSPACE_LABEL));
        let statefulset = metadata.owner_references.take().and_then(|owners| {
            owners
                .into_iter()
                .find(|o| o.controller == Some(true) && o.kind == "StatefulSet" && o.api_version == "apps/v1")
                .map(|o| o.name)
        });
        // What the watch itself reads (name, namespace, resourceVersion) and the deletion stay.
        let metadata = ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            resource_version: metadata.resource_version,
            deletion_timestamp: metadata.deletion_timestamp,
            ..ObjectMeta::default()
        };
        let (phase, pod_ip) = status.map_or((None, None), |s| (s.phase, s.pod_ip));
        CachedPod {
            metadata,
            workspace,
            statefulset,
            containers: spec
                .map(|s| s.containers.into_iter().map(|c| c.name).collect())
                .unwrap_or_default(),
            phase,
            pod_ip,
        }
    }
}

impl kube::Resource for CachedPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Pod::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Pod::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Pod::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Pod::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A StatefulSet as the cache keeps it: its metadata only, which is all a metadata-only watch
/// sends (the culler checks its owner).
pub type CachedStatefulSet = kube::core::PartialObjectMeta<k8s_openapi::api::apps::v1::StatefulSet>;

/// Once the watch has read it, a cached pod needs no resourceVersion.
pub fn trim(pod: &mut CachedPod) {
    pod.metadata.resource_version = None;
}

/// The pods' cache and which pods are labelled for which workspace.
#[derive(Clone)]
pub struct WorkspacePods {
    store: Store<CachedPod>,
    index: PodIndex,
}

/// Which pods are labelled for which workspace, kept from the events of the pods' watch.
#[derive(Clone, Default)]
pub struct PodIndex(Arc<Mutex<Index>>);

#[derive(Default)]
struct Index {
    current: Labelled,
    /// Filled during a (re-)list, replacing `current` when it is complete.
    relisting: Option<Labelled>,
}

/// Pod names by (namespace, workspace), and each pod's workspace.
#[derive(Default)]
struct Labelled {
    by_workspace: HashMap<Key, BTreeSet<String>>,
    of_pod: HashMap<Key, String>,
}

impl Labelled {
    fn apply(&mut self, pod: &CachedPod) {
        self.remove(pod);
        let Some(workspace) = &pod.workspace else {
            return;
        };
        let namespace = pod.namespace().unwrap_or_default();
        self.by_workspace
            .entry((namespace.clone(), workspace.clone()))
            .or_default()
            .insert(pod.name_any());
        self.of_pod.insert((namespace, pod.name_any()), workspace.clone());
    }

    fn remove(&mut self, pod: &CachedPod) {
        let namespace = pod.namespace().unwrap_or_default();
        let Some(workspace) = self.of_pod.remove(&(namespace.clone(), pod.name_any())) else {
            return;
        };
        let key = (namespace, workspace);
        if let Some(pods) = self.by_workspace.get_mut(&key) {
            pods.remove(&pod.name_any());
            if pods.is_empty() {
                self.by_workspace.remove(&key);
            }
        }
    }
}

impl PodIndex {
    /// Keep the index as the watch goes (after the store's writer applied `event`).
    pub fn observe(&self, event: &watcher::Event<CachedPod>) {
        let mut index = lock(&self.0);
        match event {
            watcher::Event::Init => index.relisting = Some(Labelled::default()),
            watcher::Event::InitApply(pod) => index.relisting.get_or_insert_with(Default::default).apply(pod),
            watcher::Event::InitDone => {
                if let Some(listed) = index.relisting.take() {
                    index.current = listed;
                }
            }
            watcher::Event::Apply(pod) => index.current.apply(pod),
            watcher::Event::Delete(pod) => index.current.remove(pod),
        }
    }
}

impl WorkspacePods {
    /// The pods of `store`, indexed by `index` (which sees every event `store`'s writer applied).
    pub fn new(store: Store<CachedPod>, index: PodIndex) -> Self {
        Self { store, index }
    }

    /// The cached pods labelled for workspace `name` in `namespace`, by name.
    pub fn labelled(&self, namespace: &str, name: &str) -> Vec<Arc<CachedPod>> {
        let names: Vec<String> = lock(&self.index.0)
            .current
            .by_workspace
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|pods| pods.iter().cloned().collect())
            .unwrap_or_default();
        names
            .into_iter()
            .filter_map(|pod| self.store.get(&ObjectRef::new(&pod).within(namespace)))
            // The store is the truth: the index may trail it by an event.
            .filter(|pod| pod.workspace.as_deref() == Some(name))
            .collect()
    }

    /// Wait until the pods' first list is in.
    pub async fn wait_until_ready(&self) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        self.store.wait_until_ready().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;

    fn pod(namespace: &str, name: &str, workspace: Option<&str>) -> CachedPod {
        let mut pod = CachedPod::default();
        pod.metadata.namespace = Some(namespace.into());
        pod.metadata.name = Some(name.into());
        pod.workspace = workspace.map(Into::into);
        pod
    }

    /// A store and its index, fed the same events as the watch feeds them.
    struct Watched {
        writer: reflector::store::Writer<CachedPod>,
        pods: WorkspacePods,
    }

    impl Watched {
        fn new() -> Self {
            let writer = reflector::store::Writer::default();
            let pods = WorkspacePods::new(writer.as_reader(), PodIndex::default());
            Self { writer, pods }
        }

        fn event(&mut self, event: watcher::Event<CachedPod>) {
            self.writer.apply_watcher_event(&event);
            self.pods.index.observe(&event);
        }

        fn names(&self, namespace: &str, workspace: &str) -> Vec<String> {
            self.pods
                .labelled(namespace, workspace)
                .iter()
                .map(|p| p.name_any())
                .collect()
        }
    }

    #[test]
    fn a_workspace_finds_its_own_pods_only() {
        let mut watched = Watched::new();
        watched.event(watcher::Event::Init);
        watched.event(watcher::Event::InitApply(pod("a", "ws-1-0", Some("ws-1"))));
        watched.event(watcher::Event::InitApply(pod("a", "ws-1-1", Some("ws-1"))));
        watched.event(watcher::Event::InitApply(pod("b", "ws-1-0", Some("ws-1"))));
        watched.event(watcher::Event::InitApply(pod("a", "ws-2-0", Some("ws-2"))));
        watched.event(watcher::Event::InitApply(pod("a", "other", None)));
        assert_eq!(
            watched.names("a", "ws-1"),
            Vec::<String>::new(),
            "not before the list is in"
        );
        watched.event(watcher::Event::InitDone);
        assert_eq!(watched.names("a", "ws-1"), ["ws-1-0", "ws-1-1"]);
        assert_eq!(watched.names("b", "ws-1"), ["ws-1-0"]);
        assert_eq!(watched.names("a", "ws-2"), ["ws-2-0"]);
        assert_eq!(watched.names("a", "ws-3"), Vec::<String>::new());
    }

    #[test]
    fn the_index_follows_relabels_deletes_and_relists() {
        let mut watched = Watched::new();
        watched.event(watcher::Event::Init);
        watched.event(watcher::Event::InitApply(pod("a", "p", Some("ws-1"))));
        watched.event(watcher::Event::InitDone);
        watched.event(watcher::Event::Apply(pod("a", "p", Some("ws-2"))));
        assert_eq!(watched.names("a", "ws-1"), Vec::<String>::new(), "relabelled away");
        assert_eq!(watched.names("a", "ws-2"), ["p"]);
        watched.event(watcher::Event::Apply(pod("a", "q", Some("ws-2"))));
        watched.event(watcher::Event::Delete(pod("a", "p", Some("ws-2"))));
        assert_eq!(watched.names("a", "ws-2"), ["q"]);
        // A relist that no longer has q: it is gone once the list is in, not before.
        watched.event(watcher::Event::Init);
        watched.event(watcher::Event::InitApply(pod("a", "r", Some("ws-2"))));
        assert_eq!(watched.names("a", "ws-2"), ["q"]);
        watched.event(watcher::Event::InitDone);
        assert_eq!(watched.names("a", "ws-2"), ["r"]);
    }

    #[test]
    fn a_cached_pod_keeps_what_finding_and_reaching_it_needs() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "ws-0", "namespace": "ns", "uid": "pod-uid", "resourceVersion": "42",
                         "labels": {WORKSPACE_LABEL: "ws", "controller-revision-hash": "ws-5d8f7c9b6d"},
                         "annotations": {"big": "x".repeat(4096)},
                         "managedFields": [{"manager": "kubelet", "operation": "Update"}],
                         "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "not-it",
                                              "uid": "c", "controller": false},
                                             {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "ws",
                                              "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "sidecar"}, {"name": "main", "image": "jupyter", "env": [{"name": "A", "value": "b"}]}],
                     "volumes": [{"name": "home", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.0.0.7",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        });
        // As the watch decodes it: from the bytes the apiserver sends.
        let mut pod: CachedPod = serde_json::from_slice(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(
            pod.resource_version().as_deref(),
            Some("42"),
            "the watch resumes from it"
        );
        trim(&mut pod);
        assert_eq!(super::super::probe::pod_candidate(&pod), Ok("ws".to_string()));
        assert_eq!(pod.pod_ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(pod.workspace.as_deref(), Some("ws"));
        assert_eq!(pod.containers, ["sidecar", "main"]);
        assert_eq!((pod.name_any(), pod.namespace()), ("ws-0".into(), Some("ns".into())));
        assert_eq!(
            pod.metadata,
            ObjectMeta {
                name: Some("ws-0".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            "no labels, annotations, owners, managed fields or versions kept"
        );
        // The same pod as a `k8s-openapi` Pod, trimmed to the same fields, is several times
        // the memory before any string.
        assert!(std::mem::size_of::<CachedPod>() * 4 < std::mem::size_of::<Pod>());
    }

    #[test]
    fn a_cached_pod_watches_pods() {
        use kube::Resource;
        assert_eq!(
            kube::core::ApiResource::erase::<CachedPod>(&()),
            kube::core::ApiResource::erase::<Pod>(&())
        );
        assert_eq!(CachedPod::url_path(&(), Some("ns")), Pod::url_path(&(), Some("ns")));
        // Without a main container, owner or status it is a pod all the same, not an error.
        let bare: CachedPod = serde_json::from_str(r#"{"metadata": {"name": "p"}}"#).unwrap();
        assert!(bare.containers.is_empty() && bare.statefulset.is_none() && bare.phase.is_none());
    }
}
