//! Command line: `run` (the default in the chart), `uninstall` (the pre-delete hook), `crdgen`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lumigo_mutation::config::{DEFAULT_LOGS_ENDPOINT, DEFAULT_TRACES_ENDPOINT};

use crate::admission::AdmissionLimits;
use crate::delivery::DeliveryChoice;
use crate::settings::{OperatorSettings, ProtectedNamespaces};

#[derive(Parser, Debug)]
#[command(
    name = "lumigo-operator",
    version,
    about = "Zero-code Lumigo tracing for Kubernetes workloads"
)]
pub struct Cli {
    #[arg(
        long,
        env = "LUMIGO_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AdmissionEngine {
    Builtin,
    Kubewarden,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller (and the built-in admission webhook).
    Run(Box<RunArgs>),
    /// Delete every Lumigo resource and remove the injection from every workload.
    Uninstall(Box<UninstallArgs>),
    /// Print the Lumigo CustomResourceDefinition as YAML.
    Crdgen,
    /// Compile a policy module read from stdin and write the machine code to stdout (`run`
    /// has a child process of its own do this).
    #[command(name = "precompile-policy", hide = true)]
    PrecompilePolicy,
}

#[derive(Args, Debug, Clone)]
pub struct InjectionArgs {
    /// The image of the init container that copies the injector and the tracers.
    #[arg(
        long,
        env = "LUMIGO_INJECTOR_IMAGE",
        default_value = concat!("ghcr.io/lumigo-rs/autotrace:", env!("CARGO_PKG_VERSION"))
    )]
    pub injector_image: String,
    /// Where instrumented workloads send traces (the in-cluster telemetry proxy in the chart).
    #[arg(long, env = "LUMIGO_TRACES_ENDPOINT", default_value = DEFAULT_TRACES_ENDPOINT)]
    pub traces_endpoint: String,
    /// Where instrumented workloads send logs.
    #[arg(long, env = "LUMIGO_LOGS_ENDPOINT", default_value = DEFAULT_LOGS_ENDPOINT)]
    pub logs_endpoint: String,
    /// Written into the `lumigo.auto-trace` label; workloads with another value are re-injected.
    #[arg(
        long,
        env = "LUMIGO_OPERATOR_VERSION",
        default_value = env!("CARGO_PKG_VERSION"),
        hide = true
    )]
    pub operator_version: String,
    /// How the payload reaches pods (a `Lumigo` resource's `spec.tracing.injection.payloadDelivery`
    /// overrides it): `auto` mounts the injector image as an image volume where every node and the
    /// API server support one, and copies it with an init container where not.
    #[arg(
        long,
        env = "LUMIGO_PAYLOAD_DELIVERY",
        value_enum,
        default_value_t = DeliveryChoice::Auto
    )]
    pub payload_delivery: DeliveryChoice,
    /// Workload writes in flight at once during a rollout.
    #[arg(long, env = "LUMIGO_MAX_CONCURRENT_WRITES", default_value_t = 8)]
    pub max_concurrent_writes: usize,
    #[command(flatten)]
    pub rollout: RolloutArgs,
}

/// How the injection rolls into existing workloads, and how removal gives up.
#[derive(Args, Debug, Clone)]
pub struct RolloutArgs {
    /// Deployments, StatefulSets and DaemonSets of one namespace restarting into the injection at
    /// once (a `Lumigo` resource's `spec.tracing.injection.rollout.maxInProgress` overrides it);
    /// 0: all at once.
    #[arg(long, env = "LUMIGO_ROLLOUT_MAX_IN_PROGRESS", default_value_t = 10)]
    pub rollout_max_in_progress: u32,
    /// The same, for the whole cluster; 0: no limit.
    #[arg(
        long,
        env = "LUMIGO_ROLLOUT_MAX_IN_PROGRESS_CLUSTER",
        default_value_t = 25
    )]
    pub rollout_max_in_progress_cluster: u32,
    /// How often a rollout under way is looked at (progress, health gate, next turn).
    #[arg(
        long,
        env = "LUMIGO_ROLLOUT_CHECK_INTERVAL",
        default_value = "5s",
        value_parser = parse_duration
    )]
    pub rollout_check_interval: Duration,
    /// How long a deleted `Lumigo` resource waits for workloads that cannot be written before
    /// its finalizer is released anyway (with a LumigoRemovalIncomplete event).
    #[arg(
        long,
        env = "LUMIGO_REMOVAL_TIMEOUT",
        default_value = "5m",
        value_parser = parse_duration
    )]
    pub removal_timeout: Duration,
    /// `Lumigo` resources reconciled at once.
    #[arg(long, env = "LUMIGO_RECONCILE_CONCURRENCY", default_value_t = 4)]
    pub reconcile_concurrency: u16,
}

