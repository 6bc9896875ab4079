//! Namespaces instrumented without a kubectl step: the install names them (a list, `all`, or a
//! label selector), and the operator keeps each selected namespace with a token Secret (copied
//! from the install's) and a `Lumigo` resource it owns and labels. A namespace that leaves the
//! selection loses both (the finalizer removes the injection, as for any deleted resource); a
//! `Lumigo` resource somebody made by hand is never touched, and where one exists the operator's
//! own gives way to it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::{stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::core::labels::{Selector, SelectorExt};
use kube::core::PartialObjectMeta;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde::Deserialize;

use crate::crd::{Lumigo, LumigoSpec, LumigoToken, SecretRef};
use crate::error::{lost_race, not_found, Result};
use crate::settings::ProtectedNamespaces;

/// Label of what the operator created for an install; its value is the install's namespace.
pub const MANAGED_BY_INSTALL: &str = "operator.lumigo.io/managed-by-install";
/// Annotation of a managed `Lumigo`: where its token Secret is copied from.
pub const TOKEN_SOURCE: &str = "operator.lumigo.io/token-copied-from";
/// Annotation of the leader Lease while `lumigo-operator uninstall` runs: an operator started
/// before that time creates nothing more (the uninstall is deleting it all).
pub const UNINSTALL_STARTED: &str = "operator.lumigo.io/uninstall-started-at";
/// The names of what the operator creates in a selected namespace.
pub const MANAGED_SECRET: &str = "lumigo-operator-managed-token";
pub const MANAGED_LUMIGO: &str = "lumigo";
const MANAGED_SECRET_KEY: &str = "token";
/// Token rotation in the install's Secret is picked up this often (Secrets are not watched).
const RESYNC: Duration = Duration::from_secs(60);

/// Which namespaces the install monitors, as the chart renders it (`LUMIGO_MONITORED_NAMESPACES`).
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    None,
    Names(BTreeSet<String>),
    All,
    Labels(Selector),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SelectionJson {
    #[serde(default)]
    names: Option<BTreeSet<String>>,
    #[serde(default)]
    all: Option<bool>,
    #[serde(default)]
    selector: Option<LabelSelector>,
}

impl Selection {
    /// `{"names": [...]}`, `{"all": true}` or
    /// `{"selector": {"matchLabels": ..., "matchExpressions": ...}}`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Selection::None);
        }
        let parsed: SelectionJson = serde_json::from_str(text).map_err(|error| {
            format!(
                "monitored namespaces {text:?}: {error} (expected {{\"names\": [...]}}, \
                 {{\"all\": true}} or {{\"selector\": {{...}}}})"
            )
        })?;
        match parsed {
            SelectionJson {
                names: Some(names),
                all: None,
                selector: None,
            } => Ok(Selection::Names(names)),
            SelectionJson {
                names: None,
                all: Some(true),
                selector: None,
            } => Ok(Selection::All),
            SelectionJson {
                names: None,
                all: None,
                selector: Some(selector),
            } => Selector::try_from(selector)
                .map(Selection::Labels)
                .map_err(|error| format!("monitored namespaces: invalid label selector: {error}")),
            _ => Err(format!(
                "monitored namespaces {text:?}: exactly one of names, all (true) or selector"
            )),
        }
    }
}

/// The install's settings for the namespaces it monitors.
#[derive(Debug, Clone)]
pub struct Onboarding {
    pub selection: Selection,
    /// Never selected, besides the system namespaces and the install's own.
    pub excluded: BTreeSet<String>,
    /// The install's namespace: it holds the token Secret and is never selected.
    pub install_namespace: String,
    /// Never selected: the rollout would not instrument them.
    pub protected: ProtectedNamespaces,
    /// The Secret of the install's namespace holding the token, and its key.
    pub token_secret: Option<(String, String)>,
    /// When this operator started: an uninstall started later stops it creating anything.
    pub started: Timestamp,
    /// The leader Lease, where an uninstall leaves its mark.
    pub lease: String,
}

impl Onboarding {
    /// Whether the install selects `namespace` (name, labels, being deleted).
    pub fn selects(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        deleting: bool,
    ) -> bool {
        if deleting || self.protected.contains(namespace) || self.excluded.contains(namespace) {
            return false;
        }
        match &self.selection {
            Selection::None => false,
            Selection::Names(names) => names.contains(namespace),
            Selection::All => true,
            Selection::Labels(selector) => selector.matches(labels),
        }
    }

