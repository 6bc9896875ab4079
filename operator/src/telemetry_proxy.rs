//! Reading the telemetry proxy's span counts: every Ready proxy pod shows, on its metrics port,
//! one series per workload, container and runtime it received spans from, stamped with the time
//! of the latest (the chart's spanmetrics connector and prometheus exporter). Nothing here trusts
//! what it reads: the text is size-limited, series that do not name a Kubernetes workload are
//! skipped, and a proxy that answers garbage or nothing makes the whole reading unavailable.

use std::collections::HashMap;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client as HttpClient};
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use lumigo_mutation::WorkloadKind;

use crate::workloads::pod_is_ready;

/// The spanmetrics connector's `calls` counter under the chart's `lumigo.proxy` namespace, as the
/// prometheus exporter names it (with and without the `_total` suffix it may add).
const SPAN_COUNT_METRICS: [&str; 2] = ["lumigo_proxy_calls", "lumigo_proxy_calls_total"];
/// The label of a workload's name, by the kind that owns the pod, most specific owner first: a
/// Deployment's pods also carry their ReplicaSet's name, a CronJob's their Job's.
const WORKLOAD_LABELS: [(&str, WorkloadKind); 6] = [
    ("k8s_deployment_name", WorkloadKind::Deployment),
    ("k8s_statefulset_name", WorkloadKind::StatefulSet),
    ("k8s_daemonset_name", WorkloadKind::DaemonSet),
    ("k8s_cronjob_name", WorkloadKind::CronJob),
    ("k8s_job_name", WorkloadKind::Job),
    ("k8s_replicaset_name", WorkloadKind::ReplicaSet),
];
/// Longer than any object name (253) or container name (63); a longer value is not one of ours.
const MAX_LABEL_VALUE: usize = 253;
/// A proxy replica's whole page; thousands of series fit in a small part of it.
const MAX_PAGE_BYTES: usize = 8 << 20;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// A workload as the proxy's counts name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    pub namespace: String,
    pub kind: WorkloadKind,
    pub name: String,
}

/// What the proxy saw of one container of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanSeries {
    pub workload: WorkloadKey,
    /// Empty when the tracer did not say (`k8s.container.name` is set by the tracers).
    pub container: String,
    /// `process.runtime.name` of the tracer; empty when it did not say.
    pub runtime: String,
    /// When the latest spans of this series passed the proxy.
    pub last_seen: Timestamp,
}

/// Where the proxy's pods are and which port shows the counts.
#[derive(Debug, Clone)]
pub struct ProxyLocation {
    pub namespace: String,
    pub selector: String,
    pub port: u16,
}

pub struct ProxyReader {
    location: ProxyLocation,
    http: HttpClient<HttpConnector, Empty<Bytes>>,
}

impl ProxyReader {
    pub fn new(location: ProxyLocation) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(SCRAPE_TIMEOUT));
        ProxyReader {
            location,
            http: HttpClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// The series of every Ready proxy pod, merged (a workload's spans are spread over the
    /// replicas behind the Service); `Err` says why the counts cannot be trusted this time.
    pub async fn read(&self, client: &kube::Client) -> Result<Vec<SpanSeries>, String> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.location.namespace);
        let listed = pods
            .list(&ListParams::default().labels(&self.location.selector))
            .await
            .map_err(|error| format!("listing the telemetry proxy's pods: {error}"))?;
        let addresses: Vec<String> = listed.items.iter().filter_map(ready_ip).collect();
        if addresses.is_empty() {
            return Err(format!(
                "no Ready telemetry proxy pod in {} ({})",
                self.location.namespace, self.location.selector
            ));
        }
        let now = Timestamp::now();
        let mut merged: HashMap<(WorkloadKey, String, String), Timestamp> = HashMap::new();
        for address in addresses {
            let page = self.page(&address).await?;
            for series in parse_span_counts(&page, now) {
                let last_seen = merged
                    .entry((series.workload, series.container, series.runtime))
                    .or_insert(series.last_seen);
                *last_seen = (*last_seen).max(series.last_seen);
            }
        }
        Ok(merged
            .into_iter()
            .map(|((workload, container, runtime), last_seen)| SpanSeries {
                workload,
                container,
                runtime,
                last_seen,
            })
            .collect())
    }

    async fn page(&self, address: &str) -> Result<String, String> {
        let url = format!("http://{address}:{}/metrics", self.location.port);
        let fetch = async {
            let uri: hyper::Uri = url.parse().map_err(|error| format!("{error}"))?;
            let response = self
                .http
                .get(uri)
                .await
                .map_err(|error| format!("{error}"))?;
            if !response.status().is_success() {
                return Err(format!("answered {}", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_PAGE_BYTES)
                .collect()
                .await
                .map_err(|error| format!("reading the answer: {error}"))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|_| "the answer is not UTF-8".to_owned())
        };
        match tokio::time::timeout(SCRAPE_TIMEOUT, fetch).await {
            Ok(Ok(page)) => Ok(page),
            Ok(Err(error)) => Err(format!("telemetry proxy {url}: {error}")),
            Err(_) => Err(format!(
                "telemetry proxy {url}: no answer within {SCRAPE_TIMEOUT:?}"
            )),
        }
    }
}

