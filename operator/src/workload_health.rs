//! Whether a workload the operator (or admission) injected is rolling out, done, or broken by
//! the injection: decided from the workload's own status and its pods, with no I/O.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;
use lumigo_mutation::names::{AUTO_TRACE_LABEL, INJECTED_VALUE_PREFIX, INJECTOR_NAME};
use lumigo_mutation::{Failure, WorkloadKind};
use serde_json::Value;

/// The injector image cannot be had (by the init container, or as an image volume for an app
/// container): every injected pod of the cluster would fail alike.
const IMAGE_UNAVAILABLE: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];
/// A container that cannot even start.
const CANNOT_START: [&str; 3] = [
    "CrashLoopBackOff",
    "RunContainerError",
    "CreateContainerError",
];

/// What went wrong with a workload's injected pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub failure: Failure,
    /// The same failure would hit every workload the rollout touches (the init container's image,
    /// pods refused at creation): the rollout stops.
    pub everywhere: bool,
}

/// The kinds whose pods are replaced when their template changes: the ones a rollout paces.
pub fn restarts_pods(kind: WorkloadKind) -> bool {
    matches!(
        kind,
        WorkloadKind::Deployment | WorkloadKind::StatefulSet | WorkloadKind::DaemonSet
    )
}

/// Whether the workload's controller has finished rolling out its current template, by the
/// controller's own status. A workload that rolls out only on demand (`OnDelete`) or is paused
/// is done as soon as its controller saw the change: nothing will move without its owner.
pub fn rolled_out(kind: WorkloadKind, object: &Value) -> bool {
    let int = |pointer: &str| object.pointer(pointer).and_then(Value::as_i64);
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
    let observed =
        int("/status/observedGeneration").unwrap_or(0) >= int("/metadata/generation").unwrap_or(0);
    let on_delete = text("/spec/updateStrategy/type") == Some("OnDelete");
    match kind {
        WorkloadKind::Deployment => {
            let desired = int("/spec/replicas").unwrap_or(1);
            let updated = int("/status/updatedReplicas").unwrap_or(0);
            let paused = object.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
            observed
                && (paused
                    || (updated >= desired
                        && int("/status/replicas").unwrap_or(0) <= updated
                        && int("/status/availableReplicas").unwrap_or(0) >= desired))
        }
        WorkloadKind::StatefulSet => {
            let desired = int("/spec/replicas").unwrap_or(1);
            let partition = int("/spec/updateStrategy/rollingUpdate/partition").unwrap_or(0);
            observed
                && (on_delete
                    || (int("/status/updatedReplicas").unwrap_or(0) >= desired - partition
                        && int("/status/readyReplicas").unwrap_or(0) >= desired))
        }
        WorkloadKind::DaemonSet => {
            let desired = int("/status/desiredNumberScheduled").unwrap_or(0);
            observed
                && (on_delete
                    || (int("/status/updatedNumberScheduled").unwrap_or(0) >= desired
                        && int("/status/numberAvailable").unwrap_or(0) >= desired))
        }
        _ => true,
    }
}

/// A Deployment whose controller gave up rolling it out (`ProgressDeadlineExceeded`): it no
/// longer counts as a restart in progress, whatever the cause.
pub fn deadline_exceeded(kind: WorkloadKind, object: &Value) -> bool {
    kind == WorkloadKind::Deployment
        && condition(object, "Progressing").is_some_and(|c| {
            c.get("status").and_then(Value::as_str) == Some("False")
                && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
        })
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

/// How long an injected pod may wait for room on a node before the rollout counts it failed:
/// long enough for a cluster autoscaler to add a node, short against a progress deadline.
pub const UNSCHEDULABLE_GRACE: Duration = Duration::from_secs(90);

/// What the health gate needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodHealth {
    /// Created from an injected template.
    pub injected: bool,
    pub init: Vec<ContainerHealth>,
    pub containers: Vec<ContainerHealth>,
    /// The scheduler's word when no node has room for the pod, after the grace period.
    pub no_room: Option<String>,
    /// Being deleted: what its containers say then (killed, status unknown) is no verdict.
    pub terminating: bool,
    /// The injector image, when the pod mounts it as an image volume.
    pub payload_image: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerHealth {
    pub name: String,
    pub waiting: Option<(String, String)>,
    /// The latest non-zero exit: (reason, exit code), from the current or the previous run.
    pub failed_exit: Option<(String, i32)>,
}

impl PodHealth {
    pub fn of(pod: &Pod, now: Timestamp) -> Self {
        let injected = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(AUTO_TRACE_LABEL))
            .is_some_and(|value| value.starts_with(INJECTED_VALUE_PREFIX));
        let status = pod.status.as_ref();
        let containers = |statuses: Option<&Vec<ContainerStatus>>| {
            statuses
                .map(|statuses| statuses.iter().map(ContainerHealth::of).collect())
                .unwrap_or_default()
        };
        let no_room = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
            .filter(|c| {
                c.message
                    .as_deref()
                    .is_some_and(|m| m.contains("Insufficient"))
                    && c.last_transition_time.as_ref().is_some_and(|since| {
                        now.duration_since(since.0).as_secs()
                            >= UNSCHEDULABLE_GRACE.as_secs() as i64
                    })
            })
            .and_then(|c| c.message.clone());
        PodHealth {
            injected,
            init: containers(status.and_then(|s| s.init_container_statuses.as_ref())),
            containers: containers(status.and_then(|s| s.container_statuses.as_ref())),
            no_room,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            payload_image: pod
                .spec
                .as_ref()
                .and_then(|spec| spec.volumes.as_ref())
                .into_iter()
                .flatten()
                .find(|volume| volume.name == INJECTOR_NAME)
                .and_then(|volume| volume.image.as_ref())
                .and_then(|image| image.reference.clone()),
        }
    }
}

