//! git-sync benchmark against a real local control plane (etcd, kube-apiserver) and real git
//! repositories: (a) one commit of 10,000 Shards applied by one sync (fetch, parse, tiling
//! check, 10,000 server-side dry-runs, 10,000 server-side applies, status with a 10,000-entry
//! inventory), then a no-op resync of the same commit (the drift check); (b) push → applied
//! latency through the signed webhook of the running loop, over several pushes.
//! Run with `cargo bench --bench gitsync`. Exits non-zero if a sync fails or misses objects.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use shardplane::api::GitSync;
use shardplane::gitsync::{self, Syncer, webhook};
use shardplane::plan::KeyRange;
use shardplane::sandbox::ControlPlane;
use support::install_crds;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

const OBJECTS: u64 = 10_000;
const FILES: u64 = 10;
const PUSHES: usize = 7;
const HMAC_KEY: &str = "bench-hmac-key";

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gitsync bench failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> BenchResult<()> {
    let control_plane = ControlPlane::start().await?;
    let client = control_plane.client().await?;
    install_crds(&control_plane).await?;
    let work = tempfile::tempdir()?;
    ten_thousand_objects(&client, work.path()).await?;
    webhook_latency(&client, work.path()).await?;
    Ok(())
}

/// (a) One sync of one commit holding 10,000 Shards, then a no-op resync.
async fn ten_thousand_objects(client: &Client, work: &Path) -> BenchResult<()> {
    let namespace = create_namespace(client, "bench-10k").await?;
    let repo = work.join("repo-10k");
    git_init(&repo)?;
    let ranges = KeyRange::FULL.split_even(OBJECTS)?;
    let per_file = OBJECTS / FILES;
    for (file, chunk) in ranges.chunks(per_file as usize).enumerate() {
        let mut text = String::new();
        for (k, range) in chunk.iter().enumerate() {
            let wire = range.to_wire();
            let index = file * per_file as usize + k;
            text.push_str(&shard_yaml(
                &format!("orders-{index:05}"),
                wire.start,
                wire.end,
                None,
            ));
        }
        std::fs::write(repo.join(format!("shards-{file:02}.yaml")), text)?;
    }
    git_commit(&repo, "10,000 shards")?;
    create_git_sync(client, &namespace, "bulk", &repo, None).await?;
    let syncer = Syncer::new(client.clone(), work.join("checkouts"));
    let api = Api::<GitSync>::namespaced(client.clone(), &namespace);

    let started = Instant::now();
    let outcome = syncer.sync_and_report(&api.get("bulk").await?).await??;
    let first = started.elapsed();
    if outcome.applied.created.len() as u64 != OBJECTS || outcome.inventory.len() as u64 != OBJECTS
    {
        return Err(format!("expected {OBJECTS} created, got {}", outcome.summary()).into());
    }
    let started = Instant::now();
    let outcome = syncer.sync_and_report(&api.get("bulk").await?).await??;
    let resync = started.elapsed();
    if outcome.applied.unchanged as u64 != OBJECTS {
        return Err(format!("the resync changed objects: {}", outcome.summary()).into());
    }
    println!("gitsync_10k_objects_s {:.1}", first.as_secs_f64());
    println!("gitsync_10k_resync_s {:.1}", resync.as_secs_f64());
    Ok(())
}

