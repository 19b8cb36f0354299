//! Schema evolution against a real API server: the operator runs in this process with its
//! admission webhook on a loopback port (TLS from a test CA), registered with a
//! ValidatingWebhookConfiguration scoped to the test's namespace. Tables are changed with
//! `kubectl apply`, as users and git-sync do; the SchemaVersions the operator creates are
//! checked version by version, refused changes by the message kubectl prints, and a refused
//! change that bypasses the webhook by the Table's `SchemaAccepted` condition.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, ListParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};
use shardplane::api::schema_version::Compatibility;
use shardplane::api::{SchemaVersion, Table};
use shardplane::controller::{
    self, OperatorConfig, REFUSED_REASON, SCHEMA_ACCEPTED, TABLE_WEBHOOK_PATH, WebhookServing,
};
use shardplane::protocol::TABLE_LABEL;
use support::operator::free_addr;
use support::{TestEnv, env_with_crds, eventually};
use tokio::task::JoinHandle;

/// The webhook's name, as kubectl quotes it in a denial.
const WEBHOOK: &str = "tables.shardplane.io";

/// A test CA and a serving certificate for 127.0.0.1 signed by it: (CA PEM, cert PEM, key PEM).
fn test_certificates() -> (String, String, String) {
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "schema-test-webhook-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// The operator, scoped to the test's namespace, serving the webhook on a loopback port.
struct Operator {
    task: JoinHandle<()>,
    webhook: SocketAddr,
    ca_pem: String,
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_operator(env: &TestEnv, identity: &str) -> Operator {
    let (ca_pem, cert_pem, key_pem) = test_certificates();
    let webhook = free_addr();
    let mut config = OperatorConfig::new(identity, env.namespace.clone());
    config.namespace = Some(env.namespace.clone());
    config.listen = free_addr();
    config.webhook = Some(WebhookServing {
        listen: webhook,
        certificate_chain_pem: cert_pem,
        private_key_pem: key_pem,
    });
    let client = env.client.clone();
    let task = tokio::spawn(async move {
        controller::run(client, config).await.unwrap();
    });
    Operator {
        task,
        webhook,
        ca_pem,
    }
}

/// Registers the operator's webhook for Tables of this namespace only (other tests share the
/// API server); deleted again on drop.
struct Registration {
    name: String,
    env_kubectl: std::process::Command,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self
            .env_kubectl
            .args(["delete", "validatingwebhookconfiguration", &self.name])
            .args(["--ignore-not-found", "--wait=false"])
            .output();
    }
}

async fn register_webhook(env: &TestEnv, operator: &Operator) -> Registration {
    let name = format!("schema-test-{}", env.namespace);
    let configuration: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": WEBHOOK,
            "clientConfig": {
                "url": format!("https://{}{TABLE_WEBHOOK_PATH}", operator.webhook),
                "caBundle": ByteString(operator.ca_pem.clone().into_bytes()),
            },
            "rules": [{
                "apiGroups": ["shardplane.io"], "apiVersions": ["v1alpha1"],
                "resources": ["tables"], "operations": ["CREATE", "UPDATE"], "scope": "Namespaced",
            }],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.namespace}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }]
    }))
    .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(env.client.clone())
        .create(&PostParams::default(), &configuration)
        .await
        .unwrap();
    let mut env_kubectl = env.control_plane.kubectl_command();
    env_kubectl.stdin(std::process::Stdio::null());
    Registration { name, env_kubectl }
}

/// The `orders` Table as a manifest: sharded by customer, with a check and no index.
fn orders() -> Value {
    json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
        "metadata": {"name": "orders", "annotations": {"shardplane.io/source-commit": "c0ffee0001"}},
        "spec": {
            "cluster": "main",
            "shardKey": "customer_id",
            "columns": [
                {"name": "customer_id", "type": "bigint", "nullable": false},
                {"name": "id", "type": "bigint", "nullable": false},
                {"name": "amount", "type": "numeric(12,2)", "default": "0"},
                {"name": "quantity", "type": "integer"},
                {"name": "note", "type": "varchar(20)"},
                {"name": "legacy", "type": "text"},
            ],
            "primaryKey": ["customer_id", "id"],
            "indexes": [{"name": "by_note", "columns": ["note"]}],
            "checks": [{"name": "positive", "expression": "amount >= 0"}],
        }
    })
}

