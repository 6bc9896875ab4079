//! Adding the owned items to a pod template, and taking exactly those out again.
//! Both work on a copy the caller discards on error, so an object is changed whole or not at all.

use serde_json::{json, Map, Value};

use crate::config::{InjectionConfig, PayloadDelivery};
use crate::env::{
    ld_preload_entry, lumigo_variables, names_injector, prepend_injector, strip_injector,
};
use crate::json::{
    array_at, name_of, object_at, position_named, remove_in_order, remove_named, restore_created,
    str_at,
};
use crate::names::*;
use crate::outcome::Reason;
use crate::record::{ContainerRecord, Record};
use crate::workload::WorkloadKind;

/// A non-root uid for the init container when the pod names none: the copied files only
/// need to be readable, and the emptyDir is writable by everyone.
const DEFAULT_INIT_UID: i64 = 1234;

pub fn template_mut(
    object: &mut Value,
    kind: WorkloadKind,
) -> Result<&mut Map<String, Value>, Reason> {
    kind.template_mut(object)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            Reason::Malformed(format!(
                "{} is missing or not an object",
                kind.template_path()
            ))
        })
}

/// Adds every owned item to an object that carries none of them.
pub fn apply(
    object: &mut Value,
    kind: WorkloadKind,
    config: &InjectionConfig,
) -> Result<(), Reason> {
    let mut record = Record::new();
    let label_value = config.label_value();

    if kind != WorkloadKind::Pod {
        let root = object
            .as_object_mut()
            .ok_or_else(|| Reason::Malformed("the object is not a JSON object".into()))?;
        let metadata = object_at(root, "metadata", "metadata", &mut record.workload_metadata)?;
        let labels = object_at(
            metadata,
            "labels",
            "metadata.labels",
            &mut record.workload_labels,
        )?;
        record.workload_label = set_label(labels, &label_value);
    }

    let template = template_mut(object, kind)?;
    let spec = template
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Reason::Malformed(format!("{}.spec is missing", kind.template_path())))?;
    inject_spec(spec, config, &mut record)?;

    let metadata = object_at(
        template,
        "metadata",
        "template metadata",
        &mut record.template_metadata,
    )?;
    let labels = object_at(
        metadata,
        "labels",
        "template labels",
        &mut record.template_labels,
    )?;
    record.template_label = set_label(labels, &label_value);
    let mut annotations_created = None;
    let annotations = object_at(
        metadata,
        "annotations",
        "template annotations",
        &mut annotations_created,
    )?;
    record.template_annotations = annotations_created;
    annotations.insert(
        RECORD_ANNOTATION.to_owned(),
        Value::String(record.to_annotation_value()),
    );
    Ok(())
}

/// Sets the injection label and returns the value it replaced.
fn set_label(labels: &mut Map<String, Value>, value: &str) -> Option<String> {
    let previous = labels.insert(AUTO_TRACE_LABEL.to_owned(), Value::String(value.to_owned()));
    previous.and_then(|v| v.as_str().map(str::to_owned))
}

fn inject_spec(
    spec: &mut Map<String, Value>,
    config: &InjectionConfig,
    record: &mut Record,
) -> Result<(), Reason> {
    let init_container = (config.payload_delivery == PayloadDelivery::InitContainer)
        .then(|| init_container(spec, config));

    let volumes = array_at(spec, "volumes", "volumes", &mut record.volumes)?;
    if position_named(volumes, INJECTOR_NAME).is_some() {
        return Err(Reason::Conflict(format!(
            "the pod already has a volume named {INJECTOR_NAME}"
        )));
    }
    volumes.push(payload_volume(config));

    // The name is the injection's in both modes: removal takes out the init container of that
    // name, so a user's own one would be lost even where none is added.
    let named_init_container = |spec: &Map<String, Value>| {
        spec.get("initContainers")
            .and_then(Value::as_array)
            .is_some_and(|list| position_named(list, INJECTOR_NAME).is_some())
    };
    if named_init_container(spec) {
        return Err(Reason::Conflict(format!(
            "the pod already has an init container named {INJECTOR_NAME}"
        )));
    }
    if let Some(init_container) = init_container {
        let init_containers = array_at(
            spec,
            "initContainers",
            "initContainers",
            &mut record.init_containers,
        )?;
        // First, so that native sidecars (restartable init containers) find the payload in place.
        init_containers.insert(0, init_container);
    }

    let containers = spec
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .filter(|list| !list.is_empty())
        .ok_or_else(|| Reason::Malformed("the pod has no containers".into()))?;
    for container in containers {
        let container = container
            .as_object_mut()
            .ok_or_else(|| Reason::Malformed("a container is not an object".into()))?;
        let name = str_at(container, "name")
            .ok_or_else(|| Reason::Malformed("a container has no name".into()))?
            .to_owned();
        let container_record = inject_container(container, &name, config)?;
        record.containers.insert(name, container_record);
    }
    Ok(())
}

