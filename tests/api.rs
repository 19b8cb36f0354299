//! The six resources against a real kube-apiserver: the CRDs install and become Established,
//! every kind round-trips (spec and status), `kubectl get` prints the printer columns,
//! `kubectl explain` shows field descriptions, and invalid manifests are refused by
//! `kubectl apply` with a message naming the offending field.

mod support;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use shardplane::api::{
    DatabaseCluster, DatabaseNode, Plan, SchemaVersion, Shard, ShardStatus, Table, crds,
};
use support::{TestEnv, env_with_crds};

fn is_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conds| {
            conds
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// Applies `manifest` with `kubectl apply` (client-side, as most users do) from a file.
async fn kubectl_apply(env: &TestEnv, manifest: &Value) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.yaml");
    std::fs::write(&path, serde_yaml::to_string(manifest).unwrap()).unwrap();
    env.kubectl(["apply", "-f", path.to_str().unwrap()]).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn cluster() -> Value {
    json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": "commerce"},
        "spec": {
            "regions": [
                {"name": "eu", "zones": ["eu-a", "eu-b"]},
                {"name": "us", "zones": ["us-a"]},
                {"name": "ap", "zones": ["ap-a"]}
            ],
            "replicationFactor": 3,
            "durability": {"mode": "Quorum", "syncReplicas": 1},
            "approval": {"destructive": "Manual"},
            "failureDetection": {"heartbeatIntervalMs": 500, "suspectAfterMs": 1000, "deadAfterMs": 2000}
        }
    })
}

fn node() -> Value {
    json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
        "metadata": {"name": "eu-a-1"},
        "spec": {
            "cluster": "commerce", "region": "eu", "zone": "eu-a", "address": "127.0.0.1",
            "ports": {"first": 20000, "last": 20031},
            "capacity": {"storageBytes": 1_000_000_000i64}
        }
    })
}

fn table() -> Value {
    json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
        "metadata": {"name": "orders"},
        "spec": {
            "cluster": "commerce",
            "shardKey": "customer_id",
            "sharding": {"mode": "Declared", "keySpace": "Hash"},
            "columns": [
                {"name": "customer_id", "type": "bigint", "nullable": false},
                {"name": "order_id", "type": "bigint", "nullable": false},
                {"name": "note", "type": "varchar(200)"}
            ],
            "primaryKey": ["customer_id", "order_id"],
            "indexes": [{"name": "orders_note", "columns": ["note"]}]
        }
    })
}

fn shard() -> Value {
    json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
        "metadata": {"name": "orders-0"},
        "spec": {"table": "orders", "range": {"start": -100, "end": 100}}
    })
}

fn git_sync() -> Value {
    json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "GitSync",
        "metadata": {"name": "databases"},
        "spec": {
            "url": "https://git.example.com/team/databases.git",
            "branch": "main",
            "path": "db",
            "credentialsSecretRef": {"name": "git-token"}
        }
    })
}

const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn schema_version() -> Value {
    json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "SchemaVersion",
        "metadata": {"name": "orders-v2"},
        "spec": {
            "table": "orders", "version": 2, "previousVersion": 1,
            "schema": {
                "columns": [
                    {"name": "customer_id", "type": "bigint", "nullable": false},
                    {"name": "order_id", "type": "bigint", "nullable": false}
                ],
                "primaryKey": ["customer_id", "order_id"]
            },
            "ddl": ["ALTER TABLE orders DROP COLUMN note"],
            "compatibility": "Destructive",
            "source": {"commit": "4f1c2a9", "path": "tables/orders.yaml"}
        }
    })
}

fn plan() -> Value {
    json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Plan",
        "metadata": {"name": "orders-v2-rollout"},
        "spec": {
            "cluster": "commerce",
            "target": {"kind": "SchemaVersion", "name": "orders-v2"},
            "purpose": "SchemaRollout",
            "cause": {"kind": "GitCommit", "commit": "4f1c2a9", "detail": "drop column note"},
            "risk": "Destructive",
            "hash": HASH,
            "summary": "drop column orders.note on 1 shard",
            "steps": [
                {"id": 0, "action": "ApplySchema", "shard": "orders-0", "detail": "{\"ApplySchema\":{\"shard\":\"orders-0\",\"version\":2}}", "reason": "canary wave"},
                {"id": 1, "wave": 1, "action": "AwaitNodeHealthy", "node": "eu-a-1", "detail": "{\"AwaitNodeHealthy\":{\"node\":\"eu-a-1\"}}", "reason": "every replica replayed it"}
            ],
            "facts": {"bytesToCopy": "0"}
        }
    })
}

#[tokio::test]
async fn crds_install_and_become_established() {
    let env = env_with_crds().await;
    let api: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    for crd in crds() {
        let served = api
            .get(crd.metadata.name.as_deref().unwrap())
            .await
            .unwrap();
        assert!(
            is_established(&served),
            "{:?} not established",
            served.metadata.name
        );
        assert_eq!(
            served.spec.names.categories,
            Some(vec!["shardplane".to_string()])
        );
    }
}

/// Creates `manifest` through the typed API, reads it back, and asserts the spec survived
/// (with the server's defaults, which the typed value fills in the same way).
async fn round_trip<K>(env: &TestEnv, manifest: Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let object: K = serde_json::from_value(manifest.clone()).unwrap();
    let api: Api<K> = env.api();
    api.create(&PostParams::default(), &object).await.unwrap();
    let name = manifest["metadata"]["name"].as_str().unwrap();
    let read = serde_json::to_value(api.get(name).await.unwrap()).unwrap();
    let sent = serde_json::to_value(&object).unwrap();
    assert_eq!(
        read["spec"], sent["spec"],
        "{name}: spec changed in the round trip"
    );
}

