//! How the payload reaches pods: mounted from the autotrace image (an image volume) where every
//! node and the API server can, copied by an init container where not. The leader decides from
//! the nodes it watches and writes the decision into each `Lumigo` status, where admission on
//! every replica reads it, so that the webhook and the rollout always inject alike.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use lumigo_mutation::PayloadDelivery;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The delivery asked for: by the operator's setting, overridden by a `Lumigo` resource.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "camelCase")]
#[value(rename_all = "kebab-case")]
pub enum DeliveryChoice {
    /// An image volume when every node and the API server support one, else an init container.
    #[default]
    Auto,
    /// An image volume; an init container while the cluster cannot mount one (the status says
    /// why).
    ImageVolume,
    /// An init container that copies the payload, on every cluster.
    InitContainer,
}

/// The delivery in force for a namespace, and why: shown in its `Lumigo` status and read by
/// admission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStatus {
    /// `imageVolume` or `initContainer`.
    pub mode: DeliveryMode,
    /// `Requested`, `ImageVolumeSupported`, or `ImageVolumeUnsupported` (an init container is
    /// used instead).
    pub reason: String,
    pub message: String,
}

/// [`PayloadDelivery`] as the status spells it (the mutation core carries no schema).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DeliveryMode {
    ImageVolume,
    InitContainer,
}

impl From<DeliveryMode> for PayloadDelivery {
    fn from(mode: DeliveryMode) -> Self {
        match mode {
            DeliveryMode::ImageVolume => PayloadDelivery::ImageVolume,
            DeliveryMode::InitContainer => PayloadDelivery::InitContainer,
        }
    }
}

/// Whether pods of this cluster can mount an image volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageVolumes {
    Supported,
    /// A sentence naming what lacks it.
    Unsupported(String),
}

const MINIMUM_KUBERNETES: (u32, u32) = (1, 35);
const MINIMUM_CONTAINERD: (u32, u32) = (2, 1);
/// CRI-O mounts an image volume's `subPath` (the payload's directory) from 1.33.
const MINIMUM_CRIO: (u32, u32) = (1, 33);

/// What a node says of itself that decides image volumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRuntime {
    pub operating_system: String,
    pub kubelet_version: String,
    pub container_runtime_version: String,
}

impl From<&NodeSystemInfo> for NodeRuntime {
    fn from(info: &NodeSystemInfo) -> Self {
        NodeRuntime {
            operating_system: info.operating_system.clone(),
            kubelet_version: info.kubelet_version.clone(),
            container_runtime_version: info.container_runtime_version.clone(),
        }
    }
}

/// Image volumes are on by default from Kubernetes 1.35, in the API server (which otherwise drops
/// the field) and in the kubelet, and the runtime mounts them from containerd 2.1 and CRI-O 1.33
/// (with the `subPath` the payload is mounted by).
/// Windows nodes never run the pods injected, so they do not count.
pub fn image_volumes<'a>(
    server: &Info,
    nodes: impl IntoIterator<Item = (&'a str, &'a NodeRuntime)>,
) -> ImageVolumes {
    let server_version = (leading_number(&server.major), leading_number(&server.minor));
    if server_version < (Some(MINIMUM_KUBERNETES.0), Some(MINIMUM_KUBERNETES.1)) {
        return ImageVolumes::Unsupported(format!(
            "the API server is Kubernetes {}.{}; image volumes are on by default from 1.35",
            server.major, server.minor
        ));
    }
    let mut linux_nodes = 0;
    for (name, node) in nodes {
        if !node.operating_system.eq_ignore_ascii_case("linux") {
            continue;
        }
        linux_nodes += 1;
        if node.kubelet_version.is_empty() {
            return ImageVolumes::Unsupported(format!(
                "node {name} has not reported its kubelet and runtime versions yet"
            ));
        }
        let kubelet = major_minor(node.kubelet_version.trim_start_matches('v'));
        if kubelet.is_none_or(|version| version < MINIMUM_KUBERNETES) {
            return ImageVolumes::Unsupported(format!(
                "node {name} runs kubelet {}; image volumes are on by default from 1.35",
                node.kubelet_version
            ));
        }
        if !runtime_mounts_images(&node.container_runtime_version) {
            return ImageVolumes::Unsupported(format!(
                "node {name} runs {}; image volumes need containerd 2.1 or CRI-O 1.33 or later",
                node.container_runtime_version
            ));
        }
    }
    if linux_nodes == 0 {
        return ImageVolumes::Unsupported("no Linux node has joined the cluster".to_owned());
    }
    ImageVolumes::Supported
}

