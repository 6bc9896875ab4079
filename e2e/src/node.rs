//! A real node beside the control plane: kube-scheduler, containerd (+ runc and the Debian CNI
//! plugins), kubelet, kube-proxy and CoreDNS, so Pods are scheduled, started in real containers,
//! reach Services and the apiserver, and resolve cluster names.
//!
//! A node is a singleton per machine: fixed kubelet and kube-proxy ports, the `cni0` bridge, global
//! iptables chains, cgroups under `kubepods` and paths the kubelet hard-codes.
//! `e2e/node/janitor.sh` owns that: it takes a machine-wide lock before anything exists, removes
//! what a dead run left, and takes the node off the machine when the test stops or dies (it waits
//! for its stdin to close, which the kernel does when the test process goes, however it goes).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node as NodeObject, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::PostParams;
use kube::Api;

use crate::binaries::NodeBinaries;
use crate::control_plane::{wait_for, ControlPlane, CLUSTER_CIDR, SERVICE_CLUSTER_IP_RANGE};
use crate::error::{Error, IoContext, Result};
use crate::kubeconfig;
use crate::process::Process;
use crate::shared::Shared;

/// Where run directories live: on the root filesystem (overlayfs snapshots need a real one).
const RUNS_ROOT: &str = "/var/lib/lumigo-e2e";
/// This node's share of [`CLUSTER_CIDR`]: the controller-manager gives the first node the first
/// /24.
const POD_CIDR: &str = "10.244.0.0/24";
const CLUSTER_DNS_IP: &str = "10.0.0.10";
/// CoreDNS runs on the host, on the node's address; the kube-dns Service forwards 53 to it.
const COREDNS_PORT: u16 = 1053;
/// The image containerd runs pod sandboxes from; imported at start, never pulled.
const PAUSE_IMAGE: &str = "lumigo-e2e.local/pause:1";
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The kubelet evicts every pod, and admits none, once the disk under its state has less than
/// this free (`evictionHard`). Absolute, not a share: 1 % of a large, nearly full disk is gigabytes
/// a test machine may not have, and the evictions it caused looked like the tests' own failures.
const EVICTION_FLOOR_MIB: u64 = 256;
/// What a node needs free to start: its images, the pods' writable layers and `emptyDir`s
/// (each injected pod copies the tracers), with the eviction floor well below.
const MIN_FREE_DISK_MIB: u64 = 2048;
/// How long the janitor waits for another run's node (its `lock_wait`).
const LOCK_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Ports the kubelet and kube-proxy bind on every node, so a second node on this machine (or a
/// leftover process) would collide on them.
const FIXED_PORTS: [(u16, &str); 4] = [
    (10250, "kubelet"),
    (10248, "kubelet healthz"),
    (10249, "kube-proxy metrics"),
    (10256, "kube-proxy healthz"),
];
/// Host programs the node runs, and the Debian package each comes from.
const HOST_TOOLS: [(&str, &str); 11] = [
    ("/usr/sbin/runc", "runc"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/lib/cni/host-local", "containernetworking-plugins"),
    ("/usr/lib/cni/loopback", "containernetworking-plugins"),
    ("/usr/lib/cni/portmap", "containernetworking-plugins"),
    ("/usr/sbin/iptables", "iptables"),
    ("/usr/sbin/conntrack", "conntrack"),
    ("/usr/sbin/ip6tables", "iptables"),
    ("/usr/bin/flock", "util-linux"),
    ("/bin/ip", "iproute2"),
    ("/usr/bin/pkill", "procps"),
];

/// A control plane with one real node. Dropping it stops the node, then the control plane.
pub struct Cluster {
    // Declaration order is drop order: the node goes before the apiserver it talks to.
    node: Node,
    control_plane: ControlPlane,
}

struct Node {
    // Reverse start order, then the janitor, which removes what they leave behind.
    _coredns: Process,
    _kube_proxy: Process,
    _scheduler: Process,
    _kubelet: Process,
    _containerd: Process,
    _janitor: Janitor,
    name: String,
    ip: Ipv4Addr,
    ctr: PathBuf,
    containerd_socket: PathBuf,
    run_dir: PathBuf,
}

impl Cluster {
    /// Starts a control plane reachable from pods and a node that has registered and is Ready,
    /// with kube-proxy and the cluster DNS serving. Needs root and the host tools of
    /// `scripts/setup.sh`; says which is missing otherwise.
    pub async fn start() -> Result<Self> {
        preflight()?;
        ensure_disk_room(Path::new(RUNS_ROOT))?;
        let node_bin = NodeBinaries::ensure().await?;
        let ip = node_ip()?;
        let run_dir = Path::new(RUNS_ROOT).join(format!("run-{}", std::process::id()));
        let janitor = tokio::task::spawn_blocking({
            let run_dir = run_dir.clone();
            let bin_dir = node_bin.dir.clone();
            move || Janitor::start(&run_dir, &bin_dir)
        })
        .await
        .map_err(|error| Error::Node(format!("the janitor's start panicked: {error}")))??;
        ensure_ports_free()?;
        let control_plane = ControlPlane::start_with(Some(ip)).await?;
        let node = Node::start(&control_plane, &node_bin, janitor, ip, run_dir).await?;
        Ok(Self {
            node,
            control_plane,
        })
    }

    /// One cluster for every test of the calling test binary (see [`ControlPlane::shared`]):
    /// started by the first caller, stopped when the process exits.
    pub async fn shared() -> Result<Arc<Self>> {
        static SHARED: Shared<Cluster> = Shared::new();
        extern "C" fn stop_shared() {
            SHARED.stop();
        }
        SHARED.get_or_start(Self::start(), stop_shared).await
    }

    pub fn control_plane(&self) -> &ControlPlane {
        &self.control_plane
    }

    /// The node's name (the machine's host name), as in `spec.nodeName`.
    pub fn node_name(&self) -> &str {
        &self.node.name
    }

    /// The node's address: where pods reach the host (and so a server a test runs on it).
    pub fn node_ip(&self) -> Ipv4Addr {
        self.node.ip
    }

    /// Loads an OCI image archive into the node's containerd, pinned so that the kubelet's image
    /// garbage collection never removes it (nothing could pull it back).
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        import(&self.node.ctr, &self.node.containerd_socket, archive)
    }

    /// Where the node's component logs (`containerd.log`, `kubelet.log`, ...) live while it runs.
    pub fn node_dir(&self) -> &Path {
        &self.node.run_dir
    }
}

impl Node {
    async fn start(
        control_plane: &ControlPlane,
        node_bin: &NodeBinaries,
        janitor: Janitor,
        ip: Ipv4Addr,
        run_dir: PathBuf,
    ) -> Result<Self> {
        let name = host_name()?;
        let path = |name: &str| run_dir.join(name);
        let write = |name: &str, contents: &str| {
            let file = path(name);
            std::fs::write(&file, contents).context(|| format!("writing {}", file.display()))?;
            Ok::<_, Error>(file)
        };
        let ca = &control_plane.ca;
        let server = control_plane.server_url();
        let user_kubeconfig = |file: &str, user: &str, groups: &[&str]| {
            let cert = ca.issue_client_cert(user, groups)?;
            let file = path(file);
            kubeconfig::write(&file, server, ca.cert_pem(), user, &cert)?;
            Ok::<_, Error>(file)
        };
        let ca_crt = write("ca.crt", ca.cert_pem())?;
        // The Node authorizer and NodeRestriction know a kubelet by this name and group.
        let kubelet_kubeconfig = user_kubeconfig(
            "kubelet.kubeconfig",
            &format!("system:node:{name}"),
            &["system:nodes"],
        )?;
        // Users the bootstrap RBAC policy grants each component's permissions to.
        let proxy_kubeconfig = user_kubeconfig("kube-proxy.kubeconfig", "system:kube-proxy", &[])?;
        let scheduler_kubeconfig =
            user_kubeconfig("kube-scheduler.kubeconfig", "system:kube-scheduler", &[])?;
        let coredns_kubeconfig = user_kubeconfig(
            "coredns.kubeconfig",
            "lumigo-e2e-coredns",
            &["system:masters"],
        )?;

        sysctl("net/ipv4/ip_forward", "1")?;
        // Pod-to-Service traffic between two pods on the bridge is only NATed back when bridged
        // frames pass iptables; without br_netfilter kube-proxy masquerades all Service traffic.
        let bridge_netfilter = sysctl("net/bridge/bridge-nf-call-iptables", "1").is_ok();

        let containerd_dir = path("containerd");
        let containerd_socket = containerd_dir.join("containerd.sock");
        let containerd_config = write(
            "containerd.toml",
            &containerd_config(&containerd_dir, &path("cni")),
        )?;
        std::fs::create_dir_all(path("cni")).context(|| "creating the CNI config dir".into())?;
        write("cni/10-lumigo-e2e.conflist", &cni_config())?;
        let mut command = Command::new(&node_bin.containerd);
        command.arg(format!("--config={}", containerd_config.display()));
        // containerd finds its runc shim on PATH.
        let path_var = std::env::var("PATH").unwrap_or_default();
        command.env("PATH", format!("{}:{path_var}", node_bin.dir.display()));
        let mut containerd = Process::spawn_command("containerd", command, path("containerd.log"))?;
        wait_for(&mut containerd, NODE_READY_TIMEOUT, || async {
            std::os::unix::net::UnixStream::connect(&containerd_socket).is_ok()
        })
        .await?;
        let ctr = node_bin.ctr.clone();
        let pause_archive = path("pause.tar");
        crate::images::pause_image(&node_bin.dir.join("pause"), PAUSE_IMAGE, &pause_archive)?;
        import(&ctr, &containerd_socket, &pause_archive)?;

        write("resolv.conf", &format!("nameserver {CLUSTER_DNS_IP}\n"))?;
        let kubelet_config = write(
            "kubelet.yaml",
            &kubelet_config(&ca_crt, &containerd_socket, &path("resolv.conf")),
        )?;
        let bin = &control_plane.bin;
        let mut kubelet = Process::spawn(
            "kubelet",
            &bin.kubelet,
            &[
                format!("--config={}", kubelet_config.display()),
                format!("--kubeconfig={}", kubelet_kubeconfig.display()),
                format!("--root-dir={}", path("kubelet").display()),
                format!("--cert-dir={}", path("kubelet-pki").display()),
                format!("--hostname-override={name}"),
                format!("--node-ip={ip}"),
                "--v=1".into(),
            ],
            path("kubelet.log"),
        )?;
        let client = control_plane.client()?;
        let nodes = Api::<NodeObject>::all(client.clone());
        wait_for(&mut kubelet, NODE_READY_TIMEOUT, || async {
            matches!(nodes.get_opt(&name).await, Ok(Some(node)) if is_ready(&node))
        })
        .await?;

        let mut proxy_args = vec![
            format!("--kubeconfig={}", proxy_kubeconfig.display()),
            format!("--hostname-override={name}"),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
            "--proxy-mode=iptables".into(),
            // The machine's conntrack settings stay as they are: the VM does not let it raise
            // nf_conntrack_max, and the default timeouts are fine for a test.
            "--conntrack-max-per-core=0".into(),
            "--conntrack-tcp-timeout-established=0".into(),
            "--conntrack-tcp-timeout-close-wait=0".into(),
            // NodePorts on 127.0.0.1 would need route_localnet, a machine-wide setting.
            "--iptables-localhost-nodeports=false".into(),
            "--healthz-bind-address=127.0.0.1:10256".into(),
            "--metrics-bind-address=127.0.0.1:10249".into(),
            "--v=1".into(),
        ];
        if !bridge_netfilter {
            proxy_args.push("--masquerade-all=true".into());
        }
        let mut kube_proxy = Process::spawn(
            "kube-proxy",
            &bin.kube_proxy,
            &proxy_args,
            path("kube-proxy.log"),
        )?;
        let mut scheduler = Process::spawn(
            "kube-scheduler",
            &bin.kube_scheduler,
            &[
                format!("--kubeconfig={}", scheduler_kubeconfig.display()),
                format!(
                    "--authentication-kubeconfig={}",
                    scheduler_kubeconfig.display()
                ),
                format!(
                    "--authorization-kubeconfig={}",
                    scheduler_kubeconfig.display()
                ),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                "--v=1".into(),
            ],
            path("kube-scheduler.log"),
        )?;
        let corefile = write("Corefile", &corefile(ip, &coredns_kubeconfig))?;
        let mut coredns = Process::spawn(
            "coredns",
            &node_bin.coredns,
            &["-conf".into(), corefile.display().to_string()],
            path("coredns.log"),
        )?;
        publish_cluster_dns(&client, ip).await?;
        wait_for(&mut coredns, NODE_READY_TIMEOUT, || async {
            TcpStream::connect((ip, COREDNS_PORT)).is_ok()
        })
        .await?;
        // Services work once kube-proxy has written their rules (its healthz answers before that).
        wait_for(&mut kube_proxy, NODE_READY_TIMEOUT, || async {
            Command::new("iptables")
                .args(["-t", "nat", "-S", "KUBE-SERVICES"])
                .output()
                .is_ok_and(|output| {
                    String::from_utf8_lossy(&output.stdout).contains(CLUSTER_DNS_IP)
                })
        })
        .await?;
        scheduler.ensure_running()?;

        Ok(Self {
            _coredns: coredns,
            _kube_proxy: kube_proxy,
            _scheduler: scheduler,
            _kubelet: kubelet,
            _containerd: containerd,
            _janitor: janitor,
            name,
            ip,
            ctr,
            containerd_socket,
            run_dir,
        })
    }
}

/// `ctr images import`, with the CRI plugin's pin label on every image the archive names.
fn import(ctr: &Path, socket: &Path, archive: &Path) -> Result<()> {
    let ctr_run = |args: &[&str], archive_arg: Option<&Path>| -> Result<()> {
        let mut command = Command::new(ctr);
        command
            .arg("--address")
            .arg(socket)
            .args(["--namespace", "k8s.io", "images"])
            .args(args);
        command.args(archive_arg);
        let output = command
            .output()
            .context(|| format!("running {}", ctr.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(Error::Node(format!(
                "ctr images {} {} failed ({}): {}",
                args.join(" "),
                archive.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    };
    ctr_run(
        &["import", "--label", "io.cri-containerd.pinned=pinned"],
        Some(archive),
    )?;
    // Also under `repository@<manifest digest>`, the name a pull from a registry records and the
    // one the CRI looks a digest reference up by (it drops the tag of `repository:tag@sha256:…`).
    // (`import --digests` would name the archive's index.json instead, which no registry serves.)
    let (name, digest) = crate::oci::archive_image(archive)?;
    let repository = match name.rfind(':') {
        // A registry port's colon comes before the last `/`.
        Some(colon) if colon > name.rfind('/').unwrap_or(0) => &name[..colon],
        _ => name.as_str(),
    };
    ctr_run(
        &["tag", "--force", &name, &format!("{repository}@{digest}")],
        None,
    )
}

/// The janitor process (see the module docs): holds the machine's node lock while it lives.
struct Janitor {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Janitor {
    fn start(run_dir: &Path, bin_dir: &Path) -> Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/janitor.sh");
        let mut command = Command::new(&script);
        command
            .arg(run_dir)
            .arg(bin_dir)
            .arg(CLUSTER_CIDR)
            .arg(SERVICE_CLUSTER_IP_RANGE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Its own session: a terminal's Ctrl-C or a test runner killing the test's process group
        // must leave the janitor alive to clean up.
        // SAFETY: setsid is async-signal-safe and the closure allocates nothing.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .context(|| format!("starting {}", script.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = ready_tx.send(line);
        });
        let stdin = child.stdin.take();
        let mut janitor = Self { child, stdin };
        // The janitor bounds its own wait for the lock; this one only guards against a janitor
        // that hangs.
        match ready_rx.recv_timeout(LOCK_TIMEOUT + Duration::from_secs(60)) {
            Ok(line) if line.trim() == "ready" => Ok(janitor),
            Ok(_) => Err(Error::Node(format!(
                "{} exited before the node could start ({}); its output above says why",
                script.display(),
                janitor.stop_status()
            ))),
            Err(_) => {
                // It owns nothing yet: nothing is lost by killing it.
                let _ = janitor.child.kill();
                Err(Error::Node(format!("{} did not answer", script.display())))
            }
        }
    }

    /// Closes the janitor's stdin, which is its signal to remove the node, and waits for it.
    fn stop_status(&mut self) -> String {
        drop(self.stdin.take());
        match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(error) => error.to_string(),
        }
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        self.stop_status();
    }
}

fn preflight() -> Result<()> {
    // SAFETY: a plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Node(
            "a node needs root (containers, the cni0 bridge, iptables, cgroups): run the tests \
             as root"
                .into(),
        ));
    }
    let missing: Vec<String> = HOST_TOOLS
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(path, package)| format!("{path} (Debian package {package})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Node(format!(
            "missing on this machine: {}; scripts/setup.sh installs them",
            missing.join(", ")
        )))
    }
}