impl ContainerHealth {
    fn of(status: &ContainerStatus) -> Self {
        let waiting = status
            .state
            .as_ref()
            .and_then(|state| state.waiting.as_ref())
            .map(|waiting| {
                (
                    waiting.reason.clone().unwrap_or_default(),
                    waiting.message.clone().unwrap_or_default(),
                )
            });
        let failed_exit = [status.state.as_ref(), status.last_state.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|state| state.terminated.as_ref())
            .find(|terminated| terminated.exit_code != 0)
            .map(|terminated| {
                (
                    terminated.reason.clone().unwrap_or_else(|| "Error".into()),
                    terminated.exit_code,
                )
            });
        ContainerHealth {
            name: status.name.clone(),
            waiting,
            failed_exit,
        }
    }

    fn waiting_reason(&self) -> Option<&str> {
        self.waiting.as_ref().map(|(reason, _)| reason.as_str())
    }

    fn cannot_start(&self) -> bool {
        self.waiting_reason()
            .is_some_and(|reason| CANNOT_START.contains(&reason))
    }
}

/// Why the injected pods of a workload fail where its uninjected ones do not, if they do.
pub fn verdict(kind: WorkloadKind, object: &Value, pods: &[PodHealth]) -> Option<Verdict> {
    let (injected, uninjected): (Vec<&PodHealth>, Vec<&PodHealth>) = pods
        .iter()
        .filter(|pod| !pod.terminating)
        .partition(|pod| pod.injected);
    injected
        .iter()
        .find_map(|pod| init_container_verdict(pod))
        .or_else(|| injected.iter().find_map(|pod| image_volume_verdict(pod)))
        .or_else(|| injected.iter().find_map(|pod| no_room_verdict(pod)))
        .or_else(|| {
            injected
                .iter()
                .find_map(|pod| app_container_verdict(pod, &uninjected))
        })
        .or_else(|| workload_verdict(kind, object))
}

fn init_container_verdict(pod: &PodHealth) -> Option<Verdict> {
    let init = pod.init.iter().find(|c| c.name == INJECTOR_NAME)?;
    if let Some((reason, message)) = &init.waiting {
        if IMAGE_UNAVAILABLE.contains(&reason.as_str()) {
            return Some(Verdict {
                failure: Failure {
                    reason: reason.clone(),
                    container: init.name.clone(),
                    exit_code: None,
                    message: message.clone(),
                },
                everywhere: true,
            });
        }
    }
    // One failed run is not enough: a pod evicted or a node restarted kills it too (137,
    // ContainerStatusUnknown). A failure the kubelet keeps retrying is.
    if init.waiting_reason() != Some("CrashLoopBackOff") {
        return None;
    }
    let (exit_reason, code) = init.failed_exit.clone()?;
    Some(Verdict {
        failure: Failure {
            reason: init.waiting_reason().unwrap_or(&exit_reason).to_owned(),
            container: init.name.clone(),
            exit_code: Some(code),
            message: format!("the init container ended with {exit_reason}"),
        },
        everywhere: false,
    })
}

