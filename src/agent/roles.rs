//! The cluster's application roles (`DatabaseCluster.spec.roles`) on this node: their
//! passwords, read from their Secrets with the agent's own identity ([`keep_read`]: every
//! [`SECRET_POLL`], and at once when `spec.roles` changes), and one [`RoleApplier`] per
//! replica task, which makes a serving primary's catalog hold them (`postgres/roles.rs`
//! plans the statements; standbys get them by replication). What could not be applied is
//! in the node's status ([`failures`]), naming the role and why, never a password.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::api::Shard;
use crate::api::database_cluster::DatabaseRole;
use crate::api::database_node::RoleFailure;
use crate::tls::secret_text;

use super::config::ROLE_PASSWORD_KEY;
use super::context::NodeContext;
use super::error::AgentError;
use super::postgres::{
    Instance, PostgresError, RolePassword, apply_roles, observe_roles, plan_roles,
};
use super::role_set::RoleSet;

/// How often the roles' Secrets are read again (a changed password takes effect within it).
const SECRET_POLL: Duration = Duration::from_secs(10);
/// How often `spec.roles` is compared with what was last read.
const SPEC_LOOK: Duration = Duration::from_secs(1);
/// How soon roles PostgreSQL refused are tried again on a primary.
const RETRY: Duration = Duration::from_secs(15);

/// Keeps [`NodeContext::roles`] current for the life of the agent.
pub(super) async fn keep_read(ctx: Arc<NodeContext>) {
    let mut last: Option<(Vec<DatabaseRole>, Instant)> = None;
    loop {
        let Some(declared) = ctx.declared_roles() else {
            tokio::time::sleep(SPEC_LOOK).await;
            continue;
        };
        let due = last
            .as_ref()
            .is_none_or(|(seen, at)| *seen != declared || at.elapsed() >= SECRET_POLL);
        if due {
            let previous = ctx.roles();
            let now = read(&ctx, declared.clone(), previous.as_deref()).await;
            if previous.as_deref() != Some(&now) {
                tracing::info!(
                    roles = now.declared.len(),
                    unreadable = ?now.problems.keys().collect::<Vec<_>>(),
                    "the cluster's application roles changed"
                );
                *ctx.roles
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(now));
                ctx.instances.changed.notify_one();
            }
            last = Some((declared, Instant::now()));
        }
        tokio::time::sleep(SPEC_LOOK).await;
    }
}

/// The passwords of `declared` from their Secrets. A Secret that cannot be read for a
/// reason other than its absence (the API server out of reach) keeps what `previous` had.
async fn read(
    ctx: &NodeContext,
    declared: Vec<DatabaseRole>,
    previous: Option<&RoleSet>,
) -> RoleSet {
    let secrets = ctx.api::<Secret>();
    let mut read: BTreeMap<String, Result<Option<Secret>, String>> = BTreeMap::new();
    let mut set = RoleSet {
        declared,
        ..RoleSet::default()
    };
    for role in &set.declared {
        let name = &role.password_secret;
        if !read.contains_key(name) {
            let got = secrets.get_opt(name).await.map_err(|e| e.to_string());
            read.insert(name.clone(), got);
        }
        let secret = format!("Secret {}/{name}", ctx.namespace);
        let password = match &read[name] {
            Ok(Some(found)) => secret_text(found, ROLE_PASSWORD_KEY)
                .filter(|text| !text.contains('\0'))
                .ok_or_else(|| {
                    if found
                        .data
                        .as_ref()
                        .is_some_and(|data| data.contains_key(ROLE_PASSWORD_KEY))
                    {
                        format!("key {ROLE_PASSWORD_KEY} of {secret} is empty or not UTF-8 text")
                    } else {
                        format!("{secret} has no key {ROLE_PASSWORD_KEY}")
                    }
                }),
            Ok(None) => Err(format!(
                "{secret} (spec.roles[{}].passwordSecret) does not exist",
                role.name
            )),
            Err(error) => {
                if let Some(kept) = previous.and_then(|p| p.passwords.get(&role.name)) {
                    set.passwords.insert(role.name.clone(), kept.clone());
                } else {
                    set.problems.insert(
                        role.name.clone(),
                        format!("{secret} cannot be read: {error}"),
                    );
                }
                tracing::warn!(role = %role.name, %error, "cannot read {secret}; the role's password stays as it was");
                continue;
            }
        };
        match password {
            Ok(password) => {
                set.passwords
                    .insert(role.name.clone(), RolePassword::new(password));
            }
            Err(problem) => {
                set.problems.insert(role.name.clone(), problem);
            }
        }
    }
    set
}

