//! etcd + kube-apiserver + kube-controller-manager, started in that order and stopped in the
//! reverse one. On its own ([`ControlPlane::start`]) it lives on loopback with no scheduler and no
//! kubelet: Pods stay Pending, which is all the fast suites need to read what admission and the
//! controllers made of them. [`crate::Cluster`] starts it reachable from pods and adds a node.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tempfile::TempDir;

use crate::binaries::Binaries;
use crate::certs::{CertificateAuthority, ServiceAccountKey};
use crate::error::{Error, IoContext, Result};
use crate::kubeconfig;
use crate::process::Process;
use crate::shared::Shared;

/// Generous enough for a cold page cache on a busy two-core machine.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);
pub(crate) const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";
/// The pod network; the node's share of it is the first /24 (see `crate::node`).
pub(crate) const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The first address of the service range: the in-cluster `kubernetes` Service.
const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";

/// A running control plane. Dropping it stops every process and deletes its directory.
pub struct ControlPlane {
    // Fields drop in declaration order: the processes stop in reverse start order, then the
    // directory holding their data goes.
    controller_manager: Process,
    _apiserver: Process,
    _etcd: Process,
    config: Config,
    server_url: String,
    kubeconfig: PathBuf,
    pub(crate) ca: CertificateAuthority,
    pub(crate) bin: Binaries,
    dir: TempDir,
}