/// An app container that cannot start because the injector image mounted into it cannot be pulled:
/// the kubelet reports the image volume's pull error as the container's own, naming the image.
fn image_volume_verdict(pod: &PodHealth) -> Option<Verdict> {
    let image = pod.payload_image.as_deref()?;
    let (container, reason, message) = pod.containers.iter().find_map(|container| {
        let (reason, message) = container.waiting.as_ref()?;
        (IMAGE_UNAVAILABLE.contains(&reason.as_str()) && message.contains(image))
            .then_some((container, reason, message))
    })?;
    Some(Verdict {
        failure: Failure {
            reason: reason.clone(),
            container: container.name.clone(),
            exit_code: None,
            message: format!("the injector image volume cannot be mounted: {message}"),
        },
        everywhere: true,
    })
}

/// No node has room for an injected pod while the workload's earlier pods run: the rollout would
/// only add more such pods, so it stops.
fn no_room_verdict(pod: &PodHealth) -> Option<Verdict> {
    let message = pod.no_room.clone()?;
    Some(Verdict {
        failure: Failure {
            reason: "Unschedulable".into(),
            container: String::new(),
            exit_code: None,
            message,
        },
        everywhere: true,
    })
}

/// An app container that cannot run in an injected pod, unless the same container fails in
/// the workload's uninjected pods too (then the injection is not what broke it).
fn app_container_verdict(pod: &PodHealth, uninjected: &[&PodHealth]) -> Option<Verdict> {
    let failing = pod.containers.iter().find(|c| c.cannot_start())?;
    let fails_without_us = uninjected.iter().any(|other| {
        other
            .containers
            .iter()
            .any(|c| c.name == failing.name && (c.cannot_start() || c.failed_exit.is_some()))
    });
    if fails_without_us {
        return None;
    }
    let (reason, message) = failing.waiting.clone().unwrap_or_default();
    Some(Verdict {
        failure: Failure {
            reason,
            container: failing.name.clone(),
            exit_code: failing.failed_exit.as_ref().map(|(_, code)| *code),
            message,
        },
        everywhere: false,
    })
}

