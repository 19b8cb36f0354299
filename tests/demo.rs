//! `shardplane demo --exit`, run as a user runs it: it must start a control plane, install
//! the chart, apply every example and show each of them in `kubectl get shardplane`.

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
}
