//! The kinds that carry a pod template, where their template is, and who owns them.

use serde_json::Value;

use crate::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    Pod,
    Deployment,
    DaemonSet,
    StatefulSet,
    ReplicaSet,
    Job,
    CronJob,
    ReplicationController,
}

/// Whether the object is being created or is an existing one being changed: some templates
/// cannot change after creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
}

impl Operation {
    /// The admission operations the mutation acts on; `DELETE` and `CONNECT` carry nothing to
    /// mutate.
    pub fn from_admission(operation: &str) -> Option<Self> {
        match operation {
            "CREATE" => Some(Operation::Create),
            "UPDATE" => Some(Operation::Update),
            _ => None,
        }
    }
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 8] = [
        WorkloadKind::Pod,
        WorkloadKind::Deployment,
        WorkloadKind::DaemonSet,
        WorkloadKind::StatefulSet,
        WorkloadKind::ReplicaSet,
        WorkloadKind::Job,
        WorkloadKind::CronJob,
        WorkloadKind::ReplicationController,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "Pod",
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::ReplicationController => "ReplicationController",
        }
    }

    /// The resource name in API paths and admission rules.
    pub fn plural(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "pods",
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::DaemonSet => "daemonsets",
            WorkloadKind::StatefulSet => "statefulsets",
            WorkloadKind::ReplicaSet => "replicasets",
            WorkloadKind::Job => "jobs",
            WorkloadKind::CronJob => "cronjobs",
            WorkloadKind::ReplicationController => "replicationcontrollers",
        }
    }

    /// `apiVersion` of the served version.
    pub fn api_version(self) -> &'static str {
        match self.group() {
            "apps" => "apps/v1",
            "batch" => "batch/v1",
            _ => "v1",
        }
    }

    /// The admission rules that send every kind to the mutation, on CREATE and UPDATE: the
    /// policy's metadata, the Kubewarden AdmissionPolicy and the webhook configuration all use
    /// these.
    pub fn admission_rules() -> Value {
        let mut rules: Vec<Value> = Vec::new();
        for group in ["", "apps", "batch"] {
            let resources: Vec<&str> = Self::ALL
                .iter()
                .filter(|kind| kind.group() == group)
                .map(|kind| kind.plural())
                .collect();
            rules.push(serde_json::json!({
                "apiGroups": [group],
                "apiVersions": ["v1"],
                "resources": resources,
                "operations": ["CREATE", "UPDATE"],
            }));
        }
        Value::Array(rules)
    }

    /// The API group: `""` for the core group.
    pub fn group(self) -> &'static str {
        match self {
            WorkloadKind::Pod | WorkloadKind::ReplicationController => "",
            WorkloadKind::Deployment
            | WorkloadKind::DaemonSet
            | WorkloadKind::StatefulSet
            | WorkloadKind::ReplicaSet => "apps",
            WorkloadKind::Job | WorkloadKind::CronJob => "batch",
        }
    }

    pub fn from_group_kind(group: &str, kind: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == kind && k.group() == group)
    }

    /// The kind an `apiVersion` (`apps/v1`, `v1`) and a `kind` name.
    pub fn from_api_version_kind(api_version: &str, kind: &str) -> Option<Self> {
        Self::from_group_kind(group_of(api_version), kind)
    }

    /// The keys that lead to the pod template (its `metadata` and `spec`); a Pod is its own
    /// template.
    fn template_keys(self) -> &'static [&'static str] {
        match self {
            WorkloadKind::Pod => &[],
            WorkloadKind::CronJob => &["spec", "jobTemplate", "spec", "template"],
            _ => &["spec", "template"],
        }
    }

    /// The object's pod template, if it has one.
    pub fn template(self, object: &Value) -> Option<&Value> {
        json::at(object, self.template_keys())
    }

    pub fn template_mut(self, object: &mut Value) -> Option<&mut Value> {
        json::at_mut(object, self.template_keys())
    }

    /// The same place, written the way a person reads it in messages.
    pub fn template_path(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "the pod",
            WorkloadKind::CronJob => "spec.jobTemplate.spec.template",
            _ => "spec.template",
        }
    }

    /// Kubernetes rejects changes to these pod templates after creation.
    pub fn template_immutable_after_create(self) -> bool {
        matches!(self, WorkloadKind::Pod | WorkloadKind::Job)
    }

    /// Controllers whose own template is what gets injected: objects they control are left alone.
    fn managing_controllers(self) -> &'static [WorkloadKind] {
        match self {
            WorkloadKind::ReplicaSet => &[WorkloadKind::Deployment],
            WorkloadKind::Job => &[WorkloadKind::CronJob],
            WorkloadKind::Pod => &[
                WorkloadKind::ReplicaSet,
                WorkloadKind::DaemonSet,
                WorkloadKind::StatefulSet,
                WorkloadKind::Job,
                WorkloadKind::ReplicationController,
            ],
            _ => &[],
        }
    }

    /// The controller that injects this object's template in its stead, if any. Owners of
    /// other kinds (e.g. custom controllers) do not inject, so their objects are injected here.
    pub fn managing_owner(self, object: &Value) -> Option<(String, String)> {
        let owners = json::at(object, &["metadata", "ownerReferences"])?.as_array()?;
        owners.iter().find_map(|owner| {
            if owner.get("controller").and_then(Value::as_bool) != Some(true) {
                return None;
            }
            let kind = owner.get("kind")?.as_str()?;
            let group = group_of(owner.get("apiVersion")?.as_str()?);
            let owner_kind = WorkloadKind::from_group_kind(group, kind)?;
            if !self.managing_controllers().contains(&owner_kind) {
                return None;
            }
            let name = owner
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Some((kind.to_owned(), name.to_owned()))
        })
    }
}

fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_are_matched_with_their_group() {
        assert_eq!(
            WorkloadKind::from_api_version_kind("apps/v1", "DaemonSet"),
            Some(WorkloadKind::DaemonSet)
        );
        assert_eq!(
            WorkloadKind::from_api_version_kind("v1", "Pod"),
            Some(WorkloadKind::Pod)
        );
        assert_eq!(
            WorkloadKind::from_api_version_kind("example.com/v1", "Deployment"),
            None
        );
    }

    #[test]
    fn only_known_controllers_take_over() {
        let owned_by = |api_version: &str, kind: &str, controller: bool| {
            json!({"metadata": {"ownerReferences": [{
                "apiVersion": api_version,
                "kind": kind,
                "name": "owner",
                "uid": "1",
                "controller": controller
            }]}})
        };
        let deployment_rs = owned_by("apps/v1", "Deployment", true);
        assert_eq!(
            WorkloadKind::ReplicaSet.managing_owner(&deployment_rs),
            Some(("Deployment".into(), "owner".into()))
        );
        assert_eq!(
            WorkloadKind::ReplicaSet.managing_owner(&owned_by("apps/v1", "Deployment", false)),
            None
        );
        assert_eq!(
            WorkloadKind::ReplicaSet.managing_owner(&owned_by(
                "argoproj.io/v1alpha1",
                "Rollout",
                true
            )),
            None
        );
        assert!(WorkloadKind::Pod
            .managing_owner(&owned_by("apps/v1", "ReplicaSet", true))
            .is_some());
        assert_eq!(
            WorkloadKind::Pod.managing_owner(&owned_by("example.com/v1", "Workflow", true)),
            None
        );
        assert!(WorkloadKind::Job
            .managing_owner(&owned_by("batch/v1", "CronJob", true))
            .is_some());
        assert_eq!(
            WorkloadKind::Deployment.managing_owner(&owned_by("apps/v1", "Deployment", true)),
            None
        );
    }
}
