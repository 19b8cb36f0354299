//! Schema evolution, the pure part: diff a table's current schema against the desired one into
//! a list of changes, classify each (online < rewrite < destructive; refused wins), and write
//! the PostgreSQL DDL that carries a shard from one version to the next.
//!
//! No I/O, no async, no clock. It reads the API's `TableSchema` (a plain struct), and knows
//! nothing of SchemaVersions, Plans or shards: the operator's schema controller persists what
//! this decides, and the rollout (`crate::plan::plan_schema_rollout`) runs the DDL.

mod ddl;
mod diff;
mod inverse;
mod sql_type;
mod version;

#[cfg(test)]
mod tests;

use std::fmt;

use crate::api::table::TableSchema;
use crate::plan::RiskClass;

pub use ddl::quote_ident;
pub use diff::{create, diff, validate};
pub use inverse::inverse;
pub use sql_type::{Conversion, SqlType, conversion};
pub use version::{Newest, NextVersion, Outcome, next_version, outcome};

/// A table as the differ sees it: its shard key and its schema.
#[derive(Clone, Copy, Debug)]
pub struct Shape<'a> {
    /// The shard key column.
    pub shard_key: &'a str,
    /// Columns, primary key, indexes and checks.
    pub schema: &'a TableSchema,
}

/// How a change affects a running table, from least to most disruptive; `Refused` is never
/// carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeClass {
    /// No table rewrite and only brief locks.
    Online,
    /// Rewrites the table: by an online copy, or in place after approval.
    Rewrite,
    /// Destroys data (a column or an index): only after approval.
    Destructive,
    /// Unsafe or impossible: refused, never carried out.
    Refused,
}

impl ChangeClass {
    /// The risk class of carrying out a change of this class, which decides its approval:
    /// online is safe, a rewrite disruptive, a drop destructive; `None` for a refused change,
    /// which is never carried out.
    pub fn risk(self) -> Option<RiskClass> {
        match self {
            ChangeClass::Online => Some(RiskClass::Safe),
            ChangeClass::Rewrite => Some(RiskClass::Disruptive),
            ChangeClass::Destructive => Some(RiskClass::Destructive),
            ChangeClass::Refused => None,
        }
    }
}

impl fmt::Display for ChangeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChangeClass::Online => "online",
            ChangeClass::Rewrite => "rewrite",
            ChangeClass::Destructive => "destructive",
            ChangeClass::Refused => "refused",
        })
    }
}

/// One change of a table's schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The field of the Table that changed, e.g. `spec.columns[amount].type`.
    pub field: String,
    /// What changes, e.g. `widening varchar(20) to varchar(40)`.
    pub summary: String,
    /// Its class.
    pub class: ChangeClass,
    /// Why it is refused and what to do instead; for a rewrite or destructive change, how it
    /// will be carried out. Empty for an online change.
    pub reason: String,
    /// The statements carrying it out, in order; empty for refused changes.
    pub ddl: Vec<String>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.class, self.reason.is_empty()) {
            (ChangeClass::Refused, _) => {
                write!(
                    f,
                    "{}: {} is refused: {}",
                    self.field, self.summary, self.reason
                )
            }
            (_, true) => write!(f, "{}: {}", self.field, self.summary),
            (_, false) => write!(f, "{}: {} ({})", self.field, self.summary, self.reason),
        }
    }
}

/// The changes from one schema to another, in the order their DDL runs: renames, then what
/// relaxes constraints, then what expands the schema, then what contracts it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Every change; refused ones first.
    pub changes: Vec<Change>,
}

impl Diff {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The class of the whole: the most disruptive change's; `None` when nothing changes.
    pub fn class(&self) -> Option<ChangeClass> {
        self.changes.iter().map(|c| c.class).max()
    }

    /// The refused changes.
    pub fn refusals(&self) -> impl Iterator<Item = &Change> {
        self.changes
            .iter()
            .filter(|c| c.class == ChangeClass::Refused)
    }

    /// Every refusal, separated by `; `; `None` when nothing is refused.
    pub fn refusal_message(&self) -> Option<String> {
        let lines: Vec<String> = self.refusals().map(|c| c.to_string()).collect();
        (!lines.is_empty()).then(|| lines.join("; "))
    }

    /// Every statement, in order.
    pub fn ddl(&self) -> Vec<String> {
        self.changes
            .iter()
            .flat_map(|c| c.ddl.iter().cloned())
            .collect()
    }
}