fn ready_ip(pod: &Pod) -> Option<String> {
    pod_is_ready(pod)
        .then(|| pod.status.as_ref()?.pod_ip.clone())
        .flatten()
}

/// The span series of one proxy page. A sample without a timestamp counts as seen `now`; one
/// stamped in the future (a skewed clock) as well.
pub fn parse_span_counts(page: &str, now: Timestamp) -> Vec<SpanSeries> {
    let lines = page.lines().map(|line| Ok(line.to_owned()));
    let Ok(scrape) = prometheus_parse::Scrape::parse_at(lines, chrono_at(now)) else {
        return Vec::new();
    };
    scrape
        .samples
        .iter()
        .filter(|sample| SPAN_COUNT_METRICS.contains(&sample.metric.as_str()))
        .filter(|sample| counted_something(&sample.value))
        .filter_map(|sample| {
            let label = |name: &str| {
                sample
                    .labels
                    .get(name)
                    .filter(|value| value.len() <= MAX_LABEL_VALUE)
                    .unwrap_or_default()
                    .to_owned()
            };
            let namespace = label("k8s_namespace_name");
            let (kind, name) = WORKLOAD_LABELS.iter().find_map(|(label_name, kind)| {
                Some((*kind, label(label_name))).filter(|(_, name)| !name.is_empty())
            })?;
            if namespace.is_empty() {
                return None;
            }
            let last_seen = Timestamp::from_millisecond(sample.timestamp.timestamp_millis())
                .unwrap_or(now)
                .min(now);
            Some(SpanSeries {
                workload: WorkloadKey {
                    namespace,
                    kind,
                    name,
                },
                container: label("k8s_container_name"),
                runtime: label("process_runtime_name"),
                last_seen,
            })
        })
        .collect()
}

fn counted_something(value: &prometheus_parse::Value) -> bool {
    use prometheus_parse::Value;
    match value {
        Value::Counter(count) | Value::Gauge(count) | Value::Untyped(count) => *count > 0.0,
        _ => false,
    }
}

