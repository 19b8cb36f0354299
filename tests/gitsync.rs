//! git-sync against a real kube-apiserver and real git repositories (made with the `git`
//! CLI in a tempdir, fetched over `file://`): apply, modify, prune; a commit with one bad
//! manifest changes nothing and says which file and why; drift is corrected; unsigned
//! commits are refused when verification is on; an empty checkout prunes nothing; a signed
//! webhook triggers a sync of the running loop.

mod fixtures;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fixtures::Repo;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use shardplane::api::{ConditionStatus, GitSync, Shard, Table};
use shardplane::gitsync::{self, SyncError, SyncOutcome, Syncer, webhook};
use support::{TestEnv, env_with_crds, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A Shard manifest of table `customers`.
fn shard(name: &str, start: Option<i64>, end: Option<i64>, region: Option<&str>) -> String {
    let mut spec = json!({"table": "customers", "range": {}});
    if let Some(start) = start {
        spec["range"]["start"] = start.into();
    }
    if let Some(end) = end {
        spec["range"]["end"] = end.into();
    }
    if let Some(region) = region {
        spec["placement"] = json!({"preferredPrimaryRegion": region});
    }
    let object = json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
        "metadata": {"name": name}, "spec": spec,
    });
    format!("---\n{}", serde_yaml::to_string(&object).unwrap())
}

/// Two Shards `c-0` and `c-1` tiling the key space at 0.
fn two_shards() -> String {
    shard("c-0", None, Some(0), None) + &shard("c-1", Some(0), None, None)
}

/// Creates a GitSync named `name` for `repo` with extra spec fields merged in.
async fn create_git_sync(env: &TestEnv, name: &str, repo: &Repo, extra: serde_json::Value) {
    let mut spec = json!({"url": repo.url(), "branch": "main", "intervalSeconds": 3600});
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    let object: GitSync = serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "GitSync",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    env.api::<GitSync>()
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
}

/// Syncs `name` once, in-process, reporting status and an Event as the loop does.
async fn sync(env: &TestEnv, syncer: &Syncer, name: &str) -> Result<SyncOutcome, SyncError> {
    let object = env.api::<GitSync>().get(name).await.unwrap();
    syncer.sync_and_report(&object).await.unwrap()
}

async fn shard_names(env: &TestEnv) -> Vec<String> {
    let mut names: Vec<String> = env
        .api::<Shard>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.metadata.name.unwrap())
        .collect();
    names.sort();
    names
}

async fn region_of(env: &TestEnv, name: &str) -> Option<String> {
    env.api::<Shard>()
        .get(name)
        .await
        .unwrap()
        .spec
        .placement
        .and_then(|p| p.preferred_primary_region)
}

/// The Ready condition of a GitSync: (status, reason, message).
async fn ready(env: &TestEnv, name: &str) -> (ConditionStatus, String, String) {
    let status = env
        .api::<GitSync>()
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    (ready.status, ready.reason.clone(), ready.message.clone())
}

fn syncer(env: &TestEnv) -> (Syncer, tempfile::TempDir) {
    let checkouts = tempfile::tempdir().unwrap();
    (
        Syncer::new(env.client.clone(), checkouts.path().to_path_buf()),
        checkouts,
    )
}

