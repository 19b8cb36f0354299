//! Application roles on a primary: what its catalog holds of them ([`observe_roles`]), the
//! statements that make it hold what is wanted ([`plan_roles`], pure), and running them
//! ([`apply_roles`], one transaction per role). Roles are shared by the instance's
//! databases and reach standbys by physical replication, so only a serving primary is
//! changed. A role Shardplane made carries [`MANAGED_COMMENT`], so one removed from the
//! cluster is told apart from roles it never managed. Passwords reach SQL only as SCRAM
//! verifiers, and no statement text is ever logged or put into an error.

use std::collections::BTreeSet;
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::settings::{REPLICATION_USER, SUPERUSER};
use super::sql::{quote_ident, quote_literal};

/// The comment on every role Shardplane manages (`COMMENT ON ROLE`).
pub const MANAGED_COMMENT: &str = "managed by Shardplane: DatabaseCluster spec.roles";

/// The schema the shards' tables live in.
const SCHEMA: &str = "public";

/// An application role's password. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct RolePassword(String);

impl RolePassword {
    /// A password.
    pub fn new(password: String) -> Self {
        RolePassword(password)
    }

    /// A new SCRAM-SHA-256 verifier of the password (random salt): the only form that
    /// reaches SQL.
    fn verifier(&self) -> String {
        postgres_protocol::password::scram_sha_256(self.0.as_bytes())
    }

    /// Whether `verifier` (`pg_authid.rolpassword`) was made from this password. Only SCRAM
    /// verifiers are understood; the password is used as bytes (as PostgreSQL does for a
    /// password SASLprep leaves alone, so for any ASCII one), so a non-ASCII password that
    /// SASLprep changes is found different and set again — harmless.
    fn matches(&self, verifier: &str) -> bool {
        scram_stored_key_matches(self.0.as_bytes(), verifier)
    }
}

impl fmt::Debug for RolePassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RolePassword(..)")
    }
}

/// What a role may do on the instance's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableAccess {
    /// Nothing: the table is not one of the role's.
    None,
    /// `SELECT`.
    Read,
    /// `SELECT`, `INSERT`, `UPDATE`, `DELETE`.
    ReadWrite,
}

impl TableAccess {
    /// The table privileges, as `aclexplode` names them.
    fn privileges(self) -> BTreeSet<&'static str> {
        match self {
            TableAccess::None => BTreeSet::new(),
            TableAccess::Read => BTreeSet::from(["SELECT"]),
            TableAccess::ReadWrite => BTreeSet::from(["DELETE", "INSERT", "SELECT", "UPDATE"]),
        }
    }
}

/// A role the instance should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedRole {
    /// Its name.
    pub name: String,
    /// Its password; `None` while it cannot be read (a role that exists keeps its old one,
    /// a missing one is not created).
    pub password: Option<RolePassword>,
    /// What it may do on the instance's table.
    pub access: TableAccess,
}

/// What the instance's catalog holds of a role.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedRole {
    /// Its name.
    pub name: String,
    /// Whether it carries [`MANAGED_COMMENT`].
    pub managed: bool,
    /// Whether it may log in and has no other attribute (superuser, create role or
    /// database, replication, bypass row security).
    pub plain_login: bool,
    /// Its password verifier (`pg_authid.rolpassword`).
    pub verifier: Option<String>,
    /// Its privileges on the instance's table, granted to it by name.
    pub table_privileges: BTreeSet<String>,
    /// Whether `USAGE` on the table's schema is granted to it by name.
    pub schema_usage: bool,
    /// The roles it is a member of.
    pub member_of: Vec<String>,
}

/// What one statement does, for logs and status (never the statement itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleChange {
    /// `CREATE ROLE`.
    Create,
    /// Login only, no other attribute.
    Attributes,
    /// A new password.
    Password,
    /// The mark of a managed role.
    Mark,
    /// Out of a role it was a member of.
    Membership,
    /// Privileges granted.
    Grant,
    /// Privileges revoked.
    Revoke,
    /// Its sessions ended, its privileges revoked, the role dropped.
    Drop,
}

/// One statement of a plan.
#[derive(Clone, PartialEq, Eq)]
pub struct RoleStatement {
    /// The role it changes.
    pub role: String,
    /// What it does.
    pub change: RoleChange,
    /// The SQL (may hold a SCRAM verifier: never logged).
    sql: String,
}

impl RoleStatement {
    fn new(role: &str, change: RoleChange, sql: String) -> Self {
        RoleStatement {
            role: role.to_owned(),
            change,
            sql,
        }
    }

