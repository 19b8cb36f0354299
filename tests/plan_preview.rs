//! `shardplane plan` as a user runs it, on real git repositories: a split (one Shard
//! replaced by two covering it) previewed offline in Markdown and JSON with a reproducible
//! plan hash; a schema change reported honestly (no DDL yet); and, against a real
//! kube-apiserver, the live cluster's shard sizes turned into bytes to copy.

mod fixtures;
mod support;

use std::path::Path;
use std::process::Command;

use fixtures::{Repo, git};
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use shardplane::api::{DatabaseNode, Shard};
use support::env_with_crds;

const SPLIT_POINT: i64 = 6_917_529_027_641_081_856;

/// A repository whose `main` holds the repository's `examples/` under `db/`, and whose
/// branch `split` replaces `customers-3` by two shards covering its keys.
fn repo_with_split() -> Repo {
    let repo = Repo::new();
    let root = repo.path();
    std::fs::create_dir(root.join("db")).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, root.join("db").join(path.file_name().unwrap())).unwrap();
        }
    }
    git(root, &["add", "-A"]);
    git(root, &["commit", "--quiet", "-m", "examples"]);
    git(root, &["checkout", "--quiet", "-b", "split"]);
    let shards = root.join("db/shards-customers.yaml");
    let text = std::fs::read_to_string(&shards).unwrap();
    let old = "metadata:\n  name: customers-3\nspec:\n  table: customers\n  range: {start: 4611686018427387904}";
    assert!(
        text.contains(old),
        "examples/shards-customers.yaml changed shape"
    );
    let new = format!(
        "metadata:\n  name: customers-3a\nspec:\n  table: customers\n  range: {{start: 4611686018427387904, end: {SPLIT_POINT}}}\n\
         ---\napiVersion: shardplane.io/v1alpha1\nkind: Shard\n\
         metadata:\n  name: customers-3b\nspec:\n  table: customers\n  range: {{start: {SPLIT_POINT}}}"
    );
    std::fs::write(&shards, text.replace(old, &new)).unwrap();
    git(root, &["commit", "--quiet", "-am", "split customers-3"]);
    repo
}

/// Runs `shardplane plan` with `args`; returns stdout, failing on a non-zero exit.
fn shardplane_plan(args: &[&str], kubeconfig: Option<&Path>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shardplane"));
    command.arg("plan").args(args);
    match kubeconfig {
        Some(path) => command.env("KUBECONFIG", path),
        None => command.env("KUBECONFIG", "/nonexistent/kubeconfig"),
    };
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "shardplane plan {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_plan(repo: &Path, extra: &[&str]) -> Value {
    let repo = repo.to_str().unwrap();
    let mut args = vec![
        "--repo", repo, "--base", "main", "--head", "split", "--path", "db", "--format", "json",
    ];
    args.extend(extra);
    serde_json::from_str(&shardplane_plan(&args, None)).unwrap()
}

#[test]
fn a_split_is_previewed_with_its_steps_risk_and_a_reproducible_hash() {
    let repo = repo_with_split();
    let preview = json_plan(repo.path(), &["--offline"]);
    assert_eq!(preview["live"], false);
    let reshards = preview["reshards"].as_array().unwrap();
    assert_eq!(reshards.len(), 1, "{preview:#}");
    let split = &reshards[0];
    assert_eq!(split["kind"], "Split");
    assert_eq!(split["table"], "customers");
    assert_eq!(split["sources"][0]["name"], "customers-3");
    let targets: Vec<&str> = split["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["customers-3a", "customers-3b"]);
    assert_eq!(
        split["targets"][0]["range"],
        format!("[4611686018427387904, {SPLIT_POINT})")
    );
    // Dropping the source after the switch is what makes a split destructive.
    assert_eq!(split["risk"], "Destructive");
    assert_eq!(preview["risk"], "Destructive");
    assert!(split["bytesToCopy"].is_null(), "sizes need a live cluster");
    let steps: Vec<&str> = split["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let actions: Vec<&str> = steps
        .iter()
        .map(|s| s.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "PrepareTargets",
            "CopyRows",
            "CopyRows",
            "CatchUpTarget",
            "CatchUpTarget",
            "FenceWrites",
            "VerifyRanges",
            "SwitchRouting",
            "DropShards"
        ]
    );
    assert!(
        steps[1].contains("source=customers-3 target=customers-3a"),
        "{}",
        steps[1]
    );
    assert!(split["blocked"].as_array().unwrap().is_empty());
    assert!(preview["droppedShards"].as_array().unwrap().is_empty());
    assert!(preview["addedShards"].as_array().unwrap().is_empty());
    assert!(preview["problems"].as_array().unwrap().is_empty());
    let hash = split["planHash"].as_str().unwrap();
    assert_eq!(hash.len(), 64);
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));

    // The same change previews to the same hash; the Markdown carries it.
    let again = json_plan(repo.path(), &["--offline"]);
    assert_eq!(again["reshards"][0]["planHash"], hash);
    let markdown = shardplane_plan(
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--base",
            "main",
            "--head",
            "split",
            "--path",
            "db",
            "--offline",
        ],
        None,
    );
    assert!(
        markdown.contains("#### Split of table `customers`: `customers-3`"),
        "{markdown}"
    );
    assert!(markdown.contains("**Risk: Destructive**"), "{markdown}");
    assert!(markdown.contains(hash), "{markdown}");
    assert!(markdown.contains("Bytes to copy: unknown"), "{markdown}");
}

