//! The loop that closes "injected" to "traced": every check interval it reads the telemetry
//! proxy's span counts, announces first spans (`LumigoTracesReceived`), reports workloads with
//! Ready pods that stay silent for the window (`LumigoNoTraces`, with the most likely reason), and
//! asks for the reconcile of a `Lumigo` resource only when what its status shows has changed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use lumigo_mutation::{inspect, WorkloadKind};
use serde_json::Value;

use crate::crd::{InstrumentedResource, Lumigo};
use crate::reconciler::Context;
use crate::telemetry_proxy::ProxyReader;
use crate::tracing_state::{TracingSettings, Tracker};
use crate::workloads::pod_is_ready;

/// Words in a container's image, command or args that say it runs a runtime the tracers cover.
const RUNTIME_HINTS: [&str; 8] = [
    "node", "npm", "python", "gunicorn", "uvicorn", "java", "jdk", "jre",
];

pub struct TracingWatch {
    tracker: Mutex<Tracker>,
    reader: Option<ProxyReader>,
    interval: Duration,
}

impl TracingWatch {
    /// Reading the proxy with `reader` every `interval`; without one, every workload is `Unknown`.
    pub fn new(settings: TracingSettings, reader: Option<ProxyReader>, interval: Duration) -> Self {
        TracingWatch {
            tracker: Mutex::new(Tracker::new(settings, reader.is_some())),
            reader,
            interval,
        }
    }

    /// No proxy to read (`uninstall`): every workload is `Unknown`.
    pub fn disabled() -> Self {
        let settings = TracingSettings {
            silence_window: Duration::from_secs(600),
        };
        TracingWatch::new(settings, None, Duration::from_secs(15))
    }

    pub fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker
            .lock()
            .expect("the tracker is never poisoned: nothing panics while holding it")
    }
}

/// Runs until the operator stops; `reconcile` asks the controller for a resource's reconcile.
pub async fn run(
    ctx: Arc<Context>,
    store: Store<Lumigo>,
    reconcile: UnboundedSender<ObjectRef<Lumigo>>,
) {
    let watch = &ctx.tracing;
    let mut ticks = tokio::time::interval(watch.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut proxy_was_readable = true;
    loop {
        ticks.tick().await;
        let reading = match &watch.reader {
            Some(reader) => reader.read(&ctx.client).await,
            None => Err("tracing verification is off".to_owned()),
        };
        if let (Some(_), Err(error)) = (&watch.reader, &reading) {
            // Once per outage, not once per reading.
            if proxy_was_readable {
                tracing::warn!(
                    %error,
                    "cannot read the telemetry proxy's span counts; tracing is Unknown until it \
                     answers"
                );
            }
        }
        proxy_was_readable = reading.is_ok();
        let now = Timestamp::now();
        let first_spans = watch.tracker().observe(reading, now);
        // A proxy page of thousands of series is parsed and dropped every interval.
        crate::memory::release_freed_memory();
        for first in first_spans {
            ctx.events
                .traces_received(&first.workload, &first.containers)
                .await;
        }
        let silent = watch.tracker().silent_past_window(now);
        for workload in silent {
            if let Some(reason) = likely_reason_for_silence(&ctx, &workload).await {
                ctx.events.no_traces(&workload, &reason).await;
                watch.tracker().warned(&workload, reason);
            }
        }
        let (changed, receiving) = {
            let mut tracker = watch.tracker();
            (tracker.republish(now), tracker.receiving_counts())
        };
        for (namespace, count) in receiving {
            ctx.metrics.set_receiving(&namespace, count);
        }
        for namespace in changed {
            let resources = store
                .state()
                .into_iter()
                .filter(|lumigo| lumigo.namespace().as_deref() == Some(namespace.as_str()));
            for lumigo in resources {
                // The receiver lives as long as the controller; once it is gone nothing is
                // listening.
                let _ = reconcile.unbounded_send(ObjectRef::from_obj(lumigo.as_ref()));
            }
        }
    }
}

/// Why a workload that sends no spans most likely does not, or `None` while none of its pods
/// is Ready (nothing to report yet; the next check looks again).
async fn likely_reason_for_silence(
    ctx: &Context,
    workload: &InstrumentedResource,
) -> Option<String> {
    let kind = workload.workload_kind()?;
    let object = match ctx
        .workloads
        .get(kind, &workload.namespace, &workload.name)
        .await
    {
        Ok(object) => object,
        Err(error) => {
            tracing::debug!(%error, workload = %workload.name, "reading a silent workload");
            return None;
        }
    };
    let selector = match_labels(&object)?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &workload.namespace);
    let listed = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(listed) => listed,
        Err(error) => {
            tracing::debug!(%error, workload = %workload.name, "listing a silent workload's pods");
            return None;
        }
    };
    let ready: Vec<Value> = listed
        .items
        .iter()
        .filter(|pod| pod_is_ready(pod))
        .filter_map(|pod| serde_json::to_value(pod).ok())
        .collect();
    let template = kind.template(&object);
    reason_for_silence(&ready, template)
}

