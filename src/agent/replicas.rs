//! One task per shard replica on this node: it owns the replica's PostgreSQL instance, and on
//! every change of the shard, of node liveness, or once a second, it looks at what runs,
//! asks `decide` what to do, does it, and reports what actually runs in
//! `Shard.status.replicas`. Replicas of different shards are created, promoted and rewound
//! in parallel, each by its own task.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tokio::sync::watch;

use crate::api::shard::{ObservedReplica, ReplicaRole, ReplicaState, ShardStatus};
use crate::api::{DatabaseNode, NodePhase, SchemaVersion, Shard, Table};
use crate::protocol::Endpoint;

use super::configuration::InstanceConfig;
use super::context::NodeContext;
use super::decide::{LocalReplica, ReplicaAction, ReplicaView, decide, report_due, sync_quorum};
use super::error::AgentError;
use super::failsafe;
use super::postgres::{
    CATCH_UP_RECEIVER_TIMEOUT, Instance, InstanceSpec, PostgresError, StopMode, SyncQuorum,
    Upstream,
};
use super::protocol::report_replica;
use super::record::{ReplicaRecord, replica_dir, replica_name};
use super::roles::RoleApplier;
use super::schema_apply::SchemaApplier;
use super::shard_schema::create_table_statements;

/// How often a replica is looked at when nothing changes (lag and state reports).
const TICK: Duration = Duration::from_secs(1);
/// A report unchanged in substance is still refreshed this often (`lastSeenTime`).
const REPORT_REFRESH: Duration = Duration::from_secs(10);
/// A standby streaming further behind its upstream's announced WAL than this gets the
/// catch-up timeout (one message of a catching-up stream is up to 128 KB).
const BEHIND_BYTES: i64 = 1024 * 1024;

/// A standby further behind than this many bytes of WAL is `CatchingUp`, not `InSync`.
const IN_SYNC_LAG_BYTES: i64 = 16 * 1024 * 1024;
/// How long an unused slot no wanted standby names is kept before it is dropped.
const SLOT_GRACE: Duration = Duration::from_secs(30);
/// How long a planned handover waits for the new primary to replay the fenced old one's WAL.
const HANDOVER_CATCH_UP: Duration = Duration::from_secs(5);
/// How long that wait goes on while the standby does not stream from the fenced primary at
/// all (it cannot reach it): a planned handover's standby streams throughout.
const NO_STREAM_TO_CATCH_UP: Duration = Duration::from_secs(1);
/// How long a standby may go without streaming from a serving, live primary before it is
/// rebuilt from that primary (it can no longer follow it, e.g. it lacks WAL the primary
/// no longer has).
/// Short, because the primary's commits may wait for this standby's quorum meanwhile: in one
/// CI-equivalent run a standby that could not follow a new primary after a failover held its
/// writes for the 30 s this used to be, past the router's 40 s deadline.
const STUCK_STANDBY: Duration = Duration::from_secs(10);

/// Whether a worker goes on.
enum Pass {
    /// Look again at once: the local state changed.
    Again,
    /// Wait for a change or the next tick.
    Idle,
    /// The replica is gone; the worker ends.
    Removed,
}

/// The instance, what is remembered of it, and a session kept open for the once-a-second
/// looks (a SCRAM handshake per look would cost more than the look).
struct Held {
    instance: Instance,
    record: ReplicaRecord,
    session: Option<tokio_postgres::Client>,
    /// Slots on this (primary) instance that no wanted standby uses, since when.
    unwanted_slots: std::collections::HashMap<String, Instant>,
}

impl Held {
    fn new(instance: Instance, record: ReplicaRecord) -> Self {
        Held {
            instance,
            record,
            session: None,
            unwanted_slots: std::collections::HashMap::new(),
        }
    }

    /// Runs a read-only query on the kept session, reopening it once if it was closed (a
    /// fence or a restart ends it).
    async fn query(&mut self, sql: &str) -> Result<Vec<tokio_postgres::Row>, AgentError> {
        let mut retried = false;
        loop {
            let session = match self.session.take().filter(|s| !s.is_closed()) {
                Some(session) => session,
                None => self.instance.connect().await?,
            };
            match session.query(sql, &[]).await {
                Ok(rows) => {
                    self.session = Some(session);
                    return Ok(rows);
                }
                Err(_) if !retried => retried = true,
                Err(source) => {
                    return Err(PostgresError::Sql {
                        instance: self.instance.name().to_owned(),
                        what: "observing the instance",
                        source,
                    }
                    .into());
                }
            }
        }
    }

    /// Whether sessions on the instance start read-only (the write fence).
    async fn write_fenced(&mut self) -> Result<bool, AgentError> {
        let rows = self
            .query("SELECT current_setting('default_transaction_read_only') = 'on'")
            .await?;
        Ok(rows.first().is_some_and(|row| row.get(0)))
    }

