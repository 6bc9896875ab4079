//! Small edits on raw JSON that keep key order and remember what they created, so that the
//! inverse edit gives back the same bytes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::outcome::Reason;

/// The value under `keys`, object by object: what `Value::pointer` finds for the same path, without
/// unescaping each of its tokens (two allocations and two substring searches a token, a tenth of
/// the policy module's call when it looked up templates and labels that way).
pub fn at<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(value, |value, key| value.get(key))
}

pub fn at_mut<'a>(value: &'a mut Value, keys: &[&str]) -> Option<&'a mut Value> {
    keys.iter().try_fold(value, |value, key| value.get_mut(key))
}

/// How a map or list the injection needed looked before it created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Created {
    Absent,
    Null,
}

/// The map at `parent[key]`, created when absent or null.
pub fn object_at<'a>(
    parent: &'a mut Map<String, Value>,
    key: &str,
    path: &str,
    created: &mut Option<Created>,
) -> Result<&'a mut Map<String, Value>, Reason> {
    prepare_slot(parent, key, created, || Value::Object(Map::new()));
    parent
        .get_mut(key)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Reason::Malformed(format!("{path} is not an object")))
}

/// The list at `parent[key]`, created when absent or null.
pub fn array_at<'a>(
    parent: &'a mut Map<String, Value>,
    key: &str,
    path: &str,
    created: &mut Option<Created>,
) -> Result<&'a mut Vec<Value>, Reason> {
    prepare_slot(parent, key, created, || Value::Array(Vec::new()));
    parent
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .ok_or_else(|| Reason::Malformed(format!("{path} is not a list")))
}

fn prepare_slot(
    parent: &mut Map<String, Value>,
    key: &str,
    created: &mut Option<Created>,
    empty: impl Fn() -> Value,
) {
    match parent.get(key) {
        None => {
            *created = Some(Created::Absent);
            parent.insert(key.to_owned(), empty());
        }
        Some(Value::Null) => {
            *created = Some(Created::Null);
            parent.insert(key.to_owned(), empty());
        }
        Some(_) => {}
    }
}

/// Undoes [`object_at`] / [`array_at`]: once the container is empty again, puts back what was
/// there.
pub fn restore_created(parent: &mut Map<String, Value>, key: &str, created: Option<Created>) {
    let Some(created) = created else { return };
    let now_empty = match parent.get(key) {
        Some(Value::Object(map)) => map.is_empty(),
        Some(Value::Array(list)) => list.is_empty(),
        _ => false,
    };
    if !now_empty {
        return;
    }
    match created {
        Created::Absent => {
            remove_in_order(parent, key);
        }
        Created::Null => {
            parent.insert(key.to_owned(), Value::Null);
        }
    }
}

pub fn name_of(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

pub fn position_named(list: &[Value], name: &str) -> Option<usize> {
    list.iter().position(|item| name_of(item) == Some(name))
}

/// Removes every item named `name`; items are Kubernetes list entries keyed by `name`.
pub fn remove_named(list: &mut Vec<Value>, name: &str) {
    list.retain(|item| name_of(item) != Some(name));
}

/// The string value of `map[key]`, if it is a string.
pub fn str_at<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

/// Takes `key` out of `map` and tells whether it was there; the other keys keep their order with
/// either of serde_json's maps. The policy module is built with the sorted one (faster to build,
/// clone and diff, and order means nothing in its patch), the operator with the insertion-ordered
/// one, where `Map::remove` would move the last key into the removed one's place and
/// `shift_remove`, which does not, is the only one of the two that exists.
pub fn remove_in_order(map: &mut Map<String, Value>, key: &str) -> bool {
    let present = map.contains_key(key);
    if present {
        map.retain(|name, _| name != key);
    }
    present
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_find_what_a_pointer_finds_and_nothing_inside_lists() {
        let mut object = json!({"spec": {"template": {"a/b": 1}, "list": [{"x": 2}]}});
        assert_eq!(
            at(&object, &["spec", "template", "a/b"]),
            object.pointer("/spec/template/a~1b")
        );
        assert_eq!(at(&object, &["spec", "template", "a/b"]), Some(&json!(1)));
        assert_eq!(at(&object, &[]), Some(&object));
        assert_eq!(at(&object, &["spec", "missing"]), None);
        assert_eq!(at(&object, &["spec", "list", "0"]), None);
        *at_mut(&mut object, &["spec", "template"]).unwrap() = json!(null);
        assert_eq!(object["spec"]["template"], json!(null));
    }

    #[test]
    fn created_containers_are_restored_exactly() {
        let original = json!({"a": 1, "list": null, "z": 2});
        let mut value = original.clone();
        let map = value.as_object_mut().unwrap();
        let (mut list_created, mut map_created) = (None, None);
        array_at(map, "list", "list", &mut list_created)
            .unwrap()
            .push(json!(1));
        object_at(map, "new", "new", &mut map_created)
            .unwrap()
            .insert("k".into(), json!("v"));
        assert_eq!(list_created, Some(Created::Null));
        assert_eq!(map_created, Some(Created::Absent));

        map.get_mut("list").unwrap().as_array_mut().unwrap().clear();
        map.get_mut("new").unwrap().as_object_mut().unwrap().clear();
        restore_created(map, "list", list_created);
        restore_created(map, "new", map_created);
        assert_eq!(
            serde_json::to_string(&value).unwrap(),
            serde_json::to_string(&original).unwrap()
        );
    }

    #[test]
    fn a_container_the_user_filled_meanwhile_is_kept() {
        let mut value = json!({"list": [1]});
        restore_created(
            value.as_object_mut().unwrap(),
            "list",
            Some(Created::Absent),
        );
        assert_eq!(value, json!({"list": [1]}));
    }

    #[test]
    fn a_non_container_is_reported_with_its_path() {
        let mut value = json!({"list": "oops"});
        let error = array_at(
            value.as_object_mut().unwrap(),
            "list",
            "spec.list",
            &mut None,
        )
        .unwrap_err();
        assert_eq!(error, Reason::Malformed("spec.list is not a list".into()));
    }
}
