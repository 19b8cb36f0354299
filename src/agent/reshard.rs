//! A primary's part in a split or merge (docs/dataplane.md, "Split and merge"). On a target,
//! it copies each requested range from the source primary with a row-filtered publication
//! there and a subscription here (`copy_data`, then streaming), reports each copy's phase,
//! and drops its subscriptions once the operator no longer asks for them. On a source whose
//! fence is requested, it fences writes, records when and at which WAL position, waits until
//! every subscriber has applied that position, and compares each target's range with its
//! own (row count and checksum). Every action checks what already holds first, so a pass
//! repeated after a crash does no harm. Deciding when is the operator's job.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::api::shard::{CopyPhase, CopyProgress, RangeCheck, RangeEndpoint, ReshardReport};
use crate::api::{Shard, Table};
use crate::plan::KeyRange;
use crate::protocol::{Endpoint, RESHARD_REPORT_MANAGER};

use super::context::NodeContext;
use super::error::AgentError;
use super::postgres::{
    HeldSnapshot, Instance, PostgresError, RangeDigest, ShardedTable, Side, Upstream, connect,
    quote_ident, track_changes, untrack_changes, verify_range, verify_range_since,
};
use super::shard_schema::sharded_table;

/// Every object a split or merge creates in PostgreSQL starts with this: publications on a
/// source, subscriptions (and so their slots on the source) on a target.
const PREFIX: &str = "rs_";
/// The field manager of `Shard.status.reshardReport`: one for every node, so that a new
/// primary (after a failover) replaces what the old one reported, including the fields it
/// now leaves out (an empty list is not written), instead of leaving them to the old
/// primary's manager (a re-made change then read the old copies as Streaming).
/// How long a fenced source waits for its subscribers to apply its last write before it
/// compares anyway (a target that lags then fails the comparison, which aborts the change).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the operator asks this shard's primary to fence writes for a split or merge.
pub(crate) fn fence_requested(shard: &Shard) -> bool {
    shard
        .status
        .as_ref()
        .and_then(|s| s.reshard.as_ref())
        .is_some_and(|order| order.fence)
}

/// `name` as a PostgreSQL object name: lower case, digits and `_`.
fn object_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The publication on a source carrying the rows of `target`'s range.
fn publication_name(target: &str) -> String {
    let mut name = format!("{PREFIX}{}", object_name(target));
    name.truncate(63);
    name
}

