//! Issue #15, least-privileged database roles, with everything real: the API server, the
//! operator, three `shardplane agent` processes and their PostgreSQL instances. The cluster
//! declares a ReadWrite role `app` and a ReadOnly role `reader`; through the Router as `app`
//! rows are written and read; `app` can do nothing else (no DDL, no TRUNCATE, no roles),
//! `reader` cannot write; the superuser is refused from an address that is not a node's while
//! `app` is admitted from it (over TLS); a role whose Secret is missing is named in the
//! node's status; a changed password works and the old one fails; after a failover the new
//! primary's agent manages the roles: narrowing `app` to another table revokes its access and
//! removing `reader` drops it.

#[path = "agent/harness.rs"]
mod harness;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use shardplane::api::{ConditionStatus, DatabaseCluster, DatabaseNode, Table};
use shardplane::routing::{DatabaseCredentials, Router, RouterConfig, RoutingError, ShardKeyValue};
use support::{env_with_crds, eventually};
use tokio::net::{TcpListener, TcpSocket};

use harness::{DataPlane, TABLE, cluster_authority, connect, connect_tls, serving_primary};

/// SQLSTATE `insufficient_privilege`.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

fn sqlstate(error: &tokio_postgres::Error) -> String {
    error
        .code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| error.to_string())
}

fn secret(name: &str, password: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: Some(
            [(
                "password".to_owned(),
                ByteString(password.as_bytes().to_vec()),
            )]
            .into(),
        ),
        ..Secret::default()
    }
}

/// A session as `user` on the instance at `endpoint` (`host:port`), over TLS checked against
/// `authority` when given.
async fn login(
    endpoint: &str,
    user: &str,
    password: &str,
    authority: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (host, port) = endpoint.rsplit_once(':').unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port.parse().unwrap())
        .user(user)
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(2));
    let client = match authority {
        Some(authority) => {
            let connector = shardplane::tls::postgres_connector(authority).unwrap();
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, connection) = config.connect(connector).await?;
            tokio::spawn(connection);
            client
        }
        None => {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}

/// A TCP relay on 127.0.0.1 to `target` whose connections to `target` come from 127.0.0.2:
/// sessions through it reach the instance from an address that is not a node's (the nodes
/// all live on 127.0.0.1), as an application's would.
async fn relay_from_elsewhere(target: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let socket = TcpSocket::new_v4().unwrap();
                socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                if let Ok(mut outbound) = socket.connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    address
}

async fn set_roles(plane: &DataPlane, roles: serde_json::Value) {
    let clusters: Api<DatabaseCluster> = Api::namespaced(plane.client.clone(), &plane.namespace);
    clusters
        .patch(
            "main",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"roles": roles}})),
        )
        .await
        .unwrap();
}