    /// How far the standby is: whether its WAL receiver streams, how many bytes of the
    /// upstream's WAL (as of the upstream's last message) it has not replayed, how many
    /// bytes it received but has not replayed, and the end of the WAL it holds.
    async fn standby_progress(&mut self) -> Result<StandbyProgress, AgentError> {
        let rows = self
            .query(&format!(
                "SELECT coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false), \
                   (SELECT greatest(pg_wal_lsn_diff(latest_end_lsn, pg_last_wal_replay_lsn()), 0)::int8 \
                    FROM pg_stat_wal_receiver), \
                   greatest(coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), \
                     pg_last_wal_replay_lsn()), 0), 0)::int8, \
                   pg_wal_lsn_diff(greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), \
                     '0/0')::int8, \
                   (SELECT greatest(pg_wal_lsn_diff(latest_end_lsn, \
                      coalesce(written_lsn, '0/0')), 0)::int8 FROM pg_stat_wal_receiver), \
                   coalesce((SELECT written_lsn IS NULL OR written_lsn < pg_last_wal_replay_lsn() \
                    FROM pg_stat_wal_receiver), false), \
                   current_setting('wal_receiver_timeout') = '{CATCH_UP_RECEIVER_TIMEOUT}'"
            ))
            .await?;
        Ok(match rows.first() {
            Some(row) => StandbyProgress {
                streaming: row.get(0),
                lag: row.get(1),
                unreplayed: row.get(2),
                held_lsn: row.get(3),
                unreceived: row.get(4),
                restreaming: row.get(5),
                patient: row.get(6),
            },
            None => StandbyProgress::default(),
        })
    }
}

/// A standby's progress, as its own instance sees it.
#[derive(Clone, Copy, Debug, Default)]
struct StandbyProgress {
    streaming: bool,
    lag: Option<i64>,
    unreplayed: i64,
    held_lsn: Option<i64>,
    /// Bytes its upstream announced that this stream has not yet received.
    unreceived: Option<i64>,
    /// Whether the stream is still receiving WAL the standby already holds (or nothing
    /// yet): a WAL receiver always (re)starts at the start of a segment — when it starts,
    /// and when it follows its upstream onto a new timeline.
    restreaming: bool,
    /// Whether the receiver runs with the catch-up timeout ([`CATCH_UP_RECEIVER_TIMEOUT`]).
    patient: bool,
}

impl StandbyProgress {
    /// `InSync` while streaming within the lag bound. A standby that was in sync stays so
    /// while its upstream is unreachable and it has replayed all it received: it holds every
    /// commit it acknowledged, which is what makes it a failover candidate when the primary
    /// dies (the moment its stream breaks).
    fn state(self, was_in_sync: bool) -> (ReplicaState, Option<i64>) {
        if self.streaming && self.lag.is_some_and(|l| l <= IN_SYNC_LAG_BYTES) {
            (ReplicaState::InSync, self.lag)
        } else if !self.streaming && was_in_sync && self.unreplayed == 0 {
            (ReplicaState::InSync, Some(0))
        } else {
            (ReplicaState::CatchingUp, self.lag)
        }
    }

    /// The end of the WAL held, reported only once the stream has broken: then it is final
    /// and failover needs it; while streaming it would change with every commit.
    fn final_lsn(self) -> Option<i64> {
        (!self.streaming).then_some(self.held_lsn).flatten()
    }

    /// The stream's timeout this standby should have now, if it must change: the catch-up
    /// timeout while it re-receives what it holds or streams more than [`BEHIND_BYTES`]
    /// behind what its upstream announced, the instance's own again once it has received all
    /// of it. A broken stream changes nothing (a re-point sets the catch-up timeout itself).
    fn receiver_timeout_change(self) -> Option<bool> {
        let unreceived = self.unreceived.filter(|_| self.streaming)?;
        if !self.patient && (self.restreaming || unreceived > BEHIND_BYTES) {
            Some(true)
        } else if self.patient && !self.restreaming && unreceived == 0 {
            Some(false)
        } else {
            None
        }
    }
}

/// The state of one replica's task.
struct ReplicaWorker {
    ctx: Arc<NodeContext>,
    shard: String,
    dir: PathBuf,
    held: Option<Held>,
    loaded: bool,
    applied_quorum: Option<SyncQuorum>,
    last_report: Option<(Option<ObservedReplica>, Instant)>,
    last_wait: Option<String>,
    schema: SchemaApplier,
    not_streaming_since: Option<Instant>,
    /// A split's or merge's comparison prepared while this primary serves, for its fence.
    reshard: Option<super::reshard::Prepared>,
    /// The cluster's parameters and the operator's restarts on the instance.
    config: InstanceConfig,
    /// The cluster's application roles on the instance, while it serves as primary.
    roles: RoleApplier,
}

/// Runs the replica of `shard` until it is removed. `updates` carries the newest Shard
/// (`None` once it is deleted); the dispatcher re-sends it when anything relevant changes.
pub(crate) async fn run(
    ctx: Arc<NodeContext>,
    shard: String,
    updates: watch::Receiver<Option<Arc<Shard>>>,
) {
    let context = ctx.clone();
    serve(ctx, shard.clone(), updates).await;
    context.instances.forget(&shard);
}

