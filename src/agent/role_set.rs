//! The cluster's application roles (`DatabaseCluster.spec.roles`) with their passwords, as
//! the node last read them (`roles.rs` reads them and applies them), and what each one may do
//! on a shard's table. Plain data: shared through the node's context.

use std::collections::BTreeMap;

use crate::api::database_cluster::{DatabaseRole, RoleAccess};

use super::postgres::{RolePassword, TableAccess, WantedRole};

/// The cluster's application roles as this node last read them.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RoleSet {
    /// `spec.roles`.
    pub declared: Vec<DatabaseRole>,
    /// Each role's password, for the roles whose Secret could be read.
    pub passwords: BTreeMap<String, RolePassword>,
    /// Why a role's password could not be read, by role.
    pub problems: BTreeMap<String, String>,
}

impl RoleSet {
    /// What the primary of a shard of `table` should hold.
    pub fn wanted(&self, table: &str) -> Vec<WantedRole> {
        self.declared
            .iter()
            .map(|role| WantedRole {
                name: role.name.clone(),
                password: self.passwords.get(&role.name).cloned(),
                access: table_access(role, table),
            })
            .collect()
    }
}

/// What `role` may do on `table`.
fn table_access(role: &DatabaseRole, table: &str) -> TableAccess {
    if !role.tables.is_empty() && !role.tables.iter().any(|t| t == table) {
        return TableAccess::None;
    }
    match role.access {
        RoleAccess::ReadWrite => TableAccess::ReadWrite,
        RoleAccess::ReadOnly => TableAccess::Read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(access: RoleAccess, tables: &[&str]) -> DatabaseRole {
        DatabaseRole {
            name: "app".into(),
            password_secret: "app-password".into(),
            access,
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn a_role_has_its_access_on_its_tables_only_and_on_every_table_when_none_are_named() {
        let every = role(RoleAccess::ReadWrite, &[]);
        assert_eq!(table_access(&every, "orders"), TableAccess::ReadWrite);
        let narrowed = role(RoleAccess::ReadOnly, &["orders"]);
        assert_eq!(table_access(&narrowed, "orders"), TableAccess::Read);
        assert_eq!(table_access(&narrowed, "payments"), TableAccess::None);
    }

    #[test]
    fn a_role_whose_password_is_unreadable_is_wanted_without_one() {
        let set = RoleSet {
            declared: vec![role(RoleAccess::ReadWrite, &[])],
            passwords: BTreeMap::new(),
            problems: BTreeMap::from([("app".into(), "Secret x has no key password".into())]),
        };
        let wanted = set.wanted("orders");
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted[0].password, None);
        assert_eq!(wanted[0].access, TableAccess::ReadWrite);
    }
}