fn inject_container(
    container: &mut Map<String, Value>,
    name: &str,
    config: &InjectionConfig,
) -> Result<ContainerRecord, Reason> {
    let mut record = ContainerRecord::default();

    let mounts = array_at(
        container,
        "volumeMounts",
        "volumeMounts",
        &mut record.volume_mounts,
    )?;
    let clashes = mounts.iter().any(|mount| {
        name_of(mount) == Some(INJECTOR_NAME)
            || mount
                .get("mountPath")
                .and_then(Value::as_str)
                .map(|p| p.trim_end_matches('/'))
                == Some(PAYLOAD_MOUNT_PATH)
    });
    if clashes {
        return Err(Reason::Conflict(format!(
            "container {name} already mounts a volume named {INJECTOR_NAME} or at \
             {PAYLOAD_MOUNT_PATH}"
        )));
    }
    mounts.push(payload_mount(config.payload_delivery));

    let env = array_at(container, "env", "env", &mut record.env)?;
    match position_named(env, LD_PRELOAD) {
        None => {
            env.push(ld_preload_entry());
            record.added_env.push(LD_PRELOAD.to_owned());
        }
        Some(index) => {
            let entry = &mut env[index];
            if entry.get("valueFrom").is_some() {
                return Err(Reason::Conflict(format!(
                    "container {name} takes LD_PRELOAD from valueFrom, which cannot be composed \
                     with the injector"
                )));
            }
            let user_value = match entry.get("value") {
                None | Some(Value::Null) => "",
                Some(Value::String(value)) => value.as_str(),
                Some(_) => {
                    return Err(Reason::Malformed(format!(
                        "container {name} has a non-string LD_PRELOAD"
                    )))
                }
            };
            // Set by hand already: composing again would load it twice.
            if !names_injector(user_value) {
                let composed = prepend_injector(user_value);
                record.user_ld_preload = Some(entry.clone());
                entry["value"] = Value::String(composed);
            }
        }
    }
    // A value the user set wins: it is their explicit choice, and it is left exactly as it is.
    for (variable, entry) in lumigo_variables(config, name) {
        if position_named(env, variable).is_none() {
            env.push(entry);
            record.added_env.push(variable.to_owned());
        }
    }
    Ok(record)
}

/// The pod's volume that holds the payload: the autotrace image itself, or the emptyDir the init
/// container fills.
fn payload_volume(config: &InjectionConfig) -> Value {
    match config.payload_delivery {
        PayloadDelivery::InitContainer => {
            json!({"name": INJECTOR_NAME, "emptyDir": {"sizeLimit": VOLUME_SIZE_LIMIT}})
        }
        // The pull policy the API server would default for a pinned reference, written out (as
        // for the init container) so that a stored object equals a fresh injection.
        PayloadDelivery::ImageVolume => json!({
            "name": INJECTOR_NAME,
            "image": {"reference": config.injector_image, "pullPolicy": "IfNotPresent"}
        }),
    }
}

/// An app container's mount of the payload volume at `/opt/lumigo`. The image keeps the payload
/// at the same path as the copy step reads it from, so an image volume mounts that directory.
fn payload_mount(delivery: PayloadDelivery) -> Value {
    let mut mount =
        json!({"name": INJECTOR_NAME, "mountPath": PAYLOAD_MOUNT_PATH, "readOnly": true});
    if delivery == PayloadDelivery::ImageVolume {
        mount["subPath"] = Value::String(PAYLOAD_IMAGE_DIRECTORY.to_owned());
    }
    mount
}