    fn token_source(&self) -> Option<String> {
        self.token_secret
            .as_ref()
            .map(|(name, key)| format!("{}/{name} (key {key})", self.install_namespace))
    }
}

/// What one convergence changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Converged {
    pub created: Vec<String>,
    pub removed: Vec<String>,
}

/// Keeps the selection converged until the operator stops: on every namespace or `Lumigo`
/// change, and every minute for token rotation.
/// Requests go through `client`, watches through `watches` (the client without a read timeout).
pub async fn run(client: Client, watches: Client, onboarding: Onboarding) {
    let namespace_changes = match onboarding.selection {
        // Nothing selected: only what earlier installs created is removed; no Namespace access.
        Selection::None => stream::pending().boxed(),
        _ => watcher(
            Api::<PartialObjectMeta<Namespace>>::all(watches.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .touched_objects()
        .map(|_| ())
        .boxed(),
    };
    // Status writes are no change here: only a new generation (a resource created, changed or
    // being deleted) or new labels count; a resource gone for good is seen by the resync.
    let lumigo_changes = crate::reconciler::changed_namespaces::<Lumigo>(&watches).map(|_| ());
    let ticks = stream::unfold(tokio::time::interval(RESYNC), |mut ticks| async move {
        ticks.tick().await;
        Some(((), ticks))
    });
    let mut triggers =
        stream::select(stream::select(namespace_changes, lumigo_changes), ticks).boxed();
    let mut last_error = String::new();
    while triggers.next().await.is_some() {
        // Coalesce a burst of changes (a rollout touches many objects) into one convergence.
        tokio::time::sleep(Duration::from_millis(500)).await;
        while let Some(Some(())) = futures::FutureExt::now_or_never(triggers.next()) {}
        match converge(&client, &onboarding).await {
            Ok(converged) => {
                last_error.clear();
                if converged != Converged::default() {
                    tracing::info!(
                        created = ?converged.created,
                        removed = ?converged.removed,
                        "monitored namespaces converged"
                    );
                }
            }
            Err(error) => {
                let error = error.to_string();
                if error != last_error {
                    tracing::warn!(
                        %error,
                        "converging the monitored namespaces failed; retrying on the next change"
                    );
                }
                last_error = error;
            }
        }
    }
}

/// One pass: every selected namespace gets its Secret and `Lumigo`, every namespace no longer
/// selected (or with a hand-made `Lumigo`) loses what the operator created there.
pub async fn converge(client: &Client, onboarding: &Onboarding) -> Result<Converged> {
    let mut converged = Converged::default();
    let lumigoes: Api<Lumigo> = Api::all(client.clone());
    let all = lumigoes.list(&ListParams::default()).await?.items;
    let is_managed = |lumigo: &Lumigo| {
        lumigo.labels().get(MANAGED_BY_INSTALL) == Some(&onboarding.install_namespace)
    };
    let hand_made: BTreeSet<String> = all
        .iter()
        .filter(|lumigo| !is_managed(lumigo))
        .filter_map(ResourceExt::namespace)
        .collect();
    let managed: BTreeMap<String, &Lumigo> = all
        .iter()
        .filter(|lumigo| is_managed(lumigo))
        .filter_map(|lumigo| Some((lumigo.namespace()?, lumigo)))
        .collect();

    let selected: BTreeSet<String> = if onboarding.selection == Selection::None {
        BTreeSet::new()
    } else {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|ns| {
                onboarding.selects(
                    &ns.name_any(),
                    ns.labels(),
                    ns.metadata.deletion_timestamp.is_some(),
                )
            })
            .map(ResourceExt::name_any)
            .collect()
    };

    for (namespace, lumigo) in &managed {
        if selected.contains(namespace) && !hand_made.contains(namespace) {
            continue;
        }
        // The Secret first: while the resource exists, so might its Secret, and a pass that
        // stops half way leaves nothing that no resource points at.
        delete_managed_secret(client, &onboarding.install_namespace, namespace).await?;
        if lumigo.metadata.deletion_timestamp.is_none() {
            let api: Api<Lumigo> = Api::namespaced(client.clone(), namespace);
            match api.delete(MANAGED_LUMIGO, &DeleteParams::default()).await {
                Ok(_) => converged.removed.push(namespace.clone()),
                Err(error) if not_found(&error) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    let wanted: Vec<&String> = selected
        .iter()
        .filter(|namespace| !hand_made.contains(*namespace))
        .collect();
    if wanted.is_empty() || uninstall_in_progress(client, onboarding).await? {
        return Ok(converged);
    }
    let token = read_token(client, onboarding).await?;
    for namespace in wanted {
        if let Some(token) = &token {
            ensure_secret(client, onboarding, namespace, token).await?;
        }
        if !managed.contains_key(namespace) {
            create_lumigo(client, onboarding, namespace).await?;
            converged.created.push(namespace.clone());
        }
    }
    Ok(converged)
}

/// The token in the install's Secret; `None` (and the managed resources say so) when it is not
/// there.
async fn read_token(client: &Client, onboarding: &Onboarding) -> Result<Option<Vec<u8>>> {
    let Some((name, key)) = &onboarding.token_secret else {
        return Ok(None);
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &onboarding.install_namespace);
    let secret = secrets.get_opt(name).await?;
    Ok(secret
        .and_then(|secret| secret.data)
        .and_then(|data| data.get(key).cloned())
        .map(|value| value.0))
}

async fn ensure_secret(
    client: &Client,
    onboarding: &Onboarding,
    namespace: &str,
    token: &[u8],
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let data = BTreeMap::from([(
        MANAGED_SECRET_KEY.to_owned(),
        k8s_openapi::ByteString(token.to_vec()),
    )]);
    match secrets.get_opt(MANAGED_SECRET).await? {
        None => {
            let secret = Secret {
                metadata: managed_metadata(onboarding, MANAGED_SECRET),
                data: Some(data),
                ..Default::default()
            };
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => Ok(()),
                Err(error) if lost_race(&error) => Ok(()),
                Err(error) => Err(error.into()),
            }
        }
        Some(existing)
            if existing.labels().get(MANAGED_BY_INSTALL) != Some(&onboarding.install_namespace) =>
        {
            tracing::warn!(
                namespace,
                secret = MANAGED_SECRET,
                "a Secret of that name exists and is not the operator's; left alone"
            );
            Ok(())
        }
        Some(mut existing) if existing.data.as_ref() != Some(&data) => {
            existing.data = Some(data);
            secrets
                .replace(MANAGED_SECRET, &PostParams::default(), &existing)
                .await?;
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

/// Deletes the token Secret in `namespace` if the install of `install_namespace` made it.
async fn delete_managed_secret(
    client: &Client,
    install_namespace: &str,
    namespace: &str,
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match secrets.get_opt(MANAGED_SECRET).await? {
        Some(secret)
            if secret.labels().get(MANAGED_BY_INSTALL).map(String::as_str)
                == Some(install_namespace) =>
        {
            match secrets
                .delete(MANAGED_SECRET, &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(()),
                Err(error) if not_found(&error) => Ok(()),
                Err(error) => Err(error.into()),
            }
        }
        _ => Ok(()),
    }
}

async fn create_lumigo(client: &Client, onboarding: &Onboarding, namespace: &str) -> Result<()> {
    let mut metadata = managed_metadata(onboarding, MANAGED_LUMIGO);
    if let Some(source) = onboarding.token_source() {
        metadata.annotations = Some(BTreeMap::from([(TOKEN_SOURCE.to_owned(), source)]));
    }
    let lumigo = Lumigo {
        metadata,
        spec: LumigoSpec {
            lumigo_token: LumigoToken {
                secret_ref: SecretRef {
                    name: MANAGED_SECRET.to_owned(),
                    key: MANAGED_SECRET_KEY.to_owned(),
                },
            },
            tracing: Default::default(),
            logging: Default::default(),
        },
        status: None,
    };
    let api: Api<Lumigo> = Api::namespaced(client.clone(), namespace);
    match api.create(&PostParams::default(), &lumigo).await {
        Ok(_) => Ok(()),
        // A resource of that name already exists: then it is hand-made, and it wins.
        Err(error) if lost_race(&error) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn managed_metadata(onboarding: &Onboarding, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(BTreeMap::from([
            (
                MANAGED_BY_INSTALL.to_owned(),
                onboarding.install_namespace.clone(),
            ),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                crate::events::CONTROLLER_NAME.to_owned(),
            ),
        ])),
        ..Default::default()
    }
}

/// Whether `lumigo-operator uninstall` started after this operator did.
async fn uninstall_in_progress(client: &Client, onboarding: &Onboarding) -> Result<bool> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &onboarding.install_namespace);
    let Some(lease) = leases.get_opt(&onboarding.lease).await? else {
        return Ok(false);
    };
    let started = lease
        .annotations()
        .get(UNINSTALL_STARTED)
        .and_then(|at| at.parse::<Timestamp>().ok());
    Ok(started.is_some_and(|at| at >= onboarding.started))
}

/// Leaves the uninstall's mark on the leader Lease (created if absent), so that the running
/// operator stops creating what the uninstall deletes.
pub async fn mark_uninstall(client: &Client, namespace: &str, lease: &str) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    for _ in 0..5 {
        let now = Timestamp::now().to_string();
        let result = match leases.get_opt(lease).await? {
            Some(mut existing) => {
                existing
                    .annotations_mut()
                    .insert(UNINSTALL_STARTED.to_owned(), now);
                leases
                    .replace(lease, &PostParams::default(), &existing)
                    .await
                    .map(|_| ())
            }
            None => {
                let marker = Lease {
                    metadata: ObjectMeta {
                        name: Some(lease.to_owned()),
                        annotations: Some(BTreeMap::from([(UNINSTALL_STARTED.to_owned(), now)])),
                        ..Default::default()
                    },
                    spec: None,
                };
                leases
                    .create(&PostParams::default(), &marker)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(error) if lost_race(&error) => continue,
            // No such namespace: no operator runs there to be told.
            Err(error) if not_found(&error) => return Ok(()),
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// Deletes the managed token Secret of every namespace holding a managed `Lumigo` (the
/// uninstall, before it deletes the resources).
pub async fn delete_managed_secrets(client: &Client, lumigoes: &[Lumigo]) -> Result<usize> {
    let mut deleted = 0;
    for lumigo in lumigoes {
        let (Some(install), Some(namespace)) =
            (lumigo.labels().get(MANAGED_BY_INSTALL), lumigo.namespace())
        else {
            continue;
        };
        delete_managed_secret(client, install, &namespace).await?;
        deleted += 1;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn onboarding(selection: &str) -> Onboarding {
        Onboarding {
            selection: Selection::parse(selection).unwrap(),
            excluded: BTreeSet::from(["sandbox".to_owned()]),
            install_namespace: "lumigo-system".to_owned(),
            protected: ProtectedNamespaces::new("lumigo-system"),
            token_secret: None,
            started: Timestamp::now(),
            lease: String::new(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_list_selects_its_names_only() {
        let install = onboarding(r#"{"names": ["shop", "kube-system", "lumigo-system"]}"#);
        assert!(install.selects("shop", &labels(&[]), false));
        assert!(!install.selects("other", &labels(&[]), false));
        assert!(
            !install.selects("kube-system", &labels(&[]), false),
            "never a system namespace"
        );
        assert!(
            !install.selects("lumigo-system", &labels(&[]), false),
            "never the install's own"
        );
        assert!(
            !install.selects("shop", &labels(&[]), true),
            "never one being deleted"
        );
    }

    #[test]
    fn all_selects_every_namespace_but_the_system_and_excluded_ones() {
        let install = onboarding(r#"{"all": true}"#);
        assert!(install.selects("anything", &labels(&[]), false));
        for never in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "lumigo-system",
            "sandbox",
        ] {
            assert!(!install.selects(never, &labels(&[]), false), "{never}");
        }
    }

    #[test]
    fn a_selector_selects_by_label() {
        let install = onboarding(concat!(
            r#"{"selector": {"matchLabels": {"team": "shop"}, "#,
            r#""matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["dev"]}]}}"#,
        ));
        assert!(install.selects("a", &labels(&[("team", "shop")]), false));
        assert!(!install.selects("b", &labels(&[("team", "shop"), ("tier", "dev")]), false));
        assert!(!install.selects("c", &labels(&[("team", "other")]), false));
    }

    #[test]
    fn bad_selections_are_refused_with_a_reason() {
        assert_eq!(Selection::parse("").unwrap(), Selection::None);
        for bad in [
            "all",
            r#"{"all": true, "names": ["a"]}"#,
            r#"{"all": false}"#,
            r#"{"selector": {"matchExpressions": [{"key": "a", "operator": "Sometimes"}]}}"#,
            r#"{"namespaces": ["a"]}"#,
        ] {
            let error = Selection::parse(bad).unwrap_err();
            assert!(error.starts_with("monitored namespaces"), "{bad}: {error}");
        }
    }
}