/// `kubectl apply -f <manifest>`; returns (succeeded, stderr).
async fn apply(env: &TestEnv, manifest: &Value) -> (bool, String) {
    apply_with(env, manifest, &[]).await
}

/// `kubectl apply -f <manifest> <extra>`; returns (succeeded, stderr).
async fn apply_with(env: &TestEnv, manifest: &Value, extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.json");
    std::fs::write(&path, serde_json::to_vec_pretty(manifest).unwrap()).unwrap();
    let mut args = vec!["apply", "-f", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = env.kubectl(args).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn apply_ok(env: &TestEnv, manifest: &Value) -> String {
    let (ok, stderr) = apply(env, manifest).await;
    assert!(ok, "kubectl apply failed: {stderr}");
    stderr
}

fn column<'a>(manifest: &'a mut Value, name: &str) -> &'a mut Value {
    manifest["spec"]["columns"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap()
}

fn remove_column(manifest: &mut Value, name: &str) {
    manifest["spec"]["columns"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["name"] != name);
}

async fn versions(env: &TestEnv) -> Vec<SchemaVersion> {
    let mut list = env
        .api::<SchemaVersion>()
        .list(&ListParams::default().labels(&format!("{TABLE_LABEL}=orders")))
        .await
        .unwrap()
        .items;
    list.sort_by_key(|v| v.spec.version);
    list
}

/// Waits for version `n` of `orders` and returns it.
async fn version(env: &TestEnv, n: i64) -> SchemaVersion {
    let found = eventually(Duration::from_secs(30), || async {
        versions(env).await.len() as i64 >= n
    })
    .await;
    assert!(found, "orders-v{n} was not created");
    let list = versions(env).await;
    assert_eq!(list.len() as i64, n, "one version per change: {list:#?}");
    list.into_iter().next_back().unwrap()
}

/// The Table's `SchemaAccepted` condition: (status, reason, message).
async fn accepted(env: &TestEnv) -> Option<(String, String, String)> {
    let table = env.api::<Table>().get("orders").await.ok()?;
    let condition = table
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == SCHEMA_ACCEPTED)?;
    Some((
        serde_json::to_value(condition.status)
            .ok()?
            .as_str()?
            .to_owned(),
        condition.reason,
        condition.message,
    ))
}

/// Waits until the API server calls the webhook: a server-side dry run (which changes
/// nothing) of a change it must refuse is refused.
async fn wait_for_webhook(env: &TestEnv) {
    let mut bad = orders();
    column(&mut bad, "amount")["type"] = json!("integer");
    let refused = eventually(Duration::from_secs(20), || async {
        let (_, stderr) = apply_with(env, &bad, &["--dry-run=server"]).await;
        stderr.contains(WEBHOOK)
    })
    .await;
    assert!(refused, "the webhook never answered");
}

