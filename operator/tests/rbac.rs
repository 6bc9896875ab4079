//! The chart's RBAC is sufficient and not excessive: its ServiceAccount, ClusterRole, Role and
//! bindings (rendered by helm) are installed on a real control plane, a token is minted for the
//! ServiceAccount (TokenRequest), and the operator binary runs under that identity through a Lumigo
//! lifecycle (rollout, events, status, leader lease, removal) and then `uninstall` (what the
//! pre-delete hook runs). Its log holds no "forbidden"; requests it has no business making are
//! denied. What RBAC cannot refuse, the chart's ValidatingAdmissionPolicies do: with the same
//! identity, writes to workloads of protected namespaces, changes to its own webhook configuration
//! other than the caBundle, and (RBAC) writes to other webhook configurations are sent and refused,
//! while the very same requests succeed as admin (or in a namespace that is not protected).

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use lumigo_e2e::testing::{eventually, policy_module_path, shared_control_plane};
use lumigo_e2e::{ControlPlane, Process};
use lumigo_mutation::WorkloadKind;
use lumigo_operator::crd::Lumigo;
use serde_json::Value;
use support::chart::*;
use support::*;

const WAIT: Duration = Duration::from_secs(90);

/// Both tests run a cluster-wide operator on the shared control plane, and the first one's
/// `uninstall` deletes every Lumigo resource there: run side by side, each would act on the other's
/// namespace. They take turns.
static ONE_OPERATOR_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn kubeconfig_for_token(cp: &ControlPlane, token: &str, path: &Path) {
    let ca = base64::engine::general_purpose::STANDARD.encode(cp.ca_pem());
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    \
         certificate-authority-data: {ca}\n\
         users:\n- name: operator\n  user:\n    token: {token}\ncontexts:\n- name: operator\n  \
         context: {{cluster: e2e, user: operator}}\n\
         current-context: operator\n",
        cp.server_url()
    );
    std::fs::write(path, config).unwrap();
}

fn operator_command(kubeconfig: &Path, namespace: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lumigo-operator"));
    command
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAMESPACE", namespace)
        .env("POD_NAME", "lumigo-operator-rbac-test")
        .env("LUMIGO_INJECTOR_IMAGE", "ghcr.io/lumigo-rs/autotrace:0.1.0")
        .env("LUMIGO_ROLLOUT_MAX_IN_PROGRESS", "0")
        .env("LUMIGO_POLICY_MODULE", policy_module_path())
        .env("LUMIGO_WEBHOOK_LOOPBACK", "true")
        .env(
            "LUMIGO_WEBHOOK_ADDRESS",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("RUST_LOG", "info,lumigo_operator=debug,kube=debug");
    command
}

fn can_i(cp: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> bool {
    let output = run(Command::new(cp.kubectl_path())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["auth", "can-i"])
        .args(args));
    String::from_utf8_lossy(&output.stdout).trim() == "yes"
}

fn assert_not_forbidden(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap();
    let forbidden: Vec<&str> = text
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "{}: the chart's RBAC forbade requests:\n{}",
        log.display(),
        forbidden.join("\n")
    );
}