impl InjectionArgs {
    pub fn operator_settings(&self) -> OperatorSettings {
        OperatorSettings {
            injector_image: self.injector_image.clone(),
            traces_endpoint: self.traces_endpoint.clone(),
            logs_endpoint: self.logs_endpoint.clone(),
            operator_version: self.operator_version.clone(),
            payload_delivery: self.payload_delivery,
        }
    }
}

/// How the operator tells which instrumented workloads really send traces.
#[derive(Args, Debug, Clone)]
pub struct TracingArgs {
    /// Label selector of the telemetry proxy's pods in the operator's namespace, whose span counts
    /// it reads; without one, every workload's tracing is `Unknown`.
    #[arg(long, env = "LUMIGO_TELEMETRY_PROXY_SELECTOR")]
    pub telemetry_proxy_selector: Option<String>,
    /// The proxy pods' port that shows the span counts.
    #[arg(
        long,
        env = "LUMIGO_TELEMETRY_PROXY_METRICS_PORT",
        default_value_t = 8889
    )]
    pub telemetry_proxy_metrics_port: u16,
    /// How often the span counts are read (and so the shortest time between two status writes
    /// caused by tracing).
    #[arg(
        long,
        env = "LUMIGO_TRACES_CHECK_INTERVAL",
        default_value = "15s",
        value_parser = parse_duration
    )]
    pub traces_check_interval: Duration,
    /// How long an instrumented workload with Ready pods may send no span before it is `Silent`
    /// and reported with a LumigoNoTraces warning.
    #[arg(
        long,
        env = "LUMIGO_NO_TRACES_WINDOW",
        default_value = "10m",
        value_parser = parse_duration
    )]
    pub no_traces_window: Duration,
}

