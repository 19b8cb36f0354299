//! The GitOps loop closed end to end, with real parts: a git repository made by the test, a
//! real API server, git-sync and the operator in-process, nodes driven by stand-in agents.
//! A pull request decommissions a node; `shardplane plan` shows the operator's plan and its
//! hash; a merge carrying a wrong hash leaves that plan waiting (`HashMismatch`); a merge
//! carrying the previewed hash gets exactly that plan executed, and the Plan names the
//! commit that caused it.

mod fixtures;
mod support;

use std::path::Path;
use std::time::Duration;

use fixtures::{Repo, git, start_operator};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use shardplane::api::plan::{CauseKind, PlanPhase};
use shardplane::api::{DatabaseNode, GitSync, NodePhase, Plan, Shard};
use shardplane::gitsync::Syncer;
use shardplane::planpreview::{self, OperatorPlan, PreviewRequest};
use shardplane::sandbox::stand_in_agent::StandInAgent;
use support::{TestEnv, env_with_crds, eventually};

/// Six nodes, two zones in each of three regions.
const NODES: [(&str, &str, &str); 6] = [
    ("n1", "r1", "r1-a"),
    ("n2", "r1", "r1-b"),
    ("n3", "r2", "r2-a"),
    ("n4", "r2", "r2-b"),
    ("n5", "r3", "r3-a"),
    ("n6", "r3", "r3-b"),
];

fn yaml(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap()))
        .collect()
}

/// The node manifests; `n6` with `desiredState` and approval annotation when given.
fn nodes_yaml(n6_state: Option<&str>, approve: Option<&str>) -> String {
    let objects: Vec<Value> = NODES
        .iter()
        .map(|(name, region, zone)| {
            let mut node = json!({
                "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
                "metadata": {"name": name},
                "spec": {"cluster": "main", "region": region, "zone": zone, "address": "127.0.0.1",
                         "ports": {"first": 20000, "last": 20099},
                         "capacity": {"storageBytes": 100_000_000_000i64}}
            });
            if *name == "n6" {
                if let Some(state) = n6_state {
                    node["spec"]["desiredState"] = json!(state);
                }
                if let Some(hash) = approve {
                    node["metadata"]["annotations"] = json!({"shardplane.io/approve-plan": hash});
                }
            }
            node
        })
        .collect();
    yaml(&objects)
}

/// The cluster, one table and its four shards.
fn topology_yaml() -> String {
    let mut objects = vec![
        json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
            "metadata": {"name": "main"},
            "spec": {
                "regions": [
                    {"name": "r1", "zones": ["r1-a", "r1-b"]},
                    {"name": "r2", "zones": ["r2-a", "r2-b"]},
                    {"name": "r3", "zones": ["r3-a", "r3-b"]}
                ],
                "replicationFactor": 3,
                "approval": {"safe": "Automatic", "disruptive": "Automatic", "destructive": "Manual"},
                "rebalancing": {"enabled": false}
            }
        }),
        json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
            "metadata": {"name": "orders"},
            "spec": {"cluster": "main", "shardKey": "id",
                     "columns": [{"name": "id", "type": "bigint", "nullable": false}],
                     "primaryKey": ["id"]}
        }),
    ];
    let bounds = [None, Some(-(1i64 << 62)), Some(0), Some(1i64 << 62), None];
    for i in 0..4 {
        let mut range = json!({});
        if let Some(start) = bounds[i] {
            range["start"] = json!(start);
        }
        if let Some(end) = bounds[i + 1] {
            range["end"] = json!(end);
        }
        objects.push(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": format!("orders-{i}")},
            "spec": {"table": "orders", "range": range}
        }));
    }
    yaml(&objects)
}

/// Commits `nodes.yaml` on a new branch `branch` off `main`, and returns the commit.
fn pull_request(dir: &Path, branch: &str, nodes: &str) -> String {
    git(dir, &["checkout", "--quiet", "-b", branch, "main"]);
    std::fs::write(dir.join("nodes.yaml"), nodes).unwrap();
    git(dir, &["commit", "--quiet", "-am", branch]);
    git(dir, &["rev-parse", "HEAD"])
}