/// Refuses to start a node whose kubelet would soon be under disk pressure: its pods would be
/// evicted mid-test, and the test would report a timeout instead of the full disk.
fn ensure_disk_room(dir: &Path) -> Result<()> {
    let existing = dir
        .ancestors()
        .find(|ancestor| ancestor.exists())
        .unwrap_or(Path::new("/"));
    let free_mib = free_disk_mib(existing)?;
    if free_mib < MIN_FREE_DISK_MIB {
        return Err(Error::Node(format!(
            "the disk under {} has {free_mib} MiB free; a node needs {MIN_FREE_DISK_MIB} MiB (its \
             kubelet evicts every pod below {EVICTION_FLOOR_MIB} MiB): free some room, e.g. \
             `cargo clean` or {}/debug/incremental",
            existing.display(),
            std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
        )));
    }
    Ok(())
}

fn free_disk_mib(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::Node(format!("{} has a NUL byte", dir.display())))?;
    // SAFETY: a plain-data struct, which statvfs fills; the path is NUL-terminated.
    let (status, stats) = unsafe {
        let mut stats: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(path.as_ptr(), &mut stats), stats)
    };
    if status != 0 {
        return Err(std::io::Error::last_os_error())
            .context(|| format!("reading the free space under {}", dir.display()));
    }
    Ok(stats.f_bavail * stats.f_frsize / (1024 * 1024))
}

