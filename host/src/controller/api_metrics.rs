//! Counts every request the controller sends to the apiserver, by verb and resource
//! (`workspace_culler_api_requests_total`): how many reads and writes a probe costs is a figure
//! an operator can watch, and the tests check.

use prometheus::IntCounterVec;
use std::task::{Context, Poll};

/// A tower layer for kube's client that counts its requests.
#[derive(Clone)]
pub struct CountRequests(pub IntCounterVec);

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            counter: self.0.clone(),
        }
    }
}

/// The counting service.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    counter: IntCounterVec,
}

impl<S, B> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> S::Future {
        let (verb, resource) = classify(request.method(), request.uri());
        self.counter.with_label_values(&[verb, &resource]).inc();
        self.inner.call(request)
    }
}

/// The Kubernetes verb and resource (`pods`, `workspaces/status`, ...) of a request.
pub fn classify(method: &http::Method, uri: &http::Uri) -> (&'static str, String) {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let (resource, named) = match rest {
        [] => (String::from("other"), false),
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
    };
    let watching = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match *method {
        http::Method::GET if watching => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: http::Method, uri: &str) -> (&'static str, String) {
        classify(&method, &uri.parse().unwrap())
    }

    #[test]
    fn requests_are_named_by_verb_and_resource() {
        use http::Method;
        assert_eq!(
            of(Method::GET, "/api/v1/namespaces/a/pods?labelSelector=x"),
            ("list", "pods".into())
        );
        assert_eq!(
            of(Method::GET, "/api/v1/pods?watch=true&resourceVersion=5"),
            ("watch", "pods".into())
        );
        assert_eq!(of(Method::GET, "/api/v1/namespaces/a/pods/p"), ("get", "pods".into()));
        assert_eq!(
            of(Method::GET, "/api/v1/namespaces/a/pods/p/exec?command=sh"),
            ("get", "pods/exec".into())
        );
        assert_eq!(
            of(
                Method::PATCH,
                "/apis/kubeflow.org/v1beta1/namespaces/a/workspaces/w/status"
            ),
            ("patch", "workspaces/status".into())
        );
        assert_eq!(
            of(Method::GET, "/apis/workspace-culler.io/v1alpha1/cullingpolicies/p"),
            ("get", "cullingpolicies".into())
        );
        assert_eq!(of(Method::GET, "/api/v1/namespaces"), ("list", "namespaces".into()));
        assert_eq!(of(Method::GET, "/api/v1/namespaces/a"), ("get", "namespaces".into()));
        assert_eq!(
            of(Method::POST, "/apis/events.k8s.io/v1/namespaces/a/events"),
            ("create", "events".into())
        );
    }
}
