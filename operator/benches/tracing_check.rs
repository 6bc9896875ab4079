//! What one tracing check costs the operator: parsing the span counts of a proxy page and bringing
//! the tracker up to date, for a cluster of 1,000 instrumented workloads whose proxy shows 10,000
//! series (the chart's `maxSeries`: 9,000 of them from workloads nobody instruments). Prints the
//! page size, the median and worst time of a check, and the resident memory the tracker adds.
//! Run: `just operator::bench-tracing`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use lumigo_operator::crd::InstrumentedResource;
use lumigo_operator::telemetry_proxy::parse_span_counts;
use lumigo_operator::tracing_state::{TracingSettings, Tracker};

const INSTRUMENTED: usize = 1_000;
const SERIES: usize = 10_000;
const CHECKS: usize = 30;

fn page(now: Timestamp) -> String {
    let mut page =
        String::from("# HELP lumigo_proxy_calls_total\n# TYPE lumigo_proxy_calls_total counter\n");
    for series in 0..SERIES {
        let namespace = format!("team-{}", series % 50);
        page.push_str(&format!(
            "lumigo_proxy_calls_total{{k8s_container_name=\"server\",\
             k8s_deployment_name=\"service-{series}\",\
             k8s_namespace_name=\"{namespace}\",k8s_replicaset_name=\"service-{series}-7d9f8c6b5\",\
             process_runtime_name=\"nodejs\",service_name=\"service-{series}\"}} {} {}\n",
            series * 7 + 1,
            now.as_millisecond() - (series as i64 % 60) * 1000
        ));
    }
    page
}

fn instrumented(namespace: &str, first: usize) -> Vec<InstrumentedResource> {
    (first..)
        .step_by(50)
        .take(INSTRUMENTED / 50)
        .map(|series| InstrumentedResource {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: format!("service-{series}"),
            namespace: namespace.into(),
            uid: format!("uid-{series}"),
            tracing: None,
        })
        .collect()
}

fn resident_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn main() {
    let now = Timestamp::now();
    let text = page(now);
    let before = resident_kib();
    let mut tracker = Tracker::new(
        TracingSettings {
            silence_window: Duration::from_secs(600),
        },
        true,
    );
    for team in 0..50 {
        let namespace = format!("team-{team}");
        tracker.track(
            &namespace,
            instrumented(&namespace, team),
            &HashSet::new(),
            &[],
            now,
        );
    }
    let mut times = Vec::with_capacity(CHECKS);
    for _ in 0..CHECKS {
        let started = Instant::now();
        let series = parse_span_counts(&text, now);
        assert_eq!(series.len(), SERIES, "every series of the page is read");
        tracker.observe(Ok(series), now);
        tracker.republish(now);
        times.push(started.elapsed());
    }
    let grown = resident_kib().saturating_sub(before);
    let receiving: usize = tracker.receiving_counts().iter().map(|(_, n)| n).sum();
    assert_eq!(
        receiving, INSTRUMENTED,
        "every instrumented workload is receiving"
    );
    times.sort();
    println!(
        "tracing check: {SERIES} series on the proxy page ({} KiB), {INSTRUMENTED} instrumented \
         workloads in 50 namespaces",
        text.len() / 1024
    );
    println!(
        "  per check (parse + observe + republish): median {:.1} ms, worst {:.1} ms over \
         {CHECKS} checks",
        times[CHECKS / 2].as_secs_f64() * 1e3,
        times[CHECKS - 1].as_secs_f64() * 1e3
    );
    println!("  resident memory added by the tracker and one parsed page: {grown} KiB");
}
