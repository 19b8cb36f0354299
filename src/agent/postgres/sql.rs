//! Quoting for the few places where values must be spliced into SQL or configuration text
//! (utility statements such as `ALTER SYSTEM` take no bind parameters), and the rule for
//! replica names, which become application names, slot names and quorum members.

use super::PostgresError;

/// A double-quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A single-quoted SQL (or configuration file) string literal.
pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A single-quoted libpq connection-string value.
pub(crate) fn quote_conninfo(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Checks that `name` can be a replica's name: 1 to 63 characters of `[a-z0-9_]`, so that it
/// is a valid slot name and needs no quoting anywhere.
pub(crate) fn check_replica_name(name: &str) -> Result<(), PostgresError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
    if valid {
        Ok(())
    } else {
        Err(PostgresError::InvalidName {
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_conninfo("a'b\\c"), "'a\\'b\\\\c'");
    }

    #[test]
    fn replica_names_are_plain_identifiers() {
        assert!(check_replica_name("shard_7_r2").is_ok());
        for bad in ["", "Upper", "has space", "dash-ed", &"x".repeat(64)] {
            assert!(check_replica_name(bad).is_err(), "{bad:?}");
        }
    }
}
