//! The policy's settings: the mutation core's configuration, validated with messages that name
//! the field and say what is wrong.

use kubewarden_policy_sdk::settings::Validatable;
use lumigo_mutation::InjectionConfig;
use serde::Deserialize;
use serde_json::value::RawValue;

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
    pub fn parse(raw: &RawValue) -> Result<Self, String> {
        let settings: Settings = serde_json::from_str(raw.get())
            .map_err(|error| format!("invalid settings: {error}"))?;
        Validatable::validate(&settings)?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(value: serde_json::Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&value).unwrap()
    }

    #[test]
    fn missing_required_fields_are_named() {
        let error = Settings::parse(&raw(
            json!({"injectorImage": "a:1", "operatorVersion": "1"}),
        ))
        .unwrap_err();
        assert!(error.contains("tokenSecret"), "{error}");
    }

    #[test]
    fn validation_problems_reach_the_message() {
        let error = Settings::parse(&raw(json!({
            "injectorImage": "a",
            "tokenSecret": {"name": "s", "key": "k"},
            "operatorVersion": "1"
        })))
        .unwrap_err();
        assert!(
            error.contains("injectorImage") && error.contains("pinned"),
            "{error}"
        );
    }
}