#[tokio::test]
async fn versions_follow_online_rewrite_destructive_and_rename_changes() {
    let env = env_with_crds().await;
    let operator = start_operator(&env, "schema-op-1");
    let _registration = register_webhook(&env, &operator).await;

    let mut table = orders();
    apply_ok(&env, &table).await;
    let v1 = version(&env, 1).await;
    assert_eq!(v1.metadata.name.as_deref(), Some("orders-v1"));
    assert_eq!(v1.spec.previous_version, None);
    assert_eq!(v1.spec.compatibility, Compatibility::Online);
    assert_eq!(
        v1.spec.ddl,
        [
            "CREATE TABLE \"orders\" (\"customer_id\" bigint NOT NULL, \"id\" bigint NOT NULL, \
             \"amount\" numeric(12,2) DEFAULT 0, \"quantity\" integer, \"note\" varchar(20), \
             \"legacy\" text, CONSTRAINT \"positive\" CHECK (amount >= 0), \
             PRIMARY KEY (\"customer_id\", \"id\"))",
            "CREATE INDEX \"by_note\" ON \"orders\" (\"note\")",
        ]
    );
    assert_eq!(
        v1.spec.source.as_ref().and_then(|s| s.commit.as_deref()),
        Some("c0ffee0001")
    );
    let owner = &v1.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Table", "orders")
    );
    wait_for_webhook(&env).await;

    // Each step: an edit, git-sync's commit stamp, the expected class and DDL.
    type Step = (fn(&mut Value), Compatibility, Vec<&'static str>);
    let steps: Vec<Step> = vec![
        (
            |t| {
                t["spec"]["columns"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "shipped_at", "type": "timestamptz"}))
            },
            Compatibility::Online,
            vec!["ALTER TABLE \"orders\" ADD COLUMN \"shipped_at\" timestamptz"],
        ),
        (
            |t| {
                t["spec"]["indexes"].as_array_mut().unwrap().push(
                    json!({"name": "by_customer_amount", "columns": ["customer_id", "amount"]}),
                )
            },
            Compatibility::Online,
            vec![
                "CREATE INDEX CONCURRENTLY \"by_customer_amount\" ON \"orders\" (\"customer_id\", \"amount\")",
            ],
        ),
        (
            |t| column(t, "note")["type"] = json!("varchar(40)"),
            Compatibility::Online,
            vec!["ALTER TABLE \"orders\" ALTER COLUMN \"note\" TYPE varchar(40)"],
        ),
        (
            |t| column(t, "quantity")["type"] = json!("bigint"),
            Compatibility::Rewrite,
            vec!["ALTER TABLE \"orders\" ALTER COLUMN \"quantity\" TYPE bigint"],
        ),
        (
            |t| column(t, "legacy")["deprecated"] = json!(true),
            Compatibility::Online,
            vec![],
        ),
        (
            |t| remove_column(t, "legacy"),
            Compatibility::Destructive,
            vec!["ALTER TABLE \"orders\" DROP COLUMN \"legacy\""],
        ),
        (
            |t| {
                let note = column(t, "note");
                note["name"] = json!("remark");
                note["renamedFrom"] = json!("note");
                t["spec"]["indexes"][0]["columns"] = json!(["remark"]);
            },
            Compatibility::Online,
            vec!["ALTER TABLE \"orders\" RENAME COLUMN \"note\" TO \"remark\""],
        ),
    ];
    for (i, (edit, class, ddl)) in steps.into_iter().enumerate() {
        let n = i as i64 + 2;
        if n == 6 {
            // Before the deprecation has its own version, the drop is refused.
            let mut early = table.clone();
            remove_column(&mut early, "legacy");
            let (ok, stderr) = apply(&env, &early).await;
            assert!(
                !ok && stderr.contains(
                    "spec.columns[legacy]: dropping column legacy is refused: it is not deprecated"
                ),
                "{stderr}"
            );
        }
        edit(&mut table);
        table["metadata"]["annotations"]["shardplane.io/source-commit"] =
            json!(format!("c0ffee000{n}"));
        let stderr = apply_ok(&env, &table).await;
        if class != Compatibility::Online {
            assert!(
                stderr.contains("Warning:"),
                "kubectl shows no warning for a {class:?} change: {stderr}"
            );
        }
        let v = version(&env, n).await;
        assert_eq!(v.metadata.name, Some(format!("orders-v{n}")));
        assert_eq!(v.spec.previous_version, Some(n - 1));
        assert_eq!(
            v.spec.compatibility, class,
            "version {n}: {:?}",
            v.spec.changes
        );
        assert_eq!(v.spec.ddl, ddl, "version {n}");
        assert_eq!(
            v.spec.source.as_ref().and_then(|s| s.commit.clone()),
            Some(format!("c0ffee000{n}"))
        );
        assert_eq!(
            &v.spec.schema,
            &serde_json::from_value(table["spec"].clone()).unwrap()
        );
    }
    let ok = eventually(Duration::from_secs(10), || async {
        accepted(&env)
            .await
            .is_some_and(|(status, reason, _)| status == "True" && reason != REFUSED_REASON)
    })
    .await;
    assert!(ok, "SchemaAccepted is not True: {:?}", accepted(&env).await);

    // kubectl get schemaversions shows the history.
    let out = env.kubectl(["get", "schemaversions"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "TABLE", "VERSION", "CLASS", "COMMIT", "ROLLOUT", "AGE"
        ]
    );
    assert_eq!(lines.len(), 9, "{text}");
    let row = |name: &str| -> Vec<String> {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap();
        line.split_whitespace().take(6).map(str::to_owned).collect()
    };
    // Version 1 is the CREATE TABLE each new primary runs: complete at once. The others wait
    // for a rollout (this namespace has no cluster or shards to roll them out to).
    assert_eq!(
        row("orders-v1"),
        [
            "orders-v1",
            "orders",
            "1",
            "Online",
            "c0ffee0001",
            "Complete"
        ]
    );
    assert_eq!(
        row("orders-v5"),
        [
            "orders-v5",
            "orders",
            "5",
            "Rewrite",
            "c0ffee0005",
            "Pending"
        ]
    );
    assert_eq!(
        row("orders-v7"),
        [
            "orders-v7",
            "orders",
            "7",
            "Destructive",
            "c0ffee0007",
            "Pending"
        ]
    );

    // A restarted operator (another replica taking over) makes no second version of any
    // generation.
    drop(operator);
    let _restarted = start_operator(&env, "schema-op-2");
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(versions(&env).await.len(), 8);
}

