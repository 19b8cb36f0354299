//! Proof that no acknowledged write is lost: a workload that writes rows with unique ids
//! through a [`crate::routing::Router`] and records every acknowledged id, and a checker
//! that reads every row from every serving primary of a table and reports what is missing,
//! duplicated or misplaced, and whether any shard has two writable primaries. The data-plane
//! and schema-change scenarios run the workload across their change and print the checker's
//! counts. Needs a running table; decides nothing.

mod checker;
mod writes;

pub use checker::{CheckError, CheckReport, Checker, PrimaryReport, RowReport, ShardPrimaries};
pub use writes::{Workload, WorkloadConfig, WorkloadError, WorkloadReport};

/// `name` double-quoted, if it is a lower-case SQL identifier (the form the Table resource
/// requires of column names), so that it needs no escaping.
fn sql_identifier(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let valid = name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    valid.then(|| format!("\"{name}\""))
}

#[cfg(test)]
mod tests {
    use super::sql_identifier;

    #[test]
    fn only_lower_case_identifiers_are_quoted() {
        assert_eq!(sql_identifier("items_2"), Some("\"items_2\"".to_owned()));
        assert_eq!(sql_identifier("_x"), Some("\"_x\"".to_owned()));
        assert_eq!(sql_identifier("Items"), None);
        assert_eq!(sql_identifier("2x"), None);
        assert_eq!(sql_identifier("a\"; DROP TABLE t; --"), None);
        assert_eq!(sql_identifier(""), None);
        assert_eq!(sql_identifier(&"a".repeat(64)), None);
    }
}
