//! `shardplane demo --exit`, run as a user runs it: it must start a control plane, install
//! the chart, apply every example and show each of them in `kubectl get shardplane`; then,
//! with the operator and three real agents running PostgreSQL, write rows through the router
//! and show each shard's rows on the primary they were routed to.

use std::process::Command;

#[test]
fn demo_applies_every_example_and_lists_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_shardplane"))
        .args(["demo", "--exit"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "shardplane demo failed:\n{stderr}");
    for name in [
        "databasecluster.shardplane.io/commerce",
        "databasenode.shardplane.io/eu-west-a-1",
        "databasenode.shardplane.io/us-east-b-1",
        "databasenode.shardplane.io/ap-south-c-1",
        "table.shardplane.io/customers",
        "table.shardplane.io/orders",
        "shard.shardplane.io/customers-0",
        "shard.shardplane.io/customers-3",
    ] {
        assert!(stdout.contains(name), "demo output lacks {name}:\n{stdout}");
    }
    // The printer columns make the listing useful on its own: the shard key and the ranges.
    assert!(
        stdout.contains("customer_id") && stdout.contains("4611686018427387904"),
        "{stdout}"
    );

    // Rows written through the router, found on the primaries they were routed to.
    assert!(
        stdout.contains(
            "wrote 100 rows into customers through the router; found 100 on the primaries"
        ),
        "{stdout}"
    );
    let nodes = ["eu-west-a-1", "us-east-b-1", "ap-south-c-1"];
    let mut written = 0;
    for shard in ["customers-0", "customers-1", "customers-2", "customers-3"] {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(shard) && l.contains("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no placement line for {shard}:\n{stdout}"));
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(columns.len(), 5, "{line}");
        assert!(nodes.contains(&columns[1]), "{line}");
        let port: u16 = columns[2].trim_start_matches("127.0.0.1:").parse().unwrap();
        assert!((15432..=15527).contains(&port), "{line}");
        assert_eq!(
            columns[3], columns[4],
            "rows written != rows on the primary: {line}"
        );
        let rows: i64 = columns[3].parse().unwrap();
        // 100 hashed keys over four equal ranges: none is empty.
        assert!(rows > 0, "{line}");
        written += rows;
    }
    assert_eq!(written, 100, "{stdout}");
    // `kubectl get databasenodes,shards`: the nodes online, every shard serving with a primary
    // on one of them. (Not `READY 3`: a primary demoted by the rebalancing that follows the
    // first placement may still be rejoining as a standby when the views are taken.)
    let shards: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("shard.shardplane.io/customers-") && l.contains("Serving"))
        .collect();
    assert_eq!(shards.len(), 4, "{stdout}");
    for line in shards {
        assert!(nodes.iter().any(|n| line.contains(n)), "{line}");
    }
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("databasenode.shardplane.io/") && l.contains("Online"))
            .count(),
        3,
        "{stdout}"
    );
}
