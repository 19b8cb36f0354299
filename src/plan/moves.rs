//! The step lists that change one shard's replica set — add a replica, move one
//! (add → catch up → transfer primary if needed → remove), transfer the primary — each
//! paired with the matching update of the planning view so later decisions see it.

use super::cluster::ClusterState;
use super::steps::{Step, StepAction};
use super::topology::ReplicaRole;

/// Steps that add a replica of `shard` on `node`. A shard with no primary at all (a new
/// shard) gets its first replica promoted.
pub(crate) fn add_replica(
    state: &mut ClusterState<'_>,
    shard: usize,
    node: usize,
    why: &str,
) -> Vec<Step> {
    let shard_name = state.shard_name(shard).to_owned();
    let node_name = state.node_name(node).to_owned();
    let has_primary = state.primary_of(shard).is_some();
    state.add_replica(shard, node);
    let mut steps = vec![Step::new(
        StepAction::AddReplica {
            shard: shard_name.clone(),
            node: node_name.clone(),
        },
        why,
    )];
    if has_primary {
        steps.push(Step::new(
            StepAction::CatchUp {
                shard: shard_name,
                node: node_name,
            },
            "the new replica must stream in sync before it counts towards quorum",
        ));
    } else {
        let epoch = state.make_primary(shard, node);
        steps.push(Step::new(
            StepAction::Promote {
                shard: shard_name,
                node: node_name,
                epoch,
            },
            "the shard has no primary yet; its first replica serves writes",
        ));
    }
    steps
}

/// The step handing the primary of `shard` to its replica on `to`, at a new epoch.
pub(crate) fn transfer_primary(
    state: &mut ClusterState<'_>,
    shard: usize,
    to: usize,
    why: &str,
) -> Option<Step> {
    let from = state.primary_of(shard)?;
    let epoch = state.make_primary(shard, to);
    Some(Step::new(
        StepAction::TransferPrimary {
            shard: state.shard_name(shard).to_owned(),
            from: state.node_name(from).to_owned(),
            to: state.node_name(to).to_owned(),
            epoch,
        },
        why,
    ))
}

/// Steps that move the replica of `shard` from `from` to `to`: add, catch up, hand over the
/// primary if `from` held it, remove. The shard never has fewer replicas than before.
pub(crate) fn move_replica(
    state: &mut ClusterState<'_>,
    shard: usize,
    from: usize,
    to: usize,
    why: &str,
) -> Vec<Step> {
    let was_primary = state.primary_of(shard) == Some(from);
    let mut steps = add_replica(state, shard, to, why);
    if was_primary {
        steps.extend(transfer_primary(
            state,
            shard,
            to,
            "the replica leaving holds the primary; hand it to the new replica first",
        ));
    }
    state.remove_replica(shard, from);
    steps.push(Step::new(
        StepAction::RemoveReplica {
            shard: state.shard_name(shard).to_owned(),
            node: state.node_name(from).to_owned(),
        },
        "its replacement is in sync",
    ));
    steps
}

/// The in-sync secondary of `shard` best placed to take the primary from `leaving`: on a
/// node that takes replicas, in the preferred region if any, lowest lag, fewest primaries.
pub(crate) fn leadership_heir(
    state: &ClusterState<'_>,
    shard: usize,
    leaving: usize,
) -> Option<usize> {
    let preferred = state
        .shard(shard)
        .placement
        .preferred_primary_region
        .as_deref();
    state.slots[shard]
        .iter()
        .filter(|s| {
            s.node != leaving
                && s.role == ReplicaRole::Secondary
                && s.in_sync
                && state.node(s.node).accepts_replicas()
        })
        .min_by_key(|s| {
            (
                preferred.is_some_and(|r| state.node(s.node).region != r),
                s.lag_bytes,
                state.primaries[s.node],
                s.node,
            )
        })
        .map(|s| s.node)
}
