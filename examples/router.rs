//! The routing library in a few lines: connect a router to a Table's routing map, write a few
//! rows idempotently, and read them back from their shards' primaries.
//!
//! Expects a Table whose SQL table has the columns `id bigint PRIMARY KEY` and `note text`
//! (the shard key is `id`), a routing map in its status, and the password of the role in
//! `PGPASSWORD`:
//!
//! ```sh
//! PGPASSWORD=… cargo run --example router -- --namespace shop --table items --user app
//! ```

use anyhow::Context;
use clap::Parser;
use shardplane::routing::{DatabaseCredentials, Router, RouterConfig, ShardKeyValue};

/// Writes a few rows through the router and reads them back.
#[derive(Parser)]
struct Args {
    /// The Table's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The Table (its SQL table has the same name).
    #[arg(long)]
    table: String,
    /// The PostgreSQL role to connect as; its password is read from PGPASSWORD.
    #[arg(long, default_value = "postgres")]
    user: String,
    /// The database.
    #[arg(long, default_value = "postgres")]
    database: String,
    /// How many rows to write, with ids from `--first-id`.
    #[arg(long, default_value_t = 5)]
    rows: i64,
    /// The first id.
    #[arg(long, default_value_t = 1)]
    first_id: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let password = std::env::var("PGPASSWORD").context("set PGPASSWORD to the role's password")?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client: set KUBECONFIG")?;
    let credentials = DatabaseCredentials::new(args.user, password, args.database);
    let router = Router::start(
        client,
        &args.namespace,
        &args.table,
        credentials,
        RouterConfig::default(),
    )
    .await?;

    let insert = format!(
        "INSERT INTO \"{}\" (id, note) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        args.table
    );
    let select = format!("SELECT note FROM \"{}\" WHERE id = $1", args.table);
    for id in args.first_id..args.first_id + args.rows {
        let key = ShardKeyValue::Int(id);
        let note = format!("written through the router as row {id}");
        // Idempotent: if a retry follows a lost acknowledgement, it inserts nothing.
        let inserted = router.execute(&key, &insert, &[&id, &note]).await?;
        let rows = router.query(&key, &select, &[&id]).await?;
        let read: Option<String> = rows.first().map(|row| row.get(0));
        let (shard, primary) = match router.route(&key) {
            Some(route) => (
                route.shard,
                route.endpoint.map_or("none".to_owned(), |e| e.to_string()),
            ),
            None => ("none".to_owned(), "none".to_owned()),
        };
        println!(
            "id {id}: shard {shard}, primary {primary}, inserted {inserted}, read back {read:?}"
        );
    }
    println!("{}", router.stats());
    Ok(())
}