fn runtime_mounts_images(runtime_version: &str) -> bool {
    let Some((runtime, version)) = runtime_version.split_once("://") else {
        return false;
    };
    let minimum = match runtime {
        "containerd" => MINIMUM_CONTAINERD,
        "cri-o" => MINIMUM_CRIO,
        _ => return false,
    };
    major_minor(version.trim_start_matches('v')).is_some_and(|version| version >= minimum)
}

/// `1.35` of `1.35.4-gke.100`; `None` when the text does not start with two numbers.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    let major = leading_number(parts.next()?)?;
    let minor = leading_number(parts.next()?)?;
    Some((major, minor))
}

/// `35` of `35+` (how managed clusters report their minor version).
fn leading_number(text: &str) -> Option<u32> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

/// The delivery for `choice` on a cluster that supports image volumes or not.
pub fn resolve(choice: DeliveryChoice, support: &ImageVolumes) -> DeliveryStatus {
    let status = |mode, reason: &str, message: String| DeliveryStatus {
        mode,
        reason: reason.to_owned(),
        message,
    };
    match (choice, support) {
        (DeliveryChoice::InitContainer, _) => status(
            DeliveryMode::InitContainer,
            "Requested",
            "an init container copies the payload into each pod (payloadDelivery: initContainer)"
                .to_owned(),
        ),
        (DeliveryChoice::ImageVolume, ImageVolumes::Supported) => status(
            DeliveryMode::ImageVolume,
            "Requested",
            "the injector image is mounted read-only into each pod (payloadDelivery: imageVolume)"
                .to_owned(),
        ),
        (DeliveryChoice::Auto, ImageVolumes::Supported) => status(
            DeliveryMode::ImageVolume,
            "ImageVolumeSupported",
            "every node and the API server support image volumes: the injector image is mounted \
             read-only into each pod, with no copy"
                .to_owned(),
        ),
        (choice, ImageVolumes::Unsupported(why)) => status(
            DeliveryMode::InitContainer,
            "ImageVolumeUnsupported",
            format!(
                "{why}; an init container copies the payload into each pod instead{}",
                if choice == DeliveryChoice::ImageVolume {
                    " (payloadDelivery: imageVolume cannot be honoured)"
                } else {
                    ""
                }
            ),
        ),
    }
}

/// The cluster's image-volume support as the leader last saw it; `None` until the nodes have
/// been listed once, so that no reconcile decides on a partial view (and re-injects later).
#[derive(Clone)]
pub struct ClusterSupport {
    current: watch::Receiver<Option<ImageVolumes>>,
}

impl ClusterSupport {
    /// A fixed answer (tests, and uninstall, which removes whatever was delivered).
    pub fn fixed(support: ImageVolumes) -> Self {
        let (sender, current) = watch::channel(Some(support));
        // Dropped senders keep the last value readable.
        drop(sender);
        ClusterSupport { current }
    }

    /// The support once known.
    pub async fn known(&self) -> ImageVolumes {
        let mut current = self.current.clone();
        if let Ok(known) = current.wait_for(Option::is_some).await {
            if let Some(support) = known.as_ref() {
                return support.clone();
            }
        }
        // The watch ended before any answer: decide as if unsupported, the safe delivery.
        self.current
            .borrow()
            .clone()
            .unwrap_or_else(|| ImageVolumes::Unsupported("the nodes could not be read".into()))
    }
}

/// Watches the nodes through `watches` (and reads the API server's version through `client`): the
/// support, and a stream that yields each time it changes after the first answer (every `Lumigo`
/// resource is then reconciled, and so re-decided). The stream is what drives the watch.
pub fn watch_nodes(
    client: Client,
    watches: Client,
) -> (ClusterSupport, impl Stream<Item = ()> + Send + 'static) {
    let (sender, current) = watch::channel(None);
    let changes = node_support(client, watches).filter_map(move |support| {
        let changed = publish(&sender, support);
        async move { changed.then_some(()) }
    });
    (ClusterSupport { current }, changes)
}