/// Merges `branch` into `main` with a merge commit, as a pull request's merge button does,
/// and lets git-sync apply it; returns the merge commit.
async fn merge_and_sync(env: &TestEnv, syncer: &Syncer, dir: &Path, branch: &str) -> String {
    git(dir, &["checkout", "--quiet", "main"]);
    git(dir, &["merge", "--quiet", "--no-ff", "-m", branch, branch]);
    let merged = git(dir, &["rev-parse", "HEAD"]);
    assert_eq!(sync(env, syncer).await, merged);
    merged
}

/// `shardplane plan` for `branch` against `main` and the live cluster: the operator's plan.
async fn preview(env: &TestEnv, dir: &Path, branch: &str) -> OperatorPlan {
    let request = PreviewRequest {
        repo: dir.to_path_buf(),
        base: "main".into(),
        head: branch.into(),
        path: String::new(),
        namespace: env.namespace.clone(),
    };
    let preview = planpreview::preview(&request, Some(env.client.clone()))
        .await
        .unwrap();
    assert!(
        preview.live,
        "the preview did not use the live cluster: {preview:?}"
    );
    assert_eq!(
        preview.operator_plans.len(),
        1,
        "{:?}",
        preview.operator_plans
    );
    let markdown = planpreview::render::markdown(&preview);
    let plan = preview.operator_plans[0].clone();
    assert!(markdown.contains(&plan.hash), "{markdown}");
    plan
}

async fn sync(env: &TestEnv, syncer: &Syncer) -> String {
    let object = env.api::<GitSync>().get("db").await.unwrap();
    let outcome = syncer.sync_and_report(&object).await.unwrap().unwrap();
    outcome.commit
}

/// Whether every shard serves with three in-sync replicas and no plan is active.
async fn steady(env: &TestEnv) -> bool {
    let shards: Api<Shard> = env.api();
    let plans: Api<Plan> = env.api();
    let (Ok(shards), Ok(plans)) = (
        shards.list(&Default::default()).await,
        plans.list(&Default::default()).await,
    ) else {
        return false;
    };
    shards.items.len() == 4
        && shards.items.iter().all(|s| {
            let st = s.status.clone().unwrap_or_default();
            st.ready_replicas == Some(3) && st.primary.is_some()
        })
        && plans
            .items
            .iter()
            .all(|p| p.status.as_ref().and_then(|s| s.phase) == Some(PlanPhase::Succeeded))
}

async fn replicas_on(env: &TestEnv, node: &str) -> usize {
    env.api::<Shard>()
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.desired_replicas.iter().any(|r| r.node == node))
        })
        .count()
}

async fn plan_with_hash(env: &TestEnv, hash: &str) -> Option<Plan> {
    let plans = env.api::<Plan>().list(&Default::default()).await.ok()?;
    plans.items.into_iter().find(|p| p.spec.hash == hash)
}

