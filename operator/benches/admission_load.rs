//! Admission measured from outside, as a user's apiserver sees it: the operator's release binary
//! runs as its own process against a real control plane, with a `Lumigo` resource in the
//! namespace, and `oha` (built by `tools/oha/build.sh`) POSTs the Deployment CREATE fixture over
//! many keep-alive HTTPS connections. Prints reviews/s, p50/p99, and the operator's CPU per review
//! and peak RSS read from /proc; beside it, the operator's CPU as a multiple of oha's: oha does the
//! same work per review in every run, so on a machine whose speed drifts (shared cores) the ratio
//! tells a change where the absolute figures move together. Then the same for large and hostile
//! reviews (over the body limit, a 3 MiB object, one built to explode when parsed), with the peak
//! RSS after each.
//! Run: `just operator::bench-admission-load`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use hyper::body::Bytes;
use lumigo_e2e::testing::own_control_plane;
use serde_json::{json, Value};
use support::admission::ReviewClient;
use support::*;

const CONCURRENCY: [usize; 3] = [1, 4, 16];
const MEASURE: &str = "10s";
const FIXTURE: &str = "../policies/fixtures/deployment-create.json";

/// User and system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("a /proc stat line")?
        .1
        .split_whitespace()
        .collect();
    // SAFETY: a plain query.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Ok(Cpu {
        user: fields[11].parse::<f64>()? / per_second,
        system: fields[12].parse::<f64>()? / per_second,
    })
}

/// CPU time of the load generators this process has run and waited for, in seconds.
fn children_cpu_seconds() -> Cpu {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    Cpu {
        user: seconds(usage.ru_utime),
        system: seconds(usage.ru_stime),
    }
}

#[derive(Clone, Copy)]
struct Cpu {
    user: f64,
    system: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

impl Cpu {
    /// Microseconds per item, in all and in user and kernel mode.
    fn per(self, items: u64) -> (f64, f64, f64) {
        let micros = |seconds: f64| seconds / items.max(1) as f64 * 1e6;
        (
            micros(self.user + self.system),
            micros(self.user),
            micros(self.system),
        )
    }
}

/// `perf record` sampling a process's call stacks (`just operator::profile-admission`).
struct Profiler(std::process::Child);

impl Profiler {
    fn attach(pid: u32, output: &Path) -> Result<Self> {
        let child = Command::new("perf")
            // DWARF call stacks: the release build keeps no frame pointers.
            .args(["record", "--quiet", "-F", "499", "-p", &pid.to_string()])
            .args(["--call-graph", "dwarf,16384", "-o"])
            .arg(output)
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("running perf (Debian's linux-perf)")?;
        // perf needs a moment to attach to every thread.
        std::thread::sleep(std::time::Duration::from_millis(500));
        Ok(Profiler(child))
    }

