//! Startup time and teardown, in a separate test binary and in one test, so that these control
//! planes start one at a time and compete with nothing for the CPU.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use lumigo_e2e::ControlPlane;

/// The port of `https://127.0.0.1:<port>`.
fn port(url: &str) -> Result<u16> {
    Ok(url.rsplit(':').next().context("port")?.parse()?)
}

#[tokio::test]
async fn starts_twice_quickly_and_leaves_nothing_behind_even_on_panic() -> Result<()> {
    let mut seconds = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let cp = ControlPlane::start().await?;
        seconds.push(started.elapsed().as_secs_f64());
        let (port, dir) = (port(cp.server_url())?, cp.dir().to_owned());
        drop(cp);
        ensure!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the apiserver port is still bound"
        );
        ensure!(!dir.exists(), "{} was not removed", dir.display());
    }
    println!(
        "control plane startup: first {:.1} s, second {:.1} s",
        seconds[0], seconds[1]
    );
    ensure!(
        seconds[1] < 45.0,
        "the second start took {:.1} s",
        seconds[1]
    );

    // A test that panics while it holds a control plane. The panic is expected: keep it out of the
    // test output.
    let report_panics = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let cp = ControlPlane::start().await?;
    let port = port(cp.server_url())?;
    let task = tokio::spawn(async move {
        let _held = cp;
        panic!("a test failing while it holds a control plane");
    });
    let panicked = task.await.is_err_and(|e| e.is_panic());
    std::panic::set_hook(report_panics);
    ensure!(panicked, "the task should have panicked");
    // Dropping during the unwind stops the processes; give the kernel a moment to release the port.
    tokio::time::sleep(Duration::from_millis(100)).await;
    ensure!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the apiserver survived the panic"
    );
    Ok(())
}
