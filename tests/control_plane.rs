//! Proves the integration-test harness itself: the real control plane shared by the tests of
//! one binary, a namespace per test, garbage collection and namespace deletion done by
//! kube-controller-manager, kubectl and helm against it, and no control plane process
//! outliving its owner, whether that owner panics or the whole test binary exits.

mod support;

use std::collections::BTreeSet;
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use shardplane::sandbox::ControlPlane;

use support::{eventually, test_env};

/// How long kube-controller-manager may take to collect garbage or delete a namespace.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn api_server_reports_version_1_34() {
    let env = test_env().await;
    let version = env.client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "34")
    );
    assert!(
        version.git_version.starts_with("v1.34."),
        "unexpected version {}",
        version.git_version
    );
}

/// (API server URL, namespace) of each test that ran [`check_own_namespace`].
static NAMESPACES_SEEN: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Checks this test's namespace is active, then that every test that got here so far used
/// the same control plane and a different namespace. Whichever of the two tests below runs
/// second (or concurrently) checks the other's namespace against its own.
async fn check_own_namespace() {
    let env = test_env().await;
    let namespace = Api::<Namespace>::all(env.client.clone())
        .get(&env.namespace)
        .await
        .unwrap();
    let phase = namespace.status.and_then(|status| status.phase);
    assert_eq!(phase.as_deref(), Some("Active"));
    assert!(
        env.api::<ConfigMap>()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .all(|config_map| config_map.metadata.name.as_deref() == Some("kube-root-ca.crt")),
        "a fresh namespace holds nothing a test made"
    );

    let seen = {
        let mut seen = NAMESPACES_SEEN.lock().unwrap();
        seen.push((
            env.control_plane.server_url().to_owned(),
            env.namespace.clone(),
        ));
        seen.clone()
    };
    let servers: BTreeSet<_> = seen.iter().map(|(server, _)| server).collect();
    let namespaces: BTreeSet<_> = seen.iter().map(|(_, namespace)| namespace).collect();
    assert_eq!(
        servers.len(),
        1,
        "tests used different control planes: {seen:?}"
    );
    assert_eq!(
        namespaces.len(),
        seen.len(),
        "tests shared a namespace: {seen:?}"
    );
}

#[tokio::test]
async fn one_test_gets_its_own_namespace() {
    check_own_namespace().await;
}

#[tokio::test]
async fn another_test_gets_another_namespace_on_the_same_control_plane() {
    check_own_namespace().await;
}

#[tokio::test]
async fn dropping_a_test_env_deletes_its_namespace() {
    let env = test_env().await;
    let namespaces = Api::<Namespace>::all(env.client.clone());
    let inner = test_env().await;
    let name = inner.namespace.clone();
    assert!(namespaces.get_opt(&name).await.unwrap().is_some());
    drop(inner);
    // The drop asks for deletion without waiting: the namespace is terminating or gone.
    let namespace = namespaces.get_opt(&name).await.unwrap();
    assert!(
        namespace
            .as_ref()
            .is_none_or(|namespace| namespace.metadata.deletion_timestamp.is_some()),
        "namespace {name} is neither gone nor terminating: {namespace:?}"
    );
}

fn config_map(name: &str, owner: Option<OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            owner_references: owner.map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some([("key".to_owned(), "value".to_owned())].into()),
        ..ConfigMap::default()
    }
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_dependent() {
    let env = test_env().await;
    let config_maps = env.api::<ConfigMap>();
    let owner = config_maps
        .create(&PostParams::default(), &config_map("owner", None))
        .await
        .unwrap();
    let reference = OwnerReference {
        api_version: "v1".to_owned(),
        kind: "ConfigMap".to_owned(),
        name: "owner".to_owned(),
        uid: owner.metadata.uid.clone().unwrap(),
        ..OwnerReference::default()
    };
    config_maps
        .create(
            &PostParams::default(),
            &config_map("dependent", Some(reference)),
        )
        .await
        .unwrap();
    // While the owner exists, the dependent stays.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(config_maps.get_opt("dependent").await.unwrap().is_some());

    config_maps
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    let collected = eventually(CONTROLLER_TIMEOUT, || async {
        config_maps.get_opt("dependent").await.unwrap().is_none()
    })
    .await;
    assert!(
        collected,
        "the dependent ConfigMap was not garbage-collected within {CONTROLLER_TIMEOUT:?}"
    );
}

#[tokio::test]
async fn a_deleted_namespace_is_emptied_and_removed() {
    let env = test_env().await;
    let namespaces = Api::<Namespace>::all(env.client.clone());
    let name = format!("{}-deleted", env.namespace);
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    Api::<ConfigMap>::namespaced(env.client.clone(), &name)
        .create(&PostParams::default(), &config_map("content", None))
        .await
        .unwrap();

    namespaces
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let removed = eventually(CONTROLLER_TIMEOUT, || async {
        namespaces.get_opt(&name).await.unwrap().is_none()
    })
    .await;
    assert!(
        removed,
        "namespace {name} was not deleted within {CONTROLLER_TIMEOUT:?}"
    );
}