#[tokio::test]
async fn every_kind_round_trips_through_the_api() {
    let env = env_with_crds().await;
    round_trip::<DatabaseCluster>(&env, cluster()).await;
    round_trip::<DatabaseNode>(&env, node()).await;
    round_trip::<Table>(&env, table()).await;
    round_trip::<Shard>(&env, shard()).await;
    round_trip::<SchemaVersion>(&env, schema_version()).await;
    round_trip::<Plan>(&env, plan()).await;

    // Status is a subresource: written through /status, it survives; a spec write cannot
    // touch it.
    let shards: Api<Shard> = env.api();
    let status: ShardStatus = serde_json::from_value(json!({
        "phase": "Serving",
        "primary": {"node": "eu-a-1", "epoch": 3},
        "desiredReplicas": [{"node": "eu-a-1", "role": "Primary"}],
        "replicas": [{"node": "eu-a-1", "role": "Primary", "state": "InSync", "lagBytes": 0, "epoch": 3}],
        "desiredReplicaCount": 3, "readyReplicas": 1
    }))
    .unwrap();
    shards
        .patch_status(
            "orders-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .unwrap();
    let read = shards.get("orders-0").await.unwrap();
    assert_eq!(read.status, Some(status));
}

#[tokio::test]
async fn kubectl_get_prints_the_printer_columns() {
    let env = env_with_crds().await;
    for manifest in [
        cluster(),
        node(),
        table(),
        shard(),
        schema_version(),
        plan(),
    ] {
        let out = kubectl_apply(&env, &manifest).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let expected: [(&str, &[&str]); 6] = [
        (
            "databaseclusters",
            &[
                "NAME", "RF", "VERSION", "NODES", "ONLINE", "SHARDS", "READY", "AGE",
            ],
        ),
        (
            "dbn",
            &[
                "NAME",
                "CLUSTER",
                "REGION",
                "ZONE",
                "PHASE",
                "REPLICAS",
                "PRIMARIES",
                "VERSION",
                "HEARTBEAT",
            ],
        ),
        (
            "tables",
            &[
                "NAME",
                "CLUSTER",
                "SHARD KEY",
                "MODE",
                "SHARDS",
                "SCHEMA",
                "READY",
            ],
        ),
        (
            "shards",
            &[
                "NAME", "TABLE", "START", "END", "PRIMARY", "READY", "DESIRED", "PHASE", "AGE",
            ],
        ),
        (
            "sv",
            &["NAME", "TABLE", "VERSION", "CLASS", "COMMIT", "ROLLOUT"],
        ),
        (
            "plans",
            &[
                "NAME", "TARGET", "KIND", "RISK", "PHASE", "DONE", "STEPS", "CAUSE",
            ],
        ),
    ];
    for (resource, columns) in expected {
        let out = env.kubectl(["get", resource]).await;
        let stdout = text(&out.stdout);
        let header = stdout.lines().next().unwrap_or_default();
        for column in columns {
            assert!(
                header.contains(column),
                "`kubectl get {resource}` header {header:?} lacks {column}"
            );
        }
    }
    let out = env.kubectl(["get", "shards"]).await;
    let row = text(&out.stdout)
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(
        row.contains("orders-0")
            && row.contains("orders")
            && row.contains("-100")
            && row.contains("100"),
        "{row}"
    );

    let out = env.kubectl(["get", "shardplane"]).await;
    let all = text(&out.stdout);
    for name in [
        "databasecluster.shardplane.io/commerce",
        "databasenode.shardplane.io/eu-a-1",
        "table.shardplane.io/orders",
        "shard.shardplane.io/orders-0",
        "schemaversion.shardplane.io/orders-v2",
        "plan.shardplane.io/orders-v2-rollout",
    ] {
        assert!(
            all.contains(name),
            "`kubectl get shardplane` lacks {name}:\n{all}"
        );
    }
}

#[tokio::test]
async fn kubectl_explain_shows_field_descriptions() {
    let env = env_with_crds().await;
    let cases = [
        ("shards.spec.range", "half-open"),
        ("shards.spec.range.end", "exclusive"),
        ("tables.spec.shardKey", "immutable"),
        (
            "tables.spec.columns.renamedFrom",
            "never as a drop plus an add",
        ),
        (
            "databaseclusters.spec.approval.destructive",
            "always `Manual`",
        ),
        ("databasenodes.status.lastHeartbeatTime", "liveness"),
        ("plans.spec.hash", "Approvals name it"),
        ("schemaversions.spec.compatibility", "Destructive"),
    ];
    for (field, words) in cases {
        let out = env.kubectl(["explain", field]).await;
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "kubectl explain {field}: {}",
            text(&out.stderr)
        );
        assert!(
            stdout.contains(words),
            "kubectl explain {field} lacks {words:?}:\n{stdout}"
        );
    }
}

/// The examples (what a user copies first) pass every rule: the rules refuse mistakes, not
/// the documented shape.
#[tokio::test]
async fn the_examples_are_accepted() {
    let env = env_with_crds().await;
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let out = env.kubectl(["apply", "-f", file.to_str().unwrap()]).await;
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            text(&out.stderr)
        );
    }
}

