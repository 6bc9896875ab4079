//! Runs the e2e cluster in the foreground for people and for `just demo`: prints how to reach it
//! and stops it on Ctrl-C or SIGTERM.
//!
//! Usage: control-plane [--kubeconfig PATH] [--node --traces FILE]
//! With --kubeconfig, the kubeconfig is also copied to PATH (a stable place for scripts), and
//! removed again on exit so nobody points at a control plane that is gone.
//! With --node, a real node joins (root needed), the images of `e2e/src/images.rs` are built from
//! the inputs `e2e/image-inputs.sh` exports and loaded into it, and an OTLP sink listens on the
//! node's address; every second a summary of the spans it received is written to FILE (JSON).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

use lumigo_e2e::{images, Cluster, ControlPlane, OtlpSink, ReceivedSpan};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};

struct Options {
    kubeconfig: Option<PathBuf>,
    node: bool,
    traces: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(options) = parse(std::env::args().skip(1)) else {
        eprintln!("usage: control-plane [--kubeconfig PATH] [--node --traces FILE]");
        return ExitCode::from(2);
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("control-plane: {error}");
            ExitCode::FAILURE
        }
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Option<Options> {
    let mut options = Options {
        kubeconfig: None,
        node: false,
        traces: None,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kubeconfig" => options.kubeconfig = Some(PathBuf::from(args.next()?)),
            "--node" => options.node = true,
            "--traces" => options.traces = Some(PathBuf::from(args.next()?)),
            _ => return None,
        }
    }
    (options.node == options.traces.is_some()).then_some(options)
}

async fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    // Installed first: a signal during the minutes of start-up must still stop what has started
    // (dropping it), not kill the process with the control plane's directory left behind.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let _kubeconfig_copy = RemoveOnDrop(options.kubeconfig.clone());
    tokio::select! {
        result = serve(&options) => result,
        _ = interrupt.recv() => Ok(()),
        _ = terminate.recv() => Ok(()),
    }
}

/// Removes the kubeconfig copy, so nobody points at a cluster that is gone.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Starts the cluster (or the control plane) and keeps it, and the trace summary, until the
/// future is dropped.
async fn serve(options: &Options) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let (cluster, control_plane) = if options.node {
        let cluster = Cluster::start().await?;
        (Some(cluster), None)
    } else {
        (None, Some(ControlPlane::start().await?))
    };
    let cp = match (&cluster, &control_plane) {
        (Some(cluster), _) => cluster.control_plane(),
        (None, Some(control_plane)) => control_plane,
        (None, None) => unreachable!("one of the two was started"),
    };
    let kubeconfig = match &options.kubeconfig {
        Some(path) => {
            std::fs::copy(cp.kubeconfig(), path)?;
            path.clone()
        }
        None => cp.kubeconfig().to_owned(),
    };
    let kubectl_dir = cp.kubectl_path().parent().unwrap_or(cp.dir());
    eprintln!(
        "{} ready in {:.1} s at {}; logs in {}",
        if cluster.is_some() {
            "cluster with a node"
        } else {
            "control plane"
        },
        started.elapsed().as_secs_f64(),
        cp.server_url(),
        cp.dir().display()
    );
    let sink = match &cluster {
        Some(cluster) => {
            load_images(cluster)?;
            let sink = OtlpSink::start(cluster.node_ip().into())?;
            println!("export LUMIGO_SINK={}", sink.endpoint());
            println!("export LUMIGO_NODE_DIR={}", cluster.node_dir().display());
            Some(sink)
        }
        None => None,
    };
    eprintln!("stop it with Ctrl-C; in another shell:");
    println!("export KUBECONFIG={}", kubeconfig.display());
    println!("export PATH={}:$PATH", kubectl_dir.display());

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let (Some(sink), Some(path)) = (&sink, &options.traces) {
            let summary = summarize(&sink.spans());
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&summary)?)?;
            std::fs::rename(&tmp, path)?;
        }
    }
}

fn load_images(cluster: &Cluster) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let artifacts = images::Artifacts::from_env()?;
    let dir = tempfile::tempdir()?;
    let archives = images::build_all(&artifacts, dir.path())?;
    let built = started.elapsed();
    for archive in &archives {
        cluster.import_image(archive)?;
    }
    eprintln!(
        "{} images built in {:.1} s and loaded into the node in {:.1} s",
        archives.len(),
        built.as_secs_f64(),
        (started.elapsed() - built).as_secs_f64()
    );
    Ok(())
}

/// Per workload (`namespace/deployment` as the proxy's k8sattributes name it, else the service
/// name): how many spans, their names, the Kubernetes attributes the proxy added, the service and
/// runtime, the token header (its scheme and prefix only), and when the first and last arrived.
fn summarize(spans: &[ReceivedSpan]) -> Value {
    let mut services: BTreeMap<String, Vec<&ReceivedSpan>> = BTreeMap::new();
    for span in spans {
        let workload = match (
            span.attribute("k8s.namespace.name"),
            span.attribute("k8s.deployment.name"),
        ) {
            (Some(namespace), Some(deployment)) => format!("{namespace}/{deployment}"),
            _ => span
                .attribute("service.name")
                .unwrap_or("<unnamed>")
                .to_owned(),
        };
        services.entry(workload).or_default().push(span);
    }
    let seconds = |span: &ReceivedSpan| {
        span.received_at
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs_f64())
            .unwrap_or_default()
    };
    let summary: serde_json::Map<String, Value> = services
        .into_iter()
        .map(|(service, spans)| {
            let last = spans[spans.len() - 1];
            let mut names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            let attributes: serde_json::Map<String, Value> = last
                .resource
                .iter()
                .filter(|(key, _)| {
                    key.starts_with("k8s.")
                        || key.starts_with("process.runtime.")
                        || *key == "service.name"
                })
                .map(|(key, value)| (key.clone(), json!(value)))
                .collect();
            // The scheme and the token's prefix: enough to see it is the tracer's, not the token.
            let header = last
                .authorization
                .as_deref()
                .map(|header| match header.split_once(' ') {
                    Some((scheme, token)) => {
                        format!("{scheme} {}…", token.get(..2).unwrap_or_default())
                    }
                    None => "(not a scheme and a token)".to_owned(),
                });
            let entry = json!({
                "spans": spans.len(),
                "names": names,
                "attributes": attributes,
                "authorization": header,
                "first": seconds(spans[0]),
                "last": seconds(last),
            });
            (service, entry)
        })
        .collect();
    json!({"spans": spans.len(), "services": summary})
}