fn chrono_at(now: Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(now.as_millisecond()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn each_workload_is_named_by_its_most_specific_owner() {
        let page = concat!(
            "\n",
            "# HELP lumigo_proxy_calls_total\n",
            "# TYPE lumigo_proxy_calls_total counter\n",
            r#"lumigo_proxy_calls_total{k8s_container_name="server",k8s_deployment_name="web","#,
            r#"k8s_namespace_name="shop",k8s_replicaset_name="web-5d4f","#,
            r#"process_runtime_name="nodejs",service_name="web"} 12 1764590000000"#,
            "\n",
            r#"lumigo_proxy_calls_total{k8s_cronjob_name="nightly",k8s_job_name="nightly-1","#,
            r#"k8s_namespace_name="shop",process_runtime_name="cpython"} 3 1764590001000"#,
            "\n",
            r#"lumigo_proxy_calls_total{k8s_namespace_name="shop",k8s_replicaset_name="bare"} "#,
            "1 1764590002000\n",
        );
        let series = parse_span_counts(page, at(1_764_600_000));
        let named: Vec<_> = series
            .iter()
            .map(|s| {
                (
                    s.workload.kind,
                    s.workload.name.as_str(),
                    s.container.as_str(),
                    s.runtime.as_str(),
                )
            })
            .collect();
        assert_eq!(
            named,
            [
                (WorkloadKind::Deployment, "web", "server", "nodejs"),
                (WorkloadKind::CronJob, "nightly", "", "cpython"),
                (WorkloadKind::ReplicaSet, "bare", "", ""),
            ]
        );
        assert_eq!(series[0].last_seen, at(1_764_590_000));
    }

    #[test]
    fn garbage_unnamed_and_absurd_series_are_skipped() {
        let long = "x".repeat(10_000);
        let page = format!(
            "not a metric line at all {{{{\n\
             lumigo_proxy_calls_total{{k8s_deployment_name=\"web\"}} 5 1764590000000\n\
             lumigo_proxy_calls_total{{k8s_namespace_name=\"shop\"}} 5 1764590000000\n\
             lumigo_proxy_calls_total{{k8s_namespace_name=\"shop\",\
             k8s_deployment_name=\"{long}\"}} 5 1764590000000\n\
             lumigo_proxy_calls_total{{k8s_namespace_name=\"shop\",\
             k8s_deployment_name=\"zero\"}} 0 1764590000000\n\
             other_metric{{k8s_namespace_name=\"shop\",k8s_deployment_name=\"web\"}} 5\n\
             lumigo_proxy_calls_total{{k8s_namespace_name=\"shop\",\
             k8s_deployment_name=\"ok\"}} NaN-ish 17\n"
        );
        assert!(parse_span_counts(&page, at(1_764_600_000)).is_empty());
        assert!(parse_span_counts("\u{0}\u{1}{}}}\"", at(0)).is_empty());
    }

    /// A proxy on loopback that answers every request with `answer` (or never answers).
    fn proxy_answering(answer: Option<Vec<u8>>) -> ProxyReader {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let answer = answer.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut request = [0; 4096];
                    let _ = stream.read(&mut request);
                    match answer {
                        Some(answer) => {
                            let _ = stream.write_all(&answer);
                        }
                        None => std::thread::sleep(Duration::from_secs(30)),
                    }
                });
            }
        });
        ProxyReader::new(ProxyLocation {
            namespace: "lumigo-system".into(),
            selector: "app=proxy".into(),
            port,
        })
    }

    fn http_ok(body: &[u8]) -> Vec<u8> {
        let mut answer =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        answer.extend_from_slice(body);
        answer
    }

    #[tokio::test]
    async fn a_proxy_answering_garbage_yields_no_series() {
        let reader = proxy_answering(Some(http_ok(b"\xff\xfe{{{ not prometheus")));
        assert!(reader.page("127.0.0.1").await.is_err(), "not UTF-8");
        let reader = proxy_answering(Some(http_ok(b"lumigo_proxy_calls_total{{{ 1 2 3\n")));
        let page = reader.page("127.0.0.1").await.unwrap();
        assert!(parse_span_counts(&page, Timestamp::now()).is_empty());
        let reader = proxy_answering(Some(
            b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ));
        let error = reader.page("127.0.0.1").await.unwrap_err();
        assert!(error.contains("500"), "{error}");
    }

    #[tokio::test]
    async fn a_proxy_that_never_answers_or_floods_is_cut_off() {
        let started = std::time::Instant::now();
        let error = proxy_answering(None).page("127.0.0.1").await.unwrap_err();
        assert!(error.contains("no answer within"), "{error}");
        assert!(started.elapsed() < SCRAPE_TIMEOUT * 2);
        let flood = http_ok(&vec![b'#'; MAX_PAGE_BYTES + 1]);
        let error = proxy_answering(Some(flood))
            .page("127.0.0.1")
            .await
            .unwrap_err();
        assert!(error.contains("reading the answer"), "{error}");
    }

    #[test]
    fn a_time_in_the_future_or_missing_counts_as_now() {
        let now = at(1_764_600_000);
        let page = "lumigo_proxy_calls{k8s_namespace_name=\"a\",k8s_statefulset_name=\"db\"} 1 \
                    99999999999999\n\
                    lumigo_proxy_calls{k8s_namespace_name=\"a\",k8s_daemonset_name=\"agent\"} 1\n";
        let series = parse_span_counts(page, now);
        assert_eq!(series.len(), 2);
        assert!(series.iter().all(|s| s.last_seen == now));
    }
}