/// The replication-factor rule refuses only what `plan::spread_limits` cannot place: these
/// topologies hold their factor (a zone holds up to `rf - quorum` replicas, at least one; a
/// region as many once there are 3 regions), and each is accepted.
#[tokio::test]
async fn topologies_that_hold_their_replication_factor_are_accepted() {
    let env = env_with_crds().await;
    let regions = |zones: &[&[&str]]| -> Value {
        zones
            .iter()
            .enumerate()
            .map(|(i, zones)| json!({"name": format!("r{i}"), "zones": zones}))
            .collect()
    };
    let cases = [
        ("rf1-one-zone", 1, regions(&[&["a"]])),
        ("rf2-two-zones", 2, regions(&[&["a", "b"]])),
        ("rf3-one-region", 3, regions(&[&["a", "b", "c"]])),
        ("rf3-two-regions", 3, regions(&[&["a", "b"], &["c"]])),
        (
            "rf4-four-regions",
            4,
            regions(&[&["a"], &["b"], &["c"], &["d"]]),
        ),
        ("rf5-three-regions", 5, regions(&[&["a"], &["b"], &["c"]])),
        ("rf7-three-regions", 7, regions(&[&["a"], &["b"], &["c"]])),
    ];
    for (name, rf, regions) in cases {
        let manifest = named(
            with(
                with(
                    without(cluster(), "/spec/durability"),
                    "/spec/regions",
                    regions,
                ),
                "/spec/replicationFactor",
                json!(rf),
            ),
            name,
        );
        let out = kubectl_apply(&env, &manifest).await;
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
    }
}

/// An invalid manifest and the words the API server's refusal must contain: the offending
/// field's path, and what is wrong with it.
struct Refusal {
    what: &'static str,
    /// Applied first, and must succeed (for rules about changes).
    before: Option<Value>,
    manifest: Value,
    expect: &'static [&'static str],
}

/// `base` with the field at `pointer` set to `value` (added if absent; arrays by index).
fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    match base
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"))
    {
        Value::Object(map) => {
            map.insert(key.to_string(), value);
        }
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
        other => panic!("{parent} is {other}"),
    }
    base
}

fn without(mut base: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    base.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key);
    base
}

fn named(base: Value, name: &str) -> Value {
    with(base, "/metadata/name", json!(name))
}

fn refuse(what: &'static str, manifest: Value, expect: &'static [&'static str]) -> Refusal {
    Refusal {
        what,
        before: None,
        manifest,
        expect,
    }
}

fn change(
    what: &'static str,
    before: Value,
    manifest: Value,
    expect: &'static [&'static str],
) -> Refusal {
    Refusal {
        what,
        before: Some(before),
        manifest,
        expect,
    }
}

/// A name of `n` letters `c`.
fn long_name(c: char, n: usize) -> String {
    std::iter::repeat_n(c, n).collect()
}

fn refusals() -> Vec<Refusal> {
    let mut cases = existing_refusals();
    cases.extend(cluster_and_node_refusals());
    cases.extend(table_refusals());
    cases.extend(shard_plan_and_schema_version_refusals());
    cases.extend(git_sync_refusals());
    cases
}

