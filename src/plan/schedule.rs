//! A plan's schedule: the builder that orders operations into waves under per-node and
//! per-cluster concurrency limits and seals them into a hashed [`Plan`]. It decides nothing
//! about what the operations do.

use serde::{Deserialize, Serialize};

use super::hash::content_hash;
use super::name_map::NameMap;
use super::steps::{BlockReason, Blocker, Operation, PlanKind, RiskClass, Step};

/// An ordered, hashed plan: what the operator will do for one change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// What the plan is for.
    pub kind: PlanKind,
    /// The highest risk of any step.
    pub risk: RiskClass,
    /// Hex SHA-256 of the plan's content (kind, operations, waves, actions, risks,
    /// blockers); reasons are excluded so rewording an explanation keeps an approval valid.
    pub hash: String,
    /// The operations, ordered by wave.
    pub operations: Vec<Operation>,
    /// What could not be planned.
    pub blocked: Vec<Blocker>,
}

impl Plan {
    /// Every step in execution order (wave by wave, operation by operation).
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.operations.iter().flat_map(|op| op.steps.iter())
    }

    /// Whether the plan does nothing and nothing is blocked.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty() && self.blocked.is_empty()
    }

    /// The plan's first operations (in wave order) holding at most `max_steps` steps in all —
    /// whole operations only, and at least one — rehashed; the rest is left for a later plan,
    /// which the same decision makes once this one is done. Blockers stay.
    pub fn first_steps(mut self, max_steps: usize) -> Plan {
        let mut steps = 0;
        let keep = self
            .operations
            .iter()
            .take_while(|op| {
                steps += op.steps.len();
                steps <= max_steps
            })
            .count()
            .max(1)
            .min(self.operations.len());
        if keep < self.operations.len() {
            self.operations.truncate(keep);
            self.risk = self.steps().map(|s| s.risk).max().unwrap_or_default();
            self.hash = self.content_hash();
        }
        self
    }

    /// Recomputes the content hash (to check a stored plan was not altered).
    pub fn content_hash(&self) -> String {
        content_hash(self.kind, &self.operations, &self.blocked)
    }
}

/// How many operations may run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConcurrencyLimits {
    /// Operations touching any one node at once.
    pub per_node: u32,
    /// Operations in the cluster at once.
    pub per_cluster: u32,
}

impl Default for ConcurrencyLimits {
    fn default() -> Self {
        ConcurrencyLimits {
            per_node: 2,
            per_cluster: 32,
        }
    }
}

/// Collects operations and blockers, assigns waves under concurrency limits, and seals the
/// result into a hashed [`Plan`].
pub(crate) struct PlanBuilder {
    kind: PlanKind,
    limits: ConcurrencyLimits,
    operations: Vec<Operation>,
    blocked: Vec<Blocker>,
    per_wave: Vec<u32>,
    per_node_wave: NameMap<String, Vec<u32>>,
    last_wave_of_subject: NameMap<String, u32>,
    first_open_wave: u32,
}

impl PlanBuilder {
    pub(crate) fn new(kind: PlanKind, limits: ConcurrencyLimits) -> Self {
        PlanBuilder {
            kind,
            limits: ConcurrencyLimits {
                per_node: limits.per_node.max(1),
                per_cluster: limits.per_cluster.max(1),
            },
            operations: Vec::new(),
            blocked: Vec::new(),
            per_wave: Vec::new(),
            per_node_wave: NameMap::default(),
            last_wave_of_subject: NameMap::default(),
            first_open_wave: 0,
        }
    }

    /// Adds an operation in the earliest wave that has room on every node it touches and
    /// comes after the subject's previous operation and `after` (if given).
    pub(crate) fn schedule(&mut self, subject: &str, steps: Vec<Step>, after: Option<u32>) -> u32 {
        let mut nodes: Vec<&str> = Vec::with_capacity(4);
        for step in &steps {
            step.action.add_nodes(&mut nodes);
        }
        nodes.sort_unstable();
        nodes.dedup();
        let mut wave = self.first_open_wave;
        if let Some(&last) = self.last_wave_of_subject.get(subject) {
            wave = wave.max(last + 1);
        }
        if let Some(a) = after {
            wave = wave.max(a + 1);
        }
        while !self.has_room(wave, &nodes) {
            wave += 1;
        }
        let nodes: Vec<String> = nodes.into_iter().map(str::to_owned).collect();
        self.place(subject, steps, wave, &nodes);
        wave
    }

    /// Adds an operation to a wave chosen by the caller (rollouts size their own waves).
    pub(crate) fn schedule_in_wave(&mut self, subject: &str, steps: Vec<Step>, wave: u32) {
        self.place(subject, steps, wave, &[]);
    }

    pub(crate) fn block(&mut self, subject: &str, reason: BlockReason) {
        self.blocked.push(Blocker {
            subject: subject.to_owned(),
            reason,
        });
    }

    pub(crate) fn has_blockers(&self) -> bool {
        !self.blocked.is_empty()
    }