/// The subscription on `target` to `source` (its slot on the source has the same name).
fn subscription_name(target: &str, source: &str) -> String {
    let mut name = format!("{PREFIX}{}__{}", object_name(target), object_name(source));
    name.truncate(63);
    name
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The primary at a split/merge order's `host:port`, or why `shard`'s order is unusable.
fn upstream_at(shard: &str, endpoint: &str) -> Result<Upstream, AgentError> {
    let endpoint = Endpoint::parse(endpoint).map_err(|bad| AgentError::Schema {
        shard: shard.to_owned(),
        table: String::new(),
        problem: format!("the reshard endpoint {:?} is not host:port", bad.text),
    })?;
    Ok(endpoint.into())
}

/// The shard's table as the range predicates need it.
async fn table_of(ctx: &NodeContext, shard: &Shard) -> Result<ShardedTable, AgentError> {
    let name = &shard.spec.table;
    let problem = |problem: String| AgentError::Schema {
        shard: shard.name_any(),
        table: name.clone(),
        problem,
    };
    let table = ctx
        .api::<Table>()
        .get_opt(name)
        .await
        .map_err(AgentError::api(format!("reading Table {name}")))?
        .ok_or_else(|| problem("the Table does not exist".into()))?;
    sharded_table(name, &table.spec.shard_key, &table.spec.schema).map_err(problem)
}

fn range_of(shard: &str, endpoint: &RangeEndpoint) -> Result<KeyRange, AgentError> {
    KeyRange::from_wire(endpoint.start, endpoint.end).map_err(|e| AgentError::Schema {
        shard: shard.to_owned(),
        table: String::new(),
        problem: format!("the reshard range from {} is invalid: {e}", endpoint.shard),
    })
}

/// Writes the reshard report under the agent's own reshard field manager.
async fn write_report(
    ctx: &NodeContext,
    shard: &Shard,
    report: &ReshardReport,
) -> Result<(), AgentError> {
    let name = shard.name_any();
    let patch = json!({
        "apiVersion": "shardplane.io/v1alpha1",
        "kind": "Shard",
        "metadata": {"name": name},
        "status": {"reshardReport": report},
    });
    let params = PatchParams::apply(RESHARD_REPORT_MANAGER).force();
    ctx.shards()
        .patch_status(&name, &params, &Patch::Apply(patch))
        .await
        .map_err(AgentError::api(format!(
            "reporting the split/merge progress of shard {name}"
        )))?;
    Ok(())
}

fn current_report(shard: &Shard) -> ReshardReport {
    shard
        .status
        .as_ref()
        .and_then(|s| s.reshard_report.clone())
        .unwrap_or_default()
}

/// A target primary's pass: subscribe to every requested source (creating the
/// publication there first), drop subscriptions no longer requested, report each copy.
pub(crate) async fn serve_target(
    ctx: &NodeContext,
    instance: &Instance,
    shard: &Shard,
) -> Result<(), AgentError> {
    let wanted: Vec<RangeEndpoint> = shard
        .status
        .as_ref()
        .and_then(|s| s.reshard.as_ref())
        .map(|order| order.copy_from.clone())
        .unwrap_or_default();
    let reported = current_report(shard);
    if wanted.is_empty() && reported.copies.is_empty() {
        return Ok(());
    }
    let target = shard.name_any();
    let client = instance.connect().await?;
    if wanted.is_empty() {
        // The change switched or was aborted: the source's log of touched keys goes too.
        let table = table_of(ctx, shard).await?;
        untrack_changes(&client, instance.name(), &table).await?;
    }
    let existing: Vec<String> = client
        .query(
            "SELECT subname::text FROM pg_subscription WHERE starts_with(subname::text, $1)",
            &[&PREFIX],
        )
        .await
        .map_err(|e| instance.sql_error("listing subscriptions", e))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut copies = Vec::new();
    for source in &wanted {
        let subscription = subscription_name(&target, &source.shard);
        if !existing.contains(&subscription) {
            let upstream = upstream_at(&target, &source.endpoint)?;
            let publication = publication_name(&target);
            ensure_publication(ctx, shard, &upstream, &publication, source).await?;
            // The range starts empty: a change interrupted before its switch (a failover
            // preempted it) and made again copies it anew, and this shard never served.
            let table = table_of(ctx, shard).await?;
            client
                .batch_execute(&format!(
                    "DELETE FROM {} WHERE {}",
                    quote_ident(&table.name),
                    table.range_predicate(range_of(&target, source)?)
                ))
                .await
                .map_err(|e| instance.sql_error("emptying a range before copying it", e))?;
            instance
                .subscribe(&subscription, &upstream, &publication, true)
                .await?;
            // Applied transactions are flushed (and reach this shard's quorum) before the
            // source hears they are applied: the fence's drain check relies on it.
            client
                .batch_execute(&format!(
                    "ALTER SUBSCRIPTION {subscription} SET (synchronous_commit = 'on')"
                ))
                .await
                .map_err(|e| instance.sql_error("configuring a subscription", e))?;
            tracing::info!(shard = %target, source = %source.shard, "copying a range by logical replication");
        }
        let ready: Option<bool> = client
            .query_one(
                "SELECT bool_and(sr.srsubstate = 'r') FROM pg_subscription_rel sr \
                 JOIN pg_subscription s ON s.oid = sr.srsubid WHERE s.subname = $1",
                &[&subscription],
            )
            .await
            .map_err(|e| instance.sql_error("reading a copy's progress", e))?
            .get(0);
        copies.push(CopyProgress {
            source: source.shard.clone(),
            phase: if ready == Some(true) {
                CopyPhase::Streaming
            } else {
                CopyPhase::Copying
            },
        });
    }
    for name in existing {
        if !wanted
            .iter()
            .any(|s| subscription_name(&target, &s.shard) == name)
        {
            drop_subscription(instance, &client, &name).await?;
            tracing::info!(shard = %target, subscription = %name, "copy finished: subscription dropped");
        }
    }
    if copies != reported.copies {
        write_report(ctx, shard, &ReshardReport { copies, ..reported }).await?;
    }
    Ok(())
}

/// Creates the row-filtered publication of `target`'s range on the source, unless it exists.
async fn ensure_publication(
    ctx: &NodeContext,
    shard: &Shard,
    upstream: &Upstream,
    publication: &str,
    source: &RangeEndpoint,
) -> Result<(), AgentError> {
    let table = table_of(ctx, shard).await?;
    let range = range_of(&shard.name_any(), source)?;
    let sql_error = |what, source| PostgresError::Sql {
        instance: format!("{}:{} (source primary)", upstream.host, upstream.port),
        what,
        source,
    };
    let remote = connect(upstream, &ctx.credentials)
        .await
        .map_err(|e| sql_error("connecting", e))?;
    let exists = remote
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| sql_error("looking up a publication", e))?
        .is_some();
    if !exists {
        remote
            .batch_execute(&table.range_publication(publication, range))
            .await
            .map_err(|e| sql_error("creating a row-filtered publication", e))?;
    }
    Ok(())
}