/// The rules of the first API review: ranges, immutability, the schema's own consistency.
fn existing_refusals() -> Vec<Refusal> {
    vec![
        refuse(
            "a shard range whose start is after its end",
            named(
                with(shard(), "/spec/range", json!({"start": 50, "end": -50})),
                "bad-range",
            ),
            &["spec.range.start", "must be less than spec.range.end"],
        ),
        refuse(
            "an empty shard range",
            named(
                with(shard(), "/spec/range", json!({"start": 7, "end": 7})),
                "empty-range",
            ),
            &["spec.range.start", "must be less than spec.range.end"],
        ),
        change(
            "a changed shard range",
            named(shard(), "moving-range"),
            named(with(shard(), "/spec/range/end", json!(200)), "moving-range"),
            &["spec.range", "immutable"],
        ),
        refuse(
            "replication factor 0",
            named(
                with(cluster(), "/spec/replicationFactor", json!(0)),
                "rf-zero",
            ),
            &["spec.replicationFactor", "greater than or equal to 1"],
        ),
        refuse(
            "replication factor 8",
            named(
                with(cluster(), "/spec/replicationFactor", json!(8)),
                "rf-eight",
            ),
            &["spec.replicationFactor", "less than or equal to 7"],
        ),
        refuse(
            "a quorum as large as the replication factor",
            named(
                with(cluster(), "/spec/durability/syncReplicas", json!(3)),
                "big-quorum",
            ),
            &[
                "spec.durability.syncReplicas",
                "less than spec.replicationFactor",
            ],
        ),
        refuse(
            "destructive plans approved automatically",
            named(
                with(cluster(), "/spec/approval/destructive", json!("Automatic")),
                "auto-destroy",
            ),
            &["spec.approval.destructive", "must be Manual"],
        ),
        refuse(
            "a client network that is not a network",
            named(
                with(
                    cluster(),
                    "/spec/network",
                    json!({"clientNetworks": ["10.0.0.0/8", "10.0.0.0/33"]}),
                ),
                "bad-network",
            ),
            &["spec.network.clientNetworks[1]", "CIDR notation"],
        ),
        refuse(
            "node certificates shorter-lived than an hour",
            named(
                with(
                    cluster(),
                    "/spec/tls",
                    json!({"certificateDurationSeconds": 60}),
                ),
                "short-certificates",
            ),
            &[
                "spec.tls.certificateDurationSeconds",
                "greater than or equal to 3600",
            ],
        ),
        refuse(
            "the served certificate replaced through a parameter",
            named(
                with(
                    cluster(),
                    "/spec/postgresParameters",
                    json!({"ssl_cert_file": "/tmp/mine.crt"}),
                ),
                "own-certificate",
            ),
            &["spec.postgresParameters", "manages itself", "ssl_cert_file"],
        ),
        refuse(
            "a node address that is not one host",
            named(
                with(node(), "/spec/address", json!("10.0.0.7 trust")),
                "bad-address",
            ),
            &["spec.address", "IP address", "DNS host name"],
        ),
        refuse(
            "a dead timeout shorter than the suspect timeout",
            named(
                with(cluster(), "/spec/failureDetection/deadAfterMs", json!(900)),
                "dead-early",
            ),
            &["spec.failureDetection", "suspectAfterMs < deadAfterMs"],
        ),
        refuse(
            "two regions with one name",
            named(
                with(
                    cluster(),
                    "/spec/regions/1",
                    json!({"name": "eu", "zones": ["eu-c"]}),
                ),
                "twin-regions",
            ),
            &["spec.regions[1]", "Duplicate value"],
        ),
        refuse(
            "a PostgreSQL parameter the agent manages",
            named(
                with(
                    cluster(),
                    "/spec/postgresParameters",
                    json!({"port": "5433"}),
                ),
                "own-port",
            ),
            &[
                "spec.postgresParameters",
                "may not set a parameter Shardplane manages",
            ],
        ),
        refuse(
            "PostgreSQL parameters that would undo durability or recovery",
            named(
                with(
                    cluster(),
                    "/spec/postgresParameters",
                    json!({"work_mem": "8MB", "synchronous_commit": "local", "recovery_target_lsn": "0/0"}),
                ),
                "own-durability",
            ),
            &[
                "spec.postgresParameters",
                "may not set",
                "synchronous_commit",
                "recovery_*",
            ],
        ),
        refuse(
            "a configuration-file directive as a PostgreSQL parameter",
            named(
                with(
                    cluster(),
                    "/spec/postgresParameters",
                    json!({"include_dir": "/etc"}),
                ),
                "own-include",
            ),
            &["spec.postgresParameters", "may not set", "include_dir"],
        ),
        refuse(
            "a malformed PostgreSQL parameter name",
            named(
                with(
                    cluster(),
                    "/spec/postgresParameters",
                    json!({"Work-Mem": "8MB"}),
                ),
                "bad-param-name",
            ),
            &["spec.postgresParameters", "invalid parameter name"],
        ),
        refuse(
            "a PostgreSQL parameter value spanning lines",
            named(
                with(
                    cluster(),
                    "/spec/postgresParameters",
                    json!({"work_mem": "8MB\nport = 1"}),
                ),
                "multi-line-value",
            ),
            &["spec.postgresParameters", "one line"],
        ),
        refuse(
            "an unknown field",
            named(with(cluster(), "/spec/replicationFactr", json!(3)), "typo"),
            &["unknown field", "spec.replicationFactr"],
        ),
        refuse(
            "an unknown column type",
            named(
                with(table(), "/spec/columns/2/type", json!("money2")),
                "odd-type",
            ),
            &["spec.columns[2].type", "should match"],
        ),
        refuse(
            "duplicate column names",
            named(
                with(
                    table(),
                    "/spec/columns/2",
                    json!({"name": "order_id", "type": "text"}),
                ),
                "twin-columns",
            ),
            &["spec.columns[2]", "Duplicate value"],
        ),
        refuse(
            "a column name that is not an SQL identifier",
            named(
                with(table(), "/spec/columns/2/name", json!("Order-Note")),
                "bad-name",
            ),
            &["spec.columns[2].name", "should match"],
        ),
        refuse(
            "a missing shard key",
            named(without(table(), "/spec/shardKey"), "no-key"),
            &["spec.shardKey", "Required value"],
        ),
        refuse(
            "a shard key that is not a column",
            named(
                with(
                    with(table(), "/spec/shardKey", json!("tenant_id")),
                    "/spec/primaryKey",
                    json!(["tenant_id"]),
                ),
                "ghost-key",
            ),
            &["spec.shardKey", "must name one of spec.columns"],
        ),
        refuse(
            "a shard key outside the primary key",
            named(
                with(table(), "/spec/primaryKey", json!(["order_id"])),
                "key-outside-pk",
            ),
            &["spec.shardKey", "must be part of spec.primaryKey"],
        ),
        refuse(
            "a shard key of an unshardable type",
            named(
                with(
                    with(table(), "/spec/columns/0/type", json!("jsonb")),
                    "/spec/columns/0/nullable",
                    json!(false),
                ),
                "json-key",
            ),
            &[
                "spec.shardKey",
                "smallint, integer, bigint, text or varchar",
            ],
        ),
        refuse(
            "a column named like a PostgreSQL system column",
            named(
                with(
                    with(table(), "/spec/columns/2/name", json!("xmin")),
                    "/spec/indexes",
                    json!([]),
                ),
                "system-column",
            ),
            &["spec.columns[2].name", "PostgreSQL system column"],
        ),
        refuse(
            "a nullable primary-key column",
            named(
                with(table(), "/spec/columns/1/nullable", json!(true)),
                "nullable-pk",
            ),
            &["spec.columns", "primary-key column cannot be nullable"],
        ),
        refuse(
            "an index on a column that does not exist",
            named(
                with(table(), "/spec/indexes/0/columns", json!(["missing"])),
                "ghost-index",
            ),
            &["spec.indexes", "only columns of spec.columns"],
        ),
        refuse(
            "a split threshold of the automatic mode, which is not built",
            named(
                with(
                    table(),
                    "/spec/sharding/splitAboveBytes",
                    json!(1_073_741_824i64),
                ),
                "thrash",
            ),
            &["unknown field", "spec.sharding.splitAboveBytes"],
        ),
        change(
            "a changed shard key",
            named(table(), "rekeyed"),
            named(
                with(
                    with(table(), "/spec/shardKey", json!("order_id")),
                    "/spec/primaryKey",
                    json!(["order_id", "customer_id"]),
                ),
                "rekeyed",
            ),
            &["spec.shardKey", "immutable"],
        ),
        refuse(
            "a node port range that runs backwards",
            named(
                with(
                    node(),
                    "/spec/ports",
                    json!({"first": 20010, "last": 20000}),
                ),
                "backwards-ports",
            ),
            &[
                "spec.ports",
                "first must not be greater than spec.ports.last",
            ],
        ),
        change(
            "a node moved to another region",
            named(node(), "wanderer"),
            named(with(node(), "/spec/region", json!("us")), "wanderer"),
            &["spec.region", "immutable"],
        ),
        change(
            "an edited schema version",
            named(schema_version(), "frozen"),
            named(
                with(schema_version(), "/spec/ddl", json!(["DROP TABLE orders"])),
                "frozen",
            ),
            &[
                "spec",
                "immutable: a schema change creates the next SchemaVersion",
            ],
        ),
        refuse(
            "an approval naming another plan's hash",
            named(
                with(
                    plan(),
                    "/spec/approval",
                    json!({"planHash": HASH.replace('0', "f"), "approvedBy": "alice"}),
                ),
                "wrong-approval",
            ),
            &["spec.approval.planHash", "must equal spec.hash"],
        ),
        change(
            "edited plan steps",
            named(plan(), "rewritten"),
            named(
                with(plan(), "/spec/steps/0/action", json!("DropTable")),
                "rewritten",
            ),
            &["spec.steps", "immutable"],
        ),
        change(
            "a destructive plan's purpose rewritten to Failover (which needs no approval)",
            named(plan(), "repurposed"),
            named(
                with(plan(), "/spec/purpose", json!("Failover")),
                "repurposed",
            ),
            &["only spec.approval and spec.paused may change", "purpose"],
        ),
        change(
            "a plan's cause rewritten (its audit trail)",
            named(plan(), "recaused"),
            named(
                with(plan(), "/spec/cause/commit", json!("0000000")),
                "recaused",
            ),
            &["only spec.approval and spec.paused may change", "cause"],
        ),
        change(
            "a plan's facts removed",
            named(plan(), "forgetful"),
            named(with(plan(), "/spec/facts", json!(null)), "forgetful"),
            &["only spec.approval and spec.paused may change", "facts"],
        ),
    ]
}