/// The namespaces the install instruments by itself (the chart's `monitoredNamespaces`).
#[derive(Args, Debug, Clone)]
pub struct OnboardingArgs {
    /// `{"names": [...]}`, `{"all": true}` or
    /// `{"selector": {"matchLabels": ..., "matchExpressions": ...}}`; empty: none (what an earlier
    /// selection created is removed).
    #[arg(long, env = "LUMIGO_MONITORED_NAMESPACES", default_value = "")]
    pub monitored_namespaces: String,
    /// Namespaces never selected (comma-separated), besides kube-system, kube-public,
    /// kube-node-lease and the operator's own.
    #[arg(long, env = "LUMIGO_EXCLUDED_NAMESPACES", default_value = "")]
    pub excluded_namespaces: String,
    /// The Secret of the operator's namespace that holds the token the monitored namespaces get.
    #[arg(long, env = "LUMIGO_TOKEN_SECRET")]
    pub token_secret: Option<String>,
    /// Its key.
    #[arg(long, env = "LUMIGO_TOKEN_SECRET_KEY", default_value = "token")]
    pub token_secret_key: String,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub injection: InjectionArgs,
    #[command(flatten)]
    pub tracing: TracingArgs,
    #[command(flatten)]
    pub onboarding: OnboardingArgs,
    /// The operator's own namespace (leader lease, webhook certificate).
    #[arg(long, env = "POD_NAMESPACE", default_value = "lumigo-system")]
    pub namespace: String,
    /// This replica's name in the leader lease.
    #[arg(long, env = "POD_NAME", default_value = "lumigo-operator-local")]
    pub identity: String,
    /// Take part in leader election, so that only one replica acts.
    #[arg(
        long,
        env = "LUMIGO_LEADER_ELECTION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub leader_election: bool,
    #[arg(long, default_value = "lumigo-operator")]
    pub lease_name: String,
    #[arg(
        long,
        env = "LUMIGO_LEASE_DURATION",
        default_value = "15s",
        value_parser = parse_duration
    )]
    pub lease_duration: Duration,
    /// Who admits new workloads: the operator itself, or Kubewarden through one AdmissionPolicy
    /// per instrumented namespace.
    #[arg(
        long,
        env = "LUMIGO_ADMISSION_ENGINE",
        value_enum,
        default_value_t = AdmissionEngine::Builtin
    )]
    pub admission_engine: AdmissionEngine,
    /// The policy module the Kubewarden engine's AdmissionPolicies run.
    #[arg(
        long,
        env = "LUMIGO_KUBEWARDEN_POLICY_MODULE",
        default_value = concat!(
            "registry://ghcr.io/lumigo-rs/policies/lumigo-autotrace:v",
            env!("CARGO_PKG_VERSION")
        )
    )]
    pub kubewarden_policy_module: String,
    /// Where the built-in webhook serves AdmissionReviews over HTTPS.
    #[arg(long, env = "LUMIGO_WEBHOOK_ADDRESS", default_value = "0.0.0.0:9443")]
    pub webhook_address: SocketAddr,
    /// The Service the API server reaches the webhook through (named in its certificate).
    #[arg(
        long,
        env = "LUMIGO_WEBHOOK_SERVICE",
        default_value = "lumigo-operator-webhook"
    )]
    pub webhook_service: String,
    /// The Secret, in the operator's namespace, that keeps the webhook's certificate.
    #[arg(
        long,
        env = "LUMIGO_WEBHOOK_SECRET",
        default_value = "lumigo-operator-webhook-certificate"
    )]
    pub webhook_secret: String,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(
        long,
        env = "LUMIGO_WEBHOOK_CONFIGURATION",
        default_value = "lumigo-operator"
    )]
    pub webhook_configuration: String,
    /// Serve the webhook for an API server on this machine (`https://127.0.0.1:PORT`, the local
    /// demo) instead of through the Service.
    #[arg(
        long,
        env = "LUMIGO_WEBHOOK_LOOPBACK",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub webhook_loopback: bool,
    /// The policy module the built-in webhook evaluates.
    #[arg(
        long,
        env = "LUMIGO_POLICY_MODULE",
        default_value = "/usr/local/share/lumigo/lumigo-policy.wasm"
    )]
    pub policy_module: std::path::PathBuf,
    /// How long one admission evaluation may run before it is cut off (and admitted unchanged).
    #[arg(
        long,
        env = "LUMIGO_EVALUATION_DEADLINE",
        default_value = "2s",
        value_parser = parse_duration
    )]
    pub evaluation_deadline: Duration,
    #[command(flatten)]
    pub webhook_limits: WebhookLimitArgs,
    /// Namespaces never instrumented besides kube-system, kube-public, kube-node-lease and the
    /// operator's own (comma-separated): the chart passes its `protectedNamespaces.namespaces`.
    #[arg(long, env = "LUMIGO_PROTECTED_NAMESPACES", default_value = "")]
    pub protected_namespaces: String,
    /// How long the operator waits for the API server's answer to one request (a watch excepted),
    /// so that a hung connection cannot stall a lease renewal or a reconcile.
    #[arg(long, env = "LUMIGO_API_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub api_timeout: Duration,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "LUMIGO_PROBE_ADDRESS", default_value = "0.0.0.0:8080")]
    pub probe_address: SocketAddr,
}