/// The reason, from the Ready pods (as JSON) and the workload's pod template.
fn reason_for_silence(ready_pods: &[Value], template: Option<&Value>) -> Option<String> {
    if ready_pods.is_empty() {
        return None;
    }
    let started_before = ready_pods
        .iter()
        .filter(|pod| !inspect(pod, WorkloadKind::Pod).injected)
        .count();
    if started_before > 0 {
        return Some(format!(
            "{started_before} of {} Ready pods were started before the injection and run \
             untraced until the workload rolls out again (kubectl rollout restart)",
            ready_pods.len()
        ));
    }
    let containers = template
        .and_then(|t| t.pointer("/spec/containers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names_a_runtime = containers.iter().any(|container| {
        let words = ["image", "command", "args"]
            .iter()
            .filter_map(|field| container.get(*field))
            .map(Value::to_string)
            .collect::<String>()
            .to_lowercase();
        RUNTIME_HINTS.iter().any(|hint| words.contains(hint))
    });
    Some(if names_a_runtime {
        "the tracer did not start, or the workload served no requests: the lines starting \
         with `lumigo:` in its containers' logs say which"
            .to_owned()
    } else {
        "no container's image or command names Node.js, Python or Java: programs in other \
         languages (Go, Rust, native binaries) are not traced"
            .to_owned()
    })
}

fn match_labels(object: &Value) -> Option<String> {
    let labels = object.pointer("/spec/selector/matchLabels")?.as_object()?;
    let selector: Vec<String> = labels
        .iter()
        .filter_map(|(key, value)| Some(format!("{key}={}", value.as_str()?)))
        .collect();
    (!selector.is_empty()).then(|| selector.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(injected: bool) -> Value {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}});
        if injected {
            let config: lumigo_mutation::InjectionConfig = serde_json::from_value(json!({
                "injectorImage": "autotrace:1",
                "tokenSecret": {"name": "lumigo-credentials", "key": "token"},
                "operatorVersion": "0.1.0"
            }))
            .unwrap();
            let outcome = lumigo_mutation::reconcile(
                &mut pod,
                WorkloadKind::Pod,
                &config,
                lumigo_mutation::Operation::Create,
            );
            assert!(matches!(outcome, lumigo_mutation::Outcome::Changed(_)));
        }
        pod
    }

    fn template(image: &str) -> Value {
        json!({"spec": {"containers": [{"name": "app", "image": image}]}})
    }

    #[test]
    fn nothing_is_said_before_a_pod_is_ready() {
        assert_eq!(reason_for_silence(&[], Some(&template("node:22"))), None);
    }

    #[test]
    fn pods_from_before_the_injection_come_first() {
        let reason = reason_for_silence(&[pod(false), pod(true)], Some(&template("node:22")));
        assert!(reason.unwrap().starts_with("1 of 2 Ready pods"));
    }

    #[test]
    fn an_image_of_no_supported_runtime_is_named_as_such() {
        let go = reason_for_silence(&[pod(true)], Some(&template("ghcr.io/acme/checkout-go:1")));
        assert!(go.unwrap().starts_with("no container's image"));
        let node = reason_for_silence(&[pod(true)], Some(&template("ghcr.io/acme/shop-node:1")));
        assert!(node.unwrap().starts_with("the tracer did not start"));
    }

    #[test]
    fn selectors_come_from_match_labels() {
        let object =
            json!({"spec": {"selector": {"matchLabels": {"app": "web", "tier": "front"}}}});
        assert_eq!(match_labels(&object).as_deref(), Some("app=web,tier=front"));
        assert_eq!(match_labels(&json!({"spec": {}})), None);
    }
}