/// DatabaseCluster and DatabaseNode: names that become labels, topology the spread rule
/// cannot fill, references that must be object names, integers out of range.
fn cluster_and_node_refusals() -> Vec<Refusal> {
    let single_region = |zones: Value, rf: i64| {
        with(
            with(
                cluster(),
                "/spec/regions",
                json!([{"name": "eu", "zones": zones}]),
            ),
            "/spec/replicationFactor",
            json!(rf),
        )
    };
    let capacity = &[
        "spec.replicationFactor",
        "more than spec.regions can hold",
        "declare more zones or regions",
    ];
    vec![
        refuse(
            "a cluster name too long for a label value",
            named(cluster(), &long_name('c', 64)),
            &[
                "metadata.name",
                "at most 63 characters",
                "choose a shorter name",
            ],
        ),
        refuse(
            "three replicas in one region of two zones",
            named(single_region(json!(["eu-a", "eu-b"]), 3), "two-zones"),
            capacity,
        ),
        refuse(
            "two replicas in one zone",
            named(single_region(json!(["eu-a"]), 2), "one-zone"),
            capacity,
        ),
        refuse(
            "four replicas across three regions (one per region at most)",
            named(
                with(cluster(), "/spec/replicationFactor", json!(4)),
                "rf-four",
            ),
            capacity,
        ),
        refuse(
            "a zone name that is not a DNS label",
            named(
                with(cluster(), "/spec/regions/0/zones", json!(["EU_A", "eu-b"])),
                "bad-zone",
            ),
            &["spec.regions[0].zones[0]", "should match", "[a-z0-9]"],
        ),
        refuse(
            "a zone name longer than 63 characters",
            named(
                with(
                    cluster(),
                    "/spec/regions/1/zones",
                    json!([long_name('z', 64)]),
                ),
                "long-zone",
            ),
            &["spec.regions[1].zones[0]", "63"],
        ),
        refuse(
            "a software version with a space",
            named(
                with(cluster(), "/spec/version", json!("15 beta")),
                "bad-version",
            ),
            &["spec.version", "should match"],
        ),
        refuse(
            "a credentials Secret name that is not an object name",
            named(
                with(
                    cluster(),
                    "/spec/credentialsSecret",
                    json!("Commerce_Postgres"),
                ),
                "bad-secret",
            ),
            &["spec.credentialsSecret", "should match", "[a-z0-9]"],
        ),
        refuse(
            "a CA Secret named with its namespace",
            named(
                with(cluster(), "/spec/tls", json!({"caSecret": "infra/ca"})),
                "bad-ca",
            ),
            &["spec.tls.caSecret", "should match"],
        ),
        refuse(
            "the placement policy nothing read (removed)",
            named(
                with(
                    cluster(),
                    "/spec/placement",
                    json!({"spreadAcross": "Region"}),
                ),
                "placement",
            ),
            &["unknown field", "spec.placement"],
        ),
        refuse(
            "a client network listed twice",
            named(
                with(
                    cluster(),
                    "/spec/network",
                    json!({"clientNetworks": ["10.0.0.0/8", "10.0.0.0/8"]}),
                ),
                "twin-networks",
            ),
            &["spec.network.clientNetworks[1]", "Duplicate value"],
        ),
        refuse(
            "an imbalance tolerance of 0 percent",
            named(
                with(
                    cluster(),
                    "/spec/rebalancing",
                    json!({"maxImbalancePercent": 0}),
                ),
                "no-tolerance",
            ),
            &[
                "spec.rebalancing.maxImbalancePercent",
                "greater than or equal to 1",
            ],
        ),
        refuse(
            "more concurrent moves than the bound",
            named(
                with(
                    cluster(),
                    "/spec/rebalancing",
                    json!({"maxConcurrentMoves": 5000}),
                ),
                "stampede",
            ),
            &[
                "spec.rebalancing.maxConcurrentMoves",
                "less than or equal to 4096",
            ],
        ),
        refuse(
            "a negative replacement delay",
            named(
                with(
                    cluster(),
                    "/spec/failureDetection/replaceReplicasAfterSeconds",
                    json!(-1),
                ),
                "negative-delay",
            ),
            &[
                "spec.failureDetection.replaceReplicasAfterSeconds",
                "greater than or equal to 0",
            ],
        ),
        refuse(
            "a heartbeat more often than every 100 ms",
            named(
                with(
                    cluster(),
                    "/spec/failureDetection/heartbeatIntervalMs",
                    json!(50),
                ),
                "fast-heartbeat",
            ),
            &[
                "spec.failureDetection.heartbeatIntervalMs",
                "greater than or equal to 100",
            ],
        ),
        refuse(
            "an unknown durability mode",
            named(
                with(cluster(), "/spec/durability/mode", json!("Sync")),
                "sync-mode",
            ),
            &[
                "spec.durability.mode",
                "Unsupported value",
                "\"Async\"",
                "\"Quorum\"",
            ],
        ),
        refuse(
            "a node region that is not a DNS label",
            named(with(node(), "/spec/region", json!("EU")), "upper-region"),
            &["spec.region", "should match", "[a-z0-9]"],
        ),
        refuse(
            "a node zone with an underscore",
            named(with(node(), "/spec/zone", json!("eu_a")), "underscore-zone"),
            &["spec.zone", "should match"],
        ),
        refuse(
            "a node of a cluster whose name could not be one",
            named(
                with(node(), "/spec/cluster", json!(long_name('c', 64))),
                "long-cluster",
            ),
            &["spec.cluster", "63"],
        ),
        refuse(
            "a node of weight 0",
            named(with(node(), "/spec/weight", json!(0)), "weightless"),
            &["spec.weight", "greater than or equal to 1"],
        ),
        refuse(
            "a port range among the privileged ports",
            named(
                with(node(), "/spec/ports", json!({"first": 80, "last": 90})),
                "privileged-ports",
            ),
            &["spec.ports.first", "greater than or equal to 1024"],
        ),
        refuse(
            "a node without storage",
            named(
                with(node(), "/spec/capacity/storageBytes", json!(0)),
                "no-storage",
            ),
            &["spec.capacity.storageBytes", "greater than or equal to 1"],
        ),
        refuse(
            "an unknown desired node state",
            named(
                with(node(), "/spec/desiredState", json!("Offline")),
                "odd-state",
            ),
            &["spec.desiredState", "Unsupported value", "\"Cordoned\""],
        ),
        change(
            "a node moved to another zone",
            named(node(), "zone-hopper"),
            named(with(node(), "/spec/zone", json!("eu-b")), "zone-hopper"),
            &["spec.zone", "immutable"],
        ),
        change(
            "a node moved to another cluster",
            named(node(), "defector"),
            named(with(node(), "/spec/cluster", json!("billing")), "defector"),
            &["spec.cluster", "immutable"],
        ),
    ]
}