async fn serve(
    ctx: Arc<NodeContext>,
    shard: String,
    mut updates: watch::Receiver<Option<Arc<Shard>>>,
) {
    let mut live = ctx.live.clone();
    let mut worker = ReplicaWorker {
        config: InstanceConfig::new(&ctx, &shard),
        dir: replica_dir(&ctx.data_dir, &shard),
        ctx,
        shard,
        held: None,
        loaded: false,
        applied_quorum: None,
        last_report: None,
        last_wait: None,
        schema: SchemaApplier::default(),
        not_streaming_since: None,
        reshard: None,
        roles: RoleApplier::default(),
    };
    loop {
        let snapshot = updates.borrow_and_update().clone();
        match worker.pass(snapshot.as_deref()).await {
            Ok(Pass::Removed) => return,
            Ok(Pass::Again) => continue,
            Ok(Pass::Idle) => {}
            Err(error) => {
                tracing::warn!(shard = %worker.shard, %error, "replica action failed; retrying");
                if let Some(reason) = error.postgres().and_then(PostgresError::start_failure) {
                    worker
                        .ctx
                        .instances
                        .publish(&worker.shard, |report| report.failure = Some(reason));
                }
                worker.report(snapshot.as_deref()).await;
                tokio::time::sleep(TICK).await;
            }
        }
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { return },
            _ = live.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

impl ReplicaWorker {
    /// One look: find what runs, decide, act, report.
    async fn pass(&mut self, shard: Option<&Shard>) -> Result<Pass, AgentError> {
        self.load()?;
        if let Some(held) = self.held.as_mut()
            && !held.instance.is_running()
        {
            self.config
                .prepare(&self.ctx, &self.shard, &mut held.instance)
                .await?;
        }
        let local = self.local();
        let status = shard.and_then(|s| s.status.clone()).unwrap_or_default();
        let offline = self.ctx.offline_nodes();
        let view = replica_view(&self.ctx.node, &status, &offline, *self.ctx.live.borrow());
        let action = decide(&view, &local);
        let serving = matches!(action, ReplicaAction::ServePrimary { .. });
        let secondaries: Vec<String> = status
            .desired_replicas
            .iter()
            .filter(|d| d.node != self.ctx.node && d.role != ReplicaRole::Primary)
            .map(|d| replica_name(&d.node))
            .collect();
        let next = match self.act(shard, action, secondaries).await {
            Ok(next) => next,
            // A standby whose data directory cannot start on its primary's timeline, while
            // that primary serves, is rebuilt from it, as one that cannot stream is (a
            // configuration or resource problem would meet a rebuild again: it is reported).
            Err(error)
                if error
                    .postgres()
                    .is_some_and(PostgresError::data_directory_unusable)
                    && self.standby_stuck(&status, &offline) =>
            {
                tracing::warn!(shard = %self.shard, %error, "the standby has not run for {STUCK_STANDBY:?} while its primary serves; it is rebuilt from the primary");
                self.discard().await?;
                return Ok(Pass::Again);
            }
            Err(error) => return Err(error),
        };
        if !matches!(next, Pass::Removed) {
            self.report(shard).await;
            if self.standby_stuck(&status, &offline) {
                tracing::warn!(shard = %self.shard, "the standby has not streamed from its serving primary for {STUCK_STANDBY:?}; it is rebuilt from the primary");
                self.discard().await?;
                return Ok(Pass::Again);
            }
            if let (Some(shard), Some(held)) = (shard, self.held.as_mut()) {
                self.schema
                    .look(&self.ctx, shard, &mut held.instance)
                    .await?;
            }
            if let Some(held) = self.held.as_mut()
                && let Some(plan) = self
                    .config
                    .look(&self.ctx, &self.shard, &mut held.instance)
                    .await?
            {
                self.confirm_restart(shard, plan).await;
            }
            if let (Some(shard), Some(held)) = (shard, self.held.as_mut()) {
                self.roles
                    .look(&self.ctx, shard, &mut held.instance, serving)
                    .await?;
            }
        }
        Ok(next)
    }

    /// Adopts an instance a previous agent process left in this replica's folder; removes the
    /// remains of a creation that did not finish.
    fn load(&mut self) -> Result<(), AgentError> {
        if self.loaded {
            return Ok(());
        }
        if self.dir.exists() {
            match ReplicaRecord::load(&self.dir)? {
                Some(record) => {
                    let instance = Instance::open(
                        &self.ctx.toolchain,
                        &self.spec(record.port),
                        &self.ctx.credentials,
                    )?;
                    tracing::info!(shard = %self.shard, port = record.port, epoch = record.epoch, "reopened the replica's instance");
                    self.held = Some(Held::new(instance, record));
                }
                None => self.remove_dir()?,
            }
        }
        self.loaded = true;
        Ok(())
    }

    fn local(&mut self) -> LocalReplica {
        let Some(held) = self.held.as_mut() else {
            return LocalReplica::Absent;
        };
        let running = held.instance.is_running();
        if held.instance.data_dir().join("standby.signal").exists() {
            LocalReplica::Standby {
                upstream: held.record.upstream.clone(),
                running,
            }
        } else {
            LocalReplica::Primary {
                epoch: held.record.epoch,
                running,
            }
        }
    }

    fn spec(&self, port: u16) -> InstanceSpec {
        InstanceSpec {
            name: replica_name(&self.ctx.node),
            dir: self.dir.clone(),
            port,
            settings: self.ctx.instance_settings(),
        }
    }

    async fn act(
        &mut self,
        shard: Option<&Shard>,
        action: ReplicaAction,
        secondaries: Vec<String>,
    ) -> Result<Pass, AgentError> {
        if let ReplicaAction::Wait(why)
        | ReplicaAction::Fence(why)
        | ReplicaAction::PrepareToLead(why) = &action
        {
            if self.last_wait.as_ref() != Some(why) {
                tracing::info!(shard = %self.shard, reason = %why, "replica waits");
                self.last_wait = Some(why.clone());
            }
        } else {
            self.last_wait = None;
            if !matches!(
                action,
                ReplicaAction::ServePrimary { .. } | ReplicaAction::ServeStandby
            ) {
                tracing::info!(shard = %self.shard, ?action, "replica action");
            }
        }
        let quorum = sync_quorum(self.ctx.durability().as_ref(), secondaries.clone());
        let quorum_changed = self.applied_quorum.as_ref() != Some(&quorum);
        let dir = self.dir.clone();
        let shard_name = self.shard.clone();
        match action {
            ReplicaAction::Wait(_) | ReplicaAction::ServeStandby => Ok(Pass::Idle),
            ReplicaAction::PrepareToLead(_) => {
                ensure_slots(self.held_mut()?, &secondaries).await?;
                Ok(Pass::Idle)
            }
            ReplicaAction::Remove => {
                self.discard().await?;
                if shard.is_some() {
                    let shards = self.ctx.shards();
                    report_replica(&shards, &self.shard, &self.ctx.node, None)
                        .await
                        .map_err(AgentError::api(format!(
                            "withdrawing the report of shard {}",
                            self.shard
                        )))?;
                }
                tracing::info!(shard = %self.shard, "replica removed");
                Ok(Pass::Removed)
            }
            ReplicaAction::CreatePrimary { epoch } => {
                let Some(shard) = shard else {
                    return Ok(Pass::Idle);
                };
                self.write_report(Some(self.creating_report(ReplicaRole::Primary, epoch)))
                    .await;
                let statements = self.table_statements(shard).await?;
                self.create(epoch, None, |toolchain, spec, credentials| async move {
                    let instance =
                        Instance::create_primary(&toolchain, &spec, &credentials).await?;
                    let client = instance.connect().await?;
                    let ddl = format!("BEGIN; {}; COMMIT", statements.join("; "));
                    client
                        .batch_execute(&ddl)
                        .await
                        .map_err(|source| PostgresError::Sql {
                            instance: spec.name.clone(),
                            what: "creating the shard's table",
                            source,
                        })?;
                    Ok(instance)
                })
                .await?;
                Ok(Pass::Again)
            }
            ReplicaAction::CreateStandby { upstream, epoch } => {
                self.write_report(Some(self.creating_report(ReplicaRole::Secondary, epoch)))
                    .await;
                let address = upstream_at(&upstream)?;
                self.create(
                    epoch,
                    Some(upstream),
                    |toolchain, spec, credentials| async move {
                        Ok(
                            Instance::create_standby(&toolchain, &spec, &credentials, &address)
                                .await?,
                        )
                    },
                )
                .await?;
                Ok(Pass::Again)
            }
            ReplicaAction::StartStandby => {
                self.held_mut()?.instance.start().await?;
                Ok(Pass::Again)
            }
            ReplicaAction::Follow { upstream, epoch } => {
                let held = self.held_mut()?;
                held.instance.follow(&upstream_at(&upstream)?).await?;
                held.record.upstream = Some(upstream);
                held.record.epoch = epoch;
                held.record.save(&dir)?;
                Ok(Pass::Again)
            }
            ReplicaAction::Promote {
                epoch,
                catch_up_with,
            } => {
                // A peer this node confirmed while the control plane was out of reach may
                // write until this node's promise lapses (`failsafe.rs`).
                if let Some(until) = self
                    .ctx
                    .failsafe
                    .promotion_barred_until(failsafe::promise(&self.ctx))
                {
                    tracing::info!(shard = %self.shard, wait = ?until.saturating_duration_since(Instant::now()), "promotion waits for the failsafe promise to lapse");
                    tokio::time::sleep_until(until.into()).await;
                }
                // The standbys' slots before the promotion (they survive it): the standbys may
                // already stream from this standby, and its first commits wait for them.
                ensure_slots(self.held_mut()?, &secondaries).await?;
                let held = self.held_mut()?;
                if catch_up_with.is_some() {
                    wait_caught_up(held, HANDOVER_CATCH_UP).await?;
                }
                held.instance.promote(&quorum).await?;
                held.record.epoch = epoch;
                held.record.upstream = None;
                held.record.save(&dir)?;
                self.applied_quorum = Some(quorum);
                tracing::info!(shard = %self.shard, epoch, "promoted");
                Ok(Pass::Again)
            }
            ReplicaAction::AdoptEpoch { epoch } => {
                let held = self.held_mut()?;
                held.record.epoch = epoch;
                held.record.save(&dir)?;
                Ok(Pass::Again)
            }
            ReplicaAction::Demote { upstream, epoch } => {
                let held = self.held_mut()?;
                if held.instance.is_running()
                    && let Err(error) = held.instance.fence_writes().await
                {
                    tracing::warn!(shard = %shard_name, %error, "could not fence the former primary before rewinding it");
                }
                if let Err(error) = held
                    .instance
                    .rewind_and_follow(&upstream_at(&upstream)?)
                    .await
                {
                    // pg_rewind needs the former primary's WAL back to the fork; once a
                    // checkpoint recycled it, the only way back is a fresh copy. Nothing
                    // is lost: what it wrote after the fork no quorum acknowledged.
                    tracing::warn!(shard = %shard_name, %error, "the former primary cannot be rewound; it is rebuilt from the new primary");
                    self.discard().await?;
                    return Ok(Pass::Again);
                }
                held.record.upstream = Some(upstream);
                held.record.epoch = epoch;
                held.record.save(&dir)?;
                self.applied_quorum = None;
                tracing::info!(shard = %self.shard, epoch, "former primary rewound; it follows the new primary");
                Ok(Pass::Again)
            }
            ReplicaAction::Fence(_) => {
                let lock = self.ctx.fence_locks.of(&self.shard);
                let _fencing = lock.lock().await;
                let held = self.held_mut()?;
                if held.instance.is_running() && !held.write_fenced().await? {
                    held.instance.fence_writes().await?;
                    tracing::warn!(shard = %self.shard, "primary fenced: it refuses writes");
                }
                Ok(Pass::Idle)
            }
            ReplicaAction::ServePrimary { epoch } => {
                let ctx = self.ctx.clone();
                let missing = self.not_held();
                let held = self.held.as_mut().ok_or(missing)?;
                if !held.instance.is_running() {
                    held.instance.start().await?;
                }
                if let Some(shard) = shard.filter(|s| super::reshard::fence_requested(s)) {
                    let mut prepared = self.reshard.take();
                    let served =
                        super::reshard::serve_source(&ctx, &held.instance, shard, &mut prepared)
                            .await;
                    self.reshard = prepared;
                    served?;
                    return Ok(Pass::Idle);
                }
                let fenced = held.write_fenced().await?;
                // The watch caches may be minutes behind after a partition: a fence is lifted
                // only if the Shard and the node, read now, still make this the primary.
                if fenced && !self.still_primary(epoch).await? {
                    return Ok(Pass::Idle);
                }
                // No network call from here to the unfence: the keeper (`self_fence.rs`) must
                // never wait on one for this lock.
                let lock = ctx.fence_locks.of(&shard_name);
                let _fencing = lock.lock().await;
                if !*ctx.live.borrow() {
                    // Liveness was lost since this pass decided: the fence stays.
                    return Ok(Pass::Again);
                }
                let held = self.held_mut()?;
                if fenced && held.write_fenced().await? {
                    held.instance.unfence_writes(&quorum).await?;
                    tracing::info!(shard = %self.shard, "liveness proven again: primary unfenced");
                } else if !fenced && quorum_changed {
                    held.instance.set_sync_quorum(&quorum).await?;
                }
                self.applied_quorum = Some(quorum);
                ensure_slots(self.held_mut()?, &secondaries).await?;
                if let Some(shard) = shard {
                    let instance = &self.held.as_ref().ok_or_else(|| self.not_held())?.instance;
                    super::reshard::serve_target(&ctx, instance, shard).await?;
                    super::reshard::prepare_source(&ctx, instance, shard, &mut self.reshard)
                        .await?;
                }
                Ok(Pass::Idle)
            }
        }
    }

    /// Creates the instance with `make` on a newly allocated port and records it; on failure
    /// removes whatever was made, so the next pass starts clean.
    async fn create<F, Fut>(
        &mut self,
        epoch: i64,
        upstream: Option<String>,
        make: F,
    ) -> Result<(), AgentError>
    where
        F: FnOnce(super::postgres::Toolchain, InstanceSpec, super::postgres::Credentials) -> Fut,
        Fut: Future<Output = Result<Instance, AgentError>>,
    {
        self.remove_dir()?;
        let port = self.ctx.allocate_port()?;
        let spec = self.spec(port);
        let made = make(
            self.ctx.toolchain.clone(),
            spec,
            self.ctx.credentials.clone(),
        )
        .await;
        let record = ReplicaRecord {
            port,
            epoch,
            upstream,
        };
        let made = made.and_then(|instance| record.save(&self.dir).map(|()| instance));
        match made {
            Ok(instance) => {
                self.held = Some(Held::new(instance, record));
                Ok(())
            }
            Err(error) => {
                self.ctx.release_port(port);
                self.remove_dir()?;
                Err(error)
            }
        }
    }

    fn held_mut(&mut self) -> Result<&mut Held, AgentError> {
        let missing = self.not_held();
        self.held.as_mut().ok_or(missing)
    }

    fn not_held(&self) -> AgentError {
        AgentError::Io {
            path: self.dir.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the replica has no instance",
            ),
        }
    }

    /// Removes the replica's directory, releasing the shared memory segment a killed
    /// postmaster left for it first (nothing else ever would).
    fn remove_dir(&self) -> Result<(), AgentError> {
        super::postgres::release_orphaned_segment(&self.dir.join("data"));
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(AgentError::Io {
                path: self.dir.clone(),
                source,
            }),
        }
    }

    /// The statements creating the shard's table: the Table's current SchemaVersion if one
    /// exists, else the Table's own schema.
    async fn table_statements(&self, shard: &Shard) -> Result<Vec<String>, AgentError> {
        let name = &shard.spec.table;
        let problem = |problem: String| AgentError::Schema {
            shard: shard.name_any(),
            table: name.clone(),
            problem,
        };
        let table = self
            .ctx
            .api::<Table>()
            .get_opt(name)
            .await
            .map_err(AgentError::api(format!("reading Table {name}")))?
            .ok_or_else(|| problem("the Table does not exist".into()))?;
        let current = table.status.as_ref().and_then(|s| s.schema_version);
        let mut schema = table.spec.schema.clone();
        if let Some(version) = current {
            let versions = self
                .ctx
                .api::<SchemaVersion>()
                .list(&Default::default())
                .await
                .map_err(AgentError::api(format!(
                    "listing the SchemaVersions of {name}"
                )))?;
            if let Some(found) = versions
                .items
                .into_iter()
                .find(|v| &v.spec.table == name && v.spec.version == version)
            {
                schema = found.spec.schema;
            }
        }
        let key_space = table
            .spec
            .sharding
            .as_ref()
            .and_then(|s| s.key_space)
            .unwrap_or(crate::api::table::KeySpace::Hash);
        create_table_statements(
            name,
            &table.spec.shard_key,
            key_space,
            &schema,
            &shard.spec.range,
        )
        .map_err(problem)
    }

    /// Whether the Shard and this node as the API server has them now (not as the watch caches
    /// have them: a partition can leave a watch minutes behind) still make this replica the
    /// serving primary at `epoch`: what must hold before a fence is lifted.
    async fn still_primary(&mut self, epoch: i64) -> Result<bool, AgentError> {
        let shard = self
            .ctx
            .shards()
            .get(&self.shard)
            .await
            .map_err(AgentError::api(format!("reading Shard {}", self.shard)))?;
        let node = self
            .ctx
            .api::<DatabaseNode>()
            .get(&self.ctx.node)
            .await
            .map_err(AgentError::api(format!(
                "reading DatabaseNode {}",
                self.ctx.node
            )))?;
        let mut offline = self.ctx.offline_nodes();
        offline.remove(&self.ctx.node);
        if matches!(
            node.status.and_then(|s| s.phase),
            Some(NodePhase::Offline | NodePhase::Decommissioned)
        ) {
            offline.insert(self.ctx.node.clone());
        }
        let status = shard.status.unwrap_or_default();
        let local = self.local();
        let view = replica_view(&self.ctx.node, &status, &offline, *self.ctx.live.borrow());
        Ok(decide(&view, &local) == ReplicaAction::ServePrimary { epoch })
    }

    /// Whether this replica, wanted as a secondary, has not streamed for [`STUCK_STANDBY`]
    /// while the shard's primary serves at its epoch on a live node. Only then is discarding
    /// it safe: the primary holds every acknowledged commit.
    fn standby_stuck(&mut self, status: &ShardStatus, offline: &BTreeSet<String>) -> bool {
        let not_streaming = self.last_report.as_ref().is_some_and(|(report, _)| {
            report.as_ref().is_some_and(|r| {
                r.role == ReplicaRole::Secondary
                    && (r.received_lsn.is_some() || r.state == ReplicaState::Down)
            })
        });
        let wanted_secondary = status
            .desired_replicas
            .iter()
            .any(|d| d.node == self.ctx.node && d.role == ReplicaRole::Secondary);
        let primary_serving = status.primary.as_ref().is_some_and(|p| {
            p.node != self.ctx.node
                && !offline.contains(&p.node)
                && status.replicas.iter().any(|r| {
                    r.node == p.node
                        && r.role == ReplicaRole::Primary
                        && r.state == ReplicaState::InSync
                        && r.epoch == Some(p.epoch)
                })
        });
        if !(not_streaming && wanted_secondary && primary_serving) {
            self.not_streaming_since = None;
            return false;
        }
        let since = *self.not_streaming_since.get_or_insert_with(Instant::now);
        if since.elapsed() < STUCK_STANDBY {
            return false;
        }
        self.not_streaming_since = None;
        true
    }

    /// Stops the instance, frees its port and removes its folder.
    async fn discard(&mut self) -> Result<(), AgentError> {
        if let Some(mut held) = self.held.take() {
            held.instance.stop(StopMode::Fast).await;
            self.ctx.release_port(held.record.port);
        }
        self.remove_dir()
    }

    fn creating_report(&self, role: ReplicaRole, epoch: i64) -> ObservedReplica {
        ObservedReplica {
            node: self.ctx.node.clone(),
            role,
            state: ReplicaState::Creating,
            endpoint: None,
            lag_bytes: None,
            epoch: Some(epoch),
            received_lsn: None,
            last_seen_time: None,
        }
    }

    /// What runs, as the operator should see it: nothing for no instance, `Down` for a
    /// stopped one, else its role, state, endpoint, lag and epoch.
    async fn observe(&mut self) -> Option<ObservedReplica> {
        let endpoint_of = |port| self.ctx.endpoint(port);
        let node = self.ctx.node.clone();
        let was_in_sync = self.last_report.as_ref().is_some_and(|(last, _)| {
            last.as_ref().is_some_and(|r| {
                r.role == ReplicaRole::Secondary && r.state == ReplicaState::InSync
            })
        });
        let held = self.held.as_mut()?;
        let mut report = ObservedReplica {
            node,
            role: ReplicaRole::Secondary,
            state: ReplicaState::Down,
            endpoint: None,
            lag_bytes: None,
            epoch: Some(held.record.epoch),
            received_lsn: None,
            last_seen_time: None,
        };
        let standby_file = held.instance.data_dir().join("standby.signal").exists();
        if !standby_file {
            report.role = ReplicaRole::Primary;
        }
        if !held.instance.is_running() {
            return Some(report);
        }
        let rows = held
            .query("SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only') = 'on'")
            .await;
        let (in_recovery, write_fenced): (bool, bool) = match rows.as_deref() {
            Ok([row, ..]) => (row.get(0), row.get(1)),
            Ok([]) => return Some(report),
            Err(error) => {
                tracing::debug!(shard = %self.shard, %error, "instance state unreadable");
                return Some(report);
            }
        };
        report.endpoint = Some(endpoint_of(held.record.port));
        if in_recovery {
            report.role = ReplicaRole::Secondary;
            let progress = held.standby_progress().await.unwrap_or_default();
            (report.state, report.lag_bytes) = progress.state(was_in_sync);
            report.received_lsn = progress.final_lsn();
            if let Some(catching_up) = progress.receiver_timeout_change()
                && let Err(error) = held.instance.pace_receiver(catching_up).await
            {
                tracing::warn!(shard = %self.shard, %error, "the stream's timeout not changed");
            }
        } else {
            report.role = ReplicaRole::Primary;
            report.lag_bytes = Some(0);
            report.state = if write_fenced {
                ReplicaState::Fenced
            } else {
                ReplicaState::InSync
            };
        }
        Some(report)
    }

    /// Publishes that the instance carried out `plan`'s restart once it is back — serving,
    /// or streaming within the lag bound — after writing that report, so the plan's health
    /// gate reads the replica's state from after the restart.
    async fn confirm_restart(&mut self, shard: Option<&Shard>, plan: String) {
        let report = self.observe().await;
        let back = report
            .as_ref()
            .is_some_and(|r| r.state == ReplicaState::InSync && r.received_lsn.is_none());
        if !back {
            return;
        }
        if shard.is_some() {
            self.last_report = None;
            self.write_report(report).await;
            if self.last_report.is_none() {
                return;
            }
        }
        tracing::info!(shard = %self.shard, %plan, "the instance is back after the restart");
        self.ctx
            .instances
            .publish(&self.shard, |r| r.restarted_for = Some(plan));
    }

    async fn report(&mut self, shard: Option<&Shard>) {
        if shard.is_none() {
            return;
        }
        let report = self.observe().await;
        self.write_report(report).await;
    }

    /// Writes the report if it changed in substance (`decide::report_due`) or is due for a
    /// refresh.
    async fn write_report(&mut self, report: Option<ObservedReplica>) {
        let held_before = match &self.last_report {
            Some((last, at)) => {
                if !report_due(last.as_ref(), report.as_ref())
                    && (report.is_none() || at.elapsed() < REPORT_REFRESH)
                {
                    return;
                }
                last.as_ref().and_then(|r| r.received_lsn)
            }
            None => None,
        };
        if let Some(held) = report.as_ref().and_then(|r| r.received_lsn)
            && held_before.is_none()
        {
            tracing::info!(shard = %self.shard, held, "the standby's stream broke; it reports the end of the WAL it holds");
        }
        let stamped = report.clone().map(|mut r| {
            r.last_seen_time = Some(Time(Timestamp::now()));
            r
        });
        let shards = self.ctx.shards();
        match report_replica(&shards, &self.shard, &self.ctx.node, stamped.as_ref()).await {
            Ok(()) => {
                if let Some(written) = &report {
                    tracing::debug!(shard = %self.shard, role = ?written.role, state = ?written.state, epoch = written.epoch, "replica report written");
                }
                self.last_report = Some((report, Instant::now()));
            }
            Err(error) => {
                tracing::warn!(shard = %self.shard, %error, "replica report not written")
            }
        }
    }
}

