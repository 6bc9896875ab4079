//! The policy's settings: the mutation core's configuration, validated with messages that name
//! the field and say what is wrong.

use kubewarden_policy_sdk::settings::Validatable;
use lumigo_mutation::InjectionConfig;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Settings(pub InjectionConfig);

impl Validatable for Settings {
    fn validate(&self) -> Result<(), String> {
        self.0.validate().map_err(|error| error.to_string())
    }
}

impl Settings {
    /// Parses and validates in one step, for evaluation; the message says which failed.
    pub fn parse(raw: &serde_json::Value) -> Result<Self, String> {
        let settings =
            Settings::deserialize(raw).map_err(|error| format!("invalid settings: {error}"))?;
        Validatable::validate(&settings)?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_required_fields_are_named() {
        let error =
            Settings::parse(&json!({"injectorImage": "a:1", "operatorVersion": "1"})).unwrap_err();
        assert!(error.contains("tokenSecret"), "{error}");
    }

    #[test]
    fn validation_problems_reach_the_message() {
        let error = Settings::parse(&json!({
            "injectorImage": "a",
            "tokenSecret": {"name": "s", "key": "k"},
            "operatorVersion": "1"
        }))
        .unwrap_err();
        assert!(
            error.contains("injectorImage") && error.contains("pinned"),
            "{error}"
        );
    }
}
