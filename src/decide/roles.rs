//! The cluster's `RolesApplied` condition, from what its online nodes' agents report of the
//! application roles (`DatabaseCluster.spec.roles`) they could not apply: a Secret missing or
//! lacking its key, or a statement PostgreSQL refused on a primary. Agents report only
//! failures, so the condition holds while no online node reports one.

use super::conditions::Observation;
use super::rollout::{online, shorten};
use super::{ClusterView, Object};

/// `RolesApplied`: false, naming each role, node (and shard) and reason, while any online
/// node reports a role it could not apply.
pub fn roles_observation(view: &ClusterView) -> Observation<'static> {
    let failures: Vec<String> = online(view)
        .flat_map(|node| {
            let reported = node
                .status
                .as_ref()
                .map(|s| s.role_failures.as_slice())
                .unwrap_or_default();
            reported.iter().map(move |f| match &f.shard {
                Some(shard) => format!(
                    "{} on {} (shard {shard}): {}",
                    f.role,
                    node.name(),
                    f.reason
                ),
                None => format!("{} on {}: {}", f.role, node.name(), f.reason),
            })
        })
        .collect();
    if failures.is_empty() {
        return Observation {
            type_: "RolesApplied",
            holds: true,
            reason: "Applied",
            message: format!(
                "{} role(s) of spec.roles; no online node reports one it could not apply",
                view.cluster.spec.roles.len()
            ),
        };
    }
    Observation {
        type_: "RolesApplied",
        holds: false,
        reason: "RolesNotApplied",
        message: format!(
            "spec.roles could not be applied everywhere: {}",
            shorten(failures)
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::*;

    fn view(statuses: &[Value]) -> ClusterView {
        let cluster = serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
            "metadata": {"name": "main", "namespace": "db", "generation": 1},
            "spec": {"replicationFactor": 1, "regions": [{"name": "r0", "zones": ["r0-a"]}],
                     "roles": [{"name": "app", "passwordSecret": "app-pw", "access": "ReadWrite"}]},
        }))
        .unwrap();
        let nodes = statuses
            .iter()
            .enumerate()
            .map(|(i, status)| {
                Arc::new(
                    serde_json::from_value(json!({
                        "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
                        "metadata": {"name": format!("n{i}"), "namespace": "db"},
                        "spec": {"cluster": "main", "region": "r0", "zone": "r0-a",
                                 "address": "127.0.0.1", "ports": {"first": 20000, "last": 20010},
                                 "capacity": {"storageBytes": 1_000_000_000_i64}},
                        "status": status,
                    }))
                    .unwrap(),
                )
            })
            .collect();
        ClusterView {
            cluster: Arc::new(cluster),
            nodes,
            tables: Vec::new(),
            shards: Vec::new(),
            plans: Vec::new(),
        }
    }

    #[test]
    fn failures_of_online_nodes_are_named_with_role_node_and_shard() {
        let failing = json!({"phase": "Online", "roleFailures": [
            {"role": "app", "reason": "Secret db/app-pw does not exist"},
            {"role": "app", "shard": "orders-0", "reason": "PostgreSQL refused it on the primary: x"}
        ]});
        let offline =
            json!({"phase": "Offline", "roleFailures": [{"role": "app", "reason": "old"}]});
        let observation = roles_observation(&view(&[failing, offline]));
        assert_eq!(
            (observation.holds, observation.reason),
            (false, "RolesNotApplied")
        );
        assert_eq!(
            observation.message,
            "spec.roles could not be applied everywhere: app on n0: Secret db/app-pw does not \
             exist; app on n0 (shard orders-0): PostgreSQL refused it on the primary: x"
        );
        let fine = roles_observation(&view(&[json!({"phase": "Online"})]));
        assert!(fine.holds);
        assert_eq!(fine.reason, "Applied");
    }
}