#[tokio::test]
async fn kubectl_lists_namespaces_through_the_kubeconfig() {
    let env = test_env().await;
    let output = env.kubectl(["get", "namespaces", "--output=name"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: BTreeSet<&str> = stdout.lines().collect();
    assert!(
        listed.contains(format!("namespace/{}", env.namespace).as_str()),
        "{stdout}"
    );
    assert!(listed.contains("namespace/kube-system"), "{stdout}");
}

#[tokio::test]
async fn helm_runs_and_reaches_the_api_server() {
    let env = test_env().await;
    let version = env.helm(["version", "--short"]).await;
    let stdout = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.status.success(),
        "{}",
        String::from_utf8_lossy(&version.stderr)
    );
    assert!(
        stdout.starts_with("v3."),
        "unexpected helm version {stdout}"
    );

    // Listing releases reads Secrets in the namespace, so it needs the kubeconfig to work.
    let list = env.helm(["list", "--output=json"]).await;
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
}

#[tokio::test]
async fn dump_shows_the_objects_in_the_namespace() {
    let env = test_env().await;
    env.api::<ConfigMap>()
        .create(&PostParams::default(), &config_map("shown-in-dump", None))
        .await
        .unwrap();
    // A Service is one of the kinds in `kubectl get all`.
    let output = env
        .kubectl(["create", "service", "clusterip", "dumped", "--tcp=80:80"])
        .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dump = env.dump();
    assert!(dump.contains(&env.namespace), "{dump}");
    assert!(dump.contains("service/dumped"), "{dump}");
}

#[tokio::test]
async fn missing_binaries_are_named_with_the_way_to_build_them() {
    let empty = tempfile::tempdir().unwrap();
    let error = ControlPlane::start_with_binaries(empty.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&empty.path().display().to_string()),
        "{error}"
    );
    assert!(error.contains("kube-apiserver"), "{error}");
    assert!(error.contains("tools/testenv/build.sh"), "{error}");
}

#[tokio::test]
async fn a_process_that_fails_to_start_is_reported_with_its_log() {
    use std::os::unix::fs::PermissionsExt;

    let fakes = tempfile::tempdir().unwrap();
    for name in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
        "helm",
    ] {
        let path = fakes.path().join(name);
        let script = "#!/bin/sh\necho \"fake $0: flag provided but not defined\" >&2\nexit 3\n";
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let error = ControlPlane::start_with_binaries(fakes.path())
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("etcd exited during startup"),
        "{message}"
    );
    assert!(
        message.contains("flag provided but not defined"),
        "{message}"
    );
    // The log named in the message is kept for reading after a failed start.
    let log = message
        .split_once("last lines of ")
        .and_then(|(_, rest)| rest.split_once(":\n"))
        .map(|(path, _)| std::path::PathBuf::from(path))
        .unwrap();
    let kept = std::fs::read_to_string(&log).unwrap();
    assert!(kept.contains("flag provided but not defined"), "{kept}");
    std::fs::remove_dir_all(log.parent().unwrap()).unwrap();
}

/// Whether process `pid` is running and still the `name` it was (not a zombie, not reused).
fn is_running(name: &str, pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    // The kernel keeps the first 15 bytes of the executable's name.
    let expected: String = name.chars().take(15).collect();
    let state = stat[close + 1..].trim_start().chars().next();
    stat[open + 1..close] == expected && !matches!(state, Some('Z' | 'X'))
}

#[test]
fn a_panic_while_holding_a_control_plane_kills_its_processes() {
    let (pids_sender, pids) = mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let control_plane = runtime.block_on(ControlPlane::start()).unwrap();
        pids_sender.send(control_plane.pids()).unwrap();
        panic!("deliberate panic while holding a control plane");
    })
    .join();
    assert!(outcome.is_err(), "the thread should have panicked");

    let pids = pids.recv().unwrap();
    let names: Vec<_> = pids.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["etcd", "kube-apiserver", "kube-controller-manager"]);
    // Drop kills and reaps, so they are gone at once, not eventually.
    let survivors: Vec<_> = pids
        .iter()
        .filter(|(name, pid)| is_running(name, *pid))
        .collect();
    assert!(
        survivors.is_empty(),
        "still running after the panic: {survivors:?}"
    );
}

/// Set in the child run of [`processes_do_not_outlive_a_test_binary_that_panics`].
const ORPHAN_PROBE: &str = "SHARDPLANE_TEST_ORPHAN_PROBE";
/// Marks the lines in which the child reports its control plane's processes.
const PID_LINE: &str = "shardplane-sandbox-pid";

/// Runs this very test again in a child test binary with [`ORPHAN_PROBE`] set. There it takes
/// the other role: it starts the shared control plane (a `static`, never dropped), prints its
/// process ids and panics, so the test binary exits with the processes still owned. Back
/// here, the parent checks that the child failed as planned and that the processes died.
#[tokio::test]
async fn processes_do_not_outlive_a_test_binary_that_panics() {
    if std::env::var_os(ORPHAN_PROBE).is_some() {
        let control_plane = support::control_plane().await;
        for (name, pid) in control_plane.pids() {
            println!("{PID_LINE} {name} {pid}");
        }
        panic!("deliberate panic with the shared control plane running");
    }

    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "processes_do_not_outlive_a_test_binary_that_panics",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ORPHAN_PROBE, "1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("deliberate panic"),
        "the child test binary should have panicked on purpose:\n{stdout}\n{stderr}"
    );
    let pids: Vec<(String, u32)> = stdout
        .lines()
        // libtest may print "test <name> ... " on the same line before the first one.
        .filter_map(|line| line.split_once(PID_LINE).map(|(_, rest)| rest))
        .filter_map(|rest| {
            let (name, pid) = rest.trim().split_once(' ')?;
            Some((name.to_owned(), pid.parse().ok()?))
        })
        .collect();
    assert_eq!(
        pids.len(),
        3,
        "expected three pids from the child:\n{stdout}\n{stderr}"
    );

    // The kernel sends SIGKILL as the child exits; allow a moment for delivery.
    let all_dead = eventually(Duration::from_secs(10), || async {
        pids.iter().all(|(name, pid)| !is_running(name, *pid))
    })
    .await;
    let survivors: Vec<_> = pids
        .iter()
        .filter(|(name, pid)| is_running(name, *pid))
        .collect();
    assert!(
        all_dead,
        "still running after the test binary exited: {survivors:?}"
    );
}
