//! The `Lumigo` status: `Active`, `Error` and `Tracing` conditions and the instrumented workloads,
//! computed so that an unchanged state yields an identical status (and so no write).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{InstrumentedResource, LumigoStatus, TracingState};

pub const ACTIVE: &str = "Active";
pub const ERROR: &str = "Error";
pub const TRACING: &str = "Tracing";
/// Silent workloads a `Tracing` message names; the rest are counted.
const NAMED_SILENT: usize = 10;

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
/// does not flip; `instrumented: None` keeps the current list.
pub fn next_status(
    current: Option<&LumigoStatus>,
    generation: Option<i64>,
    health: &Health,
    instrumented: Option<Vec<InstrumentedResource>>,
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
    let instrumented_resources = instrumented.unwrap_or_else(|| {
        current
            .map(|s| s.instrumented_resources.clone())
            .unwrap_or_default()
    });
    let tracing = tracing_summary(&instrumented_resources);
    LumigoStatus {
        conditions: vec![
            condition(ACTIVE, active, reason, message),
            condition(ERROR, error, reason, message),
            condition(TRACING, tracing.status, tracing.reason, &tracing.message),
        ],
        instrumented_count: instrumented_resources.len() as i64,
        receiving_count: tracing.receiving as i64,
        tracing: tracing.column,
        instrumented_resources,
    }
}

struct TracingSummary {
    status: &'static str,
    reason: &'static str,
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
            status: "Unknown",
            reason: "TracesUnknown",
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
        status,
        reason,
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
        let first = next_status(None, Some(1), &active("2 workloads"), Some(vec![]));
        let second = next_status(Some(&first), Some(1), &active("2 workloads"), None);
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
        let status = next_status(None, Some(1), &active("3"), Some(list));
        assert_eq!(status.tracing, "2/3");
        assert_eq!(status.receiving_count, 2);
        let condition = tracing_condition(&status);
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "NoTraces")
        );
        assert_eq!(
            condition.message,
            "1 of 3 instrumented workloads send no traces: Deployment frontend (no container runs Node.js)"
        );
    }

    #[test]
    fn the_tracing_condition_is_true_only_when_all_receive_and_unknown_says_why() {
        let all = vec![traced("cart", Some(TracingState::Receiving), None)];
        let status = next_status(None, Some(1), &active("1"), Some(all));
        assert_eq!(tracing_condition(&status).status, "True");
        let unknown = vec![
            traced("cart", Some(TracingState::Receiving), None),
            traced(
                "email",
                Some(TracingState::Unknown),
                Some("the telemetry proxy cannot be read: refused"),
            ),
        ];
        let status = next_status(None, Some(1), &active("2"), Some(unknown));
        assert_eq!(status.tracing, "unknown");
        let condition = tracing_condition(&status);
        assert_eq!(condition.status, "Unknown");
        assert!(condition.message.ends_with("cannot be read: refused"));
        let none = next_status(None, Some(1), &active("0"), Some(vec![]));
        assert_eq!(tracing_condition(&none).reason, "NothingInstrumented");
    }

    #[test]
    fn many_silent_workloads_are_counted_past_the_first_ten() {
        let list = (0..25)
            .map(|i| traced(&format!("w{i}"), Some(TracingState::Silent), None))
            .collect();
        let status = next_status(None, Some(1), &active("25"), Some(list));
        let message = &tracing_condition(&status).message;
        assert!(message.ends_with("and 15 more"), "{message}");
        assert!(message.len() < 1_000);
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let first = next_status(None, Some(1), &active("ok"), Some(vec![]));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let failing = Health::Failing {
            reason: "SecretNotFound",
            message: "no Secret".into(),
        };
        let second = next_status(Some(&first), Some(2), &failing, None);
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
        );
        assert_eq!(
            second.conditions[1].last_transition_time,
            third.conditions[1].last_transition_time
        );
    }
}