    /// The SQL text.
    pub fn sql(&self) -> &str {
        &self.sql
    }
}

impl fmt::Debug for RoleStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} of role {}", self.change, self.role)
    }
}

/// Whether Shardplane never touches a role of this name: its own two, and PostgreSQL's.
pub fn is_reserved_role(name: &str) -> bool {
    name == SUPERUSER || name == REPLICATION_USER || name.starts_with("pg_")
}

/// The statements that make the catalog (`observed`, with `table_exists` telling whether
/// the instance's table `table` exists yet) hold exactly the `wanted` roles: each wanted one
/// exists, logs in with its password, has no other attribute or membership, and holds
/// exactly its privileges on `table` (and `USAGE` on its schema while it holds any); each
/// managed role no longer wanted is dropped. In role order, each role's statements in the
/// order they must run.
pub fn plan_roles(
    table: &str,
    table_exists: bool,
    wanted: &[WantedRole],
    observed: &[ObservedRole],
) -> Vec<RoleStatement> {
    let mut statements = Vec::new();
    let relation = format!("{}.{}", quote_ident(SCHEMA), quote_ident(table));
    for role in wanted.iter().filter(|r| !is_reserved_role(&r.name)) {
        let name = quote_ident(&role.name);
        let found = observed.iter().find(|o| o.name == role.name);
        let statement = |change, sql| RoleStatement::new(&role.name, change, sql);
        let current = match (found, &role.password) {
            (None, None) => continue,
            (None, Some(password)) => {
                statements.push(statement(
                    RoleChange::Create,
                    format!(
                        "CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
                         NOBYPASSRLS PASSWORD {}",
                        quote_literal(&password.verifier())
                    ),
                ));
                statements.push(statement(
                    RoleChange::Mark,
                    format!(
                        "COMMENT ON ROLE {name} IS {}",
                        quote_literal(MANAGED_COMMENT)
                    ),
                ));
                ObservedRole::default()
            }
            (Some(found), _) => {
                if !found.plain_login {
                    statements.push(statement(
                        RoleChange::Attributes,
                        format!(
                            "ALTER ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE \
                             NOREPLICATION NOBYPASSRLS"
                        ),
                    ));
                }
                if let Some(password) = &role.password
                    && !found
                        .verifier
                        .as_deref()
                        .is_some_and(|v| password.matches(v))
                {
                    statements.push(statement(
                        RoleChange::Password,
                        format!(
                            "ALTER ROLE {name} PASSWORD {}",
                            quote_literal(&password.verifier())
                        ),
                    ));
                }
                if !found.managed {
                    statements.push(statement(
                        RoleChange::Mark,
                        format!(
                            "COMMENT ON ROLE {name} IS {}",
                            quote_literal(MANAGED_COMMENT)
                        ),
                    ));
                }
                for group in &found.member_of {
                    statements.push(statement(
                        RoleChange::Membership,
                        format!("REVOKE {} FROM {name}", quote_ident(group)),
                    ));
                }
                found.clone()
            }
        };
        if !table_exists {
            continue;
        }
        let want = role.access.privileges();
        let have: BTreeSet<&str> = current
            .table_privileges
            .iter()
            .map(String::as_str)
            .collect();
        let missing: Vec<&str> = want.difference(&have).copied().collect();
        let extra: Vec<&str> = have.difference(&want).copied().collect();
        let schema = quote_ident(SCHEMA);
        if !want.is_empty() && !current.schema_usage {
            statements.push(statement(
                RoleChange::Grant,
                format!("GRANT USAGE ON SCHEMA {schema} TO {name}"),
            ));
        }
        if !missing.is_empty() {
            statements.push(statement(
                RoleChange::Grant,
                format!("GRANT {} ON TABLE {relation} TO {name}", missing.join(", ")),
            ));
        }
        if !extra.is_empty() {
            statements.push(statement(
                RoleChange::Revoke,
                format!(
                    "REVOKE {} ON TABLE {relation} FROM {name}",
                    extra.join(", ")
                ),
            ));
        }
        if want.is_empty() && current.schema_usage {
            statements.push(statement(
                RoleChange::Revoke,
                format!("REVOKE USAGE ON SCHEMA {schema} FROM {name}"),
            ));
        }
    }
    for gone in observed.iter().filter(|o| {
        o.managed && !is_reserved_role(&o.name) && !wanted.iter().any(|w| w.name == o.name)
    }) {
        let name = quote_ident(&gone.name);
        // Its open sessions end with it: a removed role must not keep using what it had.
        statements.push(RoleStatement::new(
            &gone.name,
            RoleChange::Drop,
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {}",
                quote_literal(&gone.name)
            ),
        ));
        statements.push(RoleStatement::new(
            &gone.name,
            RoleChange::Drop,
            format!("DROP OWNED BY {name}"),
        ));
        statements.push(RoleStatement::new(
            &gone.name,
            RoleChange::Drop,
            format!("DROP ROLE {name}"),
        ));
    }
    statements
}