/// Stores `support`, waking the reconciles waiting in [`ClusterSupport::known`] whenever it is new
/// (the first answer included); whether it changed an answer already given.
fn publish(sender: &watch::Sender<Option<ImageVolumes>>, support: ImageVolumes) -> bool {
    let mut first = false;
    let stored = sender.send_if_modified(|known| {
        first = known.is_none();
        let differs = known.as_ref() != Some(&support);
        if differs {
            *known = Some(support.clone());
        }
        differs
    });
    stored && !first
}

/// The support after the first complete list of nodes and after every event since (a node that
/// only renews its status changes nothing; the caller keeps only changes).
fn node_support(client: Client, watches: Client) -> impl Stream<Item = ImageVolumes> + Send {
    let view = NodeView {
        events: watcher::watcher(Api::<Node>::all(watches), watcher::Config::default())
            .default_backoff()
            .boxed(),
        client,
        server: Info::default(),
        nodes: BTreeMap::new(),
        listing: BTreeMap::new(),
        listed: false,
    };
    futures::stream::unfold(view, |mut view| async move {
        let support = view.next_support().await?;
        Some((support, view))
    })
}

struct NodeView {
    events: futures::stream::BoxStream<'static, watcher::Result<Event<Node>>>,
    client: Client,
    server: Info,
    nodes: BTreeMap<String, NodeRuntime>,
    /// The nodes of a list under way; `nodes` keeps the previous complete one meanwhile.
    listing: BTreeMap<String, NodeRuntime>,
    listed: bool,
}

impl NodeView {
    /// The support after the next event once the nodes have been listed; `None` when the watch
    /// ends (at shutdown).
    async fn next_support(&mut self) -> Option<ImageVolumes> {
        loop {
            match self.events.next().await? {
                Ok(Event::Init) => self.listing.clear(),
                Ok(Event::InitApply(node)) => {
                    self.listing.insert(node.name_any(), runtime_of(&node));
                }
                Ok(Event::InitDone) => {
                    self.nodes = std::mem::take(&mut self.listing);
                    // Read at every complete list: after an upgrade of the control plane the
                    // watch starts over, and the version may be new.
                    self.server = server_version(&self.client).await;
                    self.listed = true;
                }
                Ok(Event::Apply(node)) => {
                    self.nodes.insert(node.name_any(), runtime_of(&node));
                }
                Ok(Event::Delete(node)) => {
                    self.nodes.remove(&node.name_any());
                }
                // Not allowed to read nodes (an install without the chart's RBAC): no list will
                // ever come, and reconciles wait for an answer.
                Err(error) if !self.listed && forbidden(&error) => {
                    return Some(ImageVolumes::Unsupported(format!(
                        "the operator may not list nodes ({error})"
                    )));
                }
                // Anything else passes: the watcher retries with backoff, and a decision waits
                // for a complete list rather than flip the cluster's pods twice.
                Err(error) => {
                    tracing::warn!(%error, "watching the nodes for image-volume support");
                    continue;
                }
            }
            if self.listed {
                let nodes = self.nodes.iter().map(|(name, node)| (name.as_str(), node));
                return Some(image_volumes(&self.server, nodes));
            }
        }
    }
}

fn forbidden(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 403
    )
}

