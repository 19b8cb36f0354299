//! The inventory: which objects git-sync applied, kept in `GitSync.status.inventory` as
//! `apiVersion/Kind/namespace/name` strings, so what leaves git can be pruned and nothing
//! else ever is. No client required.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// One object git-sync applied.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    /// `group/version`, or `version` for the core group.
    pub api_version: String,
    /// The kind.
    pub kind: String,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectId {
    /// `Kind/name`, as messages name an object.
    pub fn short(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.api_version, self.kind, self.namespace, self.name
        )
    }
}

/// An inventory entry that is not `apiVersion/Kind/namespace/name`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "inventory entry {0:?} is not apiVersion/Kind/namespace/name; remove it from status.inventory"
)]
pub struct MalformedEntry(pub String);

impl FromStr for ObjectId {
    type Err = MalformedEntry;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        // Names, namespaces and kinds hold no '/', so split from the right: the rest is the
        // apiVersion, which may hold one.
        let mut parts = entry.rsplitn(4, '/');
        let (Some(name), Some(namespace), Some(kind), Some(api_version)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MalformedEntry(entry.to_owned()));
        };
        if [name, namespace, kind, api_version]
            .iter()
            .any(|p| p.is_empty())
        {
            return Err(MalformedEntry(entry.to_owned()));
        }
        Ok(ObjectId {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// The objects of `previous` that are not in `current`: what to prune. Entries that do not
/// parse are skipped (they name nothing git-sync could delete safely).
pub fn to_prune(previous: &[String], current: &BTreeSet<ObjectId>) -> Vec<ObjectId> {
    previous
        .iter()
        .filter_map(|entry| entry.parse::<ObjectId>().ok())
        .filter(|id| !current.contains(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(api_version: &str, kind: &str, name: &str) -> ObjectId {
        ObjectId {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: "db".into(),
            name: name.into(),
        }
    }

    #[test]
    fn entries_round_trip_with_and_without_a_group() {
        for object in [
            id("shardplane.io/v1alpha1", "Shard", "a-0"),
            id("v1", "ConfigMap", "c"),
        ] {
            assert_eq!(object.to_string().parse::<ObjectId>(), Ok(object));
        }
        assert_eq!(
            id("shardplane.io/v1alpha1", "Shard", "a-0").to_string(),
            "shardplane.io/v1alpha1/Shard/db/a-0"
        );
        assert!("Shard/db/a".parse::<ObjectId>().is_err());
        assert!("v1/Shard//a".parse::<ObjectId>().is_err());
    }

    #[test]
    fn prunes_only_what_left_git() {
        let kept = id("shardplane.io/v1alpha1", "Shard", "kept");
        let gone = id("shardplane.io/v1alpha1", "Shard", "gone");
        let previous = vec![kept.to_string(), gone.to_string(), "garbage".to_owned()];
        let current = BTreeSet::from([kept, id("v1", "ConfigMap", "new")]);
        assert_eq!(to_prune(&previous, &current), vec![gone]);
    }
}
