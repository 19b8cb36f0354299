//! Online split and merge with the real operator, three real agent processes and real
//! PostgreSQL: a table of four shards at RF 3 while a workload writes rows with unique ids
//! through the routing library. A split of one shard into two, then a merge of two adjacent
//! shards into one, each declared as Shards (as a pull request would) and approved by plan
//! hash; after each, every acknowledged write is found exactly once, no shard has two
//! writable primaries, the routing map names the new shards, and the replaced shards'
//! instances are gone after the grace period. A verification that finds a row the source
//! does not have aborts the change and leaves the source serving.

#[path = "agent/harness.rs"]
mod harness;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use kube::api::Api;
use shardplane::api::plan::PlanPhase;
use shardplane::api::shard::{ReplicaRole, ReplicaState};
use shardplane::api::{Shard, Table};
use shardplane::routing::{Router, ShardKeyValue};
use shardplane::workload::{Checker, Workload, WorkloadConfig};
use support::{env_with_crds, eventually};

use harness::{
    DataPlane, TABLE, assert_succeeded, connect, declare, keys_in, reshard, router_and_checker,
    set_retire_grace,
};

const GRACE_SECONDS: u64 = 3;

/// The workload, the checker and every id acknowledged so far.
struct Ledger {
    router: Router,
    checker: Checker,
    acked: BTreeSet<i64>,
    next_id: i64,
}

impl Ledger {
    async fn start(&mut self) -> Workload {
        let mut config = WorkloadConfig::new(TABLE, "id", 4, 100.0);
        config.first_id = self.next_id;
        self.next_id += 10_000_000;
        let workload = Workload::start(self.router.clone(), &config).unwrap();
        assert!(
            eventually(Duration::from_secs(60), || async {
                workload.acked_so_far() >= 50
            })
            .await,
            "the workload did not get going"
        );
        workload
    }

    /// Lets the workload write 100 more rows, stops it, checks every acknowledged row.
    async fn check(&mut self, what: &str, workload: Workload) {
        let at = workload.acked_so_far();
        assert!(
            eventually(Duration::from_secs(60), || async {
                workload.acked_so_far() >= at + 100
            })
            .await,
            "{what}: the workload did not continue after the change"
        );
        let report = workload.stop().await;
        println!("{what}: workload: {report}");
        assert!(report.failed.is_empty(), "{what}: {report}");
        self.acked.extend(&report.acked);
        let acked = self
            .acked
            .iter()
            .map(|&id| ShardKeyValue::Int(id))
            .collect();
        let check = self.checker.check(&acked).await.unwrap();
        println!(
            "{what}: checker: acked {}, found {}, missing {}, duplicated {}, misplaced {}, \
             shards with two writable primaries {}",
            check.rows.acked,
            check.rows.found,
            check.rows.missing,
            check.rows.duplicated,
            check.rows.misplaced,
            check.primaries.split_brains().len()
        );
        harness::assert_nothing_lost(what, &check, self.acked.len());
    }
}

async fn routed(plane: &DataPlane) -> Vec<String> {
    let tables: Api<Table> = Api::namespaced(plane.client.clone(), &plane.namespace);
    let table = tables.get(TABLE).await.unwrap();
    table
        .status
        .and_then(|s| s.routing)
        .map(|r| r.ranges.into_iter().map(|e| e.shard).collect())
        .unwrap_or_default()
}

fn primary_endpoint(shard: &Shard) -> String {
    let status = shard.status.clone().unwrap();
    let primary = status.primary.unwrap();
    harness::report(shard, &primary.node)
        .and_then(|r| r.endpoint.clone())
        .unwrap()
}

/// Every endpoint of the shard's replicas.
fn endpoints(shard: &Shard) -> Vec<String> {
    shard
        .status
        .clone()
        .unwrap_or_default()
        .replicas
        .into_iter()
        .filter_map(|r| r.endpoint)
        .collect()
}

