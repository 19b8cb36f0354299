//! The integration tests' harness, included by each test binary with `mod support;`: one real
//! control plane per test binary, started by the first test that asks for it, and for every
//! test a fresh client and namespace that is deleted afterwards and dumped if the test fails.
//! `operator` runs the operator under test, for the stand-in-agent and the real-agent suites
//! alike (the real data plane itself is `tests/agent/harness.rs`).

// Each test binary uses a different part of this module; what one leaves unused is not dead.
#![allow(dead_code)]

pub mod operator;

use std::ffi::OsStr;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Resource};
use shardplane::sandbox::ControlPlane;
use tokio::sync::OnceCell;

/// Label on every namespace made by [`test_env`], so leftovers are easy to find.
pub const TEST_NAMESPACE_LABEL: &str = "shardplane.io/test-namespace";

/// The control plane of this test binary, or why it could not start (kept, so that the other
/// tests fail at once with the same message instead of each trying again). Never dropped:
/// its processes die with the test process (see `shardplane::sandbox::ControlPlane`).
static CONTROL_PLANE: OnceCell<Result<ControlPlane, String>> = OnceCell::const_new();

/// The control plane shared by the tests of this binary, started on first use. Panics with
/// the start error (which says what to do) if it cannot start.
pub async fn control_plane() -> &'static ControlPlane {
    let started = CONTROL_PLANE
        .get_or_init(|| async {
            let started = Instant::now();
            let control_plane = ControlPlane::start()
                .await
                .map_err(|error| error.to_string())?;
            eprintln!(
                "test control plane at {} started in {:.1?}; kubeconfig {}",
                control_plane.server_url(),
                started.elapsed(),
                control_plane.kubeconfig_path().display()
            );
            Ok(control_plane)
        })
        .await;
    match started {
        Ok(control_plane) => control_plane,
        Err(error) => panic!("cannot start the test control plane: {error}"),
    }
}

/// What one test works with: its own client and namespace on the shared control plane.
/// Dropping it deletes the namespace (best-effort, without waiting); if the test is
/// panicking, the namespace's state is printed first.
pub struct TestEnv {
    /// A client made on this test's tokio runtime.
    pub client: Client,
    /// This test's namespace; it exists and is empty when the test starts.
    pub namespace: String,
    /// The control plane, for kubectl, helm, its kubeconfig and its logs.
    pub control_plane: &'static ControlPlane,
}

/// A fresh namespace (named after the running test) and client on the shared control plane.
pub async fn test_env() -> TestEnv {
    let control_plane = control_plane().await;
    let client = control_plane
        .client()
        .await
        .unwrap_or_else(|error| panic!("cannot make a client for the test control plane: {error}"));
    let namespace = unique_namespace_name();
    let object = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.clone()),
            labels: Some([(TEST_NAMESPACE_LABEL.to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|error| panic!("cannot create test namespace {namespace}: {error}"));
    TestEnv {
        client,
        namespace,
        control_plane,
    }
}

impl TestEnv {
    /// An `Api` for a namespaced kind in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Runs kubectl with `--namespace=<this test's namespace>` followed by `args` (a later
    /// `-n` in `args` wins). Panics only if kubectl cannot be run at all.
    pub async fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let namespace = format!("--namespace={}", self.namespace);
        let args: Vec<_> = std::iter::once(OsStr::new(&namespace).to_owned())
            .chain(args.into_iter().map(|arg| arg.as_ref().to_owned()))
            .collect();
        self.control_plane
            .kubectl(args)
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Runs helm with `--namespace=<this test's namespace>` followed by `args` (a later
    /// `-n` in `args` wins). Panics only if helm cannot be run at all.
    pub async fn helm<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let namespace = format!("--namespace={}", self.namespace);
        let args: Vec<_> = std::iter::once(OsStr::new(&namespace).to_owned())
            .chain(args.into_iter().map(|arg| arg.as_ref().to_owned()))
            .collect();
        self.control_plane
            .helm(args)
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Prints (to stderr, which the test harness shows for failed tests) and returns
    /// `kubectl get all,events` and, once the CRDs are installed, every object of the
    /// `shardplane` category in this test's namespace as YAML. Blocking and infallible, so it
    /// can run anywhere, also in `Drop`.
    pub fn dump(&self) -> String {
        let mut text = format!("==== state of namespace {} ====\n", self.namespace);
        let get = |args: &[&str]| {
            self.control_plane
                .kubectl_command()
                .args(["--namespace", &self.namespace])
                .args(args)
                .stdin(Stdio::null())
                .output()
        };
        match get(&["get", "all,events", "--output=wide"]) {
            Ok(output) => {
                text.push_str(&String::from_utf8_lossy(&output.stdout));
                text.push_str(&String::from_utf8_lossy(&output.stderr));
            }
            Err(error) => text.push_str(&format!("(kubectl could not run: {error})\n")),
        }
        // Fails until the Shardplane CRDs are installed; there is nothing to show then.
        if let Ok(output) = get(&["get", "shardplane", "--output=yaml"])
            && output.status.success()
        {
            text.push_str(&String::from_utf8_lossy(&output.stdout));
        }
        text.push_str(&format!(
            "==== logs: {} ====\n",
            self.control_plane.work_dir().display()
        ));
        eprint!("{text}");
        text
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        // Blocking and runtime-free on purpose: this test's runtime may be shutting down.
        // Best-effort: a namespace left behind dies with the control plane.
        let _ = self
            .control_plane
            .kubectl_command()
            .args(["delete", "namespace", &self.namespace])
            .args(["--wait=false", "--ignore-not-found"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Polls `condition` every 100 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A namespace name unique within this test binary, readable in dumps: the running test's
/// name (libtest names each test's thread after it) as a DNS label, and a sequence number.
fn unique_namespace_name() -> String {
    static SEQUENCE: AtomicUsize = AtomicUsize::new(0);
    let thread = std::thread::current();
    let test = thread
        .name()
        .filter(|name| *name != "main")
        .unwrap_or("test");
    let test = test.rsplit("::").next().unwrap_or(test);
    let mut label = String::new();
    for c in test.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_alphanumeric() {
            label.push(c);
        } else if !label.is_empty() && !label.ends_with('-') {
            label.push('-');
        }
    }
    label.truncate(40);
    let label = label.trim_end_matches('-');
    format!("t-{label}-{}", SEQUENCE.fetch_add(1, Ordering::Relaxed))
}

/// [`test_env`] on a control plane where the Shardplane CRDs from `crds/` are installed (once
/// per test binary, with `kubectl apply --server-side`, as a user would) and Established.
pub async fn env_with_crds() -> TestEnv {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    let env = test_env().await;
    INSTALLED
        .get_or_init(|| async {
            let crds_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
            let out = env
                .kubectl(["apply", "--server-side", "-f", crds_dir])
                .await;
            assert!(
                out.status.success(),
                "kubectl apply crds/: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut wait = vec![
                "wait".to_string(),
                "--for=condition=Established".into(),
                "--timeout=60s".into(),
            ];
            wait.extend(
                shardplane::api::crds()
                    .into_iter()
                    .filter_map(|crd| crd.metadata.name)
                    .map(|name| format!("crd/{name}")),
            );
            let out = env.kubectl(&wait).await;
            assert!(
                out.status.success(),
                "CRDs not Established: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
        .await;
    env
}
