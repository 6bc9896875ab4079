//! The `Lumigo` status: `Active`, `Error`, `Tracing` and `Degraded` conditions, the instrumented
//! and the rolled-back workloads, computed so that an unchanged state yields an identical status
//! (and so no write).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{
    InstrumentedResource, LumigoStatus, RolledBackResource, RolloutStatus, TracingState,
};

pub const ACTIVE: &str = "Active";
pub const ERROR: &str = "Error";
pub const TRACING: &str = "Tracing";
pub const DEGRADED: &str = "Degraded";
/// Silent workloads a `Tracing` message names; the rest are counted.
const NAMED_SILENT: usize = 10;
/// Workloads listed by name in the status; the counts stay exact past it. A listed workload
/// takes up to ~400 bytes, so the status stays far below the API server's 1.5 MB object limit.
pub const MAX_LISTED: usize = 500;

/// Where the rollout stands, as the latest sweep found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutView {
    pub status: RolloutStatus,
    pub rolled_back: Vec<RolledBackResource>,
}

/// What a reconcile found, before it becomes conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Active {
        reason: &'static str,
        message: String,
    },
    Failing {
        reason: &'static str,
        message: String,
    },
}

/// The status for `health`, keeping each condition's `lastTransitionTime` while its status
/// does not flip; `instrumented: None` keeps the current list, `rollout: None` the current
/// rollout.
pub fn next_status(
    current: Option<&LumigoStatus>,
    generation: Option<i64>,
    health: &Health,
    instrumented: Option<Vec<InstrumentedResource>>,
    rollout: Option<RolloutView>,
) -> LumigoStatus {
    let (active, error, reason, message) = match health {
        Health::Active { reason, message } => ("True", "False", *reason, message.as_str()),
        Health::Failing { reason, message } => ("False", "True", *reason, message.as_str()),
    };
    let previous = |kind: &str| current.and_then(|s| s.conditions.iter().find(|c| c.type_ == kind));
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        let last_transition_time = previous(kind)
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
        Condition {
            type_: kind.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            observed_generation: generation,
            last_transition_time,
        }
    };
    let (instrumented_resources, instrumented_count, tracing) = match instrumented {
        Some(all) => {
            let tracing = tracing_summary(&all);
            let count = all.len() as i64;
            (listed(all), count, tracing)
        }
        // The kept list may be a shortened one: the counts and the summary are kept with it.
        None => match current {
            Some(current) => (
                current.instrumented_resources.clone(),
                current.instrumented_count,
                kept_tracing_summary(current),
            ),
            None => (Vec::new(), 0, tracing_summary(&[])),
        },
    };
    let rollout = rollout.unwrap_or_else(|| {
        current
            .map(|s| RolloutView {
                status: s.rollout.clone(),
                rolled_back: s.rolled_back_resources.clone(),
            })
            .unwrap_or_default()
    });
    let (degraded, degraded_reason, degraded_message) = degraded_condition(&rollout);
    let mut rolled_back_resources = rollout.rolled_back;
    rolled_back_resources.sort();
    rolled_back_resources.truncate(MAX_LISTED);
    LumigoStatus {
        conditions: vec![
            condition(ACTIVE, active, reason, message),
            condition(ERROR, error, reason, message),
            condition(TRACING, &tracing.status, &tracing.reason, &tracing.message),
            condition(DEGRADED, degraded, degraded_reason, &degraded_message),
        ],
        instrumented_count,
        receiving_count: tracing.receiving as i64,
        tracing: tracing.column,
        instrumented_resources,
        rollout: rollout.status,
        rolled_back_resources,
        payload_delivery: current.and_then(|s| s.payload_delivery.clone()),
    }
}

/// At most [`MAX_LISTED`] workloads, the ones that do not send traces first when some must go.
fn listed(mut all: Vec<InstrumentedResource>) -> Vec<InstrumentedResource> {
    if all.len() > MAX_LISTED {
        all.sort_by_key(|w| w.tracing.as_ref().map(|t| t.state) == Some(TracingState::Receiving));
        all.truncate(MAX_LISTED);
        all.sort();
    }
    all
}

