//! The webhook's serving certificate: issued by a CA the operator generates, kept in a Secret so
//! that restarts and replicas serve the same one, renewed well before it expires, and swapped into
//! the running TLS acceptor without a restart. The CA's key is thrown away after signing: a renewal
//! makes a new CA, and the webhook configuration's caBundle trusts the old and the new CA while the
//! apiserver picks up the change.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use super::{Error, Result, TlsOptions};
use crate::error::lost_race;

const CA_KEY: &str = "ca.crt";
const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
/// The names the certificate was issued for: a change of service name must re-issue it.
const HOSTS_ANNOTATION: &str = "operator.lumigo.io/serving-hosts";
/// Clocks of the apiserver and the operator are not exactly in step.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A serving certificate with its CA, as stored in the Secret.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ServingCertificate {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    hosts: String,
    not_before: i64,
    not_after: i64,
}

impl fmt::Debug for ServingCertificate {
    // The private key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("hosts", &self.hosts)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ServingCertificate {
    fn generate(hosts: &[String], lifetime: Duration) -> Result<Self> {
        let now = OffsetDateTime::now_utc();
        let not_before = now - CLOCK_SKEW;
        let not_after = now + lifetime;

        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "lumigo-operator admission CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        // webpki rejects a CA whose key usage does not allow signing certificates.
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.not_before = not_before;
        ca_params.not_after = not_after;
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            hosts.first().map(String::as_str).unwrap_or("webhook"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(ServingCertificate {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            hosts: hosts.join(","),
            not_before: not_before.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
        })
    }

    /// What the Secret holds, or `None` when it holds nothing usable (it is then re-issued).
    fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |key: &str| {
            data.get(key)
                .and_then(|value| String::from_utf8(value.0.clone()).ok())
        };
        let cert_pem = text(CERT_KEY)?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
        let cert = pem.parse_x509().ok()?;
        let validity = cert.validity();
        Some(ServingCertificate {
            ca_pem: text(CA_KEY)?,
            key_pem: text(KEY_KEY)?,
            hosts: secret
                .metadata
                .annotations
                .as_ref()?
                .get(HOSTS_ANNOTATION)?
                .clone(),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            cert_pem,
        })
    }

    fn to_secret(&self, name: &str, resource_version: Option<String>) -> Secret {
        let data = [
            (CA_KEY, &self.ca_pem),
            (CERT_KEY, &self.cert_pem),
            (KEY_KEY, &self.key_pem),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), ByteString(value.as_bytes().to_vec())))
        .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                resource_version,
                annotations: Some(BTreeMap::from([(
                    HOSTS_ANNOTATION.to_owned(),
                    self.hosts.clone(),
                )])),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "lumigo-operator".to_owned(),
                )])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Default::default()
        }
    }

    /// Renewed with a third of its lifetime left, so that a check missed or failed now still leaves
    /// time for the next ones; also when issued for other names.
    fn needs_renewal(&self, hosts: &[String], now: i64) -> bool {
        let issued = self.not_before + CLOCK_SKEW.as_secs() as i64;
        let lifetime = self.not_after - issued;
        self.hosts != hosts.join(",") || self.not_after - now < lifetime / 3
    }

    fn certified_key(&self, provider: &CryptoProvider) -> Result<CertifiedKey> {
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Certificate(format!("the serving certificate is not PEM: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| Error::Certificate(format!("the serving key is not PEM: {e}")))?;
        CertifiedKey::from_der(chain, key, provider).map_err(|e| Error::Certificate(e.to_string()))
    }
}

/// The certificate the TLS acceptor presents, replaced in place on renewal; a handshake takes the
/// lock only to clone an `Arc`.
#[derive(Debug)]
pub(crate) struct CertificateResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

impl CertificateResolver {
    fn replace(&self, key: CertifiedKey) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(key);
    }
}

/// Keeps the Secret, the served certificate and the caBundle in agreement.
pub(crate) struct CertificateManager {
    options: TlsOptions,
    secrets: Api<Secret>,
    configurations: Api<MutatingWebhookConfiguration>,
    provider: Arc<CryptoProvider>,
    resolver: Arc<CertificateResolver>,
    served: ServingCertificate,
}

