//! `artifacthub-pkg.yml` says what the module's own metadata says: the same rules, version,
//! mutation flag and resources, and a question for every setting.

use serde_json::Value;

fn yaml(path: &str) -> Value {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    serde_norway::from_str(&std::fs::read_to_string(&full).unwrap())
        .unwrap_or_else(|e| panic!("{full}: {e}"))
}

#[test]
fn artifact_hub_metadata_matches_the_policy_metadata() {
    let package = yaml("artifacthub-pkg.yml");
    let metadata = yaml("policy-wasm/metadata.yml");
    let annotations = &package["annotations"];

    let rules: Value =
        serde_norway::from_str(annotations["kubewarden/rules"].as_str().unwrap()).unwrap();
    assert_eq!(rules, metadata["rules"]);
    let rules_of_the_core: Value =
        serde_json::from_str(&lumigo_mutation::WorkloadKind::admission_rules().to_string())
            .unwrap();
    assert_eq!(
        metadata["rules"], rules_of_the_core,
        "metadata.yml must list exactly the kinds the core mutates"
    );
    assert_eq!(annotations["kubewarden/mutation"], "true");
    assert_eq!(metadata["mutating"], true);
    assert_eq!(
        annotations["kubewarden/resources"],
        metadata["annotations"]["io.artifacthub.resources"]
    );
    assert_eq!(
        package["version"],
        metadata["annotations"]["io.kubewarden.policy.version"]
    );
    assert_eq!(
        package["name"],
        metadata["annotations"]["io.kubewarden.policy.title"]
    );
    let version = package["version"].as_str().unwrap();
    assert!(package["containersImages"][0]["image"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":v{version}")));
    for required in [
        "createdAt",
        "description",
        "license",
        "homeURL",
        "displayName",
        "provider",
    ] {
        assert!(
            !package[required].is_null(),
            "{required} is required by Artifact Hub"
        );
    }
}

#[test]
fn every_setting_has_a_question_and_every_question_is_a_setting() {
    let package = yaml("artifacthub-pkg.yml");
    let questions: Value = serde_norway::from_str(
        package["annotations"]["kubewarden/questions-ui"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let mut asked: Vec<String> = questions["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["variable"].as_str().unwrap().to_owned())
        .collect();
    asked.sort();

    let example: Value = serde_json::from_slice(
        &std::fs::read(format!(
            "{}/../policies/settings.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let mut settings = Vec::new();
    for (key, value) in example.as_object().unwrap() {
        match value.as_object() {
            Some(nested) => settings.extend(nested.keys().map(|inner| format!("{key}.{inner}"))),
            None => settings.push(key.clone()),
        }
    }
    settings.sort();
    assert_eq!(asked, settings);
}
