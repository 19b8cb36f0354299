//! `shardplane plan` as a user runs it, on real git repositories: a split (one Shard
//! replaced by two covering it) previewed offline in Markdown and JSON with a reproducible
//! plan hash; against a real kube-apiserver, the live cluster's shard sizes turned into bytes
//! to copy; and schema changes (an additive, a narrowing and a destructive pull request)
//! previewed with their DDL and class, offline and against a cluster where git-sync and the
//! operator run, whose SchemaVersion then carries the previewed DDL, number and merge commit.

mod fixtures;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fixtures::{Repo, git, start_operator};
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use shardplane::api::schema_version::Compatibility;
use shardplane::api::{DatabaseNode, GitSync, SchemaVersion, Shard};
use shardplane::gitsync::Syncer;
use shardplane::planpreview::{self, PreviewRequest};
use support::{env_with_crds, eventually};

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

// Schema changes.

const ADD_NOTE: &str = r#"ALTER TABLE "orders" ADD COLUMN "note" text"#;
const INDEX_NOTE: &str =
    r#"CREATE INDEX CONCURRENTLY "orders_note" ON "orders" ("customer_id", "note")"#;
const NARROWING: &str = "spec.columns[amount].type: narrowing numeric(12,2) to integer is refused: values that do not fit would be lost or fail on some shards; add a new column of type integer, backfill it, and deprecate amount";

/// A cluster and the table `orders` with `columns` and `indexes`, as one manifest file.
fn orders_yaml(columns: &[Value], indexes: &[Value]) -> String {
    let objects = [
        json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
            "metadata": {"name": "main"},
            "spec": {"regions": [{"name": "r1", "zones": ["r1-a"]}], "replicationFactor": 1}
        }),
        json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
            "metadata": {"name": "orders"},
            "spec": {"cluster": "main", "shardKey": "customer_id", "columns": columns,
                     "primaryKey": ["customer_id", "id"], "indexes": indexes}
        }),
    ];
    objects
        .iter()
        .map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap()))
        .collect()
}

/// The columns of `orders` at `main`: `legacy` is deprecated, ready to be dropped.
fn base_columns() -> Vec<Value> {
    vec![
        json!({"name": "customer_id", "type": "bigint", "nullable": false}),
        json!({"name": "id", "type": "bigint", "nullable": false}),
        json!({"name": "amount", "type": "numeric(12,2)"}),
        json!({"name": "legacy", "type": "text", "deprecated": true}),
    ]
}

/// `main` declares `orders`; three pull-request branches off it change its schema:
/// `additive` adds a nullable column and an index, `narrowing` narrows `amount` to integer,
/// `drop-legacy` drops the deprecated column. Returns the repository and `main`'s commit.
fn schema_repo() -> (Repo, String) {
    let repo = Repo::new();
    repo.write("db/orders.yaml", &orders_yaml(&base_columns(), &[]));
    let main = repo.commit("orders");
    let branch = |name: &str, columns: Vec<Value>, indexes: Vec<Value>| {
        repo.git(&["checkout", "--quiet", "-b", name, "main"]);
        repo.write("db/orders.yaml", &orders_yaml(&columns, &indexes));
        repo.commit(name);
    };
    let mut additive = base_columns();
    additive.push(json!({"name": "note", "type": "text"}));
    branch(
        "additive",
        additive,
        vec![json!({"name": "orders_note", "columns": ["customer_id", "note"]})],
    );
    let mut narrowing = base_columns();
    narrowing[2]["type"] = json!("integer");
    branch("narrowing", narrowing, Vec::new());
    let mut dropped = base_columns();
    dropped.pop();
    branch("drop-legacy", dropped, Vec::new());
    repo.git(&["checkout", "--quiet", "main"]);
    (repo, main)
}

/// `shardplane plan --offline` of `head` against `base` in `format`.
fn offline_plan(repo: &Path, base: &str, head: &str, format: &str) -> String {
    let repo = repo.to_str().unwrap();
    shardplane_plan(
        &[
            "--repo",
            repo,
            "--base",
            base,
            "--head",
            head,
            "--path",
            "db",
            "--offline",
            "--format",
            format,
        ],
        None,
    )
}

fn offline_json(repo: &Path, base: &str, head: &str) -> Value {
    serde_json::from_str(&offline_plan(repo, base, head, "json")).unwrap()
}