    fn has_room(&self, wave: u32, nodes: &[&str]) -> bool {
        let w = wave as usize;
        if self.per_wave.get(w).copied().unwrap_or(0) >= self.limits.per_cluster {
            return false;
        }
        nodes.iter().all(|n| {
            self.per_node_wave
                .get(*n)
                .and_then(|v| v.get(w))
                .copied()
                .unwrap_or(0)
                < self.limits.per_node
        })
    }

    fn place(&mut self, subject: &str, steps: Vec<Step>, wave: u32, nodes: &[String]) {
        let w = wave as usize;
        if self.per_wave.len() <= w {
            self.per_wave.resize(w + 1, 0);
        }
        self.per_wave[w] += 1;
        for n in nodes {
            let v = match self.per_node_wave.get_mut(n.as_str()) {
                Some(v) => v,
                None => self.per_node_wave.entry(n.clone()).or_default(),
            };
            if v.len() <= w {
                v.resize(w + 1, 0);
            }
            v[w] += 1;
        }
        while self
            .per_wave
            .get(self.first_open_wave as usize)
            .is_some_and(|&c| c >= self.limits.per_cluster)
        {
            self.first_open_wave += 1;
        }
        match self.last_wave_of_subject.get_mut(subject) {
            Some(last) => *last = wave,
            None => {
                self.last_wave_of_subject.insert(subject.to_owned(), wave);
            }
        }
        self.operations.push(Operation {
            wave,
            subject: subject.to_owned(),
            steps,
        });
    }

    pub(crate) fn finish(mut self) -> Plan {
        // Stable: operations keep their decision order inside a wave.
        self.operations.sort_by_key(|op| op.wave);
        let risk = self
            .operations
            .iter()
            .flat_map(|op| op.steps.iter().map(|s| s.risk))
            .max()
            .unwrap_or_default();
        let hash = content_hash(self.kind, &self.operations, &self.blocked);
        Plan {
            kind: self.kind,
            risk,
            hash,
            operations: self.operations,
            blocked: self.blocked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::steps::StepAction;
    use proptest::prelude::*;

    fn add(shard: &str, node: &str) -> Vec<Step> {
        vec![Step::new(
            StepAction::AddReplica {
                shard: shard.into(),
                node: node.into(),
            },
            "test",
        )]
    }

    #[test]
    fn waves_respect_node_cluster_and_subject_limits() {
        let limits = ConcurrencyLimits {
            per_node: 1,
            per_cluster: 2,
        };
        let mut b = PlanBuilder::new(PlanKind::Rebalance, limits);
        assert_eq!(b.schedule("a", add("a", "n1"), None), 0);
        assert_eq!(
            b.schedule("b", add("b", "n1"), None),
            1,
            "n1 is busy in wave 0"
        );
        assert_eq!(b.schedule("c", add("c", "n2"), None), 0);
        assert_eq!(b.schedule("d", add("d", "n3"), None), 1, "wave 0 is full");
        assert_eq!(
            b.schedule("a", add("a", "n4"), None),
            2,
            "wave 1 is full too"
        );
        assert_eq!(b.schedule("e", add("e", "n5"), Some(3)), 4);
        let plan = b.finish();
        let waves: Vec<u32> = plan.operations.iter().map(|op| op.wave).collect();
        assert_eq!(waves, [0, 0, 1, 1, 2, 4]);
        assert_eq!(plan.risk, RiskClass::Safe);
    }

    proptest! {
        #[test]
        fn first_steps_keeps_whole_operations_within_the_budget(
            sizes in proptest::collection::vec(1usize..6, 1..40),
            max_steps in 1usize..60,
        ) {
            let mut builder = PlanBuilder::new(PlanKind::Placement, ConcurrencyLimits::default());
            for (i, size) in sizes.iter().enumerate() {
                let subject = format!("s{i}");
                let steps = (0..*size).flat_map(|_| add(&subject, "n1")).take(*size).collect();
                builder.schedule(&subject, steps, None);
            }
            let full = builder.finish();
            let cut = full.clone().first_steps(max_steps);
            let total = |p: &Plan| p.steps().count();
            // A prefix of the plan's operations, whole, rehashed.
            prop_assert!(!cut.operations.is_empty());
            prop_assert_eq!(&full.operations[..cut.operations.len()], &cut.operations[..]);
            prop_assert_eq!(&cut.hash, &cut.content_hash());
            if total(&full) <= max_steps {
                prop_assert_eq!(&cut, &full);
            } else if cut.operations.len() == full.operations.len() {
                // One operation larger than the budget: it is kept whole, as it was.
                prop_assert_eq!(full.operations.len(), 1);
                prop_assert_eq!(&cut, &full);
            } else {
                prop_assert!(total(&cut) <= max_steps || cut.operations.len() == 1);
                prop_assert_ne!(&cut.hash, &full.hash);
                // As many operations as fit: one more would pass the budget.
                let next = full.operations[cut.operations.len()].steps.len();
                prop_assert!(cut.operations.len() == 1 || total(&cut) + next > max_steps);
            }
        }
    }
}
