//! Prometheus metrics: reconciles, their errors, status writes, and workloads written,
//! instrumented and receiving (their spans reach the telemetry proxy).

use std::sync::atomic::AtomicI64;

use lumigo_mutation::{Change, WorkloadKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::events::EventReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindChange {
    kind: String,
    change: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Counter,
    writes: Family<KindChange, Counter>,
    write_failures: Family<KindLabel, Counter>,
    instrumented: Family<NamespaceLabel, Gauge<i64, AtomicI64>>,
    receiving: Family<NamespaceLabel, Gauge<i64, AtomicI64>>,
    status_writes: Counter,
    admission_events_dropped: Counter,
    admission_refused: Family<LimitLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lumigo_operator");
        let reconciles = Counter::default();
        let reconcile_errors = Counter::default();
        let writes = Family::default();
        let write_failures = Family::default();
        let instrumented = Family::default();
        let receiving = Family::default();
        let status_writes = Counter::default();
        let admission_events_dropped = Counter::default();
        let admission_refused = Family::default();
        registry.register(
            "reconciles",
            "Reconciliations of Lumigo resources",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed and were retried",
            reconcile_errors.clone(),
        );
        registry.register(
            "workload_writes",
            "Workloads written, by kind and change",
            writes.clone(),
        );
        registry.register(
            "workload_write_failures",
            "Workload writes that failed",
            write_failures.clone(),
        );
        registry.register(
            "workloads_instrumented",
            "Workloads instrumented, by namespace",
            instrumented.clone(),
        );
        registry.register(
            "workloads_receiving",
            "Instrumented workloads whose spans reach the telemetry proxy, by namespace",
            receiving.clone(),
        );
        registry.register(
            "status_writes",
            "Status writes of Lumigo resources",
            status_writes.clone(),
        );
        registry.register(
            "admission_events_dropped",
            "Admission events not recorded: more distinct objects at once than the event queue \
             holds",
            admission_events_dropped.clone(),
        );
        registry.register(
            "admission_refused",
            "Admission connections or requests turned away by a webhook limit, by limit (the \
             apiserver admits their objects unchanged)",
            admission_refused.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            writes,
            write_failures,
            instrumented,
            receiving,
            status_writes,
            admission_events_dropped,
            admission_refused,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self) {
        self.reconciles.inc();
    }

    pub fn reconcile_failed(&self) {
        self.reconcile_errors.inc();
    }

    pub fn workload_written(&self, kind: WorkloadKind, change: &Change) {
        let labels = KindChange {
            kind: kind.name().into(),
            change: EventReason::of_change(change).as_str().into(),
        };
        self.writes.get_or_create(&labels).inc();
    }

    pub fn write_failed(&self, kind: WorkloadKind) {
        self.write_failures
            .get_or_create(&KindLabel {
                kind: kind.name().into(),
            })
            .inc();
    }

    pub fn set_instrumented(&self, namespace: &str, count: usize) {
        let gauge = self.instrumented.get_or_create(&NamespaceLabel {
            namespace: namespace.into(),
        });
        gauge.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn set_receiving(&self, namespace: &str, count: usize) {
        let gauge = self.receiving.get_or_create(&NamespaceLabel {
            namespace: namespace.into(),
        });
        gauge.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    pub fn admission_event_dropped(&self) {
        self.admission_events_dropped.inc();
    }

    /// A connection or request the webhook turned away because `limit` was reached.
    pub fn admission_refused(&self, limit: &str) {
        self.admission_refused
            .get_or_create(&LimitLabel {
                limit: limit.into(),
            })
            .inc();
    }

    pub fn forget_namespace(&self, namespace: &str) {
        let label = NamespaceLabel {
            namespace: namespace.into(),
        };
        self.instrumented.remove(&label);
        self.receiving.remove(&label);
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