/// The one table whose schema changes in `preview`.
fn schema_change(preview: &Value) -> &Value {
    let changes = preview["schemaChanges"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{preview:#}");
    assert_eq!(changes[0]["table"], "orders");
    &changes[0]
}

fn classes(schema: &Value) -> Vec<&str> {
    schema["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["class"].as_str().unwrap())
        .collect()
}

#[test]
fn an_added_column_and_index_are_previewed_online_with_their_ddl() {
    let (repo, _) = schema_repo();
    let preview = offline_json(repo.path(), "main", "additive");
    let schema = schema_change(&preview);
    assert_eq!(schema["ddl"], json!([ADD_NOTE, INDEX_NOTE]), "{schema:#}");
    assert_eq!(schema["class"], "online");
    assert_eq!(schema["risk"], "Safe");
    assert_eq!(classes(schema), ["online", "online"]);
    assert!(schema["refusal"].is_null());
    // Compared with a commit, not the cluster: the version's number is not known.
    assert!(schema["version"].is_null(), "{schema:#}");
    assert!(
        schema["comparedWith"]
            .as_str()
            .unwrap()
            .contains("base commit")
    );
    assert_eq!(preview["refused"], false);
    assert_eq!(preview["risk"], "Safe");
    assert_eq!(
        preview["tableChanges"][0]["fields"],
        json!(["spec.columns", "spec.indexes"])
    );

    let markdown = offline_plan(repo.path(), "main", "additive", "markdown");
    assert!(markdown.contains("**Risk: Safe**"), "{markdown}");
    assert!(
        markdown.contains("class **online**, risk **Safe**"),
        "{markdown}"
    );
    assert!(
        markdown.contains(&format!("```sql\n{ADD_NOTE};\n{INDEX_NOTE};\n```")),
        "{markdown}"
    );
    assert!(!markdown.contains("refused"), "{markdown}");
}

#[test]
fn a_narrowed_type_is_previewed_as_refused_with_the_operators_message() {
    let (repo, _) = schema_repo();
    let preview = offline_json(repo.path(), "main", "narrowing");
    let schema = schema_change(&preview);
    assert_eq!(schema["refusal"], NARROWING, "{schema:#}");
    assert_eq!(schema["class"], "refused");
    assert!(schema["risk"].is_null() && schema["version"].is_null());
    assert_eq!(schema["ddl"], json!([]));
    assert_eq!(schema["changes"][0]["field"], "spec.columns[amount].type");
    assert_eq!(preview["refused"], true);

    let markdown = offline_plan(repo.path(), "main", "narrowing", "markdown");
    assert!(
        markdown.contains("**❌ This change would be refused as it is**"),
        "{markdown}"
    );
    assert!(markdown.contains(&format!("> {NARROWING}")), "{markdown}");
    assert!(
        !markdown.contains("No change to shards or tables"),
        "{markdown}"
    );
}

#[test]
fn dropping_a_deprecated_column_is_previewed_destructive() {
    let (repo, _) = schema_repo();
    let preview = offline_json(repo.path(), "main", "drop-legacy");
    let schema = schema_change(&preview);
    assert_eq!(
        schema["ddl"],
        json!([r#"ALTER TABLE "orders" DROP COLUMN "legacy""#]),
        "{schema:#}"
    );
    assert_eq!(schema["class"], "destructive");
    assert_eq!(schema["risk"], "Destructive");
    assert!(
        schema["changes"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("only after approval")
    );
    assert_eq!(preview["risk"], "Destructive");
    assert_eq!(preview["refused"], false);
}

async fn sync(env: &support::TestEnv, syncer: &Syncer) -> String {
    let object = env.api::<GitSync>().get("db").await.unwrap();
    syncer
        .sync_and_report(&object)
        .await
        .unwrap()
        .unwrap()
        .commit
}

/// `shardplane plan` of `head` against `base` and the live cluster, as JSON and Markdown.
async fn live_plan(env: &support::TestEnv, repo: &Path, base: &str, head: &str) -> (Value, String) {
    let request = PreviewRequest {
        repo: repo.to_path_buf(),
        base: base.into(),
        head: head.into(),
        path: "db".into(),
        namespace: env.namespace.clone(),
    };
    let preview = planpreview::preview(&request, Some(env.client.clone()))
        .await
        .unwrap();
    assert!(preview.live, "{:?}", preview.notes);
    (
        serde_json::to_value(&preview).unwrap(),
        planpreview::render::markdown(&preview),
    )
}

/// The SchemaVersion `name` once the operator has created it.
async fn created_version(env: &support::TestEnv, name: &str) -> SchemaVersion {
    let versions = env.api::<SchemaVersion>();
    let created = eventually(Duration::from_secs(30), || async {
        matches!(versions.get_opt(name).await, Ok(Some(_)))
    })
    .await;
    assert!(
        created,
        "the operator made no {name}
{}",
        env.dump()
    );
    versions.get(name).await.unwrap()
}

#[tokio::test]
async fn the_previewed_schema_version_is_the_one_the_operator_creates_from_the_merge() {
    let env = env_with_crds().await;
    let (repo, first_main) = schema_repo();
    let git_sync: GitSync = serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "GitSync",
        "metadata": {"name": "db"},
        "spec": {"url": repo.url(), "branch": "main", "path": "db", "intervalSeconds": 3600}
    }))
    .unwrap();
    env.api::<GitSync>()
        .create(&Default::default(), &git_sync)
        .await
        .unwrap();
    let checkouts = tempfile::tempdir().unwrap();
    let syncer = Syncer::new(env.client.clone(), checkouts.path().to_path_buf());
    assert_eq!(sync(&env, &syncer).await, first_main);
    let (operator, _) = start_operator(&env, "op-plan-preview");
    created_version(&env, "orders-v1").await;

    // The additive pull request, against the cluster: version 2 after orders-v1.
    let (preview, markdown) = live_plan(&env, repo.path(), "main", "additive").await;
    let schema = schema_change(&preview).clone();
    assert_eq!(schema["ddl"], json!([ADD_NOTE, INDEX_NOTE]), "{schema:#}");
    assert_eq!(
        (&schema["version"], &schema["previousVersion"]),
        (&json!(2), &json!(1))
    );
    assert_eq!(schema["class"], "online");
    assert!(
        schema["comparedWith"]
            .as_str()
            .unwrap()
            .contains("SchemaVersion `orders-v1`"),
        "{schema:#}"
    );
    assert!(
        markdown.contains("version 2 (`orders-v2`), class **online**"),
        "{markdown}"
    );
    // The narrowing one is refused against the cluster too.
    let (narrowing, _) = live_plan(&env, repo.path(), "main", "narrowing").await;
    assert_eq!(schema_change(&narrowing)["refusal"], NARROWING);
    assert_eq!(narrowing["refused"], true);

    // Merge the additive pull request; git-sync applies the merge commit.
    repo.git(&[
        "merge",
        "--quiet",
        "--no-ff",
        "-m",
        "merge additive",
        "additive",
    ]);
    let merged = repo.git(&["rev-parse", "HEAD"]);
    assert_eq!(sync(&env, &syncer).await, merged);
    let v2 = created_version(&env, "orders-v2").await.spec;
    assert_eq!(json!(v2.version), schema["version"]);
    assert_eq!(json!(v2.previous_version), schema["previousVersion"]);
    assert_eq!(json!(v2.ddl), schema["ddl"]);
    assert_eq!(v2.compatibility, Compatibility::Online);
    assert_eq!(v2.source.and_then(|s| s.commit), Some(merged));

    // A pull request based on the old main: the cluster is now at orders-v2 (with `note`),
    // which the operator diffs against, so dropping `legacy` there also drops `note` — refused
    // — while the base commit alone would call it a plain destructive drop.
    let (stale, _) = live_plan(&env, repo.path(), &first_main, "drop-legacy").await;
    let stale = schema_change(&stale);
    assert!(
        stale["comparedWith"]
            .as_str()
            .unwrap()
            .contains("SchemaVersion `orders-v2`"),
        "{stale:#}"
    );
    assert!(
        stale["refusal"]
            .as_str()
            .unwrap()
            .contains("spec.columns[note]: dropping column note is refused"),
        "{stale:#}"
    );
    let offline = offline_json(repo.path(), &first_main, "drop-legacy");
    assert_eq!(schema_change(&offline)["class"], "destructive");
    operator.abort();
}
