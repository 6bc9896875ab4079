//! The `kubewarden` admission engine: one Kubewarden `AdmissionPolicy` per namespace with an
//! active `Lumigo` resource, running the same policy module with settings derived from it.
//! Kubewarden's policy-server then does the admission work.

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use lumigo_mutation::{InjectionConfig, WorkloadKind};
use serde_json::json;

use crate::crd::Lumigo;
use crate::error::{not_found, Result};

pub const POLICY_NAME: &str = "lumigo-autotrace";
const FIELD_MANAGER: &str = "lumigo-operator";

fn admission_policies() -> ApiResource {
    ApiResource {
        group: "policies.kubewarden.io".into(),
        version: "v1".into(),
        api_version: "policies.kubewarden.io/v1".into(),
        kind: "AdmissionPolicy".into(),
        plural: "admissionpolicies".into(),
    }
}

/// The namespace's policy, owned by its `Lumigo` resource so that garbage collection removes it
/// even if the operator is gone.
pub fn admission_policy(
    lumigo: &Lumigo,
    config: &InjectionConfig,
    module: &str,
) -> serde_json::Value {
    let owner = lumigo
        .controller_owner_ref(&())
        .map(|owner| serde_json::to_value(owner).unwrap_or_default());
    json!({
        "apiVersion": "policies.kubewarden.io/v1",
        "kind": "AdmissionPolicy",
        "metadata": {
            "name": POLICY_NAME,
            "namespace": lumigo.namespace(),
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "module": module,
            "mode": "protect",
            "mutating": true,
            "backgroundAudit": false,
            // Tracing must never block a deployment.
            "failurePolicy": "Ignore",
            "rules": WorkloadKind::admission_rules(),
            "settings": config,
        }
    })
}

pub async fn apply(
    client: &Client,
    lumigo: &Lumigo,
    config: &InjectionConfig,
    module: &str,
) -> Result<()> {
    let namespace = lumigo.namespace().unwrap_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace, &admission_policies());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(
        POLICY_NAME,
        &params,
        &Patch::Apply(admission_policy(lumigo, config, module)),
    )
    .await?;
    Ok(())
}

pub async fn delete(client: &Client, namespace: &str) -> Result<()> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &admission_policies());
    match api.delete(POLICY_NAME, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(error) if not_found(&error) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_carries_the_namespace_settings() {
        let lumigo: Lumigo = serde_json::from_value(json!({
            "apiVersion": "operator.lumigo.io/v1alpha1", "kind": "Lumigo",
            "metadata": {"name": "lumigo", "namespace": "shop", "uid": "u-1"},
            "spec": {
                "lumigoToken": {"secretRef": {"name": "creds", "key": "token"}},
                "logging": {"enabled": true}
            }
        }))
        .unwrap();
        let operator = crate::settings::OperatorSettings {
            injector_image: "img:1".into(),
            traces_endpoint: "http://t/v1/traces".into(),
            logs_endpoint: "http://t/v1/logs".into(),
            operator_version: "0.1.0".into(),
            payload_delivery: crate::delivery::DeliveryChoice::Auto,
        };
        let config = crate::settings::injection_config(
            &lumigo,
            &operator,
            lumigo_mutation::PayloadDelivery::ImageVolume,
        )
        .unwrap();
        let policy = admission_policy(&lumigo, &config, "registry://example/policy:v0.1.0");
        assert_eq!(policy["metadata"]["namespace"], "shop");
        assert_eq!(policy["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(policy["spec"]["settings"]["enableLogs"], true);
        assert_eq!(policy["spec"]["settings"]["payloadDelivery"], "imageVolume");
        assert_eq!(
            policy["spec"]["settings"]["tokenSecret"],
            json!({"name": "creds", "key": "token"})
        );
        assert_eq!(policy["spec"]["rules"], WorkloadKind::admission_rules());
    }
}
