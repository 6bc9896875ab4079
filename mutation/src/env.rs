//! The app containers' environment: which variables the injection sets, and how `LD_PRELOAD`
//! is composed with a user's own value and taken apart again.

use serde_json::{json, Value};

use crate::config::InjectionConfig;
use crate::names::*;

/// `LD_PRELOAD` with the injector first: ld.so loads preloads in order, and the injector must
/// run its constructor before user libraries that may read the variables it sets.
pub fn prepend_injector(user_preload: &str) -> String {
    format!("{INJECTOR_LIBRARY_PATH} {user_preload}")
}

/// The user's part of a composed `LD_PRELOAD`, or `None` when the injector is not at its head
/// (a person rewrote it since: nothing of ours to take out).
pub fn strip_injector(composed: &str) -> Option<&str> {
    composed
        .strip_prefix(INJECTOR_LIBRARY_PATH)?
        .strip_prefix(' ')
}

/// Whether `LD_PRELOAD` already names the injector, e.g. set by hand.
pub fn names_injector(preload: &str) -> bool {
    preload
        .split([' ', ':'])
        .any(|entry| entry == INJECTOR_LIBRARY_PATH)
}

/// The variables the injection adds to a container, in the order they are appended.
/// `LD_PRELOAD` is not among them: it is composed with the user's value instead.
pub fn lumigo_variables(
    config: &InjectionConfig,
    container_name: &str,
) -> [(&'static str, Value); 6] {
    [
        (
            ENV_TOKEN,
            json!({"name": ENV_TOKEN, "valueFrom": {"secretKeyRef": {
                "name": config.token_secret.name,
                "key": config.token_secret.key,
                "optional": true
            }}}),
        ),
        (
            ENV_TRACES_ENDPOINT,
            plain(ENV_TRACES_ENDPOINT, &config.traces_endpoint),
        ),
        (
            ENV_LOGS_ENDPOINT,
            plain(ENV_LOGS_ENDPOINT, &config.logs_endpoint),
        ),
        (
            ENV_ENABLE_TRACES,
            plain(ENV_ENABLE_TRACES, bool_text(config.enable_traces)),
        ),
        (
            ENV_ENABLE_LOGS,
            plain(ENV_ENABLE_LOGS, bool_text(config.enable_logs)),
        ),
        (
            ENV_CONTAINER_NAME,
            plain(ENV_CONTAINER_NAME, container_name),
        ),
    ]
}

pub fn ld_preload_entry() -> Value {
    plain(LD_PRELOAD, INJECTOR_LIBRARY_PATH)
}

fn plain(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value})
}

fn bool_text(flag: bool) -> &'static str {
    if flag {
        "true"
    } else {
        "false"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_injector_goes_first_and_comes_out_exactly() {
        for user in ["", "libfoo.so", "/a/b.so:/c/d.so", " lead and trail "] {
            let composed = prepend_injector(user);
            assert!(composed.starts_with(INJECTOR_LIBRARY_PATH));
            assert_eq!(strip_injector(&composed), Some(user));
        }
    }

    #[test]
    fn a_rewritten_value_is_left_alone() {
        assert_eq!(strip_injector("libfoo.so"), None);
        assert_eq!(
            strip_injector(&format!("{INJECTOR_LIBRARY_PATH}x libfoo.so")),
            None
        );
    }

    #[test]
    fn the_injector_is_recognised_in_any_position() {
        assert!(names_injector(&format!(
            "libfoo.so:{INJECTOR_LIBRARY_PATH}"
        )));
        assert!(!names_injector("libfoo.so /opt/lumigo/injector/other.so"));
    }
}