fn ensure_ports_free() -> Result<()> {
    for (port, component) in FIXED_PORTS {
        if TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_err() {
            return Err(Error::Node(format!(
                "port {port} ({component}) is in use: another node or a leftover process holds it \
                 (`ss -ltnp 'sport = :{port}'` names it)"
            )));
        }
    }
    Ok(())
}

/// The machine's own address (the source of its default route), or `LUMIGO_E2E_NODE_IP`.
/// Pods reach the host there, and the apiserver advertises it.
fn node_ip() -> Result<Ipv4Addr> {
    if let Ok(text) = std::env::var("LUMIGO_E2E_NODE_IP") {
        return text
            .parse()
            .map_err(|_| Error::Node(format!("LUMIGO_E2E_NODE_IP={text} is not an IPv4 address")));
    }
    let routes =
        std::fs::read_to_string("/proc/net/route").context(|| "reading /proc/net/route".into())?;
    let interface = routes
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(1) == Some(&"00000000"))
        .and_then(|fields| fields.first().map(ToString::to_string))
        .ok_or_else(|| {
            Error::Node("no default route: set LUMIGO_E2E_NODE_IP to this machine's address".into())
        })?;
    let output = Command::new("ip")
        .args([
            "-4", "-o", "addr", "show", "dev", &interface, "scope", "global",
        ])
        .output()
        .context(|| "running ip addr".into())?;
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| {
            Error::Node(format!(
                "{interface} has no IPv4 address: set LUMIGO_E2E_NODE_IP to this machine's address"
            ))
        })
}

