//! `GitSync`: one git repository, branch and path whose manifests `shardplane git-sync`
//! applies to this namespace (spec), and what it last did: the commit applied, the inventory
//! of objects it owns (for pruning), conditions naming the file and object that failed
//! (status). The applier itself lives in `crate::gitsync`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, OBJECT_NAME_PATTERN};

/// A git repository whose manifests are applied to this namespace, transactionally.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "shardplane.io",
    version = "v1alpha1",
    kind = "GitSync",
    namespaced,
    status = "GitSyncStatus",
    shortname = "gs",
    category = "shardplane",
    doc = "A git repository, branch and path whose manifests git-sync validates as a whole and applies to this namespace with server-side apply, pruning what was removed from git.",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
    printcolumn(name = "Branch", type_ = "string", json_path = ".spec.branch"),
    printcolumn(
        name = "Commit",
        type_ = "string",
        json_path = ".status.lastAppliedCommit",
        description = "The commit last applied"
    ),
    printcolumn(
        name = "Objects",
        type_ = "integer",
        json_path = ".status.objectCount",
        description = "Objects in the inventory"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GitSyncSpec {
    /// The repository: `file:///path`, `https://host/repo.git` (a token from the credentials
    /// Secret) or `ssh://git@host/repo.git` (a key from the credentials Secret).
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = url_rules()))]
    pub url: String,
    /// The branch to follow: a git branch name (`main`, `release/1.2`), as
    /// `git check-ref-format --branch` accepts it.
    #[serde(default = "default_branch")]
    #[schemars(length(min = 1, max = 255))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": r"!self.startsWith('-') && !self.startsWith('.') && !self.startsWith('/') && !self.endsWith('/') && !self.endsWith('.') && !self.endsWith('.lock') && !self.contains('..') && !self.contains('@{') && !self.contains('//') && !self.contains('/.') && self != '@' && !self.matches('[\x00-\x20~^:?*\\[\\\\\x7f]')",
            "message": "spec.branch must be a git branch name such as main or release/1.2: no spaces, control characters or any of ~ ^ : ? * [ \\, no '..', '@{' or '//', not starting with '-', '.' or '/', not ending with '/', '.' or '.lock'"
        }
    ]))]
    pub branch: String,
    /// The folder inside the repository whose `*.yaml` and `*.yml` files (recursively) are
    /// applied; empty means the repository's root.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!self.contains('..')", "message": "spec.path must not contain '..'"}
    ]))]
    pub path: String,
    /// Seconds between two syncs when no webhook arrives; each sync also corrects drift.
    #[serde(default = "default_interval_seconds")]
    #[schemars(range(min = 5, max = 86400))]
    pub interval_seconds: i32,
    /// Whether objects removed from git are deleted from the cluster (default true).
    #[serde(default = "default_prune")]
    pub prune: bool,
    /// Stop syncing (nothing is fetched, applied or pruned) while true.
    #[serde(default)]
    pub suspend: bool,
    /// The Secret (in this namespace) holding credentials: `token` (and optionally
    /// `username`) for HTTPS; `identity` (an OpenSSH private key) and `known_hosts` for SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// The Secret (in this namespace) whose key `secret` is the HMAC-SHA256 key of the push
    /// webhook; without it the webhook refuses this GitSync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_ref: Option<SecretRef>,
    /// When set, only commits with an SSH signature by one of these signers are applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<SignatureVerification>,
}

/// `spec.url`'s rules: a scheme git-sync fetches from, and no credentials.
fn url_rules() -> serde_json::Value {
    let mut rules = vec![serde_json::json!({
        "rule": "self.startsWith('file://') || self.startsWith('https://') || self.startsWith('ssh://')",
        "message": "spec.url must start with file://, https:// or ssh://"
    })];
    if let serde_json::Value::Array(shared) = super::repository_url_rules() {
        rules.extend(shared);
    }
    serde_json::Value::Array(rules)
}

fn default_branch() -> String {
    "main".to_owned()
}

fn default_interval_seconds() -> i32 {
    60
}

fn default_prune() -> bool {
    true
}

/// A Secret in the GitSync's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
}

/// Which commit signatures are accepted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct SignatureVerification {
    /// The accepted signers in OpenSSH's allowed-signers form (`principal ssh-ed25519
    /// AAAA...`), one per entry or several lines to an entry; at most 64 entries (the API
    /// server costs the check of each entry by its length). A commit unsigned, signed with GPG
    /// or by another key is refused.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("items" = {
        "type": "string",
        "minLength": 1,
        "maxLength": 16384,
        "x-kubernetes-validations": [{
            "rule": "self.startsWith('#') || self.matches('[^ \\t\\n][ \\t]+([^\\n]*[ \\t])?(ssh-|ecdsa-|sk-)[^ \\t\\n]*[ \\t]+[^ \\t\\n]')",
            "message": "must be a signer in OpenSSH's allowed-signers form, `principal keytype base64` (for example `alice@example.com ssh-ed25519 AAAA...`), or a # comment"
        }]
    }))]
    pub allowed_signers: Vec<String>,
}

/// What git-sync last did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSyncStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the branch's head is applied), `Progressing` and `Degraded`; a refused
    /// commit's message names the file, the object and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The commit whose manifests are applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_commit: Option<String>,
    /// The commit last tried, applied or refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_commit: Option<String>,
    /// When the last sync finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// How many objects the inventory holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_count: Option<i64>,
    /// The objects applied from git, each as `apiVersion/Kind/namespace/name`; what leaves
    /// git is pruned from this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub inventory: Vec<String>,
}
