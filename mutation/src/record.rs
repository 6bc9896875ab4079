//! The injection record: what the injection created or changed, kept in an annotation on the
//! pod template so that removal can give back the original object byte for byte.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::json::{self, Created};
use crate::names::RECORD_ANNOTATION;
use crate::outcome::Reason;

const RECORD_FORMAT: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    #[serde(rename = "v")]
    pub format: u32,
    /// The `lumigo.auto-trace` label's value on the workload before injection (not for Pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_metadata: Option<Created>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_labels: Option<Created>,
    /// The label's value on the pod template before injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_metadata: Option<Created>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_labels: Option<Created>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_annotations: Option<Created>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Created>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_containers: Option<Created>,
    /// Per app container, by name.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerRecord>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Created>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Created>,
    /// Variables the injection appended (the user set none of them).
    #[serde(default)]
    pub added_env: Vec<String>,
    /// The user's own `LD_PRELOAD` entry, as it was, when the injector was prepended to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_ld_preload: Option<Value>,
}

impl Record {
    pub fn new() -> Self {
        Record {
            format: RECORD_FORMAT,
            ..Record::default()
        }
    }

    /// The record on a pod template; `Ok(None)` when the template carries none (not injected).
    pub fn read(template: &Value) -> Result<Option<Record>, Reason> {
        let Some(raw) = json::at(template, &["metadata", "annotations", RECORD_ANNOTATION]) else {
            return Ok(None);
        };
        let unreadable = |why: String| {
            Reason::Malformed(format!(
                "the annotation {RECORD_ANNOTATION} was changed by hand and cannot be read \
                 ({why}); restore it, or remove the injected items and the annotation together"
            ))
        };
        let text = raw
            .as_str()
            .ok_or_else(|| unreadable("not a string".into()))?;
        let record: Record = serde_json::from_str(text).map_err(|e| unreadable(e.to_string()))?;
        if record.format != RECORD_FORMAT {
            return Err(unreadable(format!("unknown format {}", record.format)));
        }
        Ok(Some(record))
    }

    pub fn to_annotation_value(&self) -> String {
        serde_json::to_string(self)
            .expect("a record always serializes: it holds only strings and maps")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_round_trips_through_its_annotation() {
        let mut record = Record::new();
        record.template_label = Some("old".into());
        record.volumes = Some(Created::Null);
        record.containers.insert(
            "app".into(),
            ContainerRecord {
                added_env: vec!["LUMIGO_ENDPOINT".into()],
                ..Default::default()
            },
        );
        let template =
            json!({"metadata": {"annotations": {RECORD_ANNOTATION: record.to_annotation_value()}}});
        assert_eq!(Record::read(&template), Ok(Some(record)));
    }

    #[test]
    fn a_tampered_record_is_reported_not_guessed() {
        let template = json!({"metadata": {"annotations": {
            RECORD_ANNOTATION: "{\"v\":1,\"volumes\":\"maybe\"}"
        }}});
        assert!(matches!(
            Record::read(&template),
            Err(Reason::Malformed(why)) if why.contains(RECORD_ANNOTATION)
        ));
        assert_eq!(Record::read(&json!({"metadata": {}})), Ok(None));
    }
}