/// Table: names PostgreSQL would truncate or that collide with the primary key's and
/// Shardplane's own, SQL text that could end its statement, the schema rules the admission
/// webhook also applies, and the automatic sharding that is not built.
fn table_refusals() -> Vec<Refusal> {
    let one_sql_expression = &["one SQL expression", "remove them"];
    vec![
        refuse(
            "a table name PostgreSQL would truncate",
            named(table(), &long_name('t', 64)),
            &[
                "metadata.name",
                "at most 63 characters",
                "PostgreSQL truncates",
                "choose a shorter name",
            ],
        ),
        refuse(
            "an index named like the table's primary key",
            named(
                with(table(), "/spec/indexes/0/name", json!("clash_pkey")),
                "clash",
            ),
            &["spec.indexes", "<table>_pkey", "choose another index name"],
        ),
        refuse(
            "an index named like its table",
            named(
                with(table(), "/spec/indexes/0/name", json!("shadow")),
                "shadow",
            ),
            &[
                "spec.indexes",
                "named like its table",
                "choose another index name",
            ],
        ),
        refuse(
            "a check named like the table's primary key",
            named(
                with(
                    table(),
                    "/spec/checks",
                    json!([{"name": "checked_pkey", "expression": "order_id > 0"}]),
                ),
                "checked",
            ),
            &[
                "spec.checks",
                "<table>_pkey",
                "choose another constraint name",
            ],
        ),
        refuse(
            "an index name Shardplane reserves",
            named(
                with(table(), "/spec/indexes/0/name", json!("shardplane_touched")),
                "reserved-index",
            ),
            &[
                "spec.indexes[0].name",
                "reserved for Shardplane",
                "choose another name",
            ],
        ),
        refuse(
            "a check name Shardplane reserves",
            named(
                with(
                    table(),
                    "/spec/checks",
                    json!([{"name": "shardplane_shard_range", "expression": "true"}]),
                ),
                "reserved-check",
            ),
            &["spec.checks[0].name", "reserved for Shardplane"],
        ),
        refuse(
            "an index name PostgreSQL would truncate",
            named(
                with(table(), "/spec/indexes/0/name", json!(long_name('i', 64))),
                "long-index",
            ),
            &[
                "spec.indexes[0].name",
                "at most 63 bytes",
                "PostgreSQL truncates",
            ],
        ),
        refuse(
            "a column name PostgreSQL would truncate",
            named(
                with(
                    with(table(), "/spec/columns/2/name", json!(long_name('n', 64))),
                    "/spec/indexes",
                    json!([]),
                ),
                "long-column",
            ),
            &[
                "spec.columns[2].name",
                "at most 63 bytes",
                "choose a shorter name",
            ],
        ),
        refuse(
            "a column default that ends its statement",
            named(
                with(
                    table(),
                    "/spec/columns/2/default",
                    json!("'x'; DROP TABLE orders"),
                ),
                "injected-default",
            ),
            one_sql_expression,
        ),
        refuse(
            "a column default with a block comment",
            named(
                with(table(), "/spec/columns/2/default", json!("'x' /* note */")),
                "commented-default",
            ),
            &["spec.columns[2].default", "one SQL expression"],
        ),
        refuse(
            "a check expression with a line comment",
            named(
                with(
                    table(),
                    "/spec/checks",
                    json!([{"name": "positive", "expression": "order_id > 0 -- always"}]),
                ),
                "commented-check",
            ),
            &["spec.checks[0].expression", "one SQL expression"],
        ),
        refuse(
            "a rename from a name that is not an SQL identifier",
            named(
                with(table(), "/spec/columns/2/renamedFrom", json!("Old-Note")),
                "bad-rename",
            ),
            &["spec.columns[2].renamedFrom", "should match"],
        ),
        refuse(
            "a column renamed from itself",
            named(
                with(table(), "/spec/columns/2/renamedFrom", json!("note")),
                "self-rename",
            ),
            &["spec.columns[2].renamedFrom", "previous name"],
        ),
        refuse(
            "a unique index without the shard key",
            named(
                with(table(), "/spec/indexes/0/unique", json!(true)),
                "global-unique",
            ),
            &[
                "spec.indexes",
                "must include spec.shardKey",
                "add the shard key",
            ],
        ),
        refuse(
            "a deprecated primary-key column",
            named(
                with(table(), "/spec/columns/1/deprecated", json!(true)),
                "deprecated-key",
            ),
            &["spec.columns", "cannot be deprecated", "create a new table"],
        ),
        refuse(
            "automatic sharding, which is not built",
            named(
                with(table(), "/spec/sharding/mode", json!("Automatic")),
                "automatic",
            ),
            &["spec.sharding.mode", "Unsupported value", "\"Declared\""],
        ),
        refuse(
            "a shard key that is not an SQL identifier",
            named(
                with(table(), "/spec/shardKey", json!("Customer-Id")),
                "bad-shard-key",
            ),
            &["spec.shardKey", "should match"],
        ),
        refuse(
            "a table of a cluster whose name is not an object name",
            named(
                with(table(), "/spec/cluster", json!("Commerce")),
                "upper-cluster",
            ),
            &["spec.cluster", "should match"],
        ),
    ]
}

