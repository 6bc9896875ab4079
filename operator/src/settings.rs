//! The operator's own configuration, and the injection settings it derives for a namespace
//! from its `Lumigo` resource (the same JSON the Kubewarden policy takes).

use lumigo_mutation::{InjectionConfig, PayloadDelivery, SecretKeyRef};

use crate::crd::Lumigo;
use crate::delivery::DeliveryChoice;
use crate::status::ACTIVE;

/// Namespaces nothing is injected into, by the rollout or at admission: the cluster's own, the
/// operator's, and those the install adds (the chart's `protectedNamespaces.namespaces`, where its
/// ValidatingAdmissionPolicy refuses the operator's writes). The webhook configuration does not
/// send their requests, so that a broken webhook can always be repaired; the rollout honours the
/// same list, so the two never disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedNamespaces {
    names: Vec<String>,
}

impl ProtectedNamespaces {
    pub const SYSTEM: [&'static str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

    pub fn new(operator_namespace: &str) -> Self {
        Self::with_others(operator_namespace, std::iter::empty::<String>())
    }

    pub fn with_others(
        operator_namespace: &str,
        others: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let mut names: Vec<String> = Self::SYSTEM.iter().map(|name| (*name).to_owned()).collect();
        for name in others
            .into_iter()
            .map(Into::into)
            .chain(std::iter::once(operator_namespace.to_owned()))
        {
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
        ProtectedNamespaces { names }
    }

    pub fn contains(&self, namespace: &str) -> bool {
        self.names.iter().any(|name| name == namespace)
    }

    /// Every protected namespace, for the webhook configuration's namespace selector.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// What every namespace's injection shares: set once per operator installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSettings {
    pub injector_image: String,
    pub traces_endpoint: String,
    pub logs_endpoint: String,
    /// Written into the `lumigo.auto-trace` label; workloads labelled by another version are
    /// re-injected.
    pub operator_version: String,
    /// How the payload reaches pods, unless a `Lumigo` resource says otherwise.
    pub payload_delivery: DeliveryChoice,
}

/// The resource that instruments a namespace, among that namespace's `Lumigo` resources: the
/// oldest one not being deleted (by name when created in the same second). The reconciler flags
/// the others as duplicates, and admission takes its settings from this one.
pub fn instrumenting<'a>(lumigos: impl IntoIterator<Item = &'a Lumigo>) -> Option<&'a Lumigo> {
    lumigos
        .into_iter()
        .filter(|lumigo| lumigo.metadata.deletion_timestamp.is_none())
        .min_by_key(|lumigo| {
            (
                lumigo.metadata.creation_timestamp.clone().map(|t| t.0),
                lumigo.metadata.name.clone(),
            )
        })
}

/// The delivery a resource asks for: its own, else the operator's.
pub fn delivery_choice(lumigo: &Lumigo, operator: &OperatorSettings) -> DeliveryChoice {
    lumigo
        .spec
        .tracing
        .injection
        .payload_delivery
        .unwrap_or(operator.payload_delivery)
}

/// The delivery the reconciler decided for the resource and wrote into its status; an init
/// container until it has (it works on every cluster).
fn decided_delivery(lumigo: &Lumigo) -> PayloadDelivery {
    lumigo
        .decided_delivery()
        .map_or(PayloadDelivery::InitContainer, |decided| {
            decided.mode.into()
        })
}

/// The injection settings of a namespace, or `None` when its resource does not ask for injection.
pub fn injection_config(
    lumigo: &Lumigo,
    operator: &OperatorSettings,
    delivery: PayloadDelivery,
) -> Option<InjectionConfig> {
    if !lumigo.spec.tracing.injection.enabled || lumigo.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let secret = &lumigo.spec.lumigo_token.secret_ref;
    Some(InjectionConfig {
        injector_image: operator.injector_image.clone(),
        token_secret: SecretKeyRef {
            name: secret.name.clone(),
            key: secret.key.clone(),
        },
        traces_endpoint: operator.traces_endpoint.clone(),
        logs_endpoint: operator.logs_endpoint.clone(),
        enable_traces: lumigo.spec.tracing.enabled,
        enable_logs: lumigo.spec.logging.enabled,
        operator_version: operator.operator_version.clone(),
        payload_delivery: delivery,
    })
}