#[tokio::test]
async fn applies_modifies_and_prunes_what_left_git() {
    let env = env_with_crds().await;
    let repo = Repo::new();
    repo.write("db/shards.yaml", &two_shards());
    repo.write("README.md", "not a manifest\n");
    // Not manifests: hidden folders are skipped.
    repo.write("db/.ci/workflow.yaml", "on: push\njobs: {}\n");
    let first = repo.commit("two shards");
    create_git_sync(&env, "main", &repo, json!({"path": "db"})).await;
    let (syncer, _checkouts) = syncer(&env);

    let outcome = sync(&env, &syncer, "main").await.unwrap();
    assert_eq!(outcome.applied.created.len(), 2);
    assert_eq!(shard_names(&env).await, ["c-0", "c-1"]);
    let status = env
        .api::<GitSync>()
        .get("main")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.last_applied_commit.as_deref(), Some(first.as_str()));
    assert_eq!(status.object_count, Some(2));
    assert!(status.inventory.contains(&format!(
        "shardplane.io/v1alpha1/Shard/{}/c-1",
        env.namespace
    )));
    let (ready_status, reason, _) = ready(&env, "main").await;
    assert_eq!(
        (ready_status, reason.as_str()),
        (ConditionStatus::True, "Applied")
    );
    let table = env.kubectl(["get", "gitsyncs"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&first) && table.contains("True"), "{table}");

    // Modify c-0, split c-1 into two: c-1 must be pruned.
    repo.write(
        "db/shards.yaml",
        &(shard("c-0", None, Some(0), Some("eu-west"))
            + &shard("c-1a", Some(0), Some(1000), None)
            + &shard("c-1b", Some(1000), None, None)),
    );
    let second = repo.commit("split c-1");
    let outcome = sync(&env, &syncer, "main").await.unwrap();
    assert_eq!(outcome.commit, second);
    assert_eq!(outcome.pruned.len(), 1, "{outcome:?}");
    assert_eq!(outcome.pruned[0].name, "c-1");
    assert_eq!(shard_names(&env).await, ["c-0", "c-1a", "c-1b"]);
    assert_eq!(region_of(&env, "c-0").await.as_deref(), Some("eu-west"));
    let status = env
        .api::<GitSync>()
        .get("main")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.last_applied_commit.as_deref(), Some(second.as_str()));
    assert_eq!(status.object_count, Some(3));

    // Each sync left an Event on the GitSync.
    let events: Vec<Event> = Api::<Event>::namespaced(env.client.clone(), &env.namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let reasons: Vec<_> = events
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("main"))
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(
        reasons.iter().any(|r| r == "Applied"),
        "events of GitSync main: {reasons:?}"
    );
}

#[tokio::test]
async fn a_commit_with_one_invalid_manifest_changes_nothing() {
    let env = env_with_crds().await;
    let repo = Repo::new();
    repo.write("shards.yaml", &shard("c-0", None, None, None));
    let good = repo.commit("one shard");
    create_git_sync(&env, "gs", &repo, json!({})).await;
    let (syncer, _checkouts) = syncer(&env);
    sync(&env, &syncer, "gs").await.unwrap();

    // A valid change, a valid new object, and one manifest the API server refuses (the
    // schema bounds replicationFactor to 1..7): none of it may reach the cluster.
    repo.write("shards.yaml", &shard("c-0", None, None, Some("eu-west")));
    repo.write(
        "more/cluster.yaml",
        "apiVersion: shardplane.io/v1alpha1\nkind: DatabaseCluster\nmetadata: {name: bad}\n\
         spec: {regions: [{name: eu, zones: [eu-a]}], replicationFactor: 0, version: '15'}\n",
    );
    repo.write(
        "more/other.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\ndata: {a: b}\n",
    );
    let bad = repo.commit("one bad manifest");
    let error = sync(&env, &syncer, "gs").await.unwrap_err();
    assert_eq!(error.reason(), "ValidationFailed", "{error}");
    assert_eq!(
        region_of(&env, "c-0").await,
        None,
        "the valid change leaked"
    );
    let configmaps = env
        .kubectl([
            "get",
            "configmap",
            "extra",
            "--ignore-not-found",
            "-o",
            "name",
        ])
        .await;
    assert!(configmaps.stdout.is_empty(), "the new object leaked");
    let (status, reason, message) = ready(&env, "gs").await;
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, "ValidationFailed")
    );
    assert!(message.contains("more/cluster.yaml"), "{message}");
    assert!(message.contains("DatabaseCluster/bad"), "{message}");
    assert!(message.contains("replicationFactor"), "{message}");
    let object = env
        .api::<GitSync>()
        .get("gs")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(object.last_applied_commit.as_deref(), Some(good.as_str()));
    assert_eq!(object.last_attempted_commit.as_deref(), Some(bad.as_str()));

    // Shardplane's own check: shards that leave a gap in the key space are refused too.
    repo.remove("more");
    repo.write(
        "shards.yaml",
        &(shard("c-0", None, Some(0), None) + &shard("c-1", Some(10), None, None)),
    );
    repo.commit("a gap");
    let error = sync(&env, &syncer, "gs").await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("shards.yaml: Table/customers"),
        "{message}"
    );
    assert!(message.contains("gap"), "{message}");
    assert_eq!(shard_names(&env).await, ["c-0"]);
}