fn kept_tracing_summary(current: &LumigoStatus) -> TracingSummary {
    let condition = current.conditions.iter().find(|c| c.type_ == TRACING);
    let field =
        |get: fn(&Condition) -> &str, fallback: &str| condition.map_or(fallback, get).to_owned();
    TracingSummary {
        status: field(|c| &c.status, "Unknown"),
        reason: field(|c| &c.reason, "NothingInstrumented"),
        message: field(|c| &c.message, "no workload is instrumented"),
        receiving: current.receiving_count.max(0) as usize,
        column: current.tracing.clone(),
    }
}

/// `Degraded`: the rollout stopped, or some workloads were given back uninjected.
fn degraded_condition(rollout: &RolloutView) -> (&'static str, &'static str, String) {
    if let Some(halt) = &rollout.status.halted {
        return ("True", "RolloutHalted", halt.message.clone());
    }
    if !rollout.rolled_back.is_empty() {
        let mut named: Vec<String> = rollout
            .rolled_back
            .iter()
            .take(NAMED_SILENT)
            .map(|w| {
                let container = match (w.container.as_str(), w.exit_code) {
                    ("", _) => String::new(),
                    (name, Some(code)) => format!(" of container {name}, exit code {code}"),
                    (name, None) => format!(" of container {name}"),
                };
                format!("{} {} ({}{container})", w.kind, w.name, w.reason)
            })
            .collect();
        if rollout.rolled_back.len() > NAMED_SILENT {
            named.push(format!(
                "and {} more",
                rollout.rolled_back.len() - NAMED_SILENT
            ));
        }
        return (
            "True",
            "WorkloadsRolledBack",
            format!(
                "{} workload{} given back uninjected because the injection broke their pods: \
                 {}; each is injected again when its pod template or the settings change, or \
                 when its annotation operator.lumigo.io/rolled-back is deleted",
                rollout.rolled_back.len(),
                if rollout.rolled_back.len() == 1 {
                    " was"
                } else {
                    "s were"
                },
                named.join("; ")
            ),
        );
    }
    let RolloutStatus {
        in_progress,
        pending,
        ..
    } = rollout.status;
    if in_progress + pending > 0 {
        (
            "False",
            "RollingOut",
            format!(
                "{in_progress} workloads restarting into the injection, {pending} waiting for \
                 their turn"
            ),
        )
    } else {
        (
            "False",
            "RolloutHealthy",
            "no workload failed under the injection".to_owned(),
        )
    }
}

struct TracingSummary {
    status: String,
    reason: String,
    message: String,
    receiving: usize,
    column: String,
}

