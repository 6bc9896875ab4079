//! Shared by the chart tests (chart.rs, rbac.rs, cluster.rs): helm built from tools/helm, the chart
//! rendered, and its multi-document output parsed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;
use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn chart_dir() -> PathBuf {
    repo().join("charts/lumigo-operator")
}

/// The helm binary of tools/helm (built on first use, cached by version).
pub fn helm() -> PathBuf {
    let output = Command::new(repo().join("tools/helm/build.sh"))
        .output()
        .expect("running tools/helm/build.sh");
    assert!(
        output.status.success(),
        "tools/helm/build.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}

pub fn run_with_stdin(command: &mut Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `helm template lumigo charts/lumigo-operator -n <namespace> <args>`, as YAML text.
pub fn render(namespace: &str, args: &[&str]) -> String {
    let output = run(Command::new(helm())
        .args(["template", "lumigo"])
        .arg(chart_dir())
        .args(["--namespace", namespace])
        .args(args));
    assert!(
        output.status.success(),
        "helm template {args:?} failed:\n{}",
        text(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

pub fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|value| !value.is_null())
        .collect()
}

pub fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered chart"))
}

pub fn to_yaml(documents: &[&Value]) -> String {
    documents
        .iter()
        .map(|d| format!("---\n{}", serde_norway::to_string(d).unwrap()))
        .collect()
}

pub fn yaml_file(path: &Path) -> Value {
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The environment variable `name` of a rendered container (its `name` and `value` or `valueFrom`).
pub fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
}