/// The roles the node could not apply: those whose password could not be read, and those a
/// primary of the node refused (with its shard).
pub(super) fn failures(ctx: &NodeContext) -> Vec<RoleFailure> {
    let read = ctx.roles().unwrap_or_default();
    let mut failures: Vec<RoleFailure> = read
        .problems
        .iter()
        .map(|(role, reason)| RoleFailure {
            role: role.clone(),
            shard: None,
            reason: reason.clone(),
        })
        .collect();
    for (shard, report) in ctx.instances.snapshot() {
        for (role, reason) in report.role_failures {
            failures.push(RoleFailure {
                role,
                shard: Some(shard.clone()),
                reason,
            });
        }
    }
    failures
}

/// One replica task's memory of the roles it applied on its instance.
#[derive(Default)]
pub(super) struct RoleApplier {
    /// The role set and table last applied while the instance served as primary; cleared
    /// whenever it does not, so a promoted standby applies once.
    applied: Option<(Arc<RoleSet>, String)>,
    /// When roles PostgreSQL refused are tried again.
    retry_at: Option<Instant>,
}

impl RoleApplier {
    /// Makes the instance hold the cluster's roles, if it is `serving` as `shard`'s writable
    /// primary and the roles or the table changed since the last time (or a refusal is due
    /// for a retry).
    pub(super) async fn look(
        &mut self,
        ctx: &NodeContext,
        shard: &Shard,
        instance: &mut Instance,
        serving: bool,
    ) -> Result<(), AgentError> {
        if !serving || !instance.is_running() {
            self.applied = None;
            return Ok(());
        }
        let Some(roles) = ctx.roles() else {
            return Ok(());
        };
        let table = &shard.spec.table;
        let unchanged = self
            .applied
            .as_ref()
            .is_some_and(|(set, applied)| Arc::ptr_eq(set, &roles) && applied == table);
        if unchanged && self.retry_at.is_none_or(|at| Instant::now() < at) {
            return Ok(());
        }
        let sql = |what: &'static str| {
            let instance = instance.name().to_owned();
            move |source| -> AgentError {
                PostgresError::Sql {
                    instance,
                    what,
                    source,
                }
                .into()
            }
        };
        let session = instance.connect().await?;
        let writable: bool = session
            .query_one(
                "SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'",
                &[],
            )
            .await
            .map_err(sql("reading whether the primary takes writes"))?
            .get(0);
        if !writable {
            // Fenced: its next unfenced pass applies them.
            return Ok(());
        }
        // A primary cut off from its quorum must not hold this replica's task in a commit
        // that waits for it: role changes commit locally. One lost by a failover is made
        // again by the new primary's agent, which looks after every promotion.
        session
            .batch_execute("SET synchronous_commit = local")
            .await
            .map_err(sql("setting the session's commit mode"))?;
        let wanted = roles.wanted(table);
        let names: Vec<String> = wanted.iter().map(|w| w.name.clone()).collect();
        let (table_exists, observed) = observe_roles(&session, table, &names)
            .await
            .map_err(sql("reading the application roles"))?;
        let statements = plan_roles(table, table_exists, &wanted, &observed);
        let shard_name = shard.name_any();
        let failed = if statements.is_empty() {
            Vec::new()
        } else {
            tracing::info!(shard = %shard_name, changes = ?statements, "applying the cluster's application roles");
            apply_roles(&session, &statements).await
        };
        let failures: Vec<(String, String)> = failed
            .into_iter()
            .map(|(role, error)| {
                let reason = error
                    .as_db_error()
                    .map(|db| db.message().to_owned())
                    .unwrap_or_else(|| error.to_string());
                tracing::warn!(shard = %shard_name, %role, %reason, "PostgreSQL refused the application role");
                (
                    role,
                    format!("PostgreSQL refused it on the primary: {reason}"),
                )
            })
            .collect();
        self.retry_at = (!failures.is_empty()).then(|| Instant::now() + RETRY);
        ctx.instances
            .publish(&shard_name, |report| report.role_failures = failures);
        // Until the table exists its grants wait: the next pass looks again.
        self.applied = table_exists.then(|| (roles, table.clone()));
        Ok(())
    }
}