/// The catalog's view of the roles named in `wanted` and of every managed role, with
/// their privileges on `table` (in the `public` schema); and whether `table` exists.
pub async fn observe_roles(
    session: &tokio_postgres::Client,
    table: &str,
    wanted: &[String],
) -> Result<(bool, Vec<ObservedRole>), tokio_postgres::Error> {
    let relation = format!("{}.{}", quote_ident(SCHEMA), quote_ident(table));
    let table_exists: bool = session
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&relation])
        .await?
        .get(0);
    let rows = session
        .query(
            "SELECT r.rolname::text, \
               coalesce(shobj_description(r.oid, 'pg_authid') = $3, false), \
               r.rolcanlogin AND NOT (r.rolsuper OR r.rolcreatedb OR r.rolcreaterole \
                 OR r.rolreplication OR r.rolbypassrls), \
               r.rolpassword, \
               ARRAY(SELECT a.privilege_type::text FROM pg_class c, aclexplode(c.relacl) a \
                     WHERE c.oid = to_regclass($1) AND a.grantee = r.oid), \
               EXISTS(SELECT FROM pg_namespace n, aclexplode(n.nspacl) a \
                      WHERE n.nspname = $4 AND a.grantee = r.oid AND a.privilege_type = 'USAGE'), \
               ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g \
                     ON g.oid = m.roleid WHERE m.member = r.oid) \
             FROM pg_authid r \
             WHERE r.rolname = ANY($2) OR shobj_description(r.oid, 'pg_authid') = $3",
            &[&relation, &wanted, &MANAGED_COMMENT, &SCHEMA],
        )
        .await?;
    let observed = rows
        .iter()
        .map(|row| ObservedRole {
            name: row.get(0),
            managed: row.get(1),
            plain_login: row.get(2),
            verifier: row.get(3),
            table_privileges: row.get::<_, Vec<String>>(4).into_iter().collect(),
            schema_usage: row.get(5),
            member_of: row.get(6),
        })
        .collect();
    Ok((table_exists, observed))
}

/// Runs `statements`, each role's in one transaction; returns the roles whose transaction
/// failed, with PostgreSQL's error (which never quotes the statement).
pub async fn apply_roles(
    session: &tokio_postgres::Client,
    statements: &[RoleStatement],
) -> Vec<(String, tokio_postgres::Error)> {
    let mut failed = Vec::new();
    let mut roles: Vec<&str> = statements.iter().map(|s| s.role.as_str()).collect();
    roles.dedup();
    for role in roles {
        let body: Vec<&str> = statements
            .iter()
            .filter(|s| s.role == role)
            .map(RoleStatement::sql)
            .collect();
        let transaction = format!("BEGIN; {}; COMMIT", body.join("; "));
        if let Err(error) = session.batch_execute(&transaction).await {
            // The failed transaction must not stay open for the next role's.
            let _ = session.batch_execute("ROLLBACK").await;
            failed.push((role.to_owned(), error));
        }
    }
    failed
}

/// Whether the SCRAM-SHA-256 verifier `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
/// was made from `password`: its stored key recomputed with its salt and iteration count.
fn scram_stored_key_matches(password: &[u8], verifier: &str) -> bool {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let Some(rest) = verifier.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((parameters, keys)) = rest.split_once('$') else {
        return false;
    };
    let (Some((iterations, salt)), Some((stored_key, _))) =
        (parameters.split_once(':'), keys.split_once(':'))
    else {
        return false;
    };
    let (Ok(iterations), Ok(salt), Ok(stored_key)) = (
        iterations.parse::<u32>(),
        STANDARD.decode(salt),
        STANDARD.decode(stored_key),
    ) else {
        return false;
    };
    if iterations == 0 || iterations > 1_000_000 {
        return false;
    }
    let Some(salted) = pbkdf2_sha256(password, &salt, iterations) else {
        return false;
    };
    let Ok(mut client_key) = Hmac::<Sha256>::new_from_slice(&salted) else {
        return false;
    };
    client_key.update(b"Client Key");
    let computed = Sha256::digest(client_key.finalize().into_bytes());
    computed.as_slice() == stored_key.as_slice()
}