/// Drops a subscription and its slot on the source; when the source is gone already, the
/// subscription is detached from its slot first (there is nothing left to drop there).
async fn drop_subscription(
    instance: &Instance,
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<(), AgentError> {
    if instance.unsubscribe(name).await.is_ok() {
        return Ok(());
    }
    client
        .batch_execute(&format!(
            "ALTER SUBSCRIPTION {name} DISABLE; ALTER SUBSCRIPTION {name} SET (slot_name = NONE); \
             DROP SUBSCRIPTION {name}"
        ))
        .await
        .map_err(|e| instance.sql_error("dropping a subscription whose source is gone", e))?;
    Ok(())
}

/// A source primary's comparison with its targets, prepared while it still serves (see
/// `postgres::verify`): a snapshot of its own, and per target a session, a snapshot and both
/// sides' digests of the range at those snapshots. Kept by the replica's worker from the
/// prepare pass to the fenced pass; lost on an agent restart, after which the fenced pass
/// compares by full scans instead.
pub(crate) struct Prepared {
    /// The `verify` order it was prepared for.
    verify: Vec<RangeEndpoint>,
    table: ShardedTable,
    source: HeldSnapshot,
    targets: Vec<PreparedTarget>,
}

struct PreparedTarget {
    range: KeyRange,
    now: tokio_postgres::Client,
    then: HeldSnapshot,
    on_source: RangeDigest,
    on_target: RangeDigest,
}

/// A source primary's pass while it serves: when the operator asks for a comparison
/// (`verify`) without a fence yet, prepares it (and reports the targets prepared); when it
/// asks for neither any more (the change switched or was aborted), forgets the comparison,
/// removes the log of touched keys and clears what it reported as a source.
pub(crate) async fn prepare_source(
    ctx: &NodeContext,
    instance: &Instance,
    shard: &Shard,
    prepared: &mut Option<Prepared>,
) -> Result<(), AgentError> {
    let order = shard
        .status
        .as_ref()
        .and_then(|s| s.reshard.clone())
        .unwrap_or_default();
    let report = current_report(shard);
    if order.verify.is_empty() {
        let reported = !report.prepared.is_empty()
            || report.fenced_at_ms.is_some()
            || !report.checks.is_empty();
        if prepared.take().is_some() || reported {
            let table = table_of(ctx, shard).await?;
            untrack_changes(&instance.connect().await?, instance.name(), &table).await?;
            let copies = report.copies;
            write_report(
                ctx,
                shard,
                &ReshardReport {
                    copies,
                    ..Default::default()
                },
            )
            .await?;
        }
        return Ok(());
    }
    if prepared.as_ref().is_some_and(|p| p.verify == order.verify) {
        return Ok(());
    }
    *prepared = None;
    let started = Instant::now();
    let made = prepare(ctx, instance, shard, &order.verify).await?;
    tracing::info!(
        shard = %shard.name_any(),
        targets = made.targets.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "split/merge comparison prepared: ranges checksummed at held snapshots, touched keys logged"
    );
    let report = ReshardReport {
        prepared: order.verify.iter().map(|t| t.shard.clone()).collect(),
        ..report
    };
    *prepared = Some(made);
    write_report(ctx, shard, &report).await
}

/// Logs touched keys on this instance and on every target, then takes the snapshots and the
/// baselines (both sides of every range at once).
async fn prepare(
    ctx: &NodeContext,
    instance: &Instance,
    shard: &Shard,
    verify: &[RangeEndpoint],
) -> Result<Prepared, AgentError> {
    let name = shard.name_any();
    let table = table_of(ctx, shard).await?;
    let local = instance.connect().await?;
    track_changes(&local, instance.name(), &table, false).await?;
    let mut targets = Vec::new();
    for target in verify {
        let range = range_of(&name, target)?;
        let now = connect_target(ctx, &name, target).await?;
        track_changes(&now, &target.endpoint, &table, true).await?;
        let then = connect_target(ctx, &name, target).await?;
        targets.push((target, range, now, then));
    }
    // Every trigger exists now: take the snapshots.
    let source = HeldSnapshot::take(local, instance.name()).await?;
    let mut taken = Vec::new();
    for (target, range, now, then) in targets {
        taken.push((
            range,
            now,
            HeldSnapshot::take(then, &target.endpoint).await?,
        ));
    }
    let digests = futures::future::try_join_all(taken.iter().map(|(range, _, then)| async {
        tokio::try_join!(source.digest(&table, *range), then.digest(&table, *range))
    }))
    .await?;
    let targets = taken
        .into_iter()
        .zip(digests)
        .map(
            |((range, now, then), (on_source, on_target))| PreparedTarget {
                range,
                now,
                then,
                on_source,
                on_target,
            },
        )
        .collect();
    Ok(Prepared {
        verify: verify.to_vec(),
        table,
        source,
        targets,
    })
}

/// A session on a target's primary.
async fn connect_target(
    ctx: &NodeContext,
    shard: &str,
    target: &RangeEndpoint,
) -> Result<tokio_postgres::Client, AgentError> {
    let upstream = upstream_at(shard, &target.endpoint)?;
    Ok(connect(&upstream, &ctx.credentials)
        .await
        .map_err(|source| PostgresError::Sql {
            instance: target.endpoint.clone(),
            what: "connecting to a target primary to verify its range",
            source,
        })?)
}

/// A source primary's pass while its fence is requested: fence, record the time and WAL
/// position, wait until the subscribers applied it, compare every requested range — from
/// the prepared comparison when there is one for this order (only the keys touched since
/// its snapshots are read), by full scans otherwise — and report all of it in one write.
pub(crate) async fn serve_source(
    ctx: &NodeContext,
    instance: &Instance,
    shard: &Shard,
    prepared: &mut Option<Prepared>,
) -> Result<(), AgentError> {
    let Some(order) = shard.status.as_ref().and_then(|s| s.reshard.clone()) else {
        return Ok(());
    };
    let mut report = current_report(shard);
    let checked = |target: &RangeEndpoint| report.checks.iter().any(|c| c.target == target.shard);
    if report.fenced_at_ms.is_some() && order.verify.iter().all(checked) {
        *prepared = None;
        return Ok(());
    }
    let usable = prepared.take().filter(|p| p.verify == order.verify);
    // One session for the whole pass: it fences, then reads the position, waits for the
    // subscribers and compares.
    let client = instance.connect().await?;
    let fenced = instance.is_write_fenced_on(&client).await?;
    let usable = if !fenced || report.fenced_at_ms.is_none() {
        // Writes start failing as the fence goes up: the window counts from here.
        let fenced_at = now_ms();
        if !fenced {
            let spare = usable.as_ref().map(|p| p.source.pid());
            instance.fence_writes_on(&client, spare.as_slice()).await?;
            tracing::info!(shard = %shard.name_any(), "primary fenced for a split/merge");
        }
        report.fenced_at_ms = Some(fenced_at);
        report.fenced_lsn = None;
        report.checks = Vec::new();
        report.checked_at_ms = None;
        // A prepared comparison is only sound if the fence went up after its snapshots.
        usable.filter(|_| !fenced)
    } else {
        None
    };
    // The flushed position, not the inserted one: every commit acknowledged with
    // `synchronous_commit` on is flushed, and WAL past it (an abort of a terminated session,
    // a running-transactions record) waits for the WAL writer, which may sleep for seconds.
    // A commit acknowledged unflushed (`synchronous_commit = off`) that the targets have not
    // applied yet fails the comparison, which aborts the change: nothing is lost.
    let lsn = match report.fenced_lsn.clone() {
        Some(lsn) => lsn,
        None => {
            let lsn: String = client
                .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
                .await
                .map_err(|e| instance.sql_error("reading the fenced WAL position", e))?
                .get(0);
            report.fenced_lsn = Some(lsn.clone());
            lsn
        }
    };
    wait_drained(instance, &client, &lsn).await?;
    let checks = match usable {
        Some(prepared) => check_since(shard, &client, &prepared).await?,
        None => {
            let table = table_of(ctx, shard).await?;
            // One session per range on each side, all at once: the ranges are scanned in
            // parallel.
            futures::future::try_join_all(
                order
                    .verify
                    .iter()
                    .map(|target| check_range(ctx, instance, shard, &table, target)),
            )
            .await?
        }
    };
    report.checks = checks;
    report.checked_at_ms = Some(now_ms());
    write_report(ctx, shard, &report).await
}

/// Compares every prepared range under the fence from the keys touched since the snapshots.
async fn check_since(
    shard: &Shard,
    now: &tokio_postgres::Client,
    prepared: &Prepared,
) -> Result<Vec<RangeCheck>, AgentError> {
    let mut touched = prepared.source.touched_since(now).await?;
    for target in &prepared.targets {
        touched.extend(target.then.touched_since(&target.now).await?);
    }
    touched.sort_unstable();
    touched.dedup();
    let checks = prepared
        .verify
        .iter()
        .zip(&prepared.targets)
        .map(|(endpoint, target)| {
            let touched = &touched;
            async move {
                let outcome = verify_range_since(
                    Side {
                        now,
                        then: &prepared.source,
                        baseline: &target.on_source,
                    },
                    Side {
                        now: &target.now,
                        then: &target.then,
                        baseline: &target.on_target,
                    },
                    &prepared.table,
                    target.range,
                    touched,
                )
                .await;
                range_check(
                    shard,
                    endpoint,
                    target.range,
                    outcome,
                    &format!(
                        "{} key(s) touched since the snapshots re-read under the fence",
                        touched.len()
                    ),
                )
            }
        });
    futures::future::try_join_all(checks).await
}

/// The report of one range's comparison.
fn range_check(
    shard: &Shard,
    target: &RangeEndpoint,
    range: KeyRange,
    outcome: Result<RangeDigest, PostgresError>,
    how: &str,
) -> Result<RangeCheck, AgentError> {
    let check = match outcome {
        Ok(digest) => RangeCheck {
            target: target.shard.clone(),
            matches: true,
            rows: digest.rows,
            detail: format!("{range}: {digest} on both sides ({how})"),
        },
        Err(PostgresError::RangeMismatch {
            on_source,
            on_target,
            ..
        }) => RangeCheck {
            target: target.shard.clone(),
            matches: false,
            rows: on_source.rows,
            detail: format!(
                "{range}: source has {on_source}, target {} has {on_target} ({how})",
                target.shard
            ),
        },
        Err(error) => return Err(error.into()),
    };
    tracing::info!(shard = %shard.name_any(), target = %check.target, matches = check.matches, detail = %check.detail, "range verified");
    Ok(check)
}

/// Compares one target's range with this (fenced) source's by full scans on both sides.
async fn check_range(
    ctx: &NodeContext,
    instance: &Instance,
    shard: &Shard,
    table: &ShardedTable,
    target: &RangeEndpoint,
) -> Result<RangeCheck, AgentError> {
    let range = range_of(&shard.name_any(), target)?;
    let local = instance.connect().await?;
    let remote = connect_target(ctx, &shard.name_any(), target).await?;
    let outcome = verify_range(&local, &remote, table, range).await;
    range_check(shard, target, range, outcome, "full scans under the fence")
}

/// Waits (at most [`DRAIN_TIMEOUT`]) until every split/merge subscriber of this instance has
/// applied the WAL up to `lsn`.
async fn wait_drained(
    instance: &Instance,
    client: &tokio_postgres::Client,
    lsn: &str,
) -> Result<(), AgentError> {
    let started = Instant::now();
    loop {
        let drained: bool = client
            .query_one(
                "SELECT coalesce(bool_and(coalesce(r.replay_lsn, s.confirmed_flush_lsn) \
                   >= $1::text::pg_lsn), true) \
                 FROM pg_replication_slots s LEFT JOIN pg_stat_replication r \
                   ON r.pid = s.active_pid \
                 WHERE s.slot_type = 'logical' AND starts_with(s.slot_name::text, $2)",
                &[&lsn, &PREFIX],
            )
            .await
            .map_err(|e| instance.sql_error("waiting for the subscribers", e))?
            .get(0);
        if drained {
            return Ok(());
        }
        if started.elapsed() > DRAIN_TIMEOUT {
            tracing::warn!(
                instance = instance.name(),
                lsn,
                "subscribers did not apply the fenced position in time; comparing anyway"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_valid_postgres_names() {
        assert_eq!(publication_name("orders-1-0"), "rs_orders_1_0");
        assert_eq!(
            subscription_name("orders-1-0", "orders-1"),
            "rs_orders_1_0__orders_1"
        );
        assert_eq!(subscription_name(&"x".repeat(80), "y").len(), 63);
        assert_ne!(
            subscription_name("orders-23", "orders-2"),
            subscription_name("orders-23", "orders-3")
        );
    }

    #[test]
    fn endpoints_parse_as_host_and_port() {
        let upstream = upstream_at("orders-1", "127.0.0.1:25101").expect("valid");
        assert_eq!(
            (upstream.host.as_str(), upstream.port),
            ("127.0.0.1", 25101)
        );
        let error = upstream_at("orders-1", "no-port").expect_err("no port");
        assert!(
            error
                .to_string()
                .contains("the reshard endpoint \"no-port\" is not host:port"),
            "{error}"
        );
    }
}
