//! The cluster's PostgreSQL parameters and the operator's restarts on each instance of the
//! node. Every replica task looks after its pass (`InstanceConfig::look`): a restart the
//! operator asked for (`DatabaseNode.status.restart`, written by a plan's `RestartNode`
//! step) is carried out once per plan, then a changed `spec.postgresParameters` is checked
//! and applied (`postgres/parameters.rs`). What each instance runs with is published in the
//! node context, and the node's status reporter sums it up: the effective values, what
//! waits for a restart, what PostgreSQL refused, and which plan's restart is done everywhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::api::database_node::{InstanceFailure, NodeParameters, RejectedParameter};

use super::context::NodeContext;
use super::error::AgentError;
use super::instance_reports::InstanceReport;
use super::postgres::{Access, Instance, StopMode};

/// One replica task's memory of its instance's configuration.
pub(super) struct InstanceConfig {
    /// The parameter set last applied or refused; a look acts only on a change.
    seen: Option<BTreeMap<String, String>>,
    /// The plan whose restart the instance carried out, or had no need to.
    restarted_for: Option<String>,
    /// The access rules last written (`pg_hba.conf`); a look rewrites them only on a change.
    access: Option<Arc<Access>>,
}

impl InstanceConfig {
    /// Starts tracking the replica of `shard`. An instance started from now on reads the
    /// newest configuration, so it needs no restart asked for before this moment.
    pub fn new(ctx: &NodeContext, shard: &str) -> Self {
        let restarted_for = ctx.restart_requested();
        let published = restarted_for.clone();
        ctx.instances
            .publish(shard, |report| report.restarted_for = published);
        InstanceConfig {
            seen: None,
            restarted_for,
            access: None,
        }
    }

    /// Applies a changed parameter set, then carries out a restart asked for and not yet
    /// done; returns the plan whose restart the replica task is to confirm (it publishes it
    /// once the instance is back in sync).
    pub async fn look(
        &mut self,
        ctx: &NodeContext,
        shard: &str,
        instance: &mut Instance,
    ) -> Result<Option<String>, AgentError> {
        if instance.is_running() {
            ctx.instances.publish(shard, |report| report.failure = None);
        }
        self.admit(ctx, shard, instance).await?;
        let (parameters, generation) = ctx.parameters();
        if self.seen.as_ref() != Some(&parameters) {
            self.apply(ctx, shard, instance, &parameters).await?;
        }
        let requested = ctx.restart_requested();
        if requested.is_some() && self.restarted_for != requested {
            // Once stopped (or not running), its next start reads the newest files: the
            // restart is done as far as this instance goes, whether that start succeeds now
            // or after a fix.
            self.restarted_for.clone_from(&requested);
            if instance.is_running() {
                tracing::info!(%shard, plan = ?requested, "restarting the instance as the plan asks");
                instance.stop(StopMode::Fast).await;
                instance.start().await?;
                // What waits for a restart is read afresh.
                self.apply(ctx, shard, instance, &parameters).await?;
            }
        }
        if self.seen.as_ref() == Some(&parameters) {
            ctx.instances
                .publish(shard, |report| report.generation = generation);
        }
        Ok(requested.filter(|plan| ctx.instances.restarted_for(shard).as_ref() != Some(plan)))
    }

    /// Before an instance that does not run is started: writes a changed parameter set into
    /// its data directory, so the start reads it (a reverted value may be what lets it start).
    pub async fn prepare(
        &mut self,
        ctx: &NodeContext,
        shard: &str,
        instance: &mut Instance,
    ) -> Result<(), AgentError> {
        self.admit(ctx, shard, instance).await?;
        let (parameters, _) = ctx.parameters();
        if self.seen.as_ref() != Some(&parameters) {
            self.apply(ctx, shard, instance, &parameters).await?;
        }
        Ok(())
    }

    /// Rewrites the instance's access rules when the cluster's nodes or client networks
    /// changed (a reload if it runs): a node that joins may replicate from it at once.
    async fn admit(
        &mut self,
        ctx: &NodeContext,
        shard: &str,
        instance: &mut Instance,
    ) -> Result<(), AgentError> {
        let access = ctx.access();
        if !self
            .access
            .as_ref()
            .is_some_and(|seen| Arc::ptr_eq(seen, &access))
        {
            instance.apply_access(&access).await?;
            tracing::debug!(%shard, nodes = access.nodes.len(), clients = ?access.clients, "access rules written");
            self.access = Some(access);
        }
        Ok(())
    }

    async fn apply(
        &mut self,
        ctx: &NodeContext,
        shard: &str,
        instance: &mut Instance,
        parameters: &BTreeMap<String, String>,
    ) -> Result<(), AgentError> {
        let refusals = instance.check_parameters(parameters).await?;
        if refusals.is_empty() && !instance.is_running() {
            // In force at its next start (which the set may be what lets it start); read back
            // once it runs.
            instance.write_parameters(parameters)?;
            return Ok(());
        }
        if refusals.is_empty() {
            let effective = instance.apply_parameters(parameters).await?;
            tracing::info!(%shard, ?effective, "parameters applied");
            ctx.instances.publish(shard, |report| {
                report.effective = Some(effective);
                report.refused.clear();
            });
        } else {
            tracing::warn!(%shard, ?refusals, "parameters refused; the previous ones stay in force");
            ctx.instances.publish(shard, |report| {
                report.refused = refusals.into_iter().map(|r| (r.name, r.reason)).collect();
            });
        }
        self.seen = Some(parameters.clone());
        Ok(())
    }
}