/// The settings admission injects with in `namespace`, whose `Lumigo` resources are `lumigos`:
/// exactly where the rollout injects. Not in a protected namespace; from the resource that
/// instruments the namespace; only once the reconciler has found its token valid (its `Active`
/// condition is true; a missing or wrong token makes it false, and the rollout injects nothing
/// then either); injection enabled; with the payload delivery the reconciler decided; and not
/// while the rollout is halted for these settings.
pub fn admission_settings<'a>(
    namespace: &str,
    lumigos: impl IntoIterator<Item = &'a Lumigo>,
    operator: &OperatorSettings,
    protected: &ProtectedNamespaces,
) -> Option<InjectionConfig> {
    if protected.contains(namespace) {
        return None;
    }
    let winner = instrumenting(lumigos)?;
    if !token_verified(winner) {
        return None;
    }
    injection_config(winner, operator, decided_delivery(winner))
        .filter(|config| !rollout_halted(winner, config))
}

/// Whether the reconciler's last verdict on the resource is `Active`: its token Secret exists and
/// holds a token of the right form.
fn token_verified(lumigo: &Lumigo) -> bool {
    lumigo.status.as_ref().is_some_and(|status| {
        status
            .conditions
            .iter()
            .any(|condition| condition.type_ == ACTIVE && condition.status == "True")
    })
}