/// Installs the chart's operator identity (rendered with `args`, full name `name`) with the
/// admission policy that guards it, and returns a kubeconfig that authenticates as its
/// ServiceAccount.
fn install_identity(
    cp: &ControlPlane,
    release_ns: &str,
    name: &str,
    args: &[&str],
) -> std::path::PathBuf {
    let docs = documents(&render(release_ns, args));
    let is_identity = |d: &Value| {
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ]
        .contains(&d["kind"].as_str().unwrap())
            && d["metadata"]["name"] == name
    };
    let is_guard = |d: &Value| {
        d["kind"]
            .as_str()
            .unwrap()
            .starts_with("ValidatingAdmissionPolicy")
            && d["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{name}-"))
    };
    let identity: Vec<&Value> = docs.iter().filter(|d| is_identity(d)).collect();
    assert_eq!(
        identity.len(),
        5,
        "ServiceAccount, ClusterRole, ClusterRoleBinding, Role, RoleBinding"
    );
    let guard: Vec<&Value> = docs.iter().filter(|d| is_guard(d)).collect();
    assert!(
        guard
            .iter()
            .any(|d| d["metadata"]["name"] == format!("{name}-protected-namespaces")),
        "the protected namespaces' policy"
    );
    let identity: Vec<&Value> = identity.into_iter().chain(guard).collect();
    let output = run_with_stdin(cp.kubectl().args(["apply", "-f", "-"]), &to_yaml(&identity));
    assert!(output.status.success(), "{}", text(&output));

    let output =
        run(cp
            .kubectl()
            .args(["create", "token", name, "-n", release_ns, "--duration=1h"]));
    assert!(output.status.success(), "TokenRequest: {}", text(&output));
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let kubeconfig = cp
        .dir()
        .join(format!("{name}-sa-{}.kubeconfig", std::process::id()));
    kubeconfig_for_token(cp, &token, &kubeconfig);
    kubeconfig
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_runs_its_lifecycle_under_the_charts_rbac_and_nothing_more() {
    let _turn = ONE_OPERATOR_AT_A_TIME.lock().await;
    let (cp, client) = with_crd(shared_control_plane()).await;
    let release_ns = cp.create_namespace("lumigo-system", &[]).await.unwrap();
    let app_ns = cp.create_namespace("rbac-app", &[]).await.unwrap();
    let other_ns = cp.create_namespace("rbac-other", &[]).await.unwrap();
    let kubeconfig = install_identity(&cp, &release_ns, "lumigo-operator", &[]);

    // Not excessive: what the operator never does is denied.
    assert!(
        can_i(&cp, &kubeconfig, &["get", "secrets", "-n", &other_ns]),
        "token validation reads a named Secret"
    );
    for denied in [
        vec!["list", "secrets", "-n", &other_ns],
        vec!["watch", "secrets", "-A"],
        vec!["delete", "pods", "-n", &app_ns],
        vec!["create", "pods", "-n", &app_ns],
        vec!["update", "jobs", "-n", &app_ns],
        vec!["delete", "deployments", "-n", &app_ns],
        vec!["create", "deployments", "-n", &app_ns],
        vec!["update", "leases", "-n", &app_ns],
        vec!["create", "secrets", "-n", &app_ns],
        vec!["update", "mutatingwebhookconfigurations/someone-elses"],
        vec!["patch", "mutatingwebhookconfigurations/lumigo-operator"],
        vec!["update", "validatingwebhookconfigurations/someone-elses"],
        vec![
            "delete",
            "validatingadmissionpolicybindings/lumigo-operator-protected-namespaces",
        ],
        vec![
            "update",
            "validatingadmissionpolicies/lumigo-operator-protected-namespaces",
        ],
        vec!["update", "lumigoes", "-n", &app_ns],
        vec!["create", "clusterroles"],
        vec![
            "create",
            "admissionpolicies.policies.kubewarden.io",
            "-n",
            &app_ns,
        ],
    ] {
        assert!(
            !can_i(&cp, &kubeconfig, &denied),
            "the operator's identity may {denied:?}"
        );
    }
    assert!(
        can_i(
            &cp,
            &kubeconfig,
            &["update", "mutatingwebhookconfigurations/lumigo-operator"]
        ),
        "the caBundle of its own webhook configuration"
    );
    // And a real request is refused by the apiserver.
    let output = run(Command::new(cp.kubectl_path())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "secrets", "-n", &other_ns]));
    assert!(
        !output.status.success() && text(&output).contains("Forbidden"),
        "listing Secrets: {}",
        text(&output)
    );

    // Sufficient: the lifecycle, with leader election on (the Lease in the release namespace).
    for kind in [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::CronJob,
    ] {
        create(
            &client,
            &app_ns,
            kind,
            manifest(kind, &kind.name().to_lowercase(), 1),
        )
        .await;
    }
    create_manifest(&client, &app_ns, WorkloadKind::Job, "migration", 0).await;
    let before = spec_bytes(&client, &app_ns, WorkloadKind::Deployment, "deployment").await;
    // The chart's webhook configuration, whose caBundle the operator publishes under the
    // admission policy that lets it change nothing else. Its webhook selects no object: no Service
    // serves it here, and the other tests' admissions need not try.
    let mut webhooks = documents(&render(&release_ns, &[]))
        .into_iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    webhooks["webhooks"][0]["objectSelector"] =
        serde_json::json!({"matchLabels": {"rbac-test.lumigo.io/never": "true"}});
    let output = run_with_stdin(
        cp.kubectl().args(["apply", "-f", "-"]),
        &to_yaml(&[&webhooks]),
    );
    assert!(output.status.success(), "{}", text(&output));

    let log = cp
        .dir()
        .join(format!("operator-rbac-{}.log", std::process::id()));
    let mut command = operator_command(&kubeconfig, &release_ns);
    command.args([
        "run",
        "--leader-election=true",
        "--lease-duration=5s",
        "--probe-address=127.0.0.1:0",
    ]);
    let mut operator = Process::spawn_command("lumigo-operator", command, log.clone()).unwrap();

    create_token_secret(&client, &app_ns).await;
    create_default_lumigo(&client, &app_ns).await;
    eventually("the rollout under the chart's identity", WAIT, || async {
        let status = lumigo_status(&client, &app_ns, "lumigo").await?;
        (status["instrumentedCount"] == 3 && condition(&status, "Active")?["status"] == "True")
            .then_some(())
    })
    .await;
    eventually("the caBundle published by the operator", WAIT, || async {
        let output = run(cp.kubectl().args([
            "get",
            "mutatingwebhookconfiguration",
            "lumigo-operator",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ]));
        (!output.stdout.is_empty()).then_some(())
    })
    .await;
    assert_not_forbidden(&log);
    let deployment = get(&client, &app_ns, WorkloadKind::Deployment, "deployment").await;
    assert!(injected_label(&deployment, WorkloadKind::Deployment).is_some());
    eventually("the LumigoAddedInstrumentation event", WAIT, || async {
        event_reasons(&client, &app_ns, "deployment")
            .await
            .iter()
            .any(|r| r == "LumigoAddedInstrumentation")
            .then_some(())
    })
    .await;
    eventually(
        "the Job's LumigoCannotAddInstrumentation warning",
        WAIT,
        || async {
            event_reasons(&client, &app_ns, "migration")
                .await
                .iter()
                .any(|r| r.starts_with("LumigoCannot"))
                .then_some(())
        },
    )
    .await;
    let lease = run(cp.kubectl().args([
        "get",
        "lease",
        "lumigo-operator",
        "-n",
        &release_ns,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&lease.stdout),
        "lumigo-operator-rbac-test"
    );

    // Deleting the resource removes the injection, byte for byte, and the finalizer.
    let lumigos: Api<Lumigo> = Api::namespaced(client.clone(), &app_ns);
    delete_lumigo(&client, &app_ns, "lumigo", WAIT).await;
    assert_eq!(
        spec_bytes(&client, &app_ns, WorkloadKind::Deployment, "deployment").await,
        before
    );

    // The pre-delete hook's command, under the same identity, with the operator gone.
    create_default_lumigo(&client, &app_ns).await;
    eventually("the second rollout", WAIT, || async {
        let status = lumigo_status(&client, &app_ns, "lumigo").await?;
        (status["instrumentedCount"] == 3).then_some(())
    })
    .await;
    operator.kill();
    let uninstall_log = cp
        .dir()
        .join(format!("uninstall-rbac-{}.log", std::process::id()));
    let mut command = operator_command(&kubeconfig, &release_ns);
    command.args(["uninstall", "--wait-for-operator=1s"]);
    let output = run(&mut command);
    std::fs::write(&uninstall_log, text(&output)).unwrap();
    assert!(output.status.success(), "uninstall: {}", text(&output));
    assert!(lumigos.get_opt("lumigo").await.unwrap().is_none());
    assert_eq!(
        spec_bytes(&client, &app_ns, WorkloadKind::Deployment, "deployment").await,
        before
    );

    assert_not_forbidden(&log);
    assert_not_forbidden(&uninstall_log);
    let output =
        run(cp
            .kubectl()
            .args(["delete", "mutatingwebhookconfiguration", "lumigo-operator"]));
    assert!(output.status.success(), "{}", text(&output));
}