/// Whether kubectl's `stderr` refuses a change with `message`: the webhook's denial, or — for
/// the rules the CRD itself carries too (unique indexes without the shard key, SQL fragments,
/// deprecated key columns), which the API server checks before asking the webhook — the
/// CRD's refusal naming the same field.
fn refused_naming(stderr: &str, message: &str) -> bool {
    let field = message.split(['[', ':']).next().unwrap_or(message);
    stderr.contains(&format!(
        "admission webhook \"{WEBHOOK}\" denied the request: {message}"
    )) || (stderr.contains("is invalid") && stderr.contains(field))
}

#[tokio::test]
async fn refused_changes_are_denied_by_kubectl_and_reported_when_the_webhook_is_bypassed() {
    let env = env_with_crds().await;
    let operator = start_operator(&env, "schema-op-refusals");
    let registration = register_webhook(&env, &operator).await;
    let base = orders();
    apply_ok(&env, &base).await;
    version(&env, 1).await;
    wait_for_webhook(&env).await;

    type Refusal = (fn(&mut Value), &'static str);
    let refusals: Vec<Refusal> = vec![
        (
            |t| column(t, "amount")["type"] = json!("integer"),
            "spec.columns[amount].type: narrowing numeric(12,2) to integer is refused: values that do not fit would be lost or fail on some shards; add a new column of type integer, backfill it, and deprecate amount",
        ),
        (
            |t| column(t, "note")["type"] = json!("varchar(10)"),
            "spec.columns[note].type: narrowing varchar(20) to varchar(10) is refused",
        ),
        (
            |t| column(t, "legacy")["type"] = json!("uuid"),
            "spec.columns[legacy].type: converting text to uuid is refused: PostgreSQL has no conversion that keeps every value",
        ),
        (
            |t| column(t, "customer_id")["type"] = json!("integer"),
            "spec.columns[customer_id].type: changing the type of shard key column customer_id from bigint to integer is refused",
        ),
        (
            |t| t["spec"]["primaryKey"] = json!(["customer_id"]),
            "spec.primaryKey: changing the primary key from (customer_id, id) to (customer_id) is refused",
        ),
        (
            |t| remove_column(t, "quantity"),
            "spec.columns[quantity]: dropping column quantity is refused: it is not deprecated; deprecate it first (`deprecated: true`), move applications off it, then remove it",
        ),
        (
            |t| {
                t["spec"]["columns"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "region", "type": "text", "nullable": false}))
            },
            "spec.columns[region].nullable: adding column region as NOT NULL without a default is refused",
        ),
        (
            |t| {
                t["spec"]["columns"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "remark", "type": "text", "renamedFrom": "nope"}))
            },
            "spec.columns[remark].renamedFrom: renaming column nope to remark is refused: the current version has no column nope",
        ),
        (
            |t| {
                t["spec"]["columns"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "remark", "type": "varchar(20)", "renamedFrom": "note"}))
            },
            "spec.columns[remark].renamedFrom: renaming column note to remark is refused: column note is still declared",
        ),
        (
            |t| t["spec"]["indexes"][0]["columns"] = json!(["note", "amount"]),
            "spec.indexes[by_note]: changing index by_note in place is refused: declare the new index under a new name, then remove this one",
        ),
        (
            |t| {
                t["spec"]["indexes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "one_note", "columns": ["note"], "unique": true}))
            },
            "spec.indexes[one_note].unique: a unique index one_note without the shard key is refused: uniqueness can only be enforced within a shard; add customer_id to its columns",
        ),
        (
            |t| t["spec"]["columns"].as_array_mut().unwrap().swap(2, 3),
            "spec.columns: moving column quantity before column amount is refused: PostgreSQL cannot reorder columns",
        ),
        (
            |t| {
                t["spec"]["columns"]
                    .as_array_mut()
                    .unwrap()
                    .insert(2, json!({"name": "early", "type": "text"}))
            },
            "spec.columns[early]: adding column early before column legacy is refused: PostgreSQL appends new columns",
        ),
        (
            |t| column(t, "amount")["default"] = json!("0; DROP TABLE orders"),
            "spec.columns[amount].default: the expression `0; DROP TABLE orders` with a `;` or a comment is refused",
        ),
        (
            |t| column(t, "id")["deprecated"] = json!(true),
            "spec.columns[id].deprecated: deprecating primary-key column id is refused: a primary-key column can never be dropped",
        ),
    ];
    assert!(refusals.len() >= 10);
    let mut by_webhook = 0;
    for (edit, message) in refusals {
        let mut changed = base.clone();
        edit(&mut changed);
        let (ok, stderr) = apply(&env, &changed).await;
        assert!(!ok, "applied a change that must be refused ({message})");
        assert!(
            refused_naming(&stderr, message),
            "expected the denial {message:?}, kubectl said: {stderr}"
        );
        by_webhook += usize::from(stderr.contains(&format!("\"{WEBHOOK}\" denied")));
    }
    assert!(
        by_webhook >= 10,
        "only {by_webhook} changes were refused by the webhook"
    );
    // CEL refuses a new shard key before the webhook is asked.
    let mut rekeyed = base.clone();
    rekeyed["spec"]["shardKey"] = json!("id");
    let (ok, stderr) = apply(&env, &rekeyed).await;
    assert!(
        !ok && stderr.contains("spec.shardKey is immutable"),
        "{stderr}"
    );
    // On CREATE too (the CRD's own rule, or the webhook's).
    let mut unique = base.clone();
    unique["metadata"]["name"] = json!("invoices");
    unique["spec"]["indexes"] =
        json!([{"name": "one_amount", "columns": ["amount"], "unique": true}]);
    let (ok, stderr) = apply(&env, &unique).await;
    assert!(
        !ok && refused_naming(
            &stderr,
            "spec.indexes[one_amount].unique: a unique index one_amount without the shard key is refused"
        ),
        "{stderr}"
    );
    assert_eq!(
        versions(&env).await.len(),
        1,
        "a refused change made a version"
    );

    // Without the webhook, the refused change reaches the API; the operator refuses it.
    drop(registration);
    let mut dropped = base.clone();
    remove_column(&mut dropped, "quantity");
    let applied = eventually(Duration::from_secs(20), || async {
        apply(&env, &dropped).await.0
    })
    .await;
    assert!(
        applied,
        "the change was still refused after the webhook was deleted"
    );
    let refused = eventually(Duration::from_secs(20), || async {
        accepted(&env)
            .await
            .is_some_and(|(status, reason, _)| status == "False" && reason == REFUSED_REASON)
    })
    .await;
    let condition = accepted(&env).await;
    assert!(refused, "SchemaAccepted did not turn False: {condition:?}");
    assert_eq!(
        condition.unwrap().2,
        "spec.columns[quantity]: dropping column quantity is refused: it is not deprecated; deprecate it first (`deprecated: true`), move applications off it, then remove it"
    );
    let events = env
        .kubectl([
            "get",
            "events",
            "--field-selector",
            &format!("reason={REFUSED_REASON}"),
            "-o",
            "name",
        ])
        .await;
    assert!(
        !String::from_utf8_lossy(&events.stdout).trim().is_empty(),
        "no {REFUSED_REASON} event"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        versions(&env).await.len(),
        1,
        "a refused change made a version"
    );

    // Putting the column back is accepted again, with no new version.
    apply_ok(&env, &base).await;
    let back = eventually(Duration::from_secs(20), || async {
        accepted(&env)
            .await
            .is_some_and(|(status, _, _)| status == "True")
    })
    .await;
    assert!(
        back,
        "SchemaAccepted stayed False: {:?}",
        accepted(&env).await
    );
    assert_eq!(versions(&env).await.len(), 1);
}