/// What the node's status says of its instances ([`summarize`]).
pub(super) struct NodeSummary {
    /// The cluster's parameters on the node.
    pub parameters: NodeParameters,
    /// The plan whose restart every instance has carried out, if it is the one asked for.
    pub restarted_for: Option<String>,
    /// Instances whose last start failed.
    pub failed: Vec<InstanceFailure>,
}

/// The node's summary of its instances' reports: the parameters (values as the first
/// instance shows them; waiting and refused ones of any instance; the oldest generation
/// applied, or the cluster's when the node holds no instance), the plan whose restart every
/// instance has carried out, and the instances that fail to start.
pub(super) fn summarize(
    reports: &BTreeMap<String, InstanceReport>,
    requested: Option<&str>,
    cluster_generation: Option<i64>,
) -> NodeSummary {
    let mut summary = NodeParameters {
        observed_generation: if reports.is_empty() {
            cluster_generation
        } else {
            reports.values().map(|r| r.generation).min().flatten()
        },
        ..NodeParameters::default()
    };
    let mut failed = Vec::new();
    for (shard, report) in reports {
        if let Some(effective) = &report.effective {
            for (name, value) in &effective.values {
                summary
                    .effective
                    .entry(name.clone())
                    .or_insert_with(|| value.clone());
            }
            summary
                .pending_restart
                .extend(effective.pending_restart.iter().cloned());
        }
        for (name, reason) in &report.refused {
            if !summary.rejected.iter().any(|r| &r.name == name) {
                summary.rejected.push(RejectedParameter {
                    name: name.clone(),
                    reason: reason.clone(),
                });
            }
        }
        if let Some(reason) = &report.failure {
            failed.push(InstanceFailure {
                shard: shard.clone(),
                reason: reason.clone(),
            });
        }
    }
    summary.pending_restart.sort();
    summary.pending_restart.dedup();
    let done = requested.filter(|plan| {
        reports
            .values()
            .all(|r| r.restarted_for.as_deref() == Some(*plan))
    });
    NodeSummary {
        parameters: summary,
        restarted_for: done.map(str::to_owned),
        failed,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::postgres::EffectiveParameters;
    use super::*;

    fn report(
        values: &[(&str, &str)],
        pending: &[&str],
        restarted_for: Option<&str>,
    ) -> InstanceReport {
        InstanceReport {
            effective: Some(EffectiveParameters {
                values: values
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                pending_restart: pending
                    .iter()
                    .map(|p| (*p).to_owned())
                    .collect::<BTreeSet<_>>(),
            }),
            refused: Vec::new(),
            restarted_for: restarted_for.map(str::to_owned),
            generation: Some(2),
            failure: None,
            role_failures: Vec::new(),
        }
    }

    #[test]
    fn a_restart_is_done_only_when_every_instance_did_it() {
        let mut reports = BTreeMap::from([
            (
                "s1".to_owned(),
                report(&[("work_mem", "8MB")], &[], Some("p1")),
            ),
            (
                "s2".to_owned(),
                report(&[("work_mem", "4MB")], &["shared_buffers"], Some("p0")),
            ),
        ]);
        let NodeSummary {
            parameters: summary,
            restarted_for: done,
            ..
        } = summarize(&reports, Some("p1"), None);
        assert_eq!(done, None);
        assert_eq!(summary.pending_restart, vec!["shared_buffers".to_owned()]);
        assert_eq!(summary.effective["work_mem"], "8MB");
        assert_eq!(summary.observed_generation, Some(2));
        reports.get_mut("s2").unwrap().restarted_for = Some("p1".into());
        assert_eq!(
            summarize(&reports, Some("p1"), None)
                .restarted_for
                .as_deref(),
            Some("p1")
        );
        assert_eq!(
            summarize(&BTreeMap::new(), Some("p1"), Some(3))
                .restarted_for
                .as_deref(),
            Some("p1")
        );
        assert_eq!(summarize(&reports, None, None).restarted_for, None);
    }

    #[test]
    fn a_parameter_refused_anywhere_is_named_once() {
        let refused = InstanceReport {
            refused: vec![("work_mem".into(), "5 kB is outside the valid range".into())],
            ..InstanceReport::default()
        };
        let reports =
            BTreeMap::from([("a".to_owned(), refused.clone()), ("b".to_owned(), refused)]);
        let summary = summarize(&reports, None, None).parameters;
        assert_eq!(
            summary.observed_generation, None,
            "no instance reported a generation"
        );
        assert_eq!(summary.rejected.len(), 1);
        assert_eq!(summary.rejected[0].name, "work_mem");
    }

    #[test]
    fn instances_failing_to_start_are_named_with_their_shard() {
        let failing = InstanceReport {
            failure: Some("could not map anonymous shared memory".into()),
            ..report(&[], &[], Some("p1"))
        };
        let reports = BTreeMap::from([
            ("s1".to_owned(), report(&[], &[], Some("p1"))),
            ("s2".to_owned(), failing),
        ]);
        let failed = summarize(&reports, Some("p1"), None).failed;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].shard, "s2");
        assert!(failed[0].reason.contains("shared memory"));
    }
}