impl ControlPlane {
    /// Builds the binaries if needed (see `e2e/build-binaries.sh`), then starts a fresh control
    /// plane and returns once the API is ready and the controller-manager is creating
    /// ServiceAccounts.
    pub async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// With `node_ip`, the apiserver also listens on that address and advertises it, so pods reach
    /// it through the `kubernetes` Service, and the controller-manager hands out pod CIDRs.
    pub(crate) async fn start_with(node_ip: Option<Ipv4Addr>) -> Result<Self> {
        let bin = Binaries::ensure().await?;
        let dir = tempfile::Builder::new()
            .prefix("lumigo-e2e-")
            .tempdir()
            .context(|| "creating the control plane's directory".into())?;
        let path = |name: &str| dir.path().join(name);
        let write = |name: &str, contents: &str| {
            let file = path(name);
            std::fs::write(&file, contents).context(|| format!("writing {}", file.display()))?;
            Ok::<_, Error>(file)
        };
        let arg = |flag: &str, value: &Path| format!("--{flag}={}", value.display());

        let ca = CertificateAuthority::new("lumigo-e2e-ca")?;
        let mut hosts = vec![
            "127.0.0.1",
            "localhost",
            KUBERNETES_SERVICE_IP,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ];
        // With a node, pods reach the apiserver at the node's address.
        let node_ip_text = node_ip.map(|ip| ip.to_string());
        hosts.extend(node_ip_text.as_deref());
        let serving = ca.issue_server_cert(&hosts)?;
        let admin = ca.issue_client_cert("lumigo-e2e-admin", &["system:masters"])?;
        // The user the bootstrap RBAC policy grants the controller-manager's own permissions to.
        let kcm = ca.issue_client_cert("system:kube-controller-manager", &[])?;
        let sa = ServiceAccountKey::generate()?;
        let ca_crt = write("ca.crt", ca.cert_pem())?;
        let ca_key = write("ca.key", ca.key_pem())?;
        let serving_crt = write("apiserver.crt", &serving.cert_pem)?;
        let serving_key = write("apiserver.key", &serving.key_pem)?;
        let sa_key = write("service-account.key", &sa.private_pem)?;
        let sa_pub = write("service-account.pub", &sa.public_pem)?;

        let etcd_port = free_port()?;
        let etcd_peer = format!("http://127.0.0.1:{}", free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut etcd = Process::spawn(
            "etcd",
            &bin.etcd,
            &[
                "--name=e2e".into(),
                arg("data-dir", &path("etcd")),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={etcd_peer}"),
                format!("--initial-advertise-peer-urls={etcd_peer}"),
                format!("--initial-cluster=e2e={etcd_peer}"),
                // The data dies with the test; fsync would only cost time.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            path("etcd.log"),
        )?;
        let etcd_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, etcd_port));
        wait_for(&mut etcd, STARTUP_TIMEOUT, || async {
            TcpStream::connect(etcd_addr).is_ok()
        })
        .await?;

        let apiserver_port = free_port()?;
        let server_url = format!("https://127.0.0.1:{apiserver_port}");
        let mut apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={apiserver_port}"),
            arg("tls-cert-file", &serving_crt),
            arg("tls-private-key-file", &serving_key),
            arg("client-ca-file", &ca_crt),
            "--authorization-mode=Node,RBAC".into(),
            // Most are on by default; these are the ones the project's tests depend on.
            "--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,\
                 ValidatingAdmissionWebhook,PodSecurity"
                .into(),
            "--allow-privileged=true".into(),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            arg("service-account-key-file", &sa_pub),
            arg("service-account-signing-key-file", &sa_key),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        match node_ip {
            None => apiserver_args.extend([
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                // The endpoints of the `kubernetes` Service may not be loopback addresses, which
                // is all this apiserver has; nothing reaches it through the Service then.
                "--endpoint-reconciler-type=none".into(),
            ]),
            Some(ip) => {
                // What `kubectl logs/exec` and the apiserver's proxy present to the kubelet, whose
                // webhook authorizer lets system:masters through.
                let kubelet_client =
                    ca.issue_client_cert("lumigo-e2e-apiserver", &["system:masters"])?;
                let client_crt = write("apiserver-kubelet-client.crt", &kubelet_client.cert_pem)?;
                let client_key = write("apiserver-kubelet-client.key", &kubelet_client.key_pem)?;
                apiserver_args.extend([
                    "--bind-address=0.0.0.0".into(),
                    format!("--advertise-address={ip}"),
                    arg("kubelet-client-certificate", &client_crt),
                    arg("kubelet-client-key", &client_key),
                    // The node's name resolves to 127.0.0.1 in /etc/hosts; its kubelet listens on
                    // the node's address.
                    "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
                ]);
            }
        }
        let mut apiserver = Process::spawn(
            "kube-apiserver",
            &bin.kube_apiserver,
            &apiserver_args,
            path("kube-apiserver.log"),
        )?;

        let kubeconfig = path("kubeconfig");
        kubeconfig::write(
            &kubeconfig,
            &server_url,
            ca.cert_pem(),
            "lumigo-e2e-admin",
            &admin,
        )?;
        let kcm_kubeconfig = path("kube-controller-manager.kubeconfig");
        kubeconfig::write(
            &kcm_kubeconfig,
            &server_url,
            ca.cert_pem(),
            "system:kube-controller-manager",
            &kcm,
        )?;
        let config = Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        let client = Client::try_from(config.clone())?;
        wait_for(&mut apiserver, STARTUP_TIMEOUT, || async {
            let request = http::Request::get("/readyz").body(Vec::new());
            match request {
                Ok(request) => client.request_text(request).await.is_ok(),
                Err(_) => false,
            }
        })
        .await?;

        let mut kcm_args = vec![
            arg("kubeconfig", &kcm_kubeconfig),
            "--leader-elect=false".into(),
            // Cloud controllers switch themselves off without a cloud provider.
            "--controllers=*".into(),
            // Each controller acts as its own ServiceAccount, so RBAC is exercised as in a
            // real cluster.
            "--use-service-account-credentials=true".into(),
            arg("service-account-private-key-file", &sa_key),
            arg("root-ca-file", &ca_crt),
            arg("cluster-signing-cert-file", &ca_crt),
            arg("cluster-signing-key-file", &ca_key),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            // Nothing probes it, and no port means nothing to collide with.
            "--secure-port=0".into(),
            "--v=1".into(),
        ];
        if node_ip.is_some() {
            kcm_args.extend([
                "--allocate-node-cidrs=true".into(),
                format!("--cluster-cidr={CLUSTER_CIDR}"),
                "--node-cidr-mask-size=24".into(),
            ]);
        }
        let mut controller_manager = Process::spawn(
            "kube-controller-manager",
            &bin.kube_controller_manager,
            &kcm_args,
            path("kube-controller-manager.log"),
        )?;
        wait_for(&mut controller_manager, STARTUP_TIMEOUT, || {
            default_service_account_exists(&client, "default")
        })
        .await?;

        Ok(Self {
            controller_manager,
            _apiserver: apiserver,
            _etcd: etcd,
            config,
            server_url,
            kubeconfig,
            ca,
            bin,
            dir,
        })
    }