/// The replaced shards and their instances are gone.
async fn assert_gone(plane: &DataPlane, name: &str, old_endpoints: &[String]) {
    assert!(
        plane.shards().get_opt(name).await.unwrap().is_none(),
        "{name} still exists"
    );
    for endpoint in old_endpoints {
        assert!(
            eventually(Duration::from_secs(20), || async {
                connect(endpoint).await.is_err()
            })
            .await,
            "the instance of {name} at {endpoint} still runs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_and_merge_online_lose_no_acknowledged_write_and_a_bad_copy_aborts() {
    let env = env_with_crds().await;
    let plane = DataPlane::start(
        env.client.clone(),
        &env.namespace,
        env.control_plane.kubeconfig_path(),
        4,
    )
    .await;
    plane.wait_serving(4, Duration::from_secs(180)).await;
    set_retire_grace(&plane, GRACE_SECONDS).await;
    let (router, checker) = router_and_checker(&env.client, &env.namespace).await;
    let mut ledger = Ledger {
        checker,
        router,
        acked: BTreeSet::new(),
        next_id: 1,
    };

    // Split orders-1 in two at the middle of its range, while the workload writes.
    let source = plane.shards().get("orders-1").await.unwrap();
    let (start, end) = (
        source.spec.range.start.unwrap(),
        source.spec.range.end.unwrap(),
    );
    let middle = ((i128::from(start) + i128::from(end)) / 2) as i64;
    let old_endpoints = endpoints(&source);
    let workload = ledger.start().await;
    let (plan, window) = reshard(
        &plane,
        vec![
            declare("orders-1a", Some(start), Some(middle)),
            declare("orders-1b", Some(middle), Some(end)),
        ],
        "orders-1",
    )
    .await;
    assert_succeeded(&plan);
    println!("split: write-fence window (fence → routing switched) {window:?} ms");
    assert!(window.is_some_and(|w| w >= 0), "no fence window recorded");
    let names = routed(&plane).await;
    assert_eq!(
        names,
        ["orders-0", "orders-1a", "orders-1b", "orders-2", "orders-3"]
    );
    ledger.check("split", workload).await;
    assert_gone(&plane, "orders-1", &old_endpoints).await;
    plane.wait_serving(5, Duration::from_secs(60)).await;

    // Merge orders-2 and orders-3 (adjacent: orders-3 ends the key space).
    let second = plane.shards().get("orders-2").await.unwrap();
    let third = plane.shards().get("orders-3").await.unwrap();
    let old_endpoints: Vec<String> = endpoints(&second)
        .into_iter()
        .chain(endpoints(&third))
        .collect();
    let workload = ledger.start().await;
    let (plan, window) = reshard(
        &plane,
        vec![declare("orders-23", second.spec.range.start, None)],
        "orders-2",
    )
    .await;
    assert_succeeded(&plan);
    println!("merge: write-fence window (fence → routing switched) {window:?} ms");
    assert!(window.is_some_and(|w| w >= 0), "no fence window recorded");
    assert_eq!(
        routed(&plane).await,
        ["orders-0", "orders-1a", "orders-1b", "orders-23"]
    );
    ledger.check("merge", workload).await;
    assert_gone(&plane, "orders-2", &old_endpoints).await;
    assert!(plane.shards().get_opt("orders-3").await.unwrap().is_none());
    plane.wait_serving(4, Duration::from_secs(60)).await;

    // A split whose target holds a row the source does not: verification fails, the change
    // is aborted, and orders-0 keeps serving (unfenced, still routed).
    let zero = plane.shards().get("orders-0").await.unwrap();
    let end = zero.spec.range.end.unwrap();
    let middle = ((i128::from(i64::MIN) + i128::from(end)) / 2) as i64;
    let low = declare("orders-0a", None, Some(middle));
    let stray = keys_in(&low, 1_000_000_000_000, 1)[0];
    let workload = ledger.start().await;
    let shards = plane.shards();
    let injector = tokio::spawn(async move {
        // As soon as the target's primary serves (the copy waits for all three replicas),
        // write a row there directly.
        loop {
            if let Ok(Some(target)) = shards.get_opt("orders-0a").await
                && let Some(primary) = target.status.as_ref().and_then(|s| s.primary.clone())
                && let Some(report) = harness::report(&target, &primary.node)
                && report.role == ReplicaRole::Primary
                && report.state == ReplicaState::InSync
                && let Some(endpoint) = &report.endpoint
            {
                let client = connect(endpoint).await.unwrap();
                client
                    .execute(
                        &format!("INSERT INTO {TABLE} (id, note) VALUES ($1, 'stray')"),
                        &[&stray],
                    )
                    .await
                    .unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (plan, _) = reshard(
        &plane,
        vec![low, declare("orders-0b", Some(middle), Some(end))],
        "orders-0",
    )
    .await;
    injector.await.unwrap();
    let status = plan.status.clone().unwrap();
    assert_eq!(status.phase, Some(PlanPhase::Failed), "{status:?}");
    let failed = status
        .steps
        .iter()
        .find_map(|s| {
            s.message
                .clone()
                .filter(|m| m.contains("verification failed"))
        })
        .unwrap_or_default();
    println!("aborted split: {failed}");
    assert!(failed.contains("orders-0a"), "{status:?}");
    assert_eq!(
        routed(&plane).await,
        ["orders-0", "orders-1a", "orders-1b", "orders-23"]
    );
    let zero = plane.shards().get("orders-0").await.unwrap();
    let endpoint = primary_endpoint(&zero);
    assert!(
        eventually(Duration::from_secs(20), || async {
            let Ok(client) = connect(&endpoint).await else {
                return false;
            };
            client
                .query_one(
                    "SELECT current_setting('default_transaction_read_only')",
                    &[],
                )
                .await
                .is_ok_and(|row| row.get::<_, String>(0) == "off")
        })
        .await,
        "orders-0's primary was not unfenced after the abort"
    );
    ledger.check("aborted split", workload).await;
}
