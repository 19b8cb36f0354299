//! Parsing and Shardplane's own validation of a commit's manifests: every YAML document
//! becomes an object bound to the GitSync's namespace, and checks that need more than one
//! object (key-range tiling of a table's declared Shards) run over the whole commit. Schema
//! validation is the API server's (a server-side dry-run, in `apply`). No client required.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::DynamicObject;
use serde::Deserialize;
use serde_json::Value;

use super::error::Invalid;
use super::inventory::ObjectId;
use super::source::ManifestFile;
use crate::plan::{KeyRange, check_tiling};

/// One object of a commit, with the file it came from.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The file, relative to the repository's root.
    pub file: String,
    /// Which object it is.
    pub id: ObjectId,
    /// The object as git declares it, its namespace set.
    pub object: DynamicObject,
}

/// Parses every document of every file, binding each object to `namespace`. Returns every
/// object, or every problem found (not just the first), so one status shows them all.
pub fn parse(files: &[ManifestFile], namespace: &str) -> Result<Vec<Manifest>, Vec<Invalid>> {
    let mut manifests = Vec::new();
    let mut problems = Vec::new();
    let mut seen = BTreeMap::<ObjectId, String>::new();
    for file in files {
        for document in serde_yaml::Deserializer::from_str(&file.content) {
            let invalid = |object: Option<String>, reason: String| Invalid {
                file: file.path.clone(),
                object,
                reason,
            };
            let value = match serde_yaml::Value::deserialize(document) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(value) => value,
                Err(error) => {
                    problems.push(invalid(None, format!("invalid YAML: {error}")));
                    break;
                }
            };
            match parse_object(value, namespace) {
                Ok(manifest_object) => {
                    let (id, object) = manifest_object;
                    if let Some(first) = seen.insert(id.clone(), file.path.clone()) {
                        problems.push(invalid(
                            Some(id.short()),
                            format!("declared twice (also in {first})"),
                        ));
                        continue;
                    }
                    manifests.push(Manifest {
                        file: file.path.clone(),
                        id,
                        object,
                    });
                }
                Err((object, reason)) => problems.push(invalid(object, reason)),
            }
        }
    }
    if problems.is_empty() {
        Ok(manifests)
    } else {
        Err(problems)
    }
}

type ParseProblem = (Option<String>, String);

fn parse_object(
    value: serde_yaml::Value,
    namespace: &str,
) -> Result<(ObjectId, DynamicObject), ParseProblem> {
    let value: Value =
        serde_json::to_value(value).map_err(|e| (None, format!("not a JSON object: {e}")))?;
    let text = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_owned);
    let kind = text("kind").ok_or((None, "has no kind".to_owned()))?;
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let short = format!("{kind}/{}", name.as_deref().unwrap_or("<unnamed>"));
    let api_version =
        text("apiVersion").ok_or_else(|| (Some(short.clone()), "has no apiVersion".to_owned()))?;
    let name = name.ok_or_else(|| {
        (
            Some(short.clone()),
            "has no metadata.name (generateName is not supported: git must name every object)"
                .to_owned(),
        )
    })?;
    if let Some(other) = value.pointer("/metadata/namespace").and_then(Value::as_str)
        && other != namespace
    {
        return Err((
            Some(short),
            format!(
                "is in namespace {other}, but this GitSync applies only to {namespace}; remove metadata.namespace"
            ),
        ));
    }
    let mut object: DynamicObject = serde_json::from_value(value).map_err(|e| {
        (
            Some(short.clone()),
            format!("is not a Kubernetes object: {e}"),
        )
    })?;
    object.metadata.namespace = Some(namespace.to_owned());
    let id = ObjectId {
        api_version,
        kind,
        namespace: namespace.to_owned(),
        name,
    };
    Ok((id, object))
}

/// A check over the whole commit that a single object's schema cannot express.
type Check = fn(&[Manifest]) -> Vec<Invalid>;

/// Shardplane's own checks, run on every commit before the dry-run. The schema-evolution
/// checks (refusing narrowing schema changes) are added to this list.
const CHECKS: &[Check] = &[check_shard_tiling];

/// Runs every Shardplane check; returns every problem found.
pub fn validate(manifests: &[Manifest]) -> Vec<Invalid> {
    CHECKS.iter().flat_map(|check| check(manifests)).collect()
}

/// Whether a manifest is a `shardplane.io` object of `kind`.
pub(crate) fn is_shardplane(manifest: &Manifest, kind: &str) -> bool {
    manifest.id.kind == kind && manifest.id.api_version.starts_with("shardplane.io/")
}

/// One declared Shard: its table and key range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredShard {
    /// The Shard's name.
    pub name: String,
    /// The file it came from.
    pub file: String,
    /// Its table.
    pub table: String,
    /// Its key range.
    pub range: KeyRange,
}