/// What `decide` is given about the replica of `node`, from a Shard's `status`.
fn replica_view<'a>(
    node: &'a str,
    status: &'a ShardStatus,
    offline_nodes: &'a BTreeSet<String>,
    live: bool,
) -> ReplicaView<'a> {
    ReplicaView {
        node,
        desired: status
            .desired_replicas
            .iter()
            .find(|d| d.node == node)
            .map(|d| d.role),
        primary: status.primary.as_ref(),
        reports: &status.replicas,
        offline_nodes,
        live,
    }
}

/// A reported `host:port` as an upstream.
fn upstream_at(endpoint: &str) -> Result<Upstream, AgentError> {
    let endpoint = Endpoint::parse(endpoint).map_err(|bad| AgentError::Io {
        path: PathBuf::from(bad.text),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a reported endpoint is not host:port",
        ),
    })?;
    Ok(endpoint.into())
}

/// Waits (at most `limit`) until the standby has replayed everything its upstream sent.
async fn wait_caught_up(held: &mut Held, limit: Duration) -> Result<(), AgentError> {
    let started = Instant::now();
    let mut streamed = started;
    while started.elapsed() < limit {
        let progress = held.standby_progress().await?;
        if progress.streaming && progress.lag == Some(0) {
            return Ok(());
        }
        if progress.streaming {
            streamed = Instant::now();
        } else if streamed.elapsed() >= NO_STREAM_TO_CATCH_UP {
            // Cut off from the fenced primary (the failover of a primary that lost its
            // quorum): nothing can arrive; what this standby holds was chosen as enough.
            tracing::warn!(
                instance = held.instance.name(),
                "no stream from the fenced primary to catch up with; promoting"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(
        instance = held.instance.name(),
        "standby not caught up with the fenced primary; promoting anyway"
    );
    Ok(())
}

/// Creates the slot of every wanted standby on the primary, and drops a slot once it has
/// been unused and unwanted for [`SLOT_GRACE`] (a slot kept for a standby that is gone would
/// hold WAL forever; the grace covers a standby that saw itself wanted — and made its slot —
/// before this agent saw the same Shard).
async fn ensure_slots(held: &mut Held, standbys: &[String]) -> Result<(), AgentError> {
    let existing: Vec<(String, bool)> = held
        .query(
            "SELECT slot_name::text, active FROM pg_replication_slots WHERE slot_type = 'physical'",
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    for name in standbys {
        if !existing.iter().any(|(slot, _)| slot == name) {
            held.instance.create_replication_slot(name).await?;
        }
    }
    held.unwanted_slots.retain(|slot, _| {
        existing
            .iter()
            .any(|(name, active)| name == slot && !active)
            && !standbys.contains(slot)
    });
    for (name, active) in &existing {
        if *active || standbys.contains(name) {
            continue;
        }
        let since = *held
            .unwanted_slots
            .entry(name.clone())
            .or_insert_with(Instant::now);
        if since.elapsed() >= SLOT_GRACE {
            match held.instance.drop_replication_slot(name).await {
                Ok(()) => {
                    tracing::info!(slot = %name, "dropped the slot of a standby no longer wanted")
                }
                Err(error) => tracing::debug!(%error, slot = %name, "slot not dropped yet"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_far_behind_gets_the_catch_up_timeout_and_one_caught_up_its_own_again() {
        let streaming = |unreceived, patient| StandbyProgress {
            streaming: true,
            unreceived: Some(unreceived),
            patient,
            ..StandbyProgress::default()
        };
        // Re-receiving from a segment's start what it holds (a restart, a re-point, a new
        // timeline): patient, however little is left, until past it.
        let restreaming = |patient| StandbyProgress {
            restreaming: true,
            ..streaming(0, patient)
        };
        assert_eq!(restreaming(false).receiver_timeout_change(), Some(true));
        assert_eq!(restreaming(true).receiver_timeout_change(), None);
        assert_eq!(
            streaming(BEHIND_BYTES + 1, false).receiver_timeout_change(),
            Some(true)
        );
        assert_eq!(
            streaming(BEHIND_BYTES, false).receiver_timeout_change(),
            None
        );
        assert_eq!(streaming(1, true).receiver_timeout_change(), None);
        assert_eq!(streaming(0, true).receiver_timeout_change(), Some(false));
        assert_eq!(streaming(0, false).receiver_timeout_change(), None);
        // A broken stream keeps what it has: an in-sync standby cut off must still notice in
        // the instance's own (short) timeout, a re-pointed one keeps catching up.
        let broken = |patient| StandbyProgress {
            streaming: false,
            unreceived: None,
            patient,
            ..StandbyProgress::default()
        };
        assert_eq!(broken(false).receiver_timeout_change(), None);
        assert_eq!(broken(true).receiver_timeout_change(), None);
    }
}