#[tokio::test]
async fn drift_by_another_field_manager_is_corrected() {
    let env = env_with_crds().await;
    let repo = Repo::new();
    repo.write("shards.yaml", &shard("c-0", None, None, Some("eu-west")));
    repo.commit("one shard");
    create_git_sync(&env, "gs", &repo, json!({})).await;
    let (syncer, _checkouts) = syncer(&env);
    sync(&env, &syncer, "gs").await.unwrap();

    // Someone edits the live object by hand.
    let patch = json!({"spec": {"placement": {"preferredPrimaryRegion": "us-east"}}});
    let out = env
        .kubectl([
            "patch",
            "shard",
            "c-0",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(region_of(&env, "c-0").await.as_deref(), Some("us-east"));

    let outcome = sync(&env, &syncer, "gs").await.unwrap();
    assert_eq!(region_of(&env, "c-0").await.as_deref(), Some("eu-west"));
    assert_eq!(outcome.event_reason(), "DriftCorrected");
    assert_eq!(outcome.applied.configured.len(), 1);
    assert!(outcome.summary().contains("drift corrected on Shard/c-0"));

    // Nothing drifted: the next sync changes nothing.
    let outcome = sync(&env, &syncer, "gs").await.unwrap();
    assert_eq!(outcome.event_reason(), "UpToDate");
    assert_eq!(outcome.applied.unchanged, 1);
}

#[tokio::test]
async fn unsigned_commits_are_refused_when_verification_is_on() {
    let env = env_with_crds().await;
    let keys = tempfile::tempdir().unwrap();
    let key = ssh_keygen(keys.path(), "alice");
    let stranger = ssh_keygen(keys.path(), "mallory");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let allowed = format!("alice@example.com {}", public.trim());

    let repo = Repo::new();
    repo.write("shards.yaml", &shard("c-0", None, None, None));
    let unsigned = repo.commit("unsigned");
    create_git_sync(
        &env,
        "gs",
        &repo,
        json!({"verify": {"allowedSigners": [allowed]}}),
    )
    .await;
    let (syncer, _checkouts) = syncer(&env);
    let error = sync(&env, &syncer, "gs").await.unwrap_err();
    assert_eq!(error.reason(), "SignatureRefused");
    assert!(error.to_string().contains(&unsigned), "{error}");
    assert!(error.to_string().contains("not signed"), "{error}");
    assert!(shard_names(&env).await.is_empty());

    // Signed, but by a key that is not allowed.
    let sign_with = |key: &Path| {
        vec![
            "-c".to_owned(),
            "gpg.format=ssh".to_owned(),
            "-c".to_owned(),
            format!("user.signingkey={}", key.display()),
            "-c".to_owned(),
            "commit.gpgsign=true".to_owned(),
        ]
    };
    let args = sign_with(&stranger);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    repo.commit_with(&args, "signed by a stranger");
    let error = sync(&env, &syncer, "gs").await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("not in spec.verify.allowedSigners"),
        "{error}"
    );
    assert!(shard_names(&env).await.is_empty());

    let args = sign_with(&key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let signed = repo.commit_with(&args, "signed by alice");
    let outcome = sync(&env, &syncer, "gs").await.unwrap();
    assert_eq!(outcome.commit, signed);
    assert_eq!(outcome.signed_by.as_deref(), Some("alice@example.com"));
    assert_eq!(shard_names(&env).await, ["c-0"]);
}

/// Makes an ed25519 key pair with ssh-keygen; returns the private key's path.
fn ssh_keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

#[tokio::test]
async fn an_empty_or_broken_checkout_prunes_nothing() {
    let env = env_with_crds().await;
    let repo = Repo::new();
    repo.write("db/shards.yaml", &two_shards());
    let applied = repo.commit("two shards");
    create_git_sync(&env, "gs", &repo, json!({"path": "db"})).await;
    let (syncer, _checkouts) = syncer(&env);
    sync(&env, &syncer, "gs").await.unwrap();

    // Every manifest removed, the folder kept.
    repo.remove("db/shards.yaml");
    repo.write("db/.keep", "");
    repo.commit("emptied");
    let error = sync(&env, &syncer, "gs").await.unwrap_err();
    assert_eq!(error.reason(), "EmptyCheckoutRefused", "{error}");
    assert_eq!(shard_names(&env).await, ["c-0", "c-1"]);

    // The folder itself gone.
    repo.remove("db");
    repo.write("other.txt", "x");
    repo.commit("folder gone");
    let error = sync(&env, &syncer, "gs").await.unwrap_err();
    assert_eq!(error.reason(), "CheckoutFailed", "{error}");
    assert!(error.to_string().contains("\"db\""), "{error}");
    assert_eq!(shard_names(&env).await, ["c-0", "c-1"]);
    let status = env
        .api::<GitSync>()
        .get("gs")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        status.last_applied_commit.as_deref(),
        Some(applied.as_str())
    );
    assert_eq!(status.inventory.len(), 2);
}

#[tokio::test]
async fn a_signed_webhook_triggers_the_running_loop() {
    let env = env_with_crds().await;
    let repo = Repo::new();
    repo.write("shards.yaml", &shard("c-0", None, None, None));
    let first = repo.commit("one shard");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hook"},
        "stringData": {"secret": "s3cret-hmac-key"},
    }))
    .unwrap();
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    create_git_sync(
        &env,
        "gs",
        &repo,
        json!({"webhookSecretRef": {"name": "hook"}}),
    )
    .await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let checkouts = tempfile::tempdir().unwrap();
    let options = gitsync::Options {
        namespaces: vec![env.namespace.clone()],
        checkout_dir: checkouts.path().to_path_buf(),
        webhook: Some(listener),
    };
    let running = tokio::spawn(gitsync::run(env.client.clone(), options));

    let applied = |commit: String| {
        let api = env.api::<GitSync>();
        move || {
            let api = api.clone();
            let commit = commit.clone();
            async move {
                api.get("gs")
                    .await
                    .unwrap()
                    .status
                    .and_then(|s| s.last_applied_commit)
                    == Some(commit)
            }
        }
    };
    assert!(
        eventually(Duration::from_secs(30), applied(first)).await,
        "the loop never applied the first commit"
    );

    // A new commit; the interval (an hour) would not pick it up, the webhook must.
    repo.write(
        "shards.yaml",
        &(shard("c-0a", None, Some(0), None) + &shard("c-0b", Some(0), None, None)),
    );
    let second = repo.commit("split");
    let path = format!("/hooks/{}/gs", env.namespace);
    let body = br#"{"ref":"refs/heads/main"}"#;
    let (code, _) = post(address, &path, body, "sha256=00").await;
    assert_eq!(code, 401, "a bad signature must be refused");
    let (code, _) = post(address, &path, body, &webhook::sign(b"other-key", body)).await;
    assert_eq!(code, 401, "a signature with another key must be refused");
    let (code, _) = post(
        address,
        "/hooks/elsewhere/gs",
        body,
        &webhook::sign(b"s3cret-hmac-key", body),
    )
    .await;
    assert_eq!(code, 404, "a namespace git-sync does not serve");
    let (code, _) = post(
        address,
        &path,
        body,
        &webhook::sign(b"s3cret-hmac-key", body),
    )
    .await;
    assert_eq!(code, 202);
    assert!(
        eventually(Duration::from_secs(15), applied(second)).await,
        "the webhook did not trigger a sync"
    );
    assert_eq!(shard_names(&env).await, ["c-0a", "c-0b"]);
    assert!(!running.is_finished());
    running.abort();
}