/// Whether the resource's rollout stopped for exactly these settings and this spec: then
/// nothing new is injected, at admission or by the rollout, until one of them changes.
pub fn rollout_halted(lumigo: &Lumigo, config: &InjectionConfig) -> bool {
    lumigo
        .status
        .as_ref()
        .and_then(|status| status.rollout.halted.as_ref())
        .is_some_and(|halt| {
            halt.settings == config.fingerprint()
                && Some(halt.generation) == lumigo.metadata.generation
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lumigo(name: &str, created: &str, deleting: bool) -> Lumigo {
        let mut metadata = json!({"name": name, "namespace": "shop", "creationTimestamp": created});
        if deleting {
            metadata["deletionTimestamp"] = json!("2026-01-03T00:00:00Z");
        }
        serde_json::from_value(json!({
            "apiVersion": "operator.lumigo.io/v1alpha1", "kind": "Lumigo", "metadata": metadata,
            "spec": {"lumigoToken": {"secretRef": {"name": "s", "key": "token"}}}
        }))
        .unwrap()
    }

    #[test]
    fn the_oldest_resource_not_being_deleted_instruments_the_namespace() {
        let oldest_deleting = lumigo("a", "2026-01-01T00:00:00Z", true);
        let older = lumigo("z", "2026-01-02T00:00:00Z", false);
        let same_second = lumigo("b", "2026-01-02T00:00:00Z", false);
        let newer = lumigo("c", "2026-01-02T00:00:01Z", false);
        let all = [newer, older, oldest_deleting, same_second];
        assert_eq!(
            instrumenting(&all).and_then(|l| l.metadata.name.as_deref()),
            Some("b")
        );
        assert!(instrumenting(&all[2..3]).is_none());
    }

    fn operator() -> OperatorSettings {
        OperatorSettings {
            injector_image: "ghcr.io/lumigo-rs/autotrace:0.1.0".into(),
            traces_endpoint: "http://proxy:4318/v1/traces".into(),
            logs_endpoint: "http://proxy:4318/v1/logs".into(),
            operator_version: "0.1.0".into(),
            payload_delivery: DeliveryChoice::Auto,
        }
    }

    fn with_active(mut lumigo: Lumigo, status: &str, reason: &str) -> Lumigo {
        lumigo.status = Some(
            serde_json::from_value(json!({"conditions": [{
                "type": "Active", "status": status, "reason": reason, "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z"
            }]}))
            .unwrap(),
        );
        lumigo
    }

    #[test]
    fn admission_injects_only_where_the_rollout_does() {
        let protected = ProtectedNamespaces::new("lumigo-system");
        let active = with_active(
            lumigo("a", "2026-01-01T00:00:00Z", false),
            "True",
            "Instrumenting",
        );
        let settings = |namespace: &str, lumigo: &Lumigo| {
            admission_settings(namespace, [lumigo], &operator(), &protected)
        };
        assert!(settings("shop", &active).is_some());
        for namespace in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "lumigo-system",
        ] {
            assert!(
                settings(namespace, &active).is_none(),
                "{namespace} is protected"
            );
        }
        let invalid_token = with_active(
            lumigo("a", "2026-01-01T00:00:00Z", false),
            "False",
            "InvalidToken",
        );
        assert!(settings("shop", &invalid_token).is_none());
        let unchecked = lumigo("a", "2026-01-01T00:00:00Z", false);
        assert!(
            settings("shop", &unchecked).is_none(),
            "the token is not checked yet"
        );
        let mut disabled = active.clone();
        disabled.spec.tracing.injection.enabled = false;
        assert!(settings("shop", &disabled).is_none());
    }

    #[test]
    fn admission_delivers_the_payload_as_the_status_decided() {
        let protected = ProtectedNamespaces::new("lumigo-system");
        let mut active = with_active(
            lumigo("a", "2026-01-01T00:00:00Z", false),
            "True",
            "Instrumenting",
        );
        let delivery = |lumigo: &Lumigo| {
            admission_settings("shop", [lumigo], &operator(), &protected)
                .unwrap()
                .payload_delivery
        };
        assert_eq!(delivery(&active), PayloadDelivery::InitContainer);
        active.status.as_mut().unwrap().payload_delivery = Some(
            serde_json::from_value(json!({
                "mode": "imageVolume", "reason": "ImageVolumeSupported", "message": ""
            }))
            .unwrap(),
        );
        assert_eq!(delivery(&active), PayloadDelivery::ImageVolume);
    }

    #[test]
    fn a_resource_overrides_the_operators_delivery() {
        let mut resource = lumigo("a", "2026-01-01T00:00:00Z", false);
        assert_eq!(
            delivery_choice(&resource, &operator()),
            DeliveryChoice::Auto
        );
        resource.spec.tracing.injection.payload_delivery = Some(DeliveryChoice::InitContainer);
        assert_eq!(
            delivery_choice(&resource, &operator()),
            DeliveryChoice::InitContainer
        );
    }

    #[test]
    fn the_webhook_selector_lists_every_protected_namespace() {
        let protected = ProtectedNamespaces::new("ops");
        for name in protected.names() {
            assert!(protected.contains(name));
        }
        assert_eq!(protected.names().len(), 4);
        assert!(!protected.contains("shop"));
        let more = ProtectedNamespaces::with_others("ops", ["billing", "kube-system", ""]);
        assert_eq!(
            more.names(),
            [
                "kube-system",
                "kube-public",
                "kube-node-lease",
                "billing",
                "ops"
            ]
        );
    }

    /// The chart's `injector.image.digest` makes the image `repo:tag@sha256:…`: it must reach the
    /// settings, and so the pods, as given, with the operator's version still from its own.
    #[test]
    fn a_digest_pinned_injector_image_is_passed_through_unchanged() {
        let image = format!(
            "ghcr.io/lumigo-rs/autotrace:0.1.0@sha256:{}",
            "9f86d081884c7d65".repeat(4)
        );
        let operator = OperatorSettings {
            injector_image: image.clone(),
            ..operator()
        };
        let config = injection_config(
            &lumigo("a", "2026-01-01T00:00:00Z", false),
            &operator,
            PayloadDelivery::InitContainer,
        )
        .unwrap();
        assert_eq!(config.injector_image, image);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.label_value(), "lumigo-operator.v0.1.0");
        // Another digest is other settings: a halted rollout does not hold the new one back.
        let mut repinned = config.clone();
        repinned.injector_image = image.replace("9f86", "0000");
        assert_eq!(repinned.validate(), Ok(()));
        assert_ne!(repinned.fingerprint(), config.fingerprint());
    }
}
