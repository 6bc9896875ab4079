//! Reading and writing workloads as raw JSON. Objects never pass through typed structs, so a
//! field this build's Kubernetes types do not know survives a rollout or a removal.

use http::Request;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use lumigo_mutation::WorkloadKind;
use serde_json::Value;

use crate::crd::InstrumentedResource;
use crate::error::{not_found, Result};

/// The kinds the operator rolls into: Pods are left to their controllers (a Pod's spec is
/// immutable), Jobs are listed to warn that their template cannot change.
pub const ROLLOUT_KINDS: [WorkloadKind; 7] = [
    WorkloadKind::Deployment,
    WorkloadKind::DaemonSet,
    WorkloadKind::StatefulSet,
    WorkloadKind::ReplicaSet,
    WorkloadKind::CronJob,
    WorkloadKind::ReplicationController,
    WorkloadKind::Job,
];

/// Objects per list page: bounds the memory a sweep of a large namespace holds at once. A
/// parsed workload takes tens of KB; 250 a page made a sweep the operator's largest use of
/// memory (~20 MB at its peak), at 50 the extra list requests cost nothing measurable.
const PAGE_SIZE: u32 = 50;

fn collection_path(kind: WorkloadKind, namespace: Option<&str>) -> String {
    let prefix = match kind.group() {
        "" => "/api/v1".to_owned(),
        _ => format!("/apis/{}", kind.api_version()),
    };
    match namespace {
        Some(namespace) => format!("{prefix}/namespaces/{namespace}/{}", kind.plural()),
        None => format!("{prefix}/{}", kind.plural()),
    }
}

/// Identity of an object as read from the API.
pub fn reference(kind: WorkloadKind, object: &Value) -> InstrumentedResource {
    let field = |name: &str| {
        object
            .pointer(&format!("/metadata/{name}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    InstrumentedResource {
        api_version: kind.api_version().to_owned(),
        kind: kind.name().to_owned(),
        name: field("name").to_owned(),
        namespace: field("namespace").to_owned(),
        uid: field("uid").to_owned(),
        tracing: None,
    }
}

/// Whether the Pod's `Ready` condition is `True`.
pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

#[derive(Clone)]
pub struct WorkloadApi {
    client: Client,
}

impl WorkloadApi {
    pub fn new(client: Client) -> Self {
        WorkloadApi { client }
    }

    /// One page of objects of `kind`, each with its `apiVersion` and `kind` set (list items
    /// carry neither, and a replace needs both), and the token of the next page.
    pub async fn list_page(
        &self,
        kind: WorkloadKind,
        namespace: Option<&str>,
        continue_token: Option<String>,
    ) -> Result<(Vec<Value>, Option<String>)> {
        let mut params = ListParams::default().limit(PAGE_SIZE);
        if let Some(token) = continue_token {
            params = params.continue_token(&token);
        }
        let request = kube::core::Request::new(collection_path(kind, namespace)).list(&params)?;
        let mut list: Value = self.client.request(request).await?;
        let next = list
            .pointer("/metadata/continue")
            .and_then(Value::as_str)
            .filter(|token| !token.is_empty())
            .map(str::to_owned);
        let items = match list.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        Ok((
            items
                .into_iter()
                .map(|item| with_type(kind, item))
                .collect(),
            next,
        ))
    }

    /// One page of the namespace's pods and the token of the next page.
    pub async fn pods_page(
        &self,
        namespace: &str,
        continue_token: Option<String>,
    ) -> Result<(Vec<Pod>, Option<String>)> {
        let mut params = ListParams::default().limit(PAGE_SIZE * 4);
        if let Some(token) = continue_token {
            params = params.continue_token(&token);
        }
        let list = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .list(&params)
            .await?;
        let next = list.metadata.continue_.filter(|token| !token.is_empty());
        Ok((list.items, next))
    }

    pub async fn get(&self, kind: WorkloadKind, namespace: &str, name: &str) -> Result<Value> {
        let request = kube::core::Request::new(collection_path(kind, Some(namespace)))
            .get(name, &Default::default())?;
        let object: Value = self.client.request(request).await?;
        Ok(with_type(kind, object))
    }

    /// The stored object's uid, or `None` when there is no such object.
    pub async fn uid(
        &self,
        kind: WorkloadKind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>> {
        let request = kube::core::Request::new(collection_path(kind, Some(namespace)))
            .get_metadata(name, &Default::default())?;
        match self
            .client
            .request::<kube::core::PartialObjectMeta<kube::api::DynamicObject>>(request)
            .await
        {
            Ok(found) => Ok(found.metadata.uid),
            Err(error) if not_found(&error) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Replaces the object; the API server refuses (409) when its `resourceVersion` is stale,
    /// so a concurrent change is never overwritten.
    pub async fn replace(&self, kind: WorkloadKind, object: &Value) -> Result<Value> {
        let reference = reference(kind, object);
        let body = serde_json::to_vec(object)?;
        let request: Request<Vec<u8>> = kube::core::Request::new(collection_path(
            kind,
            Some(&reference.namespace),
        ))
        .replace(&reference.name, &PostParams::default(), body)?;
        let stored: Value = self.client.request(request).await?;
        Ok(with_type(kind, stored))
    }
}

fn with_type(kind: WorkloadKind, mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(kind.api_version().to_owned()));
        map.entry("kind")
            .or_insert_with(|| Value::String(kind.name().to_owned()));
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_api_groups() {
        assert_eq!(
            collection_path(WorkloadKind::Deployment, Some("shop")),
            "/apis/apps/v1/namespaces/shop/deployments"
        );
        assert_eq!(
            collection_path(WorkloadKind::CronJob, None),
            "/apis/batch/v1/cronjobs"
        );
        assert_eq!(
            collection_path(WorkloadKind::ReplicationController, Some("a")),
            "/api/v1/namespaces/a/replicationcontrollers"
        );
    }
}