/// What a Deployment's own conditions say: pods refused at creation (quota, LimitRange, an
/// admission policy) or no progress before its deadline while its earlier pods still serve.
fn workload_verdict(kind: WorkloadKind, object: &Value) -> Option<Verdict> {
    if kind != WorkloadKind::Deployment {
        return None;
    }
    let field = |condition: &Value, name: &str| {
        condition
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    if let Some(refused) = condition(object, "ReplicaFailure")
        .filter(|c| c.get("status").and_then(Value::as_str) == Some("True"))
    {
        return Some(Verdict {
            failure: Failure {
                reason: field(refused, "reason"),
                container: String::new(),
                exit_code: None,
                message: field(refused, "message"),
            },
            everywhere: true,
        });
    }
    let earlier_pods_serve = object
        .pointer("/status/availableReplicas")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        > 0;
    if !deadline_exceeded(kind, object) {
        return None;
    }
    let stuck = condition(object, "Progressing")?;
    earlier_pods_serve.then(|| Verdict {
        failure: Failure {
            reason: "ProgressDeadlineExceeded".into(),
            container: String::new(),
            exit_code: None,
            message: field(stuck, "message"),
        },
        everywhere: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(injected: bool, status: Value) -> PodHealth {
        let labels = if injected {
            json!({"app": "web", AUTO_TRACE_LABEL: "lumigo-operator.v0.1.0"})
        } else {
            json!({"app": "web"})
        };
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "labels": labels}, "status": status
        }))
        .unwrap();
        PodHealth::of(&pod, Timestamp::now())
    }

    fn crash_looping(name: &str, code: i32) -> Value {
        json!({"name": name, "ready": false, "restartCount": 3, "image": "i", "imageID": "",
               "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
               "lastState": {"terminated": {"exitCode": code, "reason": "Error"}}})
    }

    fn running(name: &str) -> Value {
        json!({"name": name, "ready": true, "restartCount": 0, "image": "i", "imageID": "",
               "state": {"running": {}}})
    }

    fn deployment(status: Value) -> Value {
        json!({
            "metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 2},
            "status": status
        })
    }

    #[test]
    fn a_deployment_is_rolled_out_when_every_replica_is_updated_and_available() {
        let kind = WorkloadKind::Deployment;
        let done = json!({
            "observedGeneration": 2,
            "replicas": 2,
            "updatedReplicas": 2,
            "availableReplicas": 2
        });
        assert!(rolled_out(kind, &deployment(done)));
        for (field, value) in [
            ("observedGeneration", 1),
            ("updatedReplicas", 1),
            ("availableReplicas", 1),
            ("replicas", 3),
        ] {
            let mut status = json!({
                "observedGeneration": 2,
                "replicas": 2,
                "updatedReplicas": 2,
                "availableReplicas": 2
            });
            status[field] = json!(value);
            assert!(!rolled_out(kind, &deployment(status)), "{field} = {value}");
        }
        let mut paused = deployment(json!({"observedGeneration": 2}));
        paused["spec"]["paused"] = json!(true);
        assert!(rolled_out(kind, &paused), "nothing moves a paused one");
    }

    #[test]
    fn statefulsets_and_daemonsets_follow_their_update_strategy() {
        let set = |strategy: Value, status: Value| {
            json!({
                "metadata": {"generation": 3},
                "spec": {"replicas": 3, "updateStrategy": strategy},
                "status": status
            })
        };
        let rolling = json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}});
        assert!(rolled_out(
            WorkloadKind::StatefulSet,
            &set(
                rolling.clone(),
                json!({"observedGeneration": 3, "updatedReplicas": 2, "readyReplicas": 3})
            )
        ));
        assert!(!rolled_out(
            WorkloadKind::StatefulSet,
            &set(
                rolling,
                json!({"observedGeneration": 3, "updatedReplicas": 1, "readyReplicas": 3})
            )
        ));
        assert!(rolled_out(
            WorkloadKind::StatefulSet,
            &set(
                json!({"type": "OnDelete"}),
                json!({"observedGeneration": 3})
            )
        ));
        let daemons = |status: Value| json!({"metadata": {"generation": 1}, "status": status});
        assert!(rolled_out(
            WorkloadKind::DaemonSet,
            &daemons(json!({
                "observedGeneration": 1,
                "desiredNumberScheduled": 2,
                "updatedNumberScheduled": 2,
                "numberAvailable": 2
            }))
        ));
        assert!(!rolled_out(
            WorkloadKind::DaemonSet,
            &daemons(json!({
                "observedGeneration": 1,
                "desiredNumberScheduled": 2,
                "updatedNumberScheduled": 2,
                "numberAvailable": 1
            }))
        ));
        assert!(rolled_out(WorkloadKind::CronJob, &json!({})));
    }

    #[test]
    fn a_container_that_crashes_only_when_injected_is_the_injections_fault() {
        let pods = [
            pod(
                true,
                json!({"containerStatuses": [crash_looping("app", 1)]}),
            ),
            pod(false, json!({"containerStatuses": [running("app")]})),
        ];
        let verdict = verdict(WorkloadKind::Deployment, &deployment(json!({})), &pods).unwrap();
        assert!(!verdict.everywhere);
        assert_eq!(verdict.failure.reason, "CrashLoopBackOff");
        assert_eq!(verdict.failure.container, "app");
        assert_eq!(verdict.failure.exit_code, Some(1));
    }

    #[test]
    fn a_container_that_crashes_without_the_injection_too_is_not() {
        let pods = [
            pod(
                true,
                json!({"containerStatuses": [crash_looping("app", 1)]}),
            ),
            pod(
                false,
                json!({"containerStatuses": [crash_looping("app", 2)]}),
            ),
        ];
        assert_eq!(
            verdict(WorkloadKind::Deployment, &deployment(json!({})), &pods),
            None
        );
        let healthy = [pod(true, json!({"containerStatuses": [running("app")]}))];
        assert_eq!(
            verdict(WorkloadKind::Deployment, &deployment(json!({})), &healthy),
            None
        );
    }

    #[test]
    fn an_unavailable_injector_image_stops_everything() {
        let init = json!({
            "name": INJECTOR_NAME,
            "ready": false,
            "restartCount": 0,
            "image": "i",
            "imageID": "",
            "state": {"waiting": {
                "reason": "ImagePullBackOff",
                "message": "Back-off pulling image \"ghcr.io/x:0\""
            }}
        });
        let pods = [pod(
            true,
            json!({"initContainerStatuses": [init], "containerStatuses": []}),
        )];
        let verdict = verdict(WorkloadKind::StatefulSet, &json!({}), &pods).unwrap();
        assert!(verdict.everywhere);
        assert_eq!(verdict.failure.reason, "ImagePullBackOff");
        assert_eq!(verdict.failure.container, INJECTOR_NAME);
        assert!(verdict.failure.message.contains("ghcr.io/x:0"));
    }

    #[test]
    fn an_unavailable_injector_image_volume_stops_everything_but_the_apps_own_image_does_not() {
        let waiting = |image: &str| {
            json!({
                "name": "app", "ready": false, "restartCount": 0, "image": "app:1", "imageID": "",
                "state": {"waiting": {
                    "reason": "ErrImagePull",
                    "message": format!("failed to pull and unpack image \"{image}\": not found")
                }}
            })
        };
        let mounting = |status: Value| {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {
                    "name": "web-1",
                    "labels": {AUTO_TRACE_LABEL: "lumigo-operator.v0.1.0"}
                },
                "spec": {
                    "containers": [{"name": "app", "image": "app:1"}],
                    "volumes": [{"name": INJECTOR_NAME, "image": {"reference": "ghcr.io/x:0"}}]
                },
                "status": status
            }))
            .unwrap();
            PodHealth::of(&pod, Timestamp::now())
        };
        let ours = [mounting(
            json!({"containerStatuses": [waiting("ghcr.io/x:0")]}),
        )];
        let found = verdict(WorkloadKind::Deployment, &json!({}), &ours).unwrap();
        assert!(found.everywhere);
        assert_eq!(found.failure.reason, "ErrImagePull");
        assert_eq!(found.failure.container, "app");
        let message = &found.failure.message;
        assert!(
            message.contains("image volume") && message.contains("ghcr.io/x:0"),
            "{message}"
        );
        let theirs = [mounting(json!({"containerStatuses": [waiting("app:1")]}))];
        assert_eq!(verdict(WorkloadKind::Deployment, &json!({}), &theirs), None);
    }

    #[test]
    fn a_failing_init_container_fails_its_workload() {
        let init = json!({
            "name": INJECTOR_NAME,
            "ready": false,
            "restartCount": 2,
            "image": "i",
            "imageID": "",
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}
        });
        let pods = [pod(true, json!({"initContainerStatuses": [init]}))];
        let verdict = verdict(WorkloadKind::DaemonSet, &json!({}), &pods).unwrap();
        assert!(!verdict.everywhere);
        assert_eq!(verdict.failure.exit_code, Some(1));
        assert_eq!(verdict.failure.reason, "CrashLoopBackOff");
    }

    #[test]
    fn refused_pods_stop_everything_and_a_missed_deadline_fails_one_workload() {
        let refused = deployment(json!({"conditions": [{
            "type": "ReplicaFailure",
            "status": "True",
            "reason": "FailedCreate",
            "message": "pods \"web-7d\" is forbidden: maximum cpu usage per Container is 100m"
        }]}));
        let refusal = verdict(WorkloadKind::Deployment, &refused, &[]).unwrap();
        assert!(refusal.everywhere);
        assert_eq!(refusal.failure.reason, "FailedCreate");

        let stuck = |available: i64| {
            deployment(json!({
                "availableReplicas": available,
                "conditions": [{
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet \"web-7d\" has timed out progressing."
                }]
            }))
        };
        let missed = verdict(WorkloadKind::Deployment, &stuck(1), &[]).unwrap();
        assert!(!missed.everywhere);
        assert_eq!(missed.failure.reason, "ProgressDeadlineExceeded");
        assert_eq!(
            verdict(WorkloadKind::Deployment, &stuck(0), &[]),
            None,
            "a workload that served nothing before is not the injection's fault"
        );
    }

    #[test]
    fn an_injected_pod_no_node_has_room_for_stops_the_rollout_after_the_grace() {
        let waiting_since = |seconds_ago: i64| {
            let since = Timestamp::now() - Duration::from_secs(seconds_ago as u64);
            pod(
                true,
                json!({"phase": "Pending", "conditions": [{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "lastTransitionTime": since.to_string(),
                    "message": "0/1 nodes are available: 1 Insufficient cpu."
                }]}),
            )
        };
        let found = verdict(WorkloadKind::Deployment, &json!({}), &[waiting_since(120)]).unwrap();
        assert!(found.everywhere);
        assert_eq!(found.failure.reason, "Unschedulable");
        assert!(found.failure.message.contains("Insufficient cpu"));
        assert_eq!(
            verdict(WorkloadKind::Deployment, &json!({}), &[waiting_since(10)]),
            None,
            "within the grace an autoscaler may still add a node"
        );
    }

    #[test]
    fn a_killed_init_container_or_a_pod_being_deleted_is_no_verdict() {
        let killed = json!({
            "name": INJECTOR_NAME,
            "ready": false,
            "restartCount": 0,
            "image": "i",
            "imageID": "",
            "state": {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown"}}
        });
        let pods = [pod(true, json!({"initContainerStatuses": [killed]}))];
        assert_eq!(verdict(WorkloadKind::Deployment, &json!({}), &pods), None);

        let mut deleted = pod(
            true,
            json!({"containerStatuses": [crash_looping("app", 137)]}),
        );
        deleted.terminating = true;
        assert_eq!(
            verdict(WorkloadKind::Deployment, &json!({}), &[deleted]),
            None
        );
    }
}