/// POSTs `body` over plain HTTP/1.1 with the signature header; returns the status code and
/// the response.
async fn post(
    address: std::net::SocketAddr,
    path: &str,
    body: &[u8],
    signature: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         {}: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        webhook::SIGNATURE_HEADER,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, response)
}

#[tokio::test]
async fn an_unknown_kind_is_refused_before_anything_is_applied() {
    let env = env_with_crds().await;
    let repo = Repo::new();
    repo.write("shards.yaml", &shard("c-0", None, None, None));
    repo.write(
        "widget.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
    );
    repo.commit("unknown kind");
    create_git_sync(&env, "gs", &repo, json!({})).await;
    let (syncer, _checkouts) = syncer(&env);
    let error = sync(&env, &syncer, "gs").await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("widget.yaml: Widget/w"), "{message}");
    assert!(message.contains("CustomResourceDefinition"), "{message}");
    assert!(shard_names(&env).await.is_empty());
}

#[tokio::test]
async fn a_changed_spec_is_validated_again_at_the_same_commit() {
    let env = env_with_crds().await;
    let repo = Repo::new();
    repo.write("good/shards.yaml", &shard("c-0", None, None, None));
    repo.write("bad/shards.yaml", &shard("d-0", None, None, None));
    repo.write(
        "bad/cluster.yaml",
        "apiVersion: shardplane.io/v1alpha1\nkind: DatabaseCluster\nmetadata: {name: bad}\n\
         spec: {regions: [{name: eu, zones: [eu-a]}], replicationFactor: 0, version: '15'}\n",
    );
    let commit = repo.commit("two folders");
    create_git_sync(&env, "gs", &repo, json!({"path": "good"})).await;
    let (syncer, _checkouts) = syncer(&env);
    sync(&env, &syncer, "gs").await.unwrap();
    // A resync of the same commit and spec skips the dry-run and still changes nothing.
    let outcome = sync(&env, &syncer, "gs").await.unwrap();
    assert_eq!(
        (outcome.commit.as_str(), outcome.applied.unchanged),
        (commit.as_str(), 1)
    );

    env.api::<GitSync>()
        .patch(
            "gs",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"path": "bad"}})),
        )
        .await
        .unwrap();
    // Same commit, new spec: validated again, twice, and nothing of bad/ is applied.
    for _ in 0..2 {
        let error = sync(&env, &syncer, "gs").await.unwrap_err();
        assert_eq!(error.reason(), "ValidationFailed", "{error}");
        assert_eq!(shard_names(&env).await, ["c-0"]);
    }
}