/// Shard, Plan and SchemaVersion: references that must be object names, a plan hash in the
/// form spec.hash has, credentials in a source URL.
fn shard_plan_and_schema_version_refusals() -> Vec<Refusal> {
    vec![
        refuse(
            "a shard of a table whose name is not an object name",
            named(with(shard(), "/spec/table", json!("Orders")), "upper-table"),
            &["spec.table", "should match"],
        ),
        refuse(
            "a preferred primary region that is not a DNS label",
            named(
                with(
                    shard(),
                    "/spec/placement",
                    json!({"preferredPrimaryRegion": "EU West"}),
                ),
                "odd-preference",
            ),
            &["spec.placement.preferredPrimaryRegion", "should match"],
        ),
        refuse(
            "a pinned node name that is not an object name",
            named(
                with(
                    shard(),
                    "/spec/placement",
                    json!({"pinnedNodes": ["eu-a-1", "EU_A_2"]}),
                ),
                "odd-pin",
            ),
            &["spec.placement.pinnedNodes[1]", "should match"],
        ),
        refuse(
            "more pinned nodes than the largest replica set",
            named(
                with(
                    shard(),
                    "/spec/placement",
                    json!({"pinnedNodes": ["n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"]}),
                ),
                "over-pinned",
            ),
            &["spec.placement.pinnedNodes", "Too many", "7"],
        ),
        change(
            "a shard moved to another table",
            named(shard(), "adopted"),
            named(with(shard(), "/spec/table", json!("customers")), "adopted"),
            &["spec.table", "immutable"],
        ),
        refuse(
            "an approval hash in upper case",
            named(
                with(
                    plan(),
                    "/spec/approval",
                    json!({"planHash": HASH.to_uppercase(), "approvedBy": "alice"}),
                ),
                "shouted-approval",
            ),
            &["spec.approval.planHash", "should match", "[0-9a-f]"],
        ),
        refuse(
            "a plan target that is not an object name",
            named(
                with(plan(), "/spec/target/name", json!("orders v2")),
                "odd-target",
            ),
            &["spec.target.name", "should match"],
        ),
        refuse(
            "a plan step action outside the planner's vocabulary",
            named(
                with(plan(), "/spec/steps/0/action", json!("drop table")),
                "odd-action",
            ),
            &["spec.steps[0].action", "should match", "[A-Z]"],
        ),
        refuse(
            "a plan of a cluster whose name could not be one",
            named(
                with(plan(), "/spec/cluster", json!(long_name('c', 64))),
                "long-plan-cluster",
            ),
            &["spec.cluster", "63"],
        ),
        refuse(
            "a schema version whose source URL carries a token",
            named(
                with(
                    schema_version(),
                    "/spec/source/repository",
                    json!("https://bot:ghp_secret@github.com/team/db.git"),
                ),
                "leaky-source",
            ),
            &[
                "spec.source.repository",
                "must not carry a password",
                "Secret",
            ],
        ),
        refuse(
            "a schema version of a table whose name is not an object name",
            named(
                with(schema_version(), "/spec/table", json!("Orders")),
                "upper-version",
            ),
            &["spec.table", "should match"],
        ),
        refuse(
            "a schema version whose column default ends its statement",
            named(
                with(
                    schema_version(),
                    "/spec/schema/columns/1/default",
                    json!("0; DROP TABLE orders"),
                ),
                "injected-version",
            ),
            &["spec.schema.columns[1].default", "one SQL expression"],
        ),
    ]
}