    /// One control plane for every test of the calling test binary, started by the first caller and
    /// stopped when the process exits. Give each test its own namespace
    /// ([`Self::create_namespace`]).
    pub async fn shared() -> Result<Arc<Self>> {
        static SHARED: Shared<ControlPlane> = Shared::new();
        extern "C" fn stop_shared() {
            SHARED.stop();
        }
        SHARED.get_or_start(Self::start(), stop_shared).await
    }

    /// A client with cluster-admin rights. A new one per call, bound to the caller's Tokio runtime
    /// (each `#[tokio::test]` has its own, and a client outlives none).
    pub fn client(&self) -> Result<Client> {
        Ok(Client::try_from(self.config.clone())?)
    }

    /// The client configuration behind [`Self::client`], e.g. to build clients with other settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A kubeconfig file for a cluster-admin user, for kubectl and other tools.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The Go-built kubectl matching the control plane's version.
    pub fn kubectl_path(&self) -> &Path {
        &self.bin.kubectl
    }

    /// `kubectl --kubeconfig <this control plane's kubeconfig>`, ready for more arguments.
    pub fn kubectl(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.bin.kubectl);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    /// Runs kubectl with `args` (and `stdin` on its standard input) and returns what it printed on
    /// stdout; an error carries its stderr.
    pub fn run_kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = self
            .kubectl()
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context(|| format!("starting kubectl {args:?}"))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .context(|| format!("writing to kubectl {args:?}"))?;
        }
        let output = child
            .wait_with_output()
            .context(|| format!("running kubectl {args:?}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(Error::Kubectl {
                args: args.join(" "),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    /// The apiserver's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The CA that signed the apiserver's serving certificate and every client certificate.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// Where the components' logs (`etcd.log`, `kube-apiserver.log`, `kube-controller-manager.log`)
    /// and the generated files live while the control plane runs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates a namespace named `<prefix>-<random suffix>` with `labels` and returns its name once
    /// Pods can be created in it (its `default` ServiceAccount exists, which admission requires).
    pub async fn create_namespace(&self, prefix: &str, labels: &[(&str, &str)]) -> Result<String> {
        let client = self.client()?;
        let namespace = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
        let name = created.metadata.name.unwrap_or_default();
        let started = Instant::now();
        while !default_service_account_exists(&client, &name).await {
            if started.elapsed() > STARTUP_TIMEOUT {
                return Err(self.controller_manager.not_ready(started.elapsed()));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(name)
    }
}

async fn default_service_account_exists(client: &Client, namespace: &str) -> bool {
    let api = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    matches!(api.get_opt("default").await, Ok(Some(_)))
}

/// Polls `ready` until it holds, failing early with the log if `process` exits meanwhile, and with
/// the end of its log after `timeout`.
pub(crate) async fn wait_for<F, Fut>(
    process: &mut Process,
    timeout: Duration,
    mut ready: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        process.ensure_running()?;
        if ready().await {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(process.not_ready(started.elapsed()));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A loopback port nobody listens on right now. Another process could take it before the component
/// binds it; ports from the kernel's ephemeral range make that unlikely, and the component then
/// exits with a clear bind error.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context(|| "finding a free loopback port".into())?;
    Ok(listener
        .local_addr()
        .context(|| "finding a free loopback port".into())?
        .port())
}