#[tokio::test]
async fn credentials_never_reach_status_or_events() {
    let env = env_with_crds().await;
    let token = "tok-SECRET-4711";
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds"},
        "stringData": {"username": "bot", "token": token},
    }))
    .unwrap();
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    // Nothing listens on port 1: the fetch fails at once.
    let object: GitSync = serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "GitSync",
        "metadata": {"name": "gs"},
        "spec": {
            "url": "https://127.0.0.1:1/team/db.git",
            "credentialsSecretRef": {"name": "creds"},
        },
    }))
    .unwrap();
    env.api::<GitSync>()
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    let (syncer, _checkouts) = syncer(&env);
    let error = sync(&env, &syncer, "gs").await.unwrap_err();
    assert_eq!(error.reason(), "FetchFailed", "{error}");
    let status = env.kubectl(["get", "gitsync", "gs", "-o", "yaml"]).await;
    let events = env.kubectl(["get", "events", "-o", "yaml"]).await;
    let shown = String::from_utf8_lossy(&status.stdout).to_string()
        + &String::from_utf8_lossy(&events.stdout);
    assert!(shown.contains("FetchFailed"), "{shown}");
    assert!(!shown.contains(token), "the token leaked: {shown}");

    // A URL that carries a password is refused by the API server itself.
    let out = env
        .kubectl([
            "patch",
            "gitsync",
            "gs",
            "--type=merge",
            "-p",
            r#"{"spec":{"url":"https://bot:tok@example.com/db.git"}}"#,
        ])
        .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must not carry a password"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn objects_carry_the_commit_that_last_changed_them() {
    let env = env_with_crds().await;
    let repo = Repo::new();
    repo.write("shards.yaml", &two_shards());
    let first = repo.commit("two shards");
    create_git_sync(&env, "main", &repo, json!({})).await;
    let (syncer, _checkouts) = syncer(&env);
    sync(&env, &syncer, "main").await.unwrap();
    let stamp = |name: &'static str| {
        let shards = env.api::<Shard>();
        async move {
            let shard = shards.get(name).await.unwrap();
            let annotations = shard.metadata.annotations.unwrap_or_default();
            annotations.get("shardplane.io/source-commit").cloned()
        }
    };
    assert_eq!(stamp("c-0").await.as_deref(), Some(first.as_str()));

    // Only c-1 changes: only c-1 is credited to (and rewritten by) the new commit.
    repo.write(
        "shards.yaml",
        &(shard("c-0", None, Some(0), None) + &shard("c-1", Some(0), None, Some("r2"))),
    );
    repo.write("README.md", "unrelated\n");
    let second = repo.commit("c-1 prefers r2");
    let outcome = sync(&env, &syncer, "main").await.unwrap();
    assert_eq!(outcome.applied.unchanged, 1, "{outcome:?}");
    assert_eq!(outcome.applied.configured.len(), 1, "{outcome:?}");
    assert_eq!(stamp("c-0").await.as_deref(), Some(first.as_str()));
    assert_eq!(stamp("c-1").await.as_deref(), Some(second.as_str()));

    // A commit that changes nothing here changes no stamp.
    repo.write("README.md", "still unrelated\n");
    repo.commit("docs");
    let outcome = sync(&env, &syncer, "main").await.unwrap();
    assert_eq!(outcome.applied.unchanged, 2, "{outcome:?}");
    assert_eq!(stamp("c-1").await.as_deref(), Some(second.as_str()));
}

