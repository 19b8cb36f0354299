//! The acknowledged-writes workload: `concurrency` writers insert rows with unique ids
//! (`INSERT … ON CONFLICT DO NOTHING`, so a retry after an ambiguous commit is harmless) at a
//! steady total rate through a router, and record every id whose write was acknowledged and
//! every id whose write failed (outcome unknown).

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::sql_identifier;
use crate::routing::{Router, ShardKeyValue, lock};

/// What the workload writes and how fast.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadConfig {
    /// The SQL table (a lower-case identifier). Columns other than the id need defaults.
    pub table: String,
    /// The id column: the table's integer shard key, unique (its primary key).
    pub id_column: String,
    /// Writers running at once (each waits for its write before the next).
    pub concurrency: usize,
    /// Writes per second of all writers together; `None` writes as fast as acknowledged.
    pub writes_per_second: Option<f64>,
    /// The first id written; ids go up by one per write.
    pub first_id: i64,
}

impl WorkloadConfig {
    /// `concurrency` writers on `table`'s `id_column` at `writes_per_second`, ids from 1.
    pub fn new(table: &str, id_column: &str, concurrency: usize, writes_per_second: f64) -> Self {
        WorkloadConfig {
            table: table.to_owned(),
            id_column: id_column.to_owned(),
            concurrency,
            writes_per_second: Some(writes_per_second),
            first_id: 1,
        }
    }
}

/// A workload setting that cannot work.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WorkloadError {
    /// A name is not a lower-case SQL identifier.
    #[error(
        "workload {what} {name:?} is not a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63 bytes): use the table's SQL name"
    )]
    Identifier {
        /// Which setting.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// No writer would run.
    #[error("workload concurrency is 0: set at least one writer")]
    NoWriters,
    /// The rate is not a positive number.
    #[error("workload rate {0} writes/s is not a positive number: give a rate above 0, or None")]
    Rate(f64),
}

/// A running workload. [`Workload::stop`] ends it and returns what it recorded.
pub struct Workload {
    stop: watch::Sender<bool>,
    writers: Vec<JoinHandle<()>>,
    tally: Arc<Tally>,
    router: Router,
    retries_before: u64,
    started: Instant,
}

/// What the writers record.
#[derive(Default)]
struct Tally {
    acked: Mutex<Vec<i64>>,
    failed: Mutex<Vec<i64>>,
    acked_count: AtomicU64,
    already_present: AtomicU64,
    slowest_micros: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// What a workload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadReport {
    /// Ids whose write was acknowledged: each must be found afterwards.
    pub acked: BTreeSet<i64>,
    /// Ids whose write failed after the router's retries; each may or may not be present.
    pub failed: BTreeSet<i64>,
    /// Acknowledged writes that inserted nothing because an earlier attempt of the same write
    /// (whose acknowledgement was lost) had committed.
    pub already_present: u64,
    /// The router's retries while the workload ran.
    pub retries: u64,
    /// The longest time one acknowledged write took, retries included: how long a switch or
    /// failover stalled a writer.
    pub slowest_write: Duration,
    /// How long it ran.
    pub elapsed: Duration,
    /// The first failure's message.
    pub first_error: Option<String>,
}

impl WorkloadReport {
    /// The acknowledged ids as shard key values, for [`super::Checker::check_rows`].
    pub fn acked_keys(&self) -> HashSet<ShardKeyValue> {
        self.acked
            .iter()
            .map(|&id| ShardKeyValue::Int(id))
            .collect()
    }
}

impl fmt::Display for WorkloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        write!(
            f,
            "workload: {} writes acknowledged ({} already applied by a lost attempt), {} failed, {} retries in {seconds:.1} s ({:.0} acknowledged writes/s, slowest write {:.2?})",
            self.acked.len(),
            self.already_present,
            self.failed.len(),
            self.retries,
            self.acked.len() as f64 / seconds.max(f64::EPSILON),
            self.slowest_write
        )?;
        if let Some(error) = &self.first_error {
            write!(f, "; first failure: {error}")?;
        }
        Ok(())
    }
}