/// The init container that copies the payload into the shared volume, compliant with Pod
/// Security "restricted"; it runs as the pod's own user and group when the pod names them.
fn init_container(spec: &Map<String, Value>, config: &InjectionConfig) -> Value {
    let pod_security = spec.get("securityContext");
    let pod_id = |field: &str| {
        pod_security
            .and_then(|sc| sc.get(field))
            .and_then(Value::as_i64)
            .filter(|id| *id > 0)
    };
    let uid = pod_id("runAsUser").unwrap_or(DEFAULT_INIT_UID);
    let gid = pod_id("runAsGroup").unwrap_or(uid);
    json!({
        "name": INJECTOR_NAME,
        "image": config.injector_image,
        // The API server's defaults, written out: a stored object then equals a fresh injection,
        // so checking an injected workload again finds nothing to change and writes nothing.
        "imagePullPolicy": "IfNotPresent",
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "env": [{"name": "TARGET_DIRECTORY", "value": INIT_TARGET_DIRECTORY}],
        "volumeMounts": [{"name": INJECTOR_NAME, "mountPath": INIT_TARGET_DIRECTORY}],
        // A pod's request is the larger of its init containers' and the sum of its app
        // containers': for an app that requests nothing, these requests become the pod's. At
        // 50m, a node of small pods with no requests ran out of schedulable CPU halfway through
        // a rollout (found on the e2e node): the copy needs next to nothing reserved.
        // The CPU limit is one core: the copy is a single thread, so CFS never throttles it, and
        // namespaces whose LimitRange or ResourceQuota require limits still admit the pod. At
        // 500m every run on the bench's node was throttled in nearly all its 100 ms periods (0.9
        // to 1.5 s held back): 2.6 s median instead of 1.4 to 1.7 s. Memory peaks at 59 MB (the
        // written payload's pages), far from 128Mi; 256Mi changed nothing.
        "resources": {
            "requests": {"cpu": "5m", "memory": "16Mi"},
            "limits": {"cpu": "1", "memory": "128Mi"}
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": uid,
            "runAsGroup": gid,
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    })
}

/// Takes out everything `record` says the injection added, and puts back what it changed.
pub fn strip(object: &mut Value, kind: WorkloadKind, record: &Record) -> Result<(), Reason> {
    let template = template_mut(object, kind)?;
    if let Some(spec) = template.get_mut("spec").and_then(Value::as_object_mut) {
        strip_spec(spec, record);
    }
    if let Some(metadata) = template.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(labels) = metadata.get_mut("labels").and_then(Value::as_object_mut) {
            restore_label(labels, record.template_label.as_deref());
        }
        restore_created(metadata, "labels", record.template_labels);
        if let Some(annotations) = metadata
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
        {
            remove_in_order(annotations, RECORD_ANNOTATION);
        }
        restore_created(metadata, "annotations", record.template_annotations);
    }
    restore_created(template, "metadata", record.template_metadata);

    if kind != WorkloadKind::Pod {
        if let Some(root) = object.as_object_mut() {
            if let Some(metadata) = root.get_mut("metadata").and_then(Value::as_object_mut) {
                if let Some(labels) = metadata.get_mut("labels").and_then(Value::as_object_mut) {
                    restore_label(labels, record.workload_label.as_deref());
                }
                restore_created(metadata, "labels", record.workload_labels);
            }
            restore_created(root, "metadata", record.workload_metadata);
        }
    }
    Ok(())
}

/// Puts back the label's original value, unless a person changed it since (e.g. to opt out).
fn restore_label(labels: &mut Map<String, Value>, original: Option<&str>) {
    let still_ours = str_at(labels, AUTO_TRACE_LABEL)
        .is_some_and(|value| value.starts_with(INJECTED_VALUE_PREFIX));
    if !still_ours {
        return;
    }
    match original {
        Some(value) => {
            labels.insert(AUTO_TRACE_LABEL.to_owned(), Value::String(value.to_owned()));
        }
        None => {
            remove_in_order(labels, AUTO_TRACE_LABEL);
        }
    }
}

fn strip_spec(spec: &mut Map<String, Value>, record: &Record) {
    for (key, created) in [
        ("volumes", record.volumes),
        ("initContainers", record.init_containers),
    ] {
        if let Some(list) = spec.get_mut(key).and_then(Value::as_array_mut) {
            remove_named(list, INJECTOR_NAME);
        }
        restore_created(spec, key, created);
    }
    let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) else {
        return;
    };
    for container in containers.iter_mut().filter_map(Value::as_object_mut) {
        let Some(container_record) =
            str_at(container, "name").and_then(|name| record.containers.get(name))
        else {
            continue;
        };
        strip_container(container, container_record);
    }
}

fn strip_container(container: &mut Map<String, Value>, record: &ContainerRecord) {
    if let Some(mounts) = container
        .get_mut("volumeMounts")
        .and_then(Value::as_array_mut)
    {
        remove_named(mounts, INJECTOR_NAME);
    }
    restore_created(container, "volumeMounts", record.volume_mounts);

    if let Some(env) = container.get_mut("env").and_then(Value::as_array_mut) {
        env.retain(|entry| {
            !name_of(entry).is_some_and(|name| record.added_env.iter().any(|added| added == name))
        });
        if let Some(user_entry) = &record.user_ld_preload {
            restore_user_ld_preload(env, user_entry);
        }
    }
    restore_created(container, "env", record.env);
}

/// Takes the injector off the head of the user's `LD_PRELOAD`. When the rest is what the user
/// had, the entry goes back exactly as it was (also when it had no `value` key at all).
fn restore_user_ld_preload(env: &mut [Value], user_entry: &Value) {
    let Some(entry) = env
        .iter_mut()
        .find(|entry| name_of(entry) == Some(LD_PRELOAD))
    else {
        return;
    };
    let Some(user_part) = entry
        .get("value")
        .and_then(Value::as_str)
        .and_then(strip_injector)
    else {
        return;
    };
    let original_value = user_entry
        .get("value")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if user_part == original_value {
        *entry = user_entry.clone();
    } else {
        entry["value"] = Value::String(user_part.to_owned());
    }
}
