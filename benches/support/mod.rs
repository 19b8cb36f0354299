//! What the control-plane benchmarks share, included with `mod support;`: the CRDs installed
//! on the local control plane, the API server's own request counters, waiting, percentiles
//! and the machine's description.

// Each benchmark uses a different part of this module; what one leaves unused is not dead.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shardplane::sandbox::ControlPlane;

/// Applies `crds/` with server-side apply and waits until every CRD is Established.
pub async fn install_crds(cp: &ControlPlane) -> Result<(), String> {
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
    let out = cp
        .kubectl(["apply", "--server-side", "-f", crds])
        .await
        .map_err(|error| error.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "kubectl apply crds: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let out = cp
        .kubectl([
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ])
        .await
        .map_err(|error| error.to_string())?;
    if !out.status.success() {
        return Err("CRDs never became Established".into());
    }
    Ok(())
}

/// kube-apiserver's `apiserver_request_total` lines: their labels and value.
pub async fn request_counters(cp: &ControlPlane) -> Vec<(String, f64)> {
    apiserver_series(cp, "apiserver_request_total").await
}

/// kube-apiserver's `apiserver_request_duration_seconds_sum` lines (the time requests took,
/// in seconds): their labels and value.
pub async fn request_seconds(cp: &ControlPlane) -> Vec<(String, f64)> {
    apiserver_series(cp, "apiserver_request_duration_seconds_sum").await
}

/// The lines of kube-apiserver's metric `name`: their labels and value.
async fn apiserver_series(cp: &ControlPlane, name: &str) -> Vec<(String, f64)> {
    let out = cp.kubectl(["get", "--raw", "/metrics"]).await.unwrap();
    let prefix = format!("{name}{{");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once("} ")?;
            Some((labels.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The value of label `name` in a counter's `labels`.
pub fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &labels[start..];
    Some(&rest[..rest.find('"')?])
}

/// Whether an API request of `verb` writes.
pub fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION"
    )
}

/// Mutating requests on Leases and DatabaseNodes (the writes node liveness costs), in all
/// namespaces, from kube-apiserver's own counters.
pub async fn liveness_write_count(cp: &ControlPlane) -> f64 {
    request_counters(cp)
        .await
        .into_iter()
        .filter(|(labels, _)| {
            matches!(label(labels, "resource"), Some("leases" | "databasenodes"))
                && label(labels, "verb").is_some_and(is_write)
        })
        .map(|(_, value)| value)
        .sum()
}

/// Polls `f` every 20 ms until it holds (true) or `timeout` passes (false).
pub async fn wait_for<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The `p` quantile (0 to 1) of `samples`, which must not be empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs, p50, p99 and max of `samples`.
pub fn summary(samples: &[f64]) -> String {
    if samples.is_empty() {
        return "no run finished".into();
    }
    format!(
        "runs {:>2}  p50 {:.2}  p99 {:.2}  max {:.2}",
        samples.len(),
        percentile(samples, 0.5),
        percentile(samples, 0.99),
        percentile(samples, 1.0)
    )
}

/// The machine: cores and CPU model.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    format!(
        "{} cores, {model}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

/// A free port on the loopback interface.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