/// The `Tracing` condition and the `TRACING` column, from what each workload's tracing says.
fn tracing_summary(workloads: &[InstrumentedResource]) -> TracingSummary {
    let state = |w: &&InstrumentedResource| w.tracing.as_ref().map(|t| t.state);
    let receiving = workloads
        .iter()
        .filter(|w| state(w) == Some(TracingState::Receiving))
        .count();
    let column = format!("{receiving}/{}", workloads.len());
    let unknown = workloads
        .iter()
        .find(|w| matches!(state(w), None | Some(TracingState::Unknown)));
    let silent: Vec<&InstrumentedResource> = workloads
        .iter()
        .filter(|w| state(w) == Some(TracingState::Silent))
        .collect();
    let (status, reason, message) = if workloads.is_empty() {
        (
            "Unknown",
            "NothingInstrumented",
            "no workload is instrumented".to_owned(),
        )
    } else if let Some(unknown) = unknown {
        let why = unknown
            .tracing
            .as_ref()
            .and_then(|t| t.reason.clone())
            .unwrap_or_else(|| "not checked yet".to_owned());
        return TracingSummary {
            status: "Unknown".into(),
            reason: "TracesUnknown".into(),
            message: format!("whether traces arrive is unknown: {why}"),
            receiving,
            column: "unknown".to_owned(),
        };
    } else if silent.is_empty() {
        (
            "True",
            "AllReceiving",
            format!("all {} instrumented workloads send traces", workloads.len()),
        )
    } else {
        let mut named: Vec<String> = silent
            .iter()
            .take(NAMED_SILENT)
            .map(|w| {
                let why = w.tracing.as_ref().and_then(|t| t.reason.as_deref());
                format!("{} {} ({})", w.kind, w.name, why.unwrap_or("no span yet"))
            })
            .collect();
        if silent.len() > NAMED_SILENT {
            named.push(format!("and {} more", silent.len() - NAMED_SILENT));
        }
        (
            "False",
            "NoTraces",
            format!(
                "{} of {} instrumented workloads send no traces: {}",
                silent.len(),
                workloads.len(),
                named.join("; ")
            ),
        )
    };
    TracingSummary {
        status: status.into(),
        reason: reason.into(),
        message,
        receiving,
        column,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(message: &str) -> Health {
        Health::Active {
            reason: "Instrumenting",
            message: message.into(),
        }
    }

    #[test]
    fn an_unchanged_state_gives_an_identical_status() {
        let first = next_status(None, Some(1), &active("2 workloads"), Some(vec![]), None);
        let second = next_status(Some(&first), Some(1), &active("2 workloads"), None, None);
        assert_eq!(first, second);
    }

    fn traced(
        name: &str,
        state: Option<TracingState>,
        reason: Option<&str>,
    ) -> InstrumentedResource {
        InstrumentedResource {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: name.into(),
            namespace: "shop".into(),
            uid: name.into(),
            tracing: state.map(|state| crate::crd::WorkloadTracing {
                state,
                first_span_seen: None,
                last_span_seen: None,
                containers: vec![],
                reason: reason.map(str::to_owned),
            }),
        }
    }

    fn tracing_condition(status: &LumigoStatus) -> &Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == TRACING)
            .unwrap()
    }

    #[test]
    fn the_tracing_condition_names_the_silent_workloads() {
        let list = vec![
            traced("cart", Some(TracingState::Receiving), None),
            traced(
                "frontend",
                Some(TracingState::Silent),
                Some("no container runs Node.js"),
            ),
            traced("email", Some(TracingState::Receiving), None),
        ];
        let status = next_status(None, Some(1), &active("3"), Some(list), None);
        assert_eq!(status.tracing, "2/3");
        assert_eq!(status.receiving_count, 2);
        let condition = tracing_condition(&status);
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "NoTraces")
        );
        assert_eq!(
            condition.message,
            "1 of 3 instrumented workloads send no traces: Deployment frontend (no container \
             runs Node.js)"
        );
    }

    #[test]
    fn the_tracing_condition_is_true_only_when_all_receive_and_unknown_says_why() {
        let all = vec![traced("cart", Some(TracingState::Receiving), None)];
        let status = next_status(None, Some(1), &active("1"), Some(all), None);
        assert_eq!(tracing_condition(&status).status, "True");
        let unknown = vec![
            traced("cart", Some(TracingState::Receiving), None),
            traced(
                "email",
                Some(TracingState::Unknown),
                Some("the telemetry proxy cannot be read: refused"),
            ),
        ];
        let status = next_status(None, Some(1), &active("2"), Some(unknown), None);
        assert_eq!(status.tracing, "unknown");
        let condition = tracing_condition(&status);
        assert_eq!(condition.status, "Unknown");
        assert!(condition.message.ends_with("cannot be read: refused"));
        let none = next_status(None, Some(1), &active("0"), Some(vec![]), None);
        assert_eq!(tracing_condition(&none).reason, "NothingInstrumented");
    }

    #[test]
    fn many_silent_workloads_are_counted_past_the_first_ten() {
        let list = (0..25)
            .map(|i| traced(&format!("w{i}"), Some(TracingState::Silent), None))
            .collect();
        let status = next_status(None, Some(1), &active("25"), Some(list), None);
        let message = &tracing_condition(&status).message;
        assert!(message.ends_with("and 15 more"), "{message}");
        assert!(message.len() < 1_000);
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let first = next_status(None, Some(1), &active("ok"), Some(vec![]), None);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let failing = Health::Failing {
            reason: "SecretNotFound",
            message: "no Secret".into(),
        };
        let second = next_status(Some(&first), Some(2), &failing, None, None);
        assert_ne!(
            first.conditions[0].last_transition_time,
            second.conditions[0].last_transition_time
        );
        assert_eq!(second.conditions[0].status, "False");
        assert_eq!(second.conditions[1].status, "True");
        assert_eq!(second.conditions[1].observed_generation, Some(2));
        let third = next_status(
            Some(&second),
            Some(2),
            &Health::Failing {
                reason: "X",
                message: "other".into(),
            },
            None,
            None,
        );
        assert_eq!(
            second.conditions[1].last_transition_time,
            third.conditions[1].last_transition_time
        );
    }

    fn rolled_back(name: &str) -> RolledBackResource {
        RolledBackResource {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: name.into(),
            reason: "CrashLoopBackOff".into(),
            container: "app".into(),
            exit_code: Some(1),
            message: String::new(),
            rolled_back_at: "2026-12-01T00:00:00Z".into(),
        }
    }

    fn degraded(status: &LumigoStatus) -> &Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .unwrap()
    }

    #[test]
    fn degraded_says_what_stopped_and_what_was_rolled_back() {
        let healthy = next_status(None, Some(1), &active("1"), Some(vec![]), None);
        assert_eq!(degraded(&healthy).status, "False");
        let rolling = RolloutView {
            status: RolloutStatus {
                in_progress: 2,
                pending: 7,
                halted: None,
            },
            rolled_back: vec![],
        };
        let status = next_status(None, Some(1), &active("1"), None, Some(rolling));
        assert_eq!(degraded(&status).reason, "RollingOut");
        assert!(degraded(&status).message.contains("7 waiting"));

        let view = RolloutView {
            status: RolloutStatus::default(),
            rolled_back: vec![rolled_back("web")],
        };
        let status = next_status(None, Some(1), &active("1"), None, Some(view));
        let condition = degraded(&status);
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "WorkloadsRolledBack")
        );
        assert!(
            condition
                .message
                .contains("Deployment web (CrashLoopBackOff of container app, exit code 1)"),
            "{}",
            condition.message
        );
        let kept = next_status(Some(&status), Some(1), &active("1"), None, None);
        assert_eq!(kept, status, "kept when the reconcile says nothing new");

        let halted = RolloutView {
            status: RolloutStatus {
                in_progress: 0,
                pending: 40,
                halted: Some(crate::crd::RolloutHalt {
                    settings: "abc".into(),
                    generation: 1,
                    workload: "Deployment web".into(),
                    reason: "ImagePullBackOff".into(),
                    message: "the injector image cannot be pulled".into(),
                }),
            },
            rolled_back: vec![rolled_back("web")],
        };
        let status = next_status(None, Some(1), &active("1"), None, Some(halted));
        assert_eq!(degraded(&status).reason, "RolloutHalted");
        assert_eq!(
            degraded(&status).message,
            "the injector image cannot be pulled"
        );
    }

    #[test]
    fn ten_thousand_workloads_keep_exact_counts_in_a_small_status() {
        let all: Vec<InstrumentedResource> = (0..10_000)
            .map(|i| {
                let state = if i % 100 == 0 {
                    TracingState::Silent
                } else {
                    TracingState::Receiving
                };
                traced(
                    &format!("workload-{i:05}"),
                    Some(state),
                    Some("no span yet"),
                )
            })
            .collect();
        let status = next_status(None, Some(1), &active("10000"), Some(all), None);
        assert_eq!(status.instrumented_count, 10_000);
        assert_eq!(status.receiving_count, 9_900);
        assert_eq!(status.tracing, "9900/10000");
        assert_eq!(status.instrumented_resources.len(), MAX_LISTED);
        let silent_listed = status
            .instrumented_resources
            .iter()
            .filter(|w| w.tracing.as_ref().unwrap().state == TracingState::Silent)
            .count();
        assert_eq!(silent_listed, 100, "the silent ones are the ones kept");
        let size = serde_json::to_vec(&status).unwrap().len();
        assert!(size < 300_000, "{size} bytes");
        let kept = next_status(Some(&status), Some(1), &active("10000"), None, None);
        assert_eq!(
            kept.instrumented_count, 10_000,
            "the count survives a write that keeps the list"
        );
        assert_eq!(kept.tracing, "9900/10000");
    }
}