#[test]
fn without_a_reachable_cluster_the_base_commit_is_the_reference() {
    let repo = repo_with_split();
    // No --offline: the kubeconfig does not exist, so the preview falls back to the base.
    let preview = json_plan(repo.path(), &[]);
    assert_eq!(preview["live"], false);
    assert!(
        preview["comparedWith"]
            .as_str()
            .unwrap()
            .contains("base commit"),
        "{preview:#}"
    );
    assert_eq!(preview["reshards"][0]["kind"], "Split");
}

#[test]
fn a_schema_change_is_reported_without_pretending_to_know_its_ddl() {
    let repo = repo_with_split();
    let root = repo.path();
    let tables = root.join("db/tables.yaml");
    let text = std::fs::read_to_string(&tables).unwrap();
    // Add a nullable column to the first table's column list.
    let marker = "  columns:\n";
    let at = text.find(marker).expect("tables.yaml lists columns") + marker.len();
    let mut changed = text.clone();
    changed.insert_str(
        at,
        "    - {name: loyalty_tier, type: text, nullable: true}\n",
    );
    std::fs::write(&tables, changed).unwrap();
    git(root, &["commit", "--quiet", "-am", "add a column"]);

    let preview = json_plan(root, &["--offline"]);
    let changes = preview["tableChanges"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{preview:#}");
    assert_eq!(changes[0]["kind"], "Changed");
    assert_eq!(changes[0]["fields"], json!(["spec.columns"]));
    assert!(changes[0]["ddl"].is_null());
    assert!(changes[0]["compatibility"].is_null());
    assert!(
        changes[0]["note"]
            .as_str()
            .unwrap()
            .contains("not available yet")
    );
    let markdown = shardplane_plan(
        &[
            "--repo",
            root.to_str().unwrap(),
            "--base",
            "main",
            "--head",
            "split",
            "--path",
            "db",
            "--offline",
        ],
        None,
    );
    assert!(markdown.contains("### Tables and schema"), "{markdown}");
    assert!(
        markdown.contains("| changed | spec.columns | not available yet | not available yet |"),
        "{markdown}"
    );
}

#[tokio::test]
async fn against_a_live_cluster_the_sizes_become_bytes_to_copy() {
    let env = env_with_crds().await;
    let repo = repo_with_split();
    git(repo.path(), &["checkout", "--quiet", "main"]);
    let out = env
        .kubectl(["apply", "-f", repo.path().join("db").to_str().unwrap()])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What agents and the operator would report: the shard's size, the nodes online.
    let size: i64 = 7 * 1024 * 1024 * 1024;
    env.api::<Shard>()
        .patch_status(
            "customers-3",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"sizeBytes": size}})),
        )
        .await
        .unwrap();
    let nodes = env.api::<DatabaseNode>();
    for node in nodes.list(&Default::default()).await.unwrap() {
        let name = node.metadata.name.unwrap();
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Online"}})),
            )
            .await
            .unwrap();
    }
    // A shard that git never declared is not this repository's: not reported dropped.
    let stray: Shard = serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
        "metadata": {"name": "stray"},
        "spec": {"table": "elsewhere", "range": {}},
    }))
    .unwrap();
    env.api::<Shard>()
        .create(&Default::default(), &stray)
        .await
        .unwrap();

    let kubeconfig = env.control_plane.kubeconfig_path().to_path_buf();
    let repo_path = repo.path().to_str().unwrap().to_owned();
    let namespace = env.namespace.clone();
    let stdout = tokio::task::spawn_blocking(move || {
        shardplane_plan(
            &[
                "--repo",
                &repo_path,
                "--base",
                "main",
                "--head",
                "split",
                "--path",
                "db",
                "--namespace",
                &namespace,
                "--format",
                "json",
            ],
            Some(&kubeconfig),
        )
    })
    .await
    .unwrap();
    let preview: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(preview["live"], true, "{preview:#}");
    let split = &preview["reshards"][0];
    assert_eq!(split["kind"], "Split");
    assert_eq!(split["bytesToCopy"], size);
    assert!(split["blocked"].as_array().unwrap().is_empty(), "{split:#}");
    assert!(preview["droppedShards"].as_array().unwrap().is_empty());
}

#[test]
fn a_missing_manifest_folder_fails_naming_it() {
    let repo = repo_with_split();
    let out = Command::new(env!("CARGO_BIN_EXE_shardplane"))
        .args(["plan", "--offline", "--base", "main", "--head", "split"])
        .args(["--path", "nowhere", "--repo"])
        .arg(repo.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--path \"nowhere\" is not a folder in commit"),
        "{stderr}"
    );
}