/// The kubewarden engine's rules: the operator keeps the namespace's AdmissionPolicy under the
/// chart's identity (rendered with that engine), and may not touch webhook configurations.
#[tokio::test(flavor = "multi_thread")]
async fn the_kubewarden_engine_runs_under_the_charts_rbac_for_that_engine() {
    let _turn = ONE_OPERATOR_AT_A_TIME.lock().await;
    let (cp, client) = with_crd(shared_control_plane()).await;
    // Kubewarden's AdmissionPolicy CRD, reduced to what the operator writes.
    install_admission_policy_crd(&cp, WAIT).await;
    let release_ns = cp.create_namespace("lumigo-kw", &[]).await.unwrap();
    let app_ns = cp.create_namespace("rbac-kw-app", &[]).await.unwrap();
    // Its own full name, so its cluster-wide objects do not replace the builtin test's.
    let kubeconfig = install_identity(
        &cp,
        &release_ns,
        "lumigo-kw",
        &[
            "--set",
            "admission.engine=kubewarden",
            "--set",
            "fullnameOverride=lumigo-kw",
        ],
    );
    assert!(can_i(
        &cp,
        &kubeconfig,
        &[
            "create",
            "admissionpolicies.policies.kubewarden.io",
            "-n",
            &app_ns
        ]
    ));
    assert!(
        !can_i(
            &cp,
            &kubeconfig,
            &["get", "mutatingwebhookconfigurations/lumigo-kw"]
        ),
        "no webhook rights with kubewarden"
    );
    assert!(!can_i(
        &cp,
        &kubeconfig,
        &["create", "clusteradmissionpolicies.policies.kubewarden.io"]
    ));
    // Server-side apply and delete are all it does with them: it never reads them back.
    for verb in ["get", "list", "watch", "update"] {
        assert!(
            !can_i(
                &cp,
                &kubeconfig,
                &[
                    verb,
                    "admissionpolicies.policies.kubewarden.io",
                    "-n",
                    &app_ns
                ]
            ),
            "{verb} admissionpolicies"
        );
    }
    assert!(
        !can_i(&cp, &kubeconfig, &["create", "secrets", "-n", &release_ns]),
        "no certificate Secret with kubewarden"
    );

    create_manifest(&client, &app_ns, WorkloadKind::Deployment, "web", 0).await;
    let log = cp
        .dir()
        .join(format!("operator-rbac-kw-{}.log", std::process::id()));
    let mut command = operator_command(&kubeconfig, &release_ns);
    command
        .args([
            "run",
            "--leader-election=true",
            "--lease-duration=5s",
            "--lease-name=lumigo-kw",
            "--probe-address=127.0.0.1:0",
        ])
        .env("LUMIGO_ADMISSION_ENGINE", "kubewarden")
        .env(
            "LUMIGO_KUBEWARDEN_POLICY_MODULE",
            "registry://example.com/lumigo:v0.1.0",
        );
    let _operator = Process::spawn_command("lumigo-operator", command, log.clone()).unwrap();

    create_token_secret(&client, &app_ns).await;
    create_default_lumigo(&client, &app_ns).await;
    let policy = || {
        let output =
            run(cp
                .kubectl()
                .args(["get", "admissionpolicies", "-n", &app_ns, "-o", "name"]));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    eventually("the namespace's AdmissionPolicy", WAIT, || async {
        (!policy().is_empty()).then_some(())
    })
    .await;
    eventually("the rollout", WAIT, || async {
        let status = lumigo_status(&client, &app_ns, "lumigo").await?;
        (status["instrumentedCount"] == 1).then_some(())
    })
    .await;
    delete_lumigo(&client, &app_ns, "lumigo", WAIT).await;
    eventually("the AdmissionPolicy to be deleted", WAIT, || async {
        policy().is_empty().then_some(())
    })
    .await;
    assert_not_forbidden(&log);
}

/// `kubectl --kubeconfig <kubeconfig> <args>` (the stdin, if any, as the object to send).
fn kubectl_as(cp: &ControlPlane, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(cp.kubectl_path());
    command.arg("--kubeconfig").arg(kubeconfig).args(args);
    match stdin {
        Some(input) => run_with_stdin(&mut command, input),
        None => run(&mut command),
    }
}

/// Reads the Deployment with `kubeconfig`'s identity and writes it back (update, the only write
/// verb the chart grants on workloads) with a changed label.
fn relabel_deployment(
    cp: &ControlPlane,
    kubeconfig: &Path,
    namespace: &str,
    name: &str,
    value: &str,
) -> Output {
    let read = kubectl_as(
        cp,
        kubeconfig,
        &["get", "deployment", name, "-n", namespace, "-o", "json"],
        None,
    );
    assert!(read.status.success(), "get: {}", text(&read));
    let mut object: Value = serde_json::from_slice(&read.stdout).unwrap();
    object["metadata"]["labels"]["guard-test"] = Value::from(value);
    kubectl_as(
        cp,
        kubeconfig,
        &["replace", "-f", "-"],
        Some(&object.to_string()),
    )
}

/// A change of a webhook of the configuration, with a value new on each attempt.
type WebhookChange = fn(&mut Value, usize);

/// Sent to more namespaces than the chart's.
fn widen(webhook: &mut Value, attempt: usize) {
    webhook["namespaceSelector"] =
        serde_json::json!({"matchLabels": {"guard-test": attempt.to_string()}});
}

/// Sent to a server of someone else's choice.
fn redirect(webhook: &mut Value, attempt: usize) {
    webhook["clientConfig"] =
        serde_json::json!({"url": format!("https://attacker.example.com/mutate/{attempt}")});
}

/// What a stolen operator token can no longer do, each tried for real on the apiserver with that
/// token: write a workload of kube-system or of the release namespace (RBAC allows the update, the
/// chart's ValidatingAdmissionPolicy refuses it), and touch a webhook configuration or admission
/// policy that is not its own (RBAC). Each refused request is also sent as admin, or in a namespace
/// that is not protected, and succeeds there: the refusal is the guard's, not a broken request.
#[tokio::test(flavor = "multi_thread")]
async fn a_stolen_operator_token_cannot_write_system_workloads_or_other_webhook_configurations() {
    let (cp, client) = shared_control_plane().await;
    let release_ns = cp.create_namespace("lumigo-guard", &[]).await.unwrap();
    let app_ns = cp.create_namespace("guard-app", &[]).await.unwrap();
    // Its own full name: its cluster-wide objects (ClusterRole, the policy and its binding, the
    // webhook configuration named in the ClusterRole) stay apart from the other tests'.
    let name = "lumigo-guard";
    let fullname = format!("--set=fullnameOverride={name}");
    let kubeconfig = install_identity(&cp, &release_ns, name, &[&fullname]);
    let admin = cp.kubeconfig().to_owned();
    let guard = format!("{name}-protected-namespaces");
    let deployment = format!("guard-{}", std::process::id());
    for namespace in ["kube-system", release_ns.as_str(), app_ns.as_str()] {
        create_manifest(&client, namespace, WorkloadKind::Deployment, &deployment, 0).await;
    }

    // The policy is in force once the apiserver has loaded it and its binding (asynchronously):
    // until then the update goes through, so it is tried again until refused.
    for namespace in ["kube-system", release_ns.as_str()] {
        let mut attempt = 0;
        let refused = eventually(
            &format!("the operator's update in {namespace} to be refused"),
            WAIT,
            || {
                attempt += 1;
                let output = relabel_deployment(
                    &cp,
                    &kubeconfig,
                    namespace,
                    &deployment,
                    &format!("operator-{attempt}"),
                );
                async move { (!output.status.success()).then(|| text(&output)) }
            },
        )
        .await;
        assert!(
            refused.contains(&format!("ValidatingAdmissionPolicy '{guard}'"))
                && refused.contains(&format!(
                    "the Lumigo operator may not UPDATE deployments in the protected namespace \
                     {namespace}"
                )),
            "refused by the policy, with its message: {refused}"
        );
        let output = relabel_deployment(&cp, &admin, namespace, &deployment, "admin");
        assert!(
            output.status.success(),
            "the same update as admin in {namespace}: {}",
            text(&output)
        );
    }
    // The identity may still write workloads where users instrument them.
    let output = relabel_deployment(&cp, &kubeconfig, &app_ns, &deployment, "operator");
    assert!(
        output.status.success(),
        "the operator's update in {app_ns}: {}",
        text(&output)
    );

    // Webhook configurations: only its own, by name, and only get/update (the caBundle).
    // The chart's own configuration, and another one like it. Their webhook selects no object, so
    // that no admission of the other tests goes through a webhook nobody serves.
    let mut own = documents(&render(&release_ns, &[&fullname]))
        .into_iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    own["webhooks"][0]["objectSelector"] =
        serde_json::json!({"matchLabels": {"guard-test.lumigo.io/never": "true"}});
    let someone_elses = format!("someone-elses-{}", std::process::id());
    let mut other = own.clone();
    other["metadata"] = serde_json::json!({"name": someone_elses});
    let output = run_with_stdin(
        cp.kubectl().args(["apply", "-f", "-"]),
        &to_yaml(&[&own, &other]),
    );
    assert!(output.status.success(), "{}", text(&output));
    // A PATCH request as such (kubectl would read the object first, and be refused that instead).
    let patch_other = |client: kube::Client| {
        let name = someone_elses.clone();
        async move {
            Api::<MutatingWebhookConfiguration>::all(client)
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        serde_json::json!({"metadata": {"labels": {"guard-test": "patched"}}}),
                    ),
                )
                .await
        }
    };
    let operator_client = {
        let config = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    };
    match patch_other(operator_client).await {
        Err(kube::Error::Api(status)) => assert!(
            status.code == 403
                && status.message.contains(
                    "cannot patch resource \"mutatingwebhookconfigurations\" in API group \
                     \"admissionregistration.k8s.io\""
                ),
            "patching another webhook configuration: {status:?}"
        ),
        other => panic!("patching another webhook configuration: {other:?}"),
    }
    if let Err(error) = patch_other(client.clone()).await {
        panic!("the same patch as admin: {error}");
    }
    let patch = r#"{"metadata":{"labels":{"guard-test":"patched"}}}"#;
    for args in [
        vec![
            "get",
            "mutatingwebhookconfiguration",
            someone_elses.as_str(),
        ],
        vec![
            "delete",
            "mutatingwebhookconfiguration",
            someone_elses.as_str(),
        ],
        vec![
            "patch",
            "mutatingwebhookconfiguration",
            name,
            "--type=merge",
            "-p",
            patch,
        ],
        vec!["delete", "validatingadmissionpolicybinding", &guard],
        vec!["delete", "validatingadmissionpolicy", &guard],
    ] {
        let output = kubectl_as(&cp, &kubeconfig, &args, None);
        assert!(
            !output.status.success() && text(&output).contains("Forbidden"),
            "{args:?}: {}",
            text(&output)
        );
    }
    // Its own configuration it reads and writes back with a new caBundle, as the certificate's
    // publication does; any other change of its webhook is refused by the second policy.
    let rewrite = |kubeconfig: &Path, change: &dyn Fn(&mut Value)| {
        let read = kubectl_as(
            &cp,
            kubeconfig,
            &["get", "mutatingwebhookconfiguration", name, "-o", "json"],
            None,
        );
        assert!(read.status.success(), "{}", text(&read));
        let mut object: Value = serde_json::from_slice(&read.stdout).unwrap();
        change(&mut object["webhooks"][0]);
        kubectl_as(
            &cp,
            kubeconfig,
            &["replace", "-f", "-"],
            Some(&object.to_string()),
        )
    };
    let ca = base64::engine::general_purpose::STANDARD.encode(cp.ca_pem());
    let output = rewrite(&kubeconfig, &|webhook| {
        webhook["clientConfig"]["caBundle"] = Value::from(ca.clone());
    });
    assert!(
        output.status.success(),
        "publishing the caBundle of its own webhook configuration: {}",
        text(&output)
    );
    // A new value each attempt: one that went through before the policy was in force must not
    // make the next attempt a no-op.
    let changes: [(&str, WebhookChange); 2] = [("widened", widen), ("redirected", redirect)];
    for (what, change) in changes {
        let mut attempt = 0;
        let refused = eventually(&format!("its webhook {what} to be refused"), WAIT, || {
            attempt += 1;
            let output = rewrite(&kubeconfig, &|webhook| change(webhook, attempt));
            async move { (!output.status.success()).then(|| text(&output)) }
        })
        .await;
        assert!(
            refused.contains(&format!(
                "ValidatingAdmissionPolicy '{name}-webhook-ca-only'"
            )) && refused.contains("may change only the caBundle"),
            "{what}: {refused}"
        );
        let output = rewrite(&admin, &|webhook| change(webhook, 0));
        assert!(
            output.status.success(),
            "{what} as admin: {}",
            text(&output)
        );
    }

    for args in [
        vec![
            "delete",
            "deployment",
            deployment.as_str(),
            "-n",
            "kube-system",
        ],
        vec![
            "delete",
            "mutatingwebhookconfiguration",
            name,
            someone_elses.as_str(),
        ],
    ] {
        let output = run(cp.kubectl().args(&args));
        assert!(output.status.success(), "{}", text(&output));
    }
}
