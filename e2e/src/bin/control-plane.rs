//! Runs the e2e control plane in the foreground for people and for `just demo`: prints how to reach
//! it and stops it on Ctrl-C or SIGTERM.
//!
//! Usage: control-plane [--kubeconfig PATH]
//! With --kubeconfig, the kubeconfig is also copied to PATH (a stable place for scripts), and
//! removed again on exit so nobody points at a control plane that is gone.

use std::path::PathBuf;
use std::process::ExitCode;

use lumigo_e2e::ControlPlane;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let copy_to = match (args.next().as_deref(), args.next(), args.next()) {
        (None, _, _) => None,
        (Some("--kubeconfig"), Some(path), None) => Some(PathBuf::from(path)),
        _ => {
            eprintln!("usage: control-plane [--kubeconfig PATH]");
            return ExitCode::from(2);
        }
    };
    match run(copy_to).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("control-plane: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(copy_to: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let started = std::time::Instant::now();
    let control_plane = ControlPlane::start().await?;
    let kubeconfig = match &copy_to {
        Some(path) => {
            std::fs::copy(control_plane.kubeconfig(), path)?;
            path.clone()
        }
        None => control_plane.kubeconfig().to_owned(),
    };
    let kubectl_dir = control_plane
        .kubectl_path()
        .parent()
        .unwrap_or(control_plane.dir());
    eprintln!(
        "control plane ready in {:.1} s at {}; logs in {}",
        started.elapsed().as_secs_f64(),
        control_plane.server_url(),
        control_plane.dir().display()
    );
    eprintln!("stop it with Ctrl-C; in another shell:");
    println!("export KUBECONFIG={}", kubeconfig.display());
    println!("export PATH={}:$PATH", kubectl_dir.display());

    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("stopping the control plane");
    if let Some(path) = copy_to {
        let _ = std::fs::remove_file(path);
    }
    drop(control_plane);
    Ok(())
}