    fn finish(mut self) -> Result<()> {
        // SAFETY: a signal to a child of ours that has not been waited for.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        // perf exits with the signal's status once it has written its file.
        self.0.wait()?;
        Ok(())
    }
}

/// What one `oha` run measured.
struct Run {
    /// Answers by HTTP status.
    statuses: std::collections::BTreeMap<String, u64>,
    /// Requests that got no answer (oha counts those cut off by the end of the run here too).
    errors: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Run {
    fn count(&self, status: &str) -> u64 {
        self.statuses.get(status).copied().unwrap_or(0)
    }
}

/// `oha` POSTing `body` to `url` from `concurrency` keep-alive connections for `MEASURE`.
fn load(oha: &Path, url: &str, body: &Path, concurrency: usize) -> Result<Run> {
    let output = Command::new(oha)
        .args(["--no-tui", "--output-format", "json", "--insecure"])
        .args(["-m", "POST", "-T", "application/json"])
        .arg("-D")
        .arg(body)
        .args(["-c", &concurrency.to_string(), "-z", MEASURE, url])
        .output()
        .context("running oha")?;
    ensure!(
        output.status.success(),
        "oha failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).context("oha's JSON report")?;
    let statuses = report["statusCodeDistribution"]
        .as_object()
        .map(|codes| {
            codes
                .iter()
                .filter_map(|(code, count)| Some((code.clone(), count.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let errors = report["errorDistribution"].as_object().map_or(0, |errors| {
        errors.values().filter_map(Value::as_u64).sum::<u64>()
    });
    let seconds = |key: &str| {
        report["latencyPercentiles"][key]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    Ok(Run {
        statuses,
        errors,
        per_second: report["summary"]["requestsPerSec"]
            .as_f64()
            .unwrap_or(f64::NAN),
        p50_ms: seconds("p50") * 1e3,
        p99_ms: seconds("p99") * 1e3,
    })
}

/// A run in which every review was answered 200 (but those cut off by the run's end).
fn all_answered(run: Run, concurrency: usize) -> Result<Run> {
    let other_statuses: u64 = run
        .statuses
        .iter()
        .filter(|(code, _)| code.as_str() != "200")
        .map(|(_, count)| count)
        .sum();
    ensure!(
        other_statuses == 0 && run.errors <= concurrency as u64,
        "failed reviews: {:?}, {} errors",
        run.statuses,
        run.errors
    );
    Ok(run)
}

/// `review` with its object's first container given `args`, written to `path`.
fn with_args(review: &Value, args: Value, path: &Path) -> Result<u64> {
    let mut review = review.clone();
    review["request"]["object"]["spec"]["template"]["spec"]["containers"][0]["args"] = args;
    std::fs::write(path, serde_json::to_vec(&review)?)?;
    Ok(std::fs::metadata(path)?.len())
}

#[tokio::main]
async fn main() -> Result<()> {
    let oha = std::env::var("LUMIGO_OHA")
        .context("LUMIGO_OHA must name oha: run the bench through `just`")?;
    let profile = std::env::var_os("LUMIGO_BENCH_PROFILE").map(std::path::PathBuf::from);
    let (cp, client) = with_crd(own_control_plane()).await;
    let namespace = cp.create_namespace("load", &[]).await?;

    let (operator, port, ca) =
        start_operator_with_registered_webhook(&cp, &client, &[("RUST_LOG", "info,kube=warn")])
            .await;
    let pid = operator.id();
    let url = format!("https://127.0.0.1:{port}/mutate");
    active_lumigo(&client, &namespace).await;

    let mut request: Value = serde_json::from_str(&std::fs::read_to_string(FIXTURE)?)?;
    request["namespace"] = json!(namespace);
    request["object"]["metadata"]["namespace"] = json!(namespace);
    let review =
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
    let body = cp.dir().join("review.json");
    std::fs::write(&body, serde_json::to_vec(&review)?)?;
    // The answer must carry the injection, or the figures would be those of a pass-through.
    let mut client = ReviewClient::connect(([127, 0, 0, 1], port).into(), &ca).await?;
    let (status, answer) = client.post(Bytes::from(std::fs::read(&body)?)).await?;
    if status != 200 || answer["response"]["patchType"] != "JSONPatch" {
        bail!("the webhook did not inject the fixture: {answer}");
    }
    println!(
        "Deployment CREATE AdmissionReview ({} bytes) from oha over keep-alive HTTPS, \
         {MEASURE} per row,",
        std::fs::metadata(&body)?.len()
    );
    println!("to the operator's release binary with its built-in webhook (namespace instrumented)");
    println!(
        "{:>11} {:>9} {:>10} {:>8} {:>8} {:>25} {:>13} {:>12}",
        "concurrency",
        "reviews",
        "reviews/s",
        "p50 ms",
        "p99 ms",
        "operator CPU µs/review",
        "oha µs/review",
        "operator/oha"
    );
    println!("{:>74} {:>13}", "(all = user + kernel)", "");
    for concurrency in CONCURRENCY {
        let (before, oha_before) = (cpu_seconds(pid)?, children_cpu_seconds());
        // The busiest row is the one to profile: `perf` samples the operator's threads only.
        let profiler = match &profile {
            Some(output) if Some(&concurrency) == CONCURRENCY.last() => {
                Some(Profiler::attach(pid, output)?)
            }
            _ => None,
        };
        let run = all_answered(
            load(Path::new(&oha), &url, &body, concurrency)?,
            concurrency,
        )?;
        if let Some(profiler) = profiler {
            profiler.finish()?;
        }
        let answered = run.count("200");
        let (all, user, kernel) = (cpu_seconds(pid)? - before).per(answered);
        let (oha_all, _, _) = (children_cpu_seconds() - oha_before).per(answered);
        println!(
            "{concurrency:>11} {answered:>9} {:>10.0} {:>8.2} {:>8.2} {:>25} {:>13.0} {:>12.2}",
            run.per_second,
            run.p50_ms,
            run.p99_ms,
            format!("{all:.0} = {user:.0} + {kernel:.0}"),
            oha_all,
            all / oha_all
        );
    }
    println!("operator peak RSS: {} MiB", peak_rss_mib(pid));

    // Large and hostile reviews, in the order of what they cost; the peak RSS after each.
    println!();
    println!(
        "{:<58} {:>11} {:>10} {:>8} {:>22} {:>9}",
        "large reviews", "concurrency", "reviews/s", "p99 ms", "answers", "peak RSS"
    );
    let oversized = cp.dir().join("oversized.json");
    let large = cp.dir().join("large.json");
    let explosive = cp.dir().join("explosive.json");
    let rows = [
        (
            format!(
                "{} MB (over the limit)",
                with_args(&review, json!(vec!["a"; 3_500_000]), &oversized)? >> 20
            ),
            oversized,
            16,
        ),
        (
            format!(
                "{} MiB Deployment, one 3 MiB argument (served)",
                with_args(&review, json!(["x".repeat(3 << 20)]), &large)? >> 20
            ),
            large,
            4,
        ),
        (
            format!(
                "{} MiB Deployment, 1.6 million one-letter arguments",
                with_args(&review, json!(vec!["a"; 1_600_000]), &explosive)? >> 20
            ),
            explosive,
            8,
        ),
    ];
    for (what, body, concurrency) in rows {
        let run = load(Path::new(&oha), &url, &body, concurrency)?;
        let answers = run
            .statuses
            .iter()
            .map(|(code, count)| format!("{count}×{code}"))
            .chain((run.errors > 0).then(|| format!("{}×closed", run.errors)))
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "{what:<58} {concurrency:>11} {:>10.1} {:>8.0} {answers:>22} {:>5} MiB",
            run.per_second,
            run.p99_ms,
            peak_rss_mib(pid)
        );
    }
    Ok(())
}