fn host_name() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context(|| "reading the host name".into())?;
    Ok(name.trim().to_lowercase())
}

fn sysctl(key: &str, value: &str) -> Result<()> {
    let file = Path::new("/proc/sys").join(key);
    std::fs::write(&file, value).context(|| format!("setting {}", file.display()))
}

fn is_ready(node: &NodeObject) -> bool {
    node.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True")
        })
}

/// The kube-dns Service, pointing at CoreDNS on the host through an EndpointSlice of our own.
async fn publish_cluster_dns(client: &kube::Client, ip: Ipv4Addr) -> Result<()> {
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "kube-dns",
            "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns"},
        },
        "spec": {
            "clusterIP": CLUSTER_DNS_IP,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": COREDNS_PORT},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": COREDNS_PORT},
            ],
        },
    }))
    .map_err(|error| Error::Node(format!("the kube-dns Service: {error}")))?;
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "kube-dns-host",
            "namespace": "kube-system",
            // Not the EndpointSlice controller's label: it leaves a slice it does not manage alone.
            "labels": {
                "kubernetes.io/service-name": "kube-dns",
                "endpointslice.kubernetes.io/managed-by": "lumigo-e2e",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
        "ports": [
            {"name": "dns", "port": COREDNS_PORT, "protocol": "UDP"},
            {"name": "dns-tcp", "port": COREDNS_PORT, "protocol": "TCP"},
        ],
    }))
    .map_err(|error| Error::Node(format!("the kube-dns EndpointSlice: {error}")))?;
    Api::<Service>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &service)
        .await?;
    Api::<EndpointSlice>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &slice)
        .await?;
    Ok(())
}