impl CertificateManager {
    /// Loads the stored certificate, or issues and stores one, ready to serve.
    pub async fn start(
        options: TlsOptions,
        client: Client,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self> {
        let secrets = Api::namespaced(client.clone(), &options.secret_namespace);
        let configurations = Api::all(client);
        let served = current_certificate(&secrets, &options)
            .await
            .map_err(|error| {
                Error::Certificate(format!(
                    "loading or storing the serving certificate in the Secret {}/{}: {error}",
                    options.secret_namespace, options.secret_name
                ))
            })?;
        let resolver = Arc::new(CertificateResolver {
            current: RwLock::new(Arc::new(served.certified_key(&provider)?)),
        });
        let manager = CertificateManager {
            options,
            secrets,
            configurations,
            provider,
            resolver,
            served,
        };
        // Serving does not depend on it, and every check retries it.
        if let Err(error) = manager.publish_ca_bundle().await {
            tracing::warn!(%error, "could not publish the admission CA bundle yet");
        }
        Ok(manager)
    }

    pub fn resolver(&self) -> Arc<CertificateResolver> {
        self.resolver.clone()
    }

    /// Checks every `check_interval` until the process ends; a failed check is retried at the next.
    pub async fn run(mut self) {
        loop {
            tokio::time::sleep(self.options.check_interval).await;
            if let Err(error) = self.check().await {
                tracing::warn!(
                    %error,
                    "admission certificate check failed; retrying at the next one"
                );
            }
        }
    }

    async fn check(&mut self) -> Result<()> {
        let stored = current_certificate(&self.secrets, &self.options).await?;
        if stored == self.served {
            // Also repairs a caBundle reset by someone else, e.g. a chart upgrade.
            return self.publish_ca_bundle().await;
        }
        // The apiserver must trust the new CA before the new certificate is served; trusting both
        // meanwhile keeps requests in flight on either side of the swap verifiable.
        if self
            .publish_ca_bundle_for(&stored, Some(&self.served.ca_pem))
            .await?
        {
            tokio::time::sleep(self.options.rotation_grace).await;
        }
        self.resolver.replace(stored.certified_key(&self.provider)?);
        tracing::info!(certificate = ?stored, "serving a renewed admission certificate");
        self.served = stored;
        Ok(())
    }

    async fn publish_ca_bundle(&self) -> Result<()> {
        self.publish_ca_bundle_for(&self.served, None)
            .await
            .map(drop)
    }

    /// Makes every webhook of the configuration trust `certificate`'s CA (and `previous_ca`, if
    /// given). Whether the configuration changed; a missing configuration (not installed yet) is
    /// not an error.
    async fn publish_ca_bundle_for(
        &self,
        certificate: &ServingCertificate,
        previous_ca: Option<&str>,
    ) -> Result<bool> {
        let Some(name) = &self.options.webhook_configuration else {
            return Ok(false);
        };
        let Some(mut configuration) = self.configurations.get_opt(name).await? else {
            tracing::debug!(
                configuration = %name,
                "no webhook configuration to publish the CA to yet"
            );
            return Ok(false);
        };
        let bundle = match previous_ca {
            Some(previous) if previous != certificate.ca_pem => {
                format!("{}{previous}", certificate.ca_pem)
            }
            _ => certificate.ca_pem.clone(),
        };
        let mut changed = false;
        for webhook in configuration.webhooks.iter_mut().flatten() {
            let trusted = webhook
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.as_slice())
                .unwrap_or_default();
            let trusts_current =
                String::from_utf8_lossy(trusted).contains(certificate.ca_pem.trim());
            if !trusts_current || previous_ca.is_some_and(|_| trusted != bundle.as_bytes()) {
                webhook.client_config.ca_bundle = Some(ByteString(bundle.as_bytes().to_vec()));
                changed = true;
            }
        }
        if changed {
            // Replaced at the resourceVersion read: a concurrent writer makes this fail and the
            // next check retry.
            self.configurations
                .replace(name, &PostParams::default(), &configuration)
                .await?;
            tracing::info!(configuration = %name, "published the admission CA bundle");
        }
        Ok(changed)
    }
}

/// The certificate in the Secret, issued (or re-issued) first when it is missing, unusable or due
/// for renewal. Another replica may do the same at the same moment: the write that loses gets a
/// conflict and reads the winner's.
async fn current_certificate(
    secrets: &Api<Secret>,
    options: &TlsOptions,
) -> Result<ServingCertificate> {
    for _ in 0..3 {
        let existing = secrets.get_opt(&options.secret_name).await?;
        let stored = existing.as_ref().and_then(ServingCertificate::from_secret);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if let Some(stored) = stored.filter(|c| !c.needs_renewal(&options.hosts, now)) {
            return Ok(stored);
        }
        let issued = ServingCertificate::generate(&options.hosts, options.lifetime)?;
        let written = match existing {
            None => {
                secrets
                    .create(
                        &PostParams::default(),
                        &issued.to_secret(&options.secret_name, None),
                    )
                    .await
            }
            Some(secret) => {
                let secret_with_version =
                    issued.to_secret(&options.secret_name, secret.metadata.resource_version);
                secrets
                    .replace(
                        &options.secret_name,
                        &PostParams::default(),
                        &secret_with_version,
                    )
                    .await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(
                    certificate = ?issued,
                    secret = %options.secret_name,
                    "issued an admission certificate"
                );
                return Ok(issued);
            }
            Err(error) if lost_race(&error) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(Error::Certificate(format!(
        "the Secret {}/{} kept changing while the certificate was being stored",
        options.secret_namespace, options.secret_name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["lumigo-webhook.ops.svc".into(), "127.0.0.1".into()]
    }

    #[test]
    fn a_stored_certificate_reads_back_identical() {
        let issued = ServingCertificate::generate(&hosts(), Duration::from_secs(3600)).unwrap();
        let read = ServingCertificate::from_secret(&issued.to_secret("s", None)).unwrap();
        // Validity is second-granular in X.509, as in `generate`.
        assert_eq!(read, issued);
        issued
            .certified_key(&rustls::crypto::ring::default_provider())
            .unwrap();
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left_or_other_hosts() {
        let issued = ServingCertificate::generate(&hosts(), Duration::from_secs(3000)).unwrap();
        let start = issued.not_before;
        let lifetime = issued.not_after - issued.not_before;
        assert!(!issued.needs_renewal(&hosts(), start + lifetime / 2));
        assert!(issued.needs_renewal(&hosts(), start + lifetime * 3 / 4));
        assert!(issued.needs_renewal(&hosts()[..1], start));
    }

    #[test]
    fn a_secret_without_the_key_is_not_usable() {
        let issued = ServingCertificate::generate(&hosts(), Duration::from_secs(3600)).unwrap();
        let mut secret = issued.to_secret("s", None);
        secret.data.as_mut().unwrap().remove(KEY_KEY);
        assert!(ServingCertificate::from_secret(&secret).is_none());
    }
}