/// (b) Push → applied through the webhook of the running loop (interval one hour, so only
/// the webhook can explain a sync).
async fn webhook_latency(client: &Client, work: &Path) -> BenchResult<()> {
    let namespace = create_namespace(client, "bench-webhook").await?;
    let repo = work.join("repo-webhook");
    git_init(&repo)?;
    std::fs::write(
        repo.join("shards.yaml"),
        shard_yaml("users-0", None, None, None),
    )?;
    let first = git_commit(&repo, "one shard")?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hook"},
        "stringData": {"secret": HMAC_KEY},
    }))?;
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &secret)
        .await?;
    create_git_sync(client, &namespace, "hooked", &repo, Some("hook")).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let options = gitsync::Options {
        namespaces: vec![namespace.clone()],
        checkout_dir: work.join("loop-checkouts"),
        webhook: Some(listener),
    };
    let running = tokio::spawn(gitsync::run(client.clone(), options));
    let api = Api::<GitSync>::namespaced(client.clone(), &namespace);
    wait_applied(&api, &first, Duration::from_secs(60)).await?;

    let regions = ["eu-west", "us-east", "ap-south"];
    let mut latencies = Vec::new();
    for push in 0..PUSHES {
        let region = regions[push % regions.len()];
        std::fs::write(
            repo.join("shards.yaml"),
            shard_yaml("users-0", None, None, Some(region)),
        )?;
        let commit = git_commit(&repo, &format!("push {push}"))?;
        let started = Instant::now();
        let body = format!(r#"{{"ref":"refs/heads/main","after":"{commit}"}}"#);
        let path = format!("/hooks/{namespace}/hooked");
        let code = post(address, &path, body.as_bytes()).await?;
        if code != 202 {
            return Err(format!("webhook answered {code}").into());
        }
        wait_applied(&api, &commit, Duration::from_secs(30)).await?;
        latencies.push(started.elapsed().as_secs_f64());
    }
    running.abort();
    latencies.sort_by(f64::total_cmp);
    let median = latencies[latencies.len() / 2];
    let max = latencies[latencies.len() - 1];
    println!("gitsync_webhook_to_applied_s {median:.2} (median of {PUSHES} pushes; max {max:.2})");
    Ok(())
}

async fn wait_applied(api: &Api<GitSync>, commit: &str, timeout: Duration) -> BenchResult<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let object = api.get("hooked").await?;
        if object.status.and_then(|s| s.last_applied_commit).as_deref() == Some(commit) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("commit {commit} not applied within {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn post(address: std::net::SocketAddr, path: &str, body: &[u8]) -> BenchResult<u16> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\n{}: {}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        webhook::SIGNATURE_HEADER,
        webhook::sign(HMAC_KEY.as_bytes(), body),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0))
}

async fn create_namespace(client: &Client, name: &str) -> BenchResult<String> {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let created = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(created.name_any())
}

async fn create_git_sync(
    client: &Client,
    namespace: &str,
    name: &str,
    repo: &Path,
    webhook_secret: Option<&str>,
) -> BenchResult<()> {
    let mut spec = json!({
        "url": format!("file://{}", repo.display()),
        "branch": "main",
        "intervalSeconds": 3600,
    });
    if let Some(secret) = webhook_secret {
        spec["webhookSecretRef"] = json!({"name": secret});
    }
    let object: GitSync = serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "GitSync",
        "metadata": {"name": name}, "spec": spec,
    }))?;
    Api::<GitSync>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await?;
    Ok(())
}

fn shard_yaml(name: &str, start: Option<i64>, end: Option<i64>, region: Option<&str>) -> String {
    let mut text = format!(
        "---\napiVersion: shardplane.io/v1alpha1\nkind: Shard\nmetadata:\n  name: {name}\n\
         spec:\n  table: orders\n  range: {{"
    );
    let bounds: Vec<String> = [("start", start), ("end", end)]
        .into_iter()
        .filter_map(|(key, value)| Some(format!("{key}: {}", value?)))
        .collect();
    text.push_str(&bounds.join(", "));
    text.push_str("}\n");
    if let Some(region) = region {
        text.push_str(&format!(
            "  placement: {{preferredPrimaryRegion: {region}}}\n"
        ));
    }
    text
}

fn git(repo: &Path, args: &[&str]) -> BenchResult<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn git_init(repo: &Path) -> BenchResult<()> {
    std::fs::create_dir_all(repo)?;
    git(repo, &["init", "--quiet", "--initial-branch=main"])?;
    git(repo, &["config", "user.name", "Bench"])?;
    git(repo, &["config", "user.email", "bench@example.com"])?;
    git(repo, &["config", "commit.gpgsign", "false"])?;
    Ok(())
}

fn git_commit(repo: &Path, message: &str) -> BenchResult<String> {
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "--quiet", "-m", message])?;
    git(repo, &["rev-parse", "HEAD"])
}