async fn role_exists(endpoint: &str, role: &str) -> bool {
    let Ok(session) = connect(endpoint).await else {
        return true;
    };
    session
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .map(|row| row.get::<_, i64>(0) > 0)
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn application_roles_get_only_their_access_follow_their_secrets_and_survive_failover() {
    let env = env_with_crds().await;
    let started = Instant::now();
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    for (name, password) in [
        ("app-password", "app-pw-1"),
        ("reader-password", "reader-pw"),
    ] {
        secrets
            .create(&PostParams::default(), &secret(name, password))
            .await
            .unwrap();
    }

    // The CRD refuses a role named like the superuser or PostgreSQL's own roles.
    let clusters: Api<DatabaseCluster> = Api::namespaced(env.client.clone(), &env.namespace);
    for bad in ["postgres", "pg_monitor", "App"] {
        let cluster: DatabaseCluster = serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
            "metadata": {"name": "refused"},
            "spec": {"regions": [{"name": "r1", "zones": ["r1-a"]}], "replicationFactor": 1,
                     "roles": [{"name": bad, "passwordSecret": "x", "access": "ReadOnly"}]}
        }))
        .unwrap();
        let refused = clusters
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("spec.roles[0].name"), "{bad}: {refused}");
    }

    let mut plane = DataPlane::start(
        env.client.clone(),
        &env.namespace,
        env.control_plane.kubeconfig_path(),
        1,
    )
    .await;
    set_roles(
        &plane,
        json!([
            {"name": "app", "passwordSecret": "app-password", "access": "ReadWrite"},
            {"name": "reader", "passwordSecret": "reader-password", "access": "ReadOnly"},
            {"name": "ghost", "passwordSecret": "no-such-secret", "access": "ReadOnly"}
        ]),
    )
    .await;
    plane.wait_serving(1, Duration::from_secs(60)).await;
    let tables: Api<Table> = Api::namespaced(env.client.clone(), &env.namespace);
    let shard = format!("{TABLE}-0");
    let (primary_node, primary, _) = serving_primary(&plane, &tables, &shard, 1)
        .await
        .expect("the shard serves at epoch 1");
    let authority = cluster_authority(&env.client, &env.namespace).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            login(&primary, "app", "app-pw-1", None).await.is_ok()
                && login(&primary, "reader", "reader-pw", None).await.is_ok()
        })
        .await,
        "the roles were not created on the primary in 20 s"
    );
    eprintln!("roles created at {:?}", started.elapsed());

    // Through the Router as `app`: writes and reads.
    let config = RouterConfig {
        deadline: Duration::from_secs(10),
        range_constraint: "shardplane_shard_range".to_owned(),
        ..RouterConfig::default()
    };
    let app = DatabaseCredentials::new("app", "app-pw-1", "postgres")
        .with_tls(&authority)
        .unwrap();
    let router = Router::start(env.client.clone(), &env.namespace, TABLE, app, config)
        .await
        .unwrap();
    for id in 1..=5i64 {
        router
            .execute(
                &ShardKeyValue::Int(id),
                "INSERT INTO orders (id, note) VALUES ($1, 'by app')",
                &[&id],
            )
            .await
            .unwrap();
    }
    let rows = router
        .query(
            &ShardKeyValue::Int(3),
            "SELECT note FROM orders WHERE id = $1",
            &[&3i64],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let deleted = router
        .execute(
            &ShardKeyValue::Int(5),
            "DELETE FROM orders WHERE id = $1",
            &[&5i64],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    // A statement beyond its access is refused at once, with PostgreSQL's reason, not retried.
    let began = Instant::now();
    let refused = router
        .execute(&ShardKeyValue::Int(3), "TRUNCATE orders", &[])
        .await
        .unwrap_err();
    match &refused {
        RoutingError::Refused { source, .. } => {
            assert_eq!(sqlstate(source), INSUFFICIENT_PRIVILEGE, "{refused}")
        }
        other => panic!("TRUNCATE as app was not refused: {other}"),
    }
    assert!(began.elapsed() < Duration::from_secs(5), "{refused}");

    // Nothing but rows: no DDL, no TRUNCATE, no roles.
    let session = login(&primary, "app", "app-pw-1", None).await.unwrap();
    for statement in [
        "DROP TABLE orders",
        "ALTER TABLE orders ADD COLUMN extra int",
        "CREATE TABLE mine (id int)",
        "TRUNCATE orders",
        "CREATE ROLE intruder LOGIN",
        "ALTER ROLE app CREATEROLE",
    ] {
        let error = session.batch_execute(statement).await.unwrap_err();
        assert_eq!(
            sqlstate(&error),
            INSUFFICIENT_PRIVILEGE,
            "{statement}: {error}"
        );
    }
    // `reader` reads and cannot write.
    let reader = login(&primary, "reader", "reader-pw", None).await.unwrap();
    reader.query("SELECT * FROM orders", &[]).await.unwrap();
    let error = reader
        .batch_execute("INSERT INTO orders (id, note) VALUES (1000, 'no')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error), INSUFFICIENT_PRIVILEGE, "{error}");

    // From an address that is not a node's: `app` is admitted over TLS, the superuser is not.
    let relay = relay_from_elsewhere(primary.parse().unwrap()).await;
    let relay = relay.to_string();
    login(&relay, "app", "app-pw-1", Some(&authority))
        .await
        .expect("app logs in from a client address over TLS");
    let superuser = connect_tls(&relay, &authority).await.unwrap_err();
    assert!(
        superuser
            .as_db_error()
            .is_some_and(|e| e.message().contains("rejects connection")),
        "the superuser was not refused from a client address: {superuser:?}"
    );
    // ... while the nodes' own sessions (loopback here) still log in as the superuser.
    connect(&primary).await.unwrap();

    // The role whose Secret is missing is named, with the Secret, in the nodes' status.
    let nodes: Api<DatabaseNode> = Api::namespaced(env.client.clone(), &env.namespace);
    assert!(
        eventually(Duration::from_secs(15), || async {
            let node = nodes.get(&primary_node).await.unwrap();
            node.status.is_some_and(|s| {
                s.role_failures.iter().any(|f| {
                    f.role == "ghost" && f.shard.is_none() && f.reason.contains("no-such-secret")
                })
            })
        })
        .await,
        "the node's status does not name role ghost's missing Secret"
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            let cluster = clusters.get("main").await.unwrap();
            cluster.status.is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "RolesApplied"
                        && c.status == ConditionStatus::False
                        && c.message.contains("ghost on ")
                        && c.message.contains("no-such-secret")
                })
            })
        })
        .await,
        "the cluster's RolesApplied condition does not name role ghost"
    );

    // A new password in the Secret: the new one works, the old one fails.
    secrets
        .replace(
            "app-password",
            &PostParams::default(),
            &secret("app-password", "app-pw-2"),
        )
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(25), || async {
            login(&primary, "app", "app-pw-2", None).await.is_ok()
        })
        .await,
        "the new password was not in force within 25 s"
    );
    login(&primary, "app", "app-pw-1", None).await.unwrap_err();
    eprintln!("password changed at {:?}", started.elapsed());

    // Failover: the primary's node dies; the new primary has the roles (and its agent
    // manages them from now on).
    plane.agents.get_mut(&primary_node).unwrap().kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_primary = loop {
        if let Some((_, endpoint, _)) = serving_primary(&plane, &tables, &shard, 2).await {
            break endpoint;
        }
        assert!(
            Instant::now() < deadline,
            "no new primary at epoch 2 within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    login(&new_primary, "app", "app-pw-2", None)
        .await
        .expect("the new primary has role app with its new password");
    eprintln!("failed over at {:?}", started.elapsed());

    // `app` narrowed to another table, `reader` removed: the new primary's agent revokes and
    // drops.
    set_roles(
        &plane,
        json!([{"name": "app", "passwordSecret": "app-password", "access": "ReadWrite", "tables": ["payments"]}]),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            !role_exists(&new_primary, "reader").await
        })
        .await,
        "role reader still exists on the new primary 20 s after its removal"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            let Ok(session) = login(&new_primary, "app", "app-pw-2", None).await else {
                return false;
            };
            session
                .query("SELECT * FROM orders", &[])
                .await
                .is_err_and(|e| sqlstate(&e) == INSUFFICIENT_PRIVILEGE)
        })
        .await,
        "app can still read orders after it was narrowed to payments"
    );
    eprintln!("revoked and dropped at {:?}", started.elapsed());
    drop(router);
}
