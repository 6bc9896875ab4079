//! AdmissionReview round trips over HTTPS on loopback against the built-in webhook host, with the
//! real policy module: throughput and p50/p99 latency at several concurrency levels (one kept-alive
//! connection per concurrent client, as the apiserver pools them). Every answer is checked to carry
//! the injection patch. Client and server share the machine.
//! Run: `just operator::bench-admission`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use hyper::body::Bytes;
use lumigo_e2e::testing::{own_control_plane, policy_module};
use support::admission::*;

const CONCURRENCY: [usize; 4] = [1, 4, 16, 64];
const WARMUP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(4);

#[tokio::main]
async fn main() -> Result<()> {
    let (cp, _) = own_control_plane().await;
    let (address, ca) =
        start_loopback_host(&cp, policy_module(), Duration::from_secs(1), "app").await?;
    let review = Bytes::from(serde_json::to_vec(&admission_review(
        "bench",
        "app",
        "CREATE",
        deployment("app"),
    ))?);

    println!(
        "AdmissionReview round trips over HTTPS on 127.0.0.1, typical Deployment CREATE ({} bytes)",
        review.len()
    );
    println!(
        "{:>11} {:>10} {:>12} {:>10} {:>10}",
        "concurrency", "reviews", "reviews/s", "p50 ms", "p99 ms"
    );
    for concurrency in CONCURRENCY {
        let mut clients = Vec::new();
        for _ in 0..concurrency {
            clients.push(ReviewClient::connect(address, &ca).await?);
        }
        let started = Instant::now();
        let measure_from = started + WARMUP;
        let until = measure_from + MEASURE;
        let workers = clients.into_iter().map(|mut client| {
            let review = review.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        return Ok::<_, anyhow::Error>(latencies);
                    }
                    let (status, body) = client.post(review.clone()).await?;
                    let took = sent.elapsed();
                    ensure!(
                        status == 200 && body["response"]["patchType"] == "JSONPatch",
                        "unexpected answer: {body}"
                    );
                    if sent >= measure_from {
                        latencies.push(took);
                    }
                }
            })
        });
        let mut latencies = Vec::new();
        for worker in futures::future::join_all(workers).await {
            latencies.extend(worker??);
        }
        latencies.sort();
        let percentile = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
        println!(
            "{concurrency:>11} {:>10} {:>12.0} {:>10.2} {:>10.2}",
            latencies.len(),
            latencies.len() as f64 / MEASURE.as_secs_f64(),
            percentile(50).as_secs_f64() * 1e3,
            percentile(99).as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