#[tokio::test]
async fn a_reviewed_pull_request_approves_exactly_the_plan_the_operator_runs() {
    let env = env_with_crds().await;
    let repo = Repo::new();
    let dir = repo.path();
    repo.write("topology.yaml", &topology_yaml());
    repo.write("nodes.yaml", &nodes_yaml(None, None));
    repo.commit("base");

    // Base commit applied by git-sync; the operator places every shard.
    let git_sync: GitSync = serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "GitSync",
        "metadata": {"name": "db"},
        "spec": {"url": repo.url(), "branch": "main", "intervalSeconds": 3600}
    }))
    .unwrap();
    env.api::<GitSync>()
        .create(&PostParams::default(), &git_sync)
        .await
        .unwrap();
    let checkouts = tempfile::tempdir().unwrap();
    let syncer = Syncer::new(env.client.clone(), checkouts.path().to_path_buf());
    let base = sync(&env, &syncer).await;
    let (operator, addr) = start_operator(&env, "op-loop");
    let _agents: Vec<StandInAgent> = NODES
        .iter()
        .map(|(name, _, _)| {
            StandInAgent::start(env.client.clone(), &env.namespace, name, vec![addr])
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(90), || steady(&env)).await,
        "the base commit never became a steady cluster\n{}",
        env.dump()
    );
    assert!(
        replicas_on(&env, "n6").await > 0,
        "n6 holds nothing to move"
    );
    let n6 = env.api::<DatabaseNode>().get("n6").await.unwrap();
    assert_eq!(
        n6.annotations().get("shardplane.io/source-commit"),
        Some(&base),
        "git-sync did not stamp the commit it applied"
    );

    // PR 1 decommissions n6 but approves a wrong hash.
    let wrong = "0".repeat(64);
    pull_request(
        dir,
        "decommission",
        &nodes_yaml(Some("Decommissioned"), Some(&wrong)),
    );
    let previewed = preview(&env, dir, "decommission").await;
    assert_eq!(previewed.purpose, "Decommission");
    assert_eq!(previewed.target, "DatabaseNode/n6");
    assert!(previewed.caused_by_change && previewed.needs_approval && !previewed.approved_in_head);
    assert!(
        previewed.steps.iter().any(|s| s.starts_with("RemoveNode")),
        "{:?}",
        previewed.steps
    );
    let first_merge = merge_and_sync(&env, &syncer, dir, "decommission").await;

    assert!(
        eventually(Duration::from_secs(30), || async {
            plan_with_hash(&env, &previewed.hash)
                .await
                .is_some_and(|p| {
                    p.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Approved" && c.reason == "HashMismatch")
                    })
                })
        })
        .await,
        "the operator made no plan with the previewed hash {} waiting on HashMismatch\n{}",
        previewed.hash,
        env.dump()
    );
    let plan = plan_with_hash(&env, &previewed.hash).await.unwrap();
    assert_eq!(plan.name_any(), previewed.name);
    assert_eq!(plan.spec.cause.kind, CauseKind::GitCommit);
    assert_eq!(
        plan.spec.cause.commit.as_deref(),
        Some(first_merge.as_str())
    );
    // Not executed: still waiting, no step started, n6 still holds its replicas.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let plan = plan_with_hash(&env, &previewed.hash).await.unwrap();
    let status = plan.status.clone().unwrap();
    assert_eq!(status.phase, Some(PlanPhase::AwaitingApproval));
    assert!(status.steps.is_empty(), "{status:?}");
    assert!(replicas_on(&env, "n6").await > 0);
    let mismatch = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Approved")
        .unwrap();
    assert!(
        mismatch.message.contains(&wrong) && mismatch.message.contains(&previewed.hash),
        "{}",
        mismatch.message
    );

    // PR 2 approves the previewed hash: the same plan, now approved in git.
    pull_request(
        dir,
        "approve",
        &nodes_yaml(Some("Decommissioned"), Some(&previewed.hash)),
    );
    let approving = preview(&env, dir, "approve").await;
    assert_eq!(approving.hash, previewed.hash);
    assert!(approving.approved_in_head && !approving.caused_by_change);
    let second_merge = merge_and_sync(&env, &syncer, dir, "approve").await;

    assert!(
        eventually(Duration::from_secs(60), || async {
            plan_with_hash(&env, &previewed.hash)
                .await
                .is_some_and(|p| p.status.and_then(|s| s.phase) == Some(PlanPhase::Succeeded))
        })
        .await,
        "the approved plan never succeeded\n{}",
        env.dump()
    );
    let plan = plan_with_hash(&env, &previewed.hash).await.unwrap();
    let approved_by = plan
        .status
        .as_ref()
        .and_then(|s| s.approved_by.clone())
        .unwrap();
    assert_eq!(
        approved_by,
        format!("annotation:DatabaseNode/n6@{second_merge}")
    );
    assert_eq!(replicas_on(&env, "n6").await, 0);
    let n6 = env.api::<DatabaseNode>().get("n6").await.unwrap();
    assert_eq!(
        n6.status.and_then(|s| s.phase),
        Some(NodePhase::Decommissioned)
    );
    // One plan for the change, not one per reconcile or per commit.
    let decommissions = env
        .api::<Plan>()
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.spec.target.name == "n6")
        .count();
    assert_eq!(decommissions, 1);

    // `kubectl get plans` shows the commit that caused the plan.
    let out = env.kubectl(["get", "plans"]).await;
    let listing = String::from_utf8_lossy(&out.stdout);
    let row = listing
        .lines()
        .find(|l| l.starts_with(&previewed.name))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(
        listing.lines().next().unwrap().contains("COMMIT"),
        "{listing}"
    );
    assert!(
        row.contains("GitCommit") && row.contains(&first_merge),
        "{listing}"
    );
    operator.abort();
}
