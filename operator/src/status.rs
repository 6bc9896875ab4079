//! The `Lumigo` status: `Active` and `Error` conditions and the instrumented workloads, computed
//! so that an unchanged state yields an identical status (and so no write).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{InstrumentedResource, LumigoStatus};

pub const ACTIVE: &str = "Active";
pub const ERROR: &str = "Error";

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
    let condition = |kind: &str, status: &str| {
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
    LumigoStatus {
        conditions: vec![condition(ACTIVE, active), condition(ERROR, error)],
        instrumented_count: instrumented_resources.len() as i64,
        instrumented_resources,
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