/// SCRAM's `Hi()`: PBKDF2 with HMAC-SHA-256, one block.
fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> Option<[u8; 32]> {
    let mac = Hmac::<Sha256>::new_from_slice(password).ok()?;
    let mut round = mac.clone();
    round.update(salt);
    round.update(&1u32.to_be_bytes());
    let mut previous: [u8; 32] = round.finalize().into_bytes().into();
    let mut result = previous;
    for _ in 1..iterations {
        let mut round = mac.clone();
        round.update(&previous);
        previous = round.finalize().into_bytes().into();
        for (out, byte) in result.iter_mut().zip(previous) {
            *out ^= byte;
        }
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(name: &str, password: Option<&str>, access: TableAccess) -> WantedRole {
        WantedRole {
            name: name.into(),
            password: password.map(|p| RolePassword::new(p.into())),
            access,
        }
    }

    /// A managed role as `plan_roles` leaves it for `access` with `password`.
    fn settled(name: &str, password: &str, access: TableAccess) -> ObservedRole {
        ObservedRole {
            name: name.into(),
            managed: true,
            plain_login: true,
            verifier: Some(postgres_protocol::password::scram_sha_256(
                password.as_bytes(),
            )),
            table_privileges: access.privileges().into_iter().map(str::to_owned).collect(),
            schema_usage: access != TableAccess::None,
            member_of: Vec::new(),
        }
    }

    fn changes(statements: &[RoleStatement]) -> Vec<(String, RoleChange)> {
        statements
            .iter()
            .map(|s| (s.role.clone(), s.change))
            .collect()
    }

    #[test]
    fn a_new_role_is_created_with_a_verifier_marked_and_granted_its_access_only() {
        let plan = plan_roles(
            "orders",
            true,
            &[wanted("app", Some("s3cret pass"), TableAccess::ReadWrite)],
            &[],
        );
        let sql: Vec<&str> = plan.iter().map(RoleStatement::sql).collect();
        assert!(sql[0].starts_with(
            "CREATE ROLE \"app\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:"
        ), "{}", sql[0]);
        assert_eq!(
            sql[1..],
            [
                "COMMENT ON ROLE \"app\" IS 'managed by Shardplane: DatabaseCluster spec.roles'",
                "GRANT USAGE ON SCHEMA \"public\" TO \"app\"",
                "GRANT DELETE, INSERT, SELECT, UPDATE ON TABLE \"public\".\"orders\" TO \"app\"",
            ]
        );
        assert!(
            plan.iter().all(|s| !s.sql().contains("s3cret")),
            "the password reaches SQL only as a verifier"
        );
        assert_eq!(format!("{:?}", plan[0]), "Create of role app");
    }

    #[test]
    fn nothing_changes_when_the_catalog_holds_what_is_wanted() {
        let observed = [
            settled("app", "pw1", TableAccess::ReadWrite),
            settled("reader", "pw2", TableAccess::Read),
            settled("other_table_only", "pw3", TableAccess::None),
        ];
        let plan = plan_roles(
            "orders",
            true,
            &[
                wanted("app", Some("pw1"), TableAccess::ReadWrite),
                wanted("reader", Some("pw2"), TableAccess::Read),
                wanted("other_table_only", Some("pw3"), TableAccess::None),
            ],
            &observed,
        );
        assert_eq!(plan, []);
    }

    #[test]
    fn a_changed_password_is_set_again_and_an_unreadable_one_left_alone() {
        let observed = [settled("app", "old", TableAccess::ReadWrite)];
        let plan = plan_roles(
            "orders",
            true,
            &[wanted("app", Some("new"), TableAccess::ReadWrite)],
            &observed,
        );
        assert_eq!(changes(&plan), [("app".into(), RoleChange::Password)]);
        assert!(
            plan[0]
                .sql()
                .starts_with("ALTER ROLE \"app\" PASSWORD 'SCRAM-SHA-256$")
        );
        let unreadable = plan_roles(
            "orders",
            true,
            &[wanted("app", None, TableAccess::ReadWrite)],
            &observed,
        );
        assert_eq!(unreadable, []);
        // A role that does not exist yet is not created without its password.
        let missing = plan_roles("orders", true, &[wanted("x", None, TableAccess::Read)], &[]);
        assert_eq!(missing, []);
    }

    #[test]
    fn shrinking_access_revokes_and_growing_it_grants() {
        let observed = [settled("app", "pw", TableAccess::ReadWrite)];
        let plan = plan_roles(
            "orders",
            true,
            &[wanted("app", Some("pw"), TableAccess::Read)],
            &observed,
        );
        let sql: Vec<&str> = plan.iter().map(RoleStatement::sql).collect();
        assert_eq!(
            sql,
            ["REVOKE DELETE, INSERT, UPDATE ON TABLE \"public\".\"orders\" FROM \"app\""]
        );
        let none = plan_roles(
            "orders",
            true,
            &[wanted("app", Some("pw"), TableAccess::None)],
            &observed,
        );
        let sql: Vec<&str> = none.iter().map(RoleStatement::sql).collect();
        assert_eq!(
            sql,
            [
                "REVOKE DELETE, INSERT, SELECT, UPDATE ON TABLE \"public\".\"orders\" FROM \"app\"",
                "REVOKE USAGE ON SCHEMA \"public\" FROM \"app\"",
            ]
        );
        let reader = [settled("app", "pw", TableAccess::Read)];
        let grow = plan_roles(
            "orders",
            true,
            &[wanted("app", Some("pw"), TableAccess::ReadWrite)],
            &reader,
        );
        let sql: Vec<&str> = grow.iter().map(RoleStatement::sql).collect();
        assert_eq!(
            sql,
            ["GRANT DELETE, INSERT, UPDATE ON TABLE \"public\".\"orders\" TO \"app\""]
        );
    }

    #[test]
    fn privileges_granted_by_hand_are_revoked_and_an_adopted_role_is_tamed() {
        let mut found = settled("app", "pw", TableAccess::Read);
        found.managed = false;
        found.plain_login = false;
        found.table_privileges.insert("TRUNCATE".into());
        found.member_of = vec!["pg_read_all_data".into()];
        let plan = plan_roles(
            "orders",
            true,
            &[wanted("app", Some("pw"), TableAccess::Read)],
            &[found],
        );
        let sql: Vec<&str> = plan.iter().map(RoleStatement::sql).collect();
        assert_eq!(
            sql,
            [
                "ALTER ROLE \"app\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
                "COMMENT ON ROLE \"app\" IS 'managed by Shardplane: DatabaseCluster spec.roles'",
                "REVOKE \"pg_read_all_data\" FROM \"app\"",
                "REVOKE TRUNCATE ON TABLE \"public\".\"orders\" FROM \"app\"",
            ]
        );
    }

    #[test]
    fn a_removed_managed_role_is_dropped_and_unmanaged_or_reserved_ones_are_never_touched() {
        let mut by_hand = settled("dba", "pw", TableAccess::ReadWrite);
        by_hand.managed = false;
        let mut superuser = settled("postgres", "pw", TableAccess::None);
        superuser.managed = true;
        let plan = plan_roles(
            "orders",
            true,
            &[wanted("postgres", Some("x"), TableAccess::ReadWrite)],
            &[
                settled("old_app", "pw", TableAccess::ReadWrite),
                by_hand,
                superuser,
            ],
        );
        let sql: Vec<&str> = plan.iter().map(RoleStatement::sql).collect();
        assert_eq!(
            sql,
            [
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'old_app'",
                "DROP OWNED BY \"old_app\"",
                "DROP ROLE \"old_app\"",
            ]
        );
    }

    #[test]
    fn before_the_table_exists_only_the_role_is_made() {
        let plan = plan_roles(
            "orders",
            false,
            &[wanted("app", Some("pw"), TableAccess::ReadWrite)],
            &[],
        );
        assert_eq!(
            changes(&plan),
            [
                ("app".into(), RoleChange::Create),
                ("app".into(), RoleChange::Mark)
            ]
        );
    }

    #[test]
    fn scram_verifiers_are_checked_against_the_password() {
        let verifier = postgres_protocol::password::scram_sha_256(b"correct horse");
        assert!(scram_stored_key_matches(b"correct horse", &verifier));
        assert!(!scram_stored_key_matches(b"correct horsE", &verifier));
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$x:y$z:w",
            "SCRAM-SHA-256$0:AAAA$AAAA:AAAA",
        ] {
            assert!(!scram_stored_key_matches(b"x", bad), "{bad}");
        }
        assert_eq!(
            format!("{:?}", RolePassword::new("hidden".into())),
            "RolePassword(..)"
        );
    }
}