impl Workload {
    /// Starts the writers on the current tokio runtime.
    pub fn start(router: Router, config: &WorkloadConfig) -> Result<Workload, WorkloadError> {
        let identifier = |what, name: &str| {
            sql_identifier(name).ok_or_else(|| WorkloadError::Identifier {
                what,
                name: name.to_owned(),
            })
        };
        let table = identifier("table", &config.table)?;
        let id_column = identifier("id column", &config.id_column)?;
        if config.concurrency == 0 {
            return Err(WorkloadError::NoWriters);
        }
        let period = match config.writes_per_second {
            Some(rate) if rate.is_finite() && rate > 0.0 => {
                Some(Duration::from_secs_f64(config.concurrency as f64 / rate))
            }
            Some(rate) => return Err(WorkloadError::Rate(rate)),
            None => None,
        };
        let statement: Arc<str> =
            format!("INSERT INTO {table} ({id_column}) VALUES ($1) ON CONFLICT DO NOTHING").into();
        let (stop, stopped) = watch::channel(false);
        let tally = Arc::new(Tally::default());
        let next_id = Arc::new(AtomicI64::new(config.first_id));
        let retries_before = router.stats().retries;
        let writers = (0..config.concurrency)
            .map(|_| {
                tokio::spawn(write_until_stopped(
                    router.clone(),
                    Arc::clone(&statement),
                    Arc::clone(&next_id),
                    period,
                    stopped.clone(),
                    Arc::clone(&tally),
                ))
            })
            .collect();
        Ok(Workload {
            stop,
            writers,
            tally,
            router,
            retries_before,
            started: Instant::now(),
        })
    }

    /// Writes acknowledged so far.
    pub fn acked_so_far(&self) -> u64 {
        self.tally.acked_count.load(Ordering::Relaxed)
    }

    /// Retries the router made since the workload started (shared with other users of the
    /// same router, if any).
    pub fn retries_so_far(&self) -> u64 {
        self.router.stats().retries - self.retries_before
    }

    /// Stops the writers, lets each finish the write it is making (so its outcome is
    /// recorded), and reports.
    pub async fn stop(self) -> WorkloadReport {
        let _ = self.stop.send(true);
        for writer in self.writers {
            if let Err(error) = writer.await {
                record_error(
                    &self.tally,
                    format!("a writer task ended abnormally: {error}"),
                );
            }
        }
        let stats = self.router.stats();
        let take = |ids: &Mutex<Vec<i64>>| lock(ids).iter().copied().collect::<BTreeSet<i64>>();
        WorkloadReport {
            acked: take(&self.tally.acked),
            failed: take(&self.tally.failed),
            already_present: self.tally.already_present.load(Ordering::Relaxed),
            retries: stats.retries - self.retries_before,
            slowest_write: Duration::from_micros(self.tally.slowest_micros.load(Ordering::Relaxed)),
            elapsed: self.started.elapsed(),
            first_error: lock(&self.tally.first_error).clone(),
        }
    }
}

/// One writer: a write per `period` (or back to back) until told to stop.
async fn write_until_stopped(
    router: Router,
    statement: Arc<str>,
    next_id: Arc<AtomicI64>,
    period: Option<Duration>,
    mut stopped: watch::Receiver<bool>,
    tally: Arc<Tally>,
) {
    let mut ticks = period.map(|period| {
        let mut ticks = tokio::time::interval(period);
        // A write delayed by a failover does not cause a burst afterwards.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks
    });
    loop {
        if let Some(ticks) = ticks.as_mut() {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopped.changed() => {}
            }
        }
        if *stopped.borrow() {
            return;
        }
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        match router
            .execute(&ShardKeyValue::Int(id), &statement, &[&id])
            .await
        {
            Ok(inserted) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.slowest_micros.fetch_max(micros, Ordering::Relaxed);
                if inserted == 0 {
                    tally.already_present.fetch_add(1, Ordering::Relaxed);
                }
                lock(&tally.acked).push(id);
                tally.acked_count.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                lock(&tally.failed).push(id);
                record_error(&tally, error.to_string());
            }
        }
    }
}

fn record_error(tally: &Tally, error: String) {
    lock(&tally.first_error).get_or_insert(error);
}