/// The built-in webhook's bounds; see [`AdmissionLimits`] for what each guards against.
#[derive(Args, Debug, Clone)]
pub struct WebhookLimitArgs {
    /// The largest AdmissionReview body read, in bytes; larger ones get 413.
    #[arg(
        long,
        env = "LUMIGO_WEBHOOK_MAX_REQUEST_BYTES",
        default_value_t = AdmissionLimits::default().max_request_bytes
    )]
    pub webhook_max_request_bytes: usize,
    /// Request bytes held at once (read, queued or evaluated); past it requests wait, then get 503.
    #[arg(
        long,
        env = "LUMIGO_WEBHOOK_MAX_IN_FLIGHT_BYTES",
        default_value_t = AdmissionLimits::default().max_in_flight_bytes
    )]
    pub webhook_max_in_flight_bytes: usize,
    /// How long a request's headers may take (also how long an idle connection is kept).
    #[arg(long, env = "LUMIGO_WEBHOOK_HEADER_TIMEOUT", value_parser = parse_duration)]
    pub webhook_header_timeout: Option<Duration>,
    /// How long a request may wait for room in the in-flight bytes, and then its body may take.
    #[arg(long, env = "LUMIGO_WEBHOOK_BODY_TIMEOUT", value_parser = parse_duration)]
    pub webhook_body_timeout: Option<Duration>,
    /// Connections open at once; more are closed as they arrive.
    #[arg(
        long,
        env = "LUMIGO_WEBHOOK_MAX_CONNECTIONS",
        default_value_t = AdmissionLimits::default().max_connections
    )]
    pub webhook_max_connections: usize,
    /// Connections open at once from one client address.
    #[arg(
        long,
        env = "LUMIGO_WEBHOOK_MAX_CONNECTIONS_PER_CLIENT",
        default_value_t = AdmissionLimits::default().max_connections_per_client
    )]
    pub webhook_max_connections_per_client: usize,
}

impl RunArgs {
    pub fn protected(&self) -> ProtectedNamespaces {
        ProtectedNamespaces::with_others(
            &self.namespace,
            self.protected_namespaces.split(',').map(str::trim),
        )
    }
}

impl WebhookLimitArgs {
    pub fn limits(&self) -> AdmissionLimits {
        let defaults = AdmissionLimits::default();
        AdmissionLimits {
            max_request_bytes: self.webhook_max_request_bytes,
            max_in_flight_bytes: self.webhook_max_in_flight_bytes,
            header_timeout: self
                .webhook_header_timeout
                .unwrap_or(defaults.header_timeout),
            body_timeout: self.webhook_body_timeout.unwrap_or(defaults.body_timeout),
            max_connections: self.webhook_max_connections,
            max_connections_per_client: self.webhook_max_connections_per_client,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub injection: InjectionArgs,
    /// How long the running operator gets to clean up through its finalizers before this command
    /// does it.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub wait_for_operator: Duration,
    /// The operator's namespace, whose leader Lease tells it that an uninstall is under way.
    #[arg(long, env = "POD_NAMESPACE", default_value = "lumigo-system")]
    pub namespace: String,
    #[arg(long, default_value = "lumigo-operator")]
    pub lease_name: String,
    /// How long the command waits for the API server's answer to one request (a watch excepted).
    #[arg(long, env = "LUMIGO_API_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub api_timeout: Duration,
}

/// `500ms`, `15s`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 15s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" | "" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        _ => Err(format!("{text:?}: unknown unit {unit:?} (use ms, s or m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn webhook_limits_default_to_the_documented_bounds_and_can_be_set() {
        let run = |args: &[&str]| match Cli::try_parse_from(
            ["lumigo-operator", "run"].iter().chain(args),
        )
        .unwrap()
        .command
        {
            Command::Run(run) => run.webhook_limits.limits(),
            _ => unreachable!("the run command was given"),
        };
        assert_eq!(run(&[]), AdmissionLimits::default());
        let set = run(&[
            "--webhook-max-request-bytes",
            "1000",
            "--webhook-header-timeout",
            "5s",
            "--webhook-max-connections-per-client",
            "4",
        ]);
        assert_eq!(
            (
                set.max_request_bytes,
                set.header_timeout,
                set.max_connections_per_client
            ),
            (1000, Duration::from_secs(5), 4)
        );
        assert_eq!(set.body_timeout, AdmissionLimits::default().body_timeout);
    }
}
