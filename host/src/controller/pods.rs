//! The pods labelled for workspaces, from a watch, with an index by workspace: finding a
//! workspace's pod looks up its few pods instead of scanning every pod of the cluster (a scan
//! per probe is O(N²) per round: 10⁸ pod visits at 10 000 workspaces).

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use super::{Key, WORKSPACE_LABEL, lock};

/// The pods' cache and which pods are labelled for which workspace.
#[derive(Clone)]
pub struct WorkspacePods {
    store: Store<Pod>,
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
    fn apply(&mut self, pod: &Pod) {
        self.remove(pod);
        let Some(workspace) = pod.labels().get(WORKSPACE_LABEL) else {
            return;
        };
        let namespace = pod.namespace().unwrap_or_default();
        self.by_workspace
            .entry((namespace.clone(), workspace.clone()))
            .or_default()
            .insert(pod.name_any());
        self.of_pod.insert((namespace, pod.name_any()), workspace.clone());
    }

    fn remove(&mut self, pod: &Pod) {
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
    pub fn observe(&self, event: &watcher::Event<Pod>) {
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
    pub fn new(store: Store<Pod>, index: PodIndex) -> Self {
        Self { store, index }
    }

    /// The cached pods labelled for workspace `name` in `namespace`, by name.
    pub fn labelled(&self, namespace: &str, name: &str) -> Vec<Arc<Pod>> {
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
            .filter(|pod| pod.labels().get(WORKSPACE_LABEL).map(String::as_str) == Some(name))
            .collect()
    }

    /// Wait until the pods' first list is in.
    pub async fn wait_until_ready(&self) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        self.store.wait_until_ready().await
    }
}

/// Only what the culler reads of a pod: metadata (its workspace's label, owners, deletion), its
/// containers' names, its phase and IP. The cache holds one per workspace.
pub fn trim(pod: &mut Pod) {
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    if let Some(labels) = &mut pod.metadata.labels {
        labels.retain(|key, _| key == WORKSPACE_LABEL);
    }
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        containers: spec
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;

    fn pod(namespace: &str, name: &str, workspace: Option<&str>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some(namespace.into());
        pod.metadata.name = Some(name.into());
        pod.metadata.labels = workspace.map(|w| [(WORKSPACE_LABEL.to_owned(), w.to_owned())].into());
        pod
    }

    /// A store and its index, fed the same events as the watch feeds them.
    struct Watched {
        writer: reflector::store::Writer<Pod>,
        pods: WorkspacePods,
    }

    impl Watched {
        fn new() -> Self {
            let writer = reflector::store::Writer::default();
            let pods = WorkspacePods::new(writer.as_reader(), PodIndex::default());
            Self { writer, pods }
        }

        fn event(&mut self, event: watcher::Event<Pod>) {
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
    fn a_trimmed_pod_keeps_what_finding_and_reaching_it_needs() {
        let mut pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ws-0", "namespace": "ns",
                         "labels": {WORKSPACE_LABEL: "ws", "controller-revision-hash": "ws-5d8f7c9b6d"},
                         "annotations": {"big": "x".repeat(4096)},
                         "managedFields": [{"manager": "kubelet", "operation": "Update"}],
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "ws",
                                              "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "main", "image": "jupyter", "env": [{"name": "A", "value": "b"}]}],
                     "volumes": [{"name": "home", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.0.0.7",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        let whole = serde_json::to_string(&pod).unwrap().len();
        trim(&mut pod);
        assert_eq!(super::super::probe::pod_candidate(&pod), Ok("ws".to_string()));
        assert_eq!(pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()), Some("10.0.0.7"));
        assert_eq!(pod.labels().get(WORKSPACE_LABEL).map(String::as_str), Some("ws"));
        let trimmed = serde_json::to_string(&pod).unwrap();
        assert!(trimmed.len() * 5 < whole, "{trimmed}");
        assert!(
            !trimmed.contains("managedFields") && !trimmed.contains("volumes") && !trimmed.contains("revision"),
            "{trimmed}"
        );
    }
}
