//! The MutatingWebhookConfiguration that sends workloads to the built-in webhook: one definition
//! for the Helm chart and the tests.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::ObjectMeta;
use lumigo_mutation::WorkloadKind;

use crate::settings::ProtectedNamespaces;

pub const WEBHOOK_NAME: &str = "injection.operator.lumigo.io";
pub const MUTATE_PATH: &str = "/mutate";

/// Where the apiserver reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookTarget {
    /// In the cluster, through a Service.
    Service {
        name: String,
        namespace: String,
        port: i32,
    },
    /// By URL, e.g. `https://127.0.0.1:PORT` for a webhook served outside the cluster.
    Url(String),
}

/// The configuration for every kind the policy mutates, on CREATE and UPDATE. It never blocks:
/// failurePolicy Ignore, and a timeout well under the apiserver's own. The protected namespaces
/// (the cluster's own and the operator's) are left out so that the operator can always be repaired.
/// `ca_bundle` is what the operator keeps current; `None` until it publishes one.
pub fn webhook_configuration(
    name: &str,
    target: &WebhookTarget,
    operator_namespace: &str,
    ca_bundle: Option<&str>,
) -> MutatingWebhookConfiguration {
    let client_config = match target {
        WebhookTarget::Service {
            name,
            namespace,
            port,
        } => WebhookClientConfig {
            service: Some(ServiceReference {
                name: name.clone(),
                namespace: namespace.clone(),
                path: Some(MUTATE_PATH.into()),
                port: Some(*port),
            }),
            ..Default::default()
        },
        WebhookTarget::Url(base) => WebhookClientConfig {
            url: Some(format!("{}{MUTATE_PATH}", base.trim_end_matches('/'))),
            ..Default::default()
        },
    };
    // The mutation core's rules: the policy's metadata and the Kubewarden policy use the same.
    let mut rules: Vec<RuleWithOperations> =
        serde_json::from_value(WorkloadKind::admission_rules())
            .expect("the core's admission rules have the shape of RuleWithOperations");
    for rule in &mut rules {
        rule.scope = Some("Namespaced".into());
    }
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: WEBHOOK_NAME.into(),
            admission_review_versions: vec!["v1".into()],
            client_config: WebhookClientConfig {
                ca_bundle: ca_bundle.map(|pem| k8s_openapi::ByteString(pem.as_bytes().to_vec())),
                ..client_config
            },
            rules: Some(rules),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".into(),
                    operator: "NotIn".into(),
                    values: Some(
                        ProtectedNamespaces::new(operator_namespace)
                            .names()
                            .to_vec(),
                    ),
                }]),
                ..Default::default()
            }),
            failure_policy: Some("Ignore".into()),
            // The Events it records are side effects, suppressed on a dry run.
            side_effects: "NoneOnDryRun".into(),
            timeout_seconds: Some(10),
            // A re-invocation after another webhook's change lets the injection see the final spec.
            reinvocation_policy: Some("IfNeeded".into()),
            match_policy: Some("Equivalent".into()),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_kind_is_sent_on_create_and_update_and_never_blocks() {
        let target = WebhookTarget::Service {
            name: "webhook".into(),
            namespace: "ops".into(),
            port: 443,
        };
        let configuration = webhook_configuration("lumigo", &target, "ops", Some("PEM"));
        let webhook = &configuration.webhooks.as_ref().unwrap()[0];
        let rules = webhook.rules.as_ref().unwrap();
        for kind in WorkloadKind::ALL {
            let resource = kind.plural().to_owned();
            let rule = rules
                .iter()
                .find(|r| {
                    r.api_groups.as_deref() == Some(&[kind.group().to_owned()][..])
                        && r.resources.as_ref().unwrap().contains(&resource)
                })
                .unwrap_or_else(|| panic!("no rule for {kind}"));
            assert_eq!(
                rule.operations.as_deref(),
                Some(&["CREATE".to_owned(), "UPDATE".to_owned()][..])
            );
        }
        assert_eq!(
            rules
                .iter()
                .map(|r| r.resources.as_ref().unwrap().len())
                .sum::<usize>(),
            WorkloadKind::ALL.len()
        );
        assert_eq!(webhook.failure_policy.as_deref(), Some("Ignore"));
        let excluded = &webhook
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_expressions
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            (excluded.operator.as_str(), excluded.values.as_deref()),
            (
                "NotIn",
                Some(
                    &["kube-system", "kube-public", "kube-node-lease", "ops"].map(String::from)[..]
                )
            )
        );
        assert_eq!(
            webhook
                .client_config
                .service
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some(MUTATE_PATH)
        );
        assert_eq!(webhook.client_config.ca_bundle.as_ref().unwrap().0, b"PEM");
    }
}