fn containerd_config(dir: &Path, cni_dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"version = 3
root = "{dir}/root"
state = "{dir}/state"

[grpc]
  address = "{dir}/containerd.sock"

[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  # This VM's bounding set lacks CAP_SYS_RESOURCE: a negative oom_score_adj makes runc fail
  # ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  # Pods' network namespaces under containerd's state directory, not the machine's /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{cni}"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      BinaryName = "/usr/sbin/runc"
      SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri"]
  # kubectl logs/exec/port-forward go through this server.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"

"#,
        cni = cni_dir.display(),
    )
}

fn cni_config() -> String {
    format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "lumigo-e2e",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{POD_CIDR}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}]
      }}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
"#
    )
}

fn kubelet_config(ca_crt: &Path, containerd_socket: &Path, resolv_conf: &Path) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 only; kubelet 1.35 refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{socket}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
clusterDomain: cluster.local
clusterDNS: [{CLUSTER_DNS_IP}]
resolvConf: {resolv}
podCIDR: {POD_CIDR}
failSwapOn: false
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
serializeImagePulls: false
# A test machine's disk may be fuller than a node's should be: evict only when it is really full.
evictionHard:
  memory.available: 100Mi
  nodefs.available: {EVICTION_FLOOR_MIB}Mi
  imagefs.available: {EVICTION_FLOOR_MIB}Mi
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
shutdownGracePeriod: 0s
rotateCertificates: false
"#,
        socket = containerd_socket.display(),
        ca = ca_crt.display(),
        resolv = resolv_conf.display(),
    )
}

/// Cluster names only: nothing is forwarded off this machine.
fn corefile(ip: Ipv4Addr, kubeconfig: &Path) -> String {
    format!(
        r#".:{COREDNS_PORT} {{
    bind {ip}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} lumigo-e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"#,
        kubeconfig = kubeconfig.display(),
    )
}