/// The API server's version, retried until it answers: a failed read must not pass for an old
/// server.
async fn server_version(client: &Client) -> Info {
    let mut delay = Duration::from_secs(1);
    loop {
        match client.apiserver_version().await {
            Ok(info) => return info,
            Err(error) => {
                tracing::warn!(%error, "reading the API server's version; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}

fn runtime_of(node: &Node) -> NodeRuntime {
    node.status
        .as_ref()
        .and_then(|status| status.node_info.as_ref())
        .map_or_else(
            || NodeRuntime {
                operating_system: "linux".to_owned(),
                kubelet_version: String::new(),
                container_runtime_version: String::new(),
            },
            NodeRuntime::from,
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(major: &str, minor: &str) -> Info {
        Info {
            major: major.to_owned(),
            minor: minor.to_owned(),
            ..Info::default()
        }
    }

    fn node(kubelet: &str, runtime: &str) -> NodeRuntime {
        NodeRuntime {
            operating_system: "linux".to_owned(),
            kubelet_version: kubelet.to_owned(),
            container_runtime_version: runtime.to_owned(),
        }
    }

    fn support(server: &Info, nodes: &[(&str, NodeRuntime)]) -> ImageVolumes {
        image_volumes(server, nodes.iter().map(|(name, node)| (*name, node)))
    }

    #[test]
    fn every_node_and_the_server_must_be_recent_enough() {
        let current = server("1", "35");
        let good = node("v1.35.4", "containerd://2.4.2");
        assert_eq!(
            support(&current, &[("a", good.clone())]),
            ImageVolumes::Supported
        );
        assert_eq!(
            support(
                &server("1", "36+"),
                &[("a", node("v1.36.0-gke.1", "cri-o://1.33.0"))]
            ),
            ImageVolumes::Supported
        );
        for (server, other, names) in [
            (
                server("1", "34"),
                good.clone(),
                "API server is Kubernetes 1.34",
            ),
            (
                current.clone(),
                node("v1.34.2", "containerd://2.1.0"),
                "node b runs kubelet v1.34.2",
            ),
            (
                current.clone(),
                node("v1.35.0", "containerd://2.0.5"),
                "node b runs containerd://2.0.5",
            ),
            (
                current.clone(),
                node("v1.35.0", "containerd://1.7.27"),
                "containerd://1.7.27",
            ),
            (
                current.clone(),
                node("v1.35.0", "cri-o://1.32.9"),
                "cri-o://1.32.9",
            ),
            (
                current.clone(),
                node("v1.35.0", "docker://28.2.2"),
                "docker://28.2.2",
            ),
            (current.clone(), node("", ""), "node b has not reported"),
        ] {
            match support(&server, &[("a", good.clone()), ("b", other)]) {
                ImageVolumes::Unsupported(why) => assert!(why.contains(names), "{why}"),
                ImageVolumes::Supported => panic!("supported: {names}"),
            }
        }
    }

    #[test]
    fn windows_nodes_do_not_count_and_no_linux_node_is_no_support() {
        let current = server("1", "35");
        let windows = NodeRuntime {
            operating_system: "windows".to_owned(),
            ..node("v1.35.0", "containerd://1.7.0")
        };
        assert_eq!(
            support(
                &current,
                &[
                    ("w", windows.clone()),
                    ("l", node("v1.35.1", "containerd://2.1.0"))
                ]
            ),
            ImageVolumes::Supported
        );
        assert!(matches!(
            support(&current, &[("w", windows)]),
            ImageVolumes::Unsupported(why) if why.contains("no Linux node")
        ));
    }

    #[test]
    fn the_choice_is_honoured_or_falls_back_with_the_reason() {
        let unsupported = ImageVolumes::Unsupported("node b runs containerd://1.7.0".into());
        let cases = [
            (
                DeliveryChoice::Auto,
                &ImageVolumes::Supported,
                DeliveryMode::ImageVolume,
            ),
            (
                DeliveryChoice::Auto,
                &unsupported,
                DeliveryMode::InitContainer,
            ),
            (
                DeliveryChoice::ImageVolume,
                &ImageVolumes::Supported,
                DeliveryMode::ImageVolume,
            ),
            (
                DeliveryChoice::ImageVolume,
                &unsupported,
                DeliveryMode::InitContainer,
            ),
            (
                DeliveryChoice::InitContainer,
                &ImageVolumes::Supported,
                DeliveryMode::InitContainer,
            ),
        ];
        for (choice, support, mode) in cases {
            assert_eq!(
                resolve(choice, support).mode,
                mode,
                "{choice:?} {support:?}"
            );
        }
        let fallback = resolve(DeliveryChoice::ImageVolume, &unsupported);
        assert_eq!(fallback.reason, "ImageVolumeUnsupported");
        assert!(
            fallback.message.contains("containerd://1.7.0")
                && fallback.message.contains("cannot be honoured"),
            "{}",
            fallback.message
        );
    }

    #[tokio::test]
    async fn the_first_answer_wakes_a_reconcile_already_waiting() {
        let (sender, current) = watch::channel(None);
        let support = ClusterSupport { current };
        let waiting = tokio::spawn(async move { support.known().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no answer yet");
        assert!(
            !publish(&sender, ImageVolumes::Supported),
            "the first answer is no change"
        );
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the first answer")
            .unwrap();
        assert_eq!(answer, ImageVolumes::Supported);
        assert!(!publish(&sender, ImageVolumes::Supported), "the same again");
        assert!(publish(
            &sender,
            ImageVolumes::Unsupported("a new node".into())
        ));
    }

    #[tokio::test]
    async fn a_fixed_support_is_known_at_once() {
        let support = ClusterSupport::fixed(ImageVolumes::Supported);
        assert_eq!(support.known().await, ImageVolumes::Supported);
    }
}