/// A Table manifest of cluster `main`.
fn table(name: &str) -> String {
    let object = json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
        "metadata": {"name": name},
        "spec": {"cluster": "main", "shardKey": "id",
                 "columns": [{"name": "id", "type": "bigint", "nullable": false}],
                 "primaryKey": ["id"]},
    });
    format!("---\n{}", serde_yaml::to_string(&object).unwrap())
}

#[tokio::test]
async fn a_table_removed_from_git_leaves_its_shards_to_the_operators_drop_plan() {
    let env = env_with_crds().await;
    let repo = Repo::new();
    repo.write("tables.yaml", &(table("customers") + &table("orders")));
    repo.write("shards.yaml", &two_shards());
    repo.commit("two tables, customers sharded");
    create_git_sync(&env, "main", &repo, json!({})).await;
    let (syncer, _checkouts) = syncer(&env);
    sync(&env, &syncer, "main").await.unwrap();
    // The operator's finalizer, put by hand: no operator runs here.
    let tables = env.api::<Table>();
    let finalizers = |list: Vec<&str>| json!({"metadata": {"finalizers": list}});
    tables
        .patch(
            "customers",
            &PatchParams::default(),
            &Patch::Merge(finalizers(vec!["shardplane.io/drop-after-approval"])),
        )
        .await
        .unwrap();

    repo.write("tables.yaml", &table("orders"));
    repo.remove("shards.yaml");
    repo.commit("drop customers");
    let outcome = sync(&env, &syncer, "main").await.unwrap();
    let pruned: Vec<String> = outcome.pruned.iter().map(|id| id.short()).collect();
    assert_eq!(pruned, ["Table/customers"]);
    assert!(
        tables
            .get("customers")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    // The data stays until the drop plan runs; the Shards are the operator's to delete now.
    assert_eq!(shard_names(&env).await, ["c-0", "c-1"]);
    assert!(
        outcome
            .inventory
            .iter()
            .all(|entry| !entry.contains("/Shard/"))
    );

    // Without the operator's finalizer, a removed table's Shards are pruned as before.
    tables
        .patch(
            "customers",
            &PatchParams::default(),
            &Patch::Merge(finalizers(Vec::new())),
        )
        .await
        .unwrap();
    repo.write("tables.yaml", &(table("customers") + &table("orders")));
    repo.write("shards.yaml", &two_shards());
    repo.commit("customers again");
    sync(&env, &syncer, "main").await.unwrap();
    repo.write("tables.yaml", &table("orders"));
    repo.remove("shards.yaml");
    repo.commit("drop customers, unguarded");
    let outcome = sync(&env, &syncer, "main").await.unwrap();
    assert_eq!(outcome.pruned.len(), 3, "{:?}", outcome.pruned);
    assert!(shard_names(&env).await.is_empty());
}