/// The declared Shards of a commit, or the problems of those that cannot be read.
pub fn declared_shards(manifests: &[Manifest]) -> (Vec<DeclaredShard>, Vec<Invalid>) {
    let mut shards = Vec::new();
    let mut problems = Vec::new();
    for manifest in manifests.iter().filter(|m| is_shardplane(m, "Shard")) {
        let spec = manifest.object.data.get("spec");
        let bound = |end: &str| spec.and_then(|s| s.pointer(&format!("/range/{end}")));
        let table = spec.and_then(|s| s.get("table")).and_then(Value::as_str);
        let range = match (bound("start"), bound("end")) {
            (start, end) if [start, end].iter().all(|b| b.is_none_or(Value::is_i64)) => {
                KeyRange::from_wire(start.and_then(Value::as_i64), end.and_then(Value::as_i64))
                    .map_err(|e| e.to_string())
            }
            _ => Err("spec.range.start and spec.range.end must be 64-bit integers".to_owned()),
        };
        match (table, range) {
            (Some(table), Ok(range)) => shards.push(DeclaredShard {
                name: manifest.id.name.clone(),
                file: manifest.file.clone(),
                table: table.to_owned(),
                range,
            }),
            (None, _) => problems.push(Invalid {
                file: manifest.file.clone(),
                object: Some(manifest.id.short()),
                reason: "has no spec.table".to_owned(),
            }),
            (_, Err(reason)) => problems.push(Invalid {
                file: manifest.file.clone(),
                object: Some(manifest.id.short()),
                reason,
            }),
        }
    }
    (shards, problems)
}

/// The declared Shards of each table must tile the key space: no gap, no overlap.
fn check_shard_tiling(manifests: &[Manifest]) -> Vec<Invalid> {
    let (shards, mut problems) = declared_shards(manifests);
    let mut by_table = BTreeMap::<&str, Vec<&DeclaredShard>>::new();
    for shard in &shards {
        by_table.entry(&shard.table).or_default().push(shard);
    }
    for (table, shards) in by_table {
        if let Err(error) = check_tiling(shards.iter().map(|s| (s.name.as_str(), s.range))) {
            let files: BTreeSet<&str> = shards.iter().map(|s| s.file.as_str()).collect();
            problems.push(Invalid {
                file: files.into_iter().collect::<Vec<_>>().join(", "),
                object: Some(format!("Table/{table}")),
                reason: format!("its declared Shards do not tile the key space: {error}"),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> ManifestFile {
        ManifestFile {
            path: path.into(),
            content: content.into(),
        }
    }

    fn shard(name: &str, start: Option<i64>, end: Option<i64>) -> String {
        let mut range = serde_json::Map::new();
        if let Some(start) = start {
            range.insert("start".into(), start.into());
        }
        if let Some(end) = end {
            range.insert("end".into(), end.into());
        }
        let value = serde_json::json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": name}, "spec": {"table": "t", "range": range}
        });
        format!("---\n{}", serde_yaml::to_string(&value).unwrap())
    }

    #[test]
    fn parses_documents_and_binds_them_to_the_namespace() {
        let files = [file(
            "a.yaml",
            &(shard("s0", None, Some(0)) + &shard("s1", Some(0), None)),
        )];
        let manifests = parse(&files, "db").unwrap();
        assert_eq!(manifests.len(), 2);
        assert_eq!(
            manifests[1].id.to_string(),
            "shardplane.io/v1alpha1/Shard/db/s1"
        );
        assert_eq!(
            manifests[1].object.metadata.namespace.as_deref(),
            Some("db")
        );
        assert!(validate(&manifests).is_empty());
    }

    #[test]
    fn every_problem_names_its_file_and_object() {
        let files = [
            file("ok.yaml", &shard("s0", None, None)),
            file("broken.yaml", "kind: Shard\nmetadata: {name: x\n"),
            file(
                "other-ns.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: kube-system}\n",
            ),
            file("dup.yaml", &shard("s0", None, None)),
        ];
        let problems = parse(&files, "db").unwrap_err();
        let files: Vec<&str> = problems.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(files, ["broken.yaml", "other-ns.yaml", "dup.yaml"]);
        assert_eq!(problems[1].object.as_deref(), Some("ConfigMap/c"));
        assert!(problems[1].reason.contains("kube-system"));
        assert!(problems[2].reason.contains("ok.yaml"));
    }

    #[test]
    fn shards_with_a_gap_are_refused_naming_the_table_and_the_keys() {
        let files = [file(
            "t.yaml",
            &(shard("s0", None, Some(0)) + &shard("s1", Some(10), None)),
        )];
        let problems = validate(&parse(&files, "db").unwrap());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].object.as_deref(), Some("Table/t"));
        assert!(problems[0].reason.contains("gap"), "{}", problems[0].reason);
    }

    #[test]
    fn shards_that_overlap_are_refused() {
        let files = [file(
            "t.yaml",
            &(shard("s0", None, Some(5)) + &shard("s1", Some(0), None)),
        )];
        let problems = validate(&parse(&files, "db").unwrap());
        assert!(problems[0].reason.contains("overlap"), "{problems:?}");
    }
}
