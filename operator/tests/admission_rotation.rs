//! The webhook's serving certificate on the real control plane: published in the caBundle by the
//! operator, reused by a restarted host, renewed before expiry (a 30-second lifetime forces it),
//! the caBundle updated and the new certificate served without a restart, admission working
//! throughout.

mod support;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::PostParams;
use kube::{Api, Client};
use lumigo_e2e::testing::{policy_module, shared_control_plane, try_eventually, wapc_guest};
use lumigo_mutation::{inspect, WorkloadKind};
use lumigo_operator::admission::compile::PolicyCompiler;
use lumigo_operator::admission::{
    lumigo_cache, webhook_configuration, AdmissionOptions, AdmissionServer, TlsOptions,
    WebhookTarget,
};
use support::admission::*;
use support::with_crd;

const SECRET: &str = "lumigo-webhook-certificate";
const LIFETIME: Duration = Duration::from_secs(30);

async fn stored_certificate(client: &Client, namespace: &str) -> Result<String> {
    secret_entry(client, namespace, SECRET, "tls.crt").await
}

async fn ca_bundle(client: &Client, name: &str) -> Result<String> {
    let configuration = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await?;
    let webhook = configuration
        .webhooks
        .into_iter()
        .flatten()
        .next()
        .context("a webhook")?;
    Ok(webhook
        .client_config
        .ca_bundle
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default())
}

async fn create_deployment(client: &Client, namespace: &str, name: &str) -> Result<bool> {
    let object: Deployment = serde_json::from_value(deployment(name))?;
    let stored = Api::<Deployment>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await?;
    Ok(inspect(&serde_json::to_value(stored)?, WorkloadKind::Deployment).injected)
}

#[tokio::test]
async fn the_certificate_is_renewed_before_expiry_and_served_without_a_restart() -> Result<()> {
    let (cp, client) = with_crd(shared_control_plane()).await;
    let operator_namespace = cp.create_namespace("lumigo-system", &[]).await?;
    let namespace = cp.create_namespace("rotation", &[]).await?;
    create_verified_lumigo(&client, &namespace, true).await?;

    let configuration_name = format!("lumigo-admission-{operator_namespace}");
    let tls = TlsOptions {
        lifetime: LIFETIME,
        check_interval: Duration::from_secs(1),
        rotation_grace: Duration::from_secs(2),
        ..TlsOptions::for_loopback(&operator_namespace, SECRET, Some(&configuration_name))
    };
    let server = AdmissionServer::bind(
        options(tls.clone(), policy_module(), Duration::from_secs(1)),
        lumigo_cache(client.clone()),
        operator_settings(),
        client.clone(),
    )
    .await?;
    let address = server.local_addr();
    let issued_at = Instant::now();
    tokio::spawn(server.run());
    let first_certificate = stored_certificate(&client, &operator_namespace).await?;
    let first_ca = serving_ca(&client, &operator_namespace, SECRET).await?;

    // Registered without a caBundle: the operator publishes it, and admission starts working.
    let configuration = webhook_configuration(
        &configuration_name,
        &WebhookTarget::Url(format!("https://{address}")),
        &operator_namespace,
        None,
    );
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &configuration)
        .await?;
    let mut probes = 0;
    try_eventually("the first Deployment injected", LIFETIME / 3, || {
        probes += 1;
        let (client, namespace) = (client.clone(), namespace.clone());
        async move {
            let injected =
                create_deployment(&client, &namespace, &format!("before-{probes}")).await?;
            Ok::<_, anyhow::Error>(injected.then_some(()))
        }
    })
    .await?;
    ensure!(ca_bundle(&client, &configuration_name)
        .await?
        .contains(first_ca.trim()));

    // A restarted host serves the stored certificate rather than issuing another. (Its module is a
    // stub compiled at once in this process: this is about certificates, and time counts here.)
    let stub = wapc_guest("unreachable");
    let restarted = AdmissionServer::bind(
        AdmissionOptions {
            compiler: PolicyCompiler::in_process(),
            ..options(tls, stub, Duration::from_secs(1))
        },
        fixed_lumigos(Vec::new()),
        operator_settings(),
        client.clone(),
    )
    .await?;
    ensure!(
        issued_at.elapsed() < LIFETIME / 2,
        "too slow to check the reuse before renewal is due"
    );
    ensure!(
        stored_certificate(&client, &operator_namespace).await? == first_certificate,
        "re-issued on restart"
    );
    let restarted_address = restarted.local_addr();
    tokio::spawn(restarted.run());
    ReviewClient::connect(restarted_address, &first_ca)
        .await
        .context("the restarted host serves the stored certificate")?;

    // Renewed with a third of the lifetime left, i.e. about 20 s after issue.
    let second_certificate =
        try_eventually("a renewed certificate in the Secret", LIFETIME, || {
            let (client, namespace, first) = (
                client.clone(),
                operator_namespace.clone(),
                first_certificate.clone(),
            );
            async move {
                let stored = stored_certificate(&client, &namespace).await?;
                Ok::<_, anyhow::Error>(Some(stored).filter(|c| *c != first))
            }
        })
        .await?;
    let renewed_after = issued_at.elapsed();
    ensure!(
        renewed_after > LIFETIME / 2,
        "renewed too early, after {renewed_after:?}"
    );
    ensure!(
        renewed_after < LIFETIME,
        "renewed after expiry, after {renewed_after:?}"
    );
    let second_ca = serving_ca(&client, &operator_namespace, SECRET).await?;
    ensure!(second_ca != first_ca && second_certificate != first_certificate);

    let bundle = ca_bundle(&client, &configuration_name).await?;
    ensure!(
        bundle.contains(second_ca.trim()),
        "the caBundle trusts the new CA"
    );
    // The running host swaps to the new certificate (after the grace period): a client trusting
    // only the new CA gets through.
    try_eventually(
        "the new certificate served by the running host",
        Duration::from_secs(10),
        || {
            let ca = second_ca.clone();
            async move {
                let connected = ReviewClient::connect(address, &ca).await;
                Ok::<_, anyhow::Error>(connected.ok().map(drop))
            }
        },
    )
    .await?;
    ensure!(
        issued_at.elapsed() < LIFETIME,
        "the new certificate was served only after the old one expired"
    );

    // Admission keeps working: injected at the first attempt, through the new certificate.
    ensure!(
        create_deployment(&client, &namespace, "after-renewal").await?,
        "not injected after the renewal"
    );
    Ok(())
}