/// GitSync: credentials never inside the URL, branch names git (and a refspec) accept,
/// paths inside the repository, Secret names, signers with a key.
fn git_sync_refusals() -> Vec<Refusal> {
    let url = |value: &str, name: &str| named(with(git_sync(), "/spec/url", json!(value)), name);
    let branch =
        |value: &str, name: &str| named(with(git_sync(), "/spec/branch", json!(value)), name);
    let not_a_branch = &["spec.branch", "must be a git branch name", "such as main"];
    vec![
        refuse(
            "a GitSync URL with a password",
            url(
                "https://bot:ghp_secret@github.com/team/db.git",
                "https-password",
            ),
            &[
                "spec.url",
                "must not carry a password",
                "credentialsSecretRef",
            ],
        ),
        refuse(
            "an ssh URL with a password",
            url("ssh://git:secret@github.com/team/db.git", "ssh-password"),
            &["spec.url", "must not carry a password"],
        ),
        refuse(
            "an https URL with a token as its user",
            url("https://ghp_secret@github.com/team/db.git", "https-token"),
            &["spec.url", "must not carry a user name or token", "`token`"],
        ),
        refuse(
            "a token in the URL's query string",
            url(
                "https://github.com/team/db.git?access_token=ghp_secret",
                "query-token",
            ),
            &["spec.url", "must not have a query string", "Secret"],
        ),
        refuse(
            "a URL with a space",
            url("https://github.com/team/my db.git", "spaced-url"),
            &["spec.url", "spaces", "percent-encode"],
        ),
        refuse(
            "a git:// URL",
            url("git://github.com/team/db.git", "git-scheme"),
            &["spec.url", "file://, https:// or ssh://"],
        ),
        refuse(
            "a branch that reads as an option",
            branch("-upload-pack=touch", "option-branch"),
            not_a_branch,
        ),
        refuse(
            "a branch that would split the refspec",
            branch("main:refs/heads/other", "refspec-branch"),
            not_a_branch,
        ),
        refuse(
            "a branch with '..'",
            branch("release..1", "dotted-branch"),
            not_a_branch,
        ),
        refuse(
            "a branch ending in .lock",
            branch("main.lock", "locked-branch"),
            not_a_branch,
        ),
        refuse(
            "a path leaving the repository",
            named(
                with(git_sync(), "/spec/path", json!("db/../../secrets")),
                "escaping-path",
            ),
            &["spec.path", "must not contain '..'"],
        ),
        refuse(
            "a sync every second",
            named(
                with(git_sync(), "/spec/intervalSeconds", json!(1)),
                "busy-sync",
            ),
            &["spec.intervalSeconds", "greater than or equal to 5"],
        ),
        refuse(
            "a credentials Secret name that is not an object name",
            named(
                with(
                    git_sync(),
                    "/spec/credentialsSecretRef",
                    json!({"name": "Git Token"}),
                ),
                "odd-credentials",
            ),
            &["spec.credentialsSecretRef.name", "should match"],
        ),
        refuse(
            "an allowed signer without a key",
            named(
                with(
                    git_sync(),
                    "/spec/verify",
                    json!({"allowedSigners": ["alice@example.com"]}),
                ),
                "keyless-signer",
            ),
            &["spec.verify.allowedSigners[0]", "principal keytype base64"],
        ),
    ]
}

/// The kind and name of `manifest`, as `kubectl get` takes them.
fn kind_and_name(manifest: &Value) -> (String, String) {
    let kind = manifest["kind"].as_str().unwrap().to_lowercase();
    let name = manifest["metadata"]["name"].as_str().unwrap().to_owned();
    (format!("{kind}.shardplane.io"), name)
}

/// Whether every field `expected` has is in `actual` with the same value (`actual` may hold
/// more: the server's defaults).
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => expected
            .iter()
            .all(|(k, v)| actual.get(k).is_some_and(|a| contains(a, v))),
        (Value::Array(actual), Value::Array(expected)) => {
            actual.len() == expected.len()
                && actual.iter().zip(expected).all(|(a, e)| contains(a, e))
        }
        _ => actual == expected,
    }
}

#[tokio::test]
async fn invalid_manifests_are_refused_naming_the_field() {
    let env = env_with_crds().await;
    let cases = refusals();
    assert!(cases.len() >= existing_refusals().len() + 40);
    let mut failures = Vec::new();
    for case in &cases {
        if let Some(before) = &case.before {
            let out = kubectl_apply(&env, before).await;
            assert!(
                out.status.success(),
                "{}: the valid original was refused: {}",
                case.what,
                text(&out.stderr)
            );
        }
        let out = kubectl_apply(&env, &case.manifest).await;
        let stderr = text(&out.stderr);
        eprintln!("refused {}: {}", case.what, stderr.trim());
        if out.status.success() {
            failures.push(format!("{}: accepted", case.what));
        } else if let Some(missing) = case.expect.iter().find(|w| !stderr.contains(*w)) {
            failures.push(format!(
                "{}: message lacks {missing:?}: {stderr}",
                case.what
            ));
        }
        // Nothing half-applied: a refused object does not exist, a refused change left the
        // object as it was.
        let (kind, name) = kind_and_name(&case.manifest);
        let out = env.kubectl(["get", &kind, &name, "-o", "json"]).await;
        match &case.before {
            None if out.status.success() => {
                failures.push(format!("{}: the refused object exists", case.what));
            }
            Some(before) => {
                let stored: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                if !contains(&stored["spec"], &before["spec"]) {
                    failures.push(format!(
                        "{}: the refused change was partly applied: {}",
                        case.what, stored["spec"]
                    ));
                }
            }
            None => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
