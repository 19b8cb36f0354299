//! The Helm chart `charts/shardplane`: its values schema refuses unknown keys, the RBAC it
//! renders is least-privilege without wildcards, and an install on a real API server creates
//! the identities, the operator and Established CRDs, grants exactly the intended rights
//! (checked with `kubectl auth can-i`), is enough for the real operator and git-sync to work
//! with nothing else, and is removed again by `helm uninstall`.

mod support;

use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::flowcontrol::v1::FlowSchema;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_yaml::Value;
use shardplane::agent::protocol::{renew_lease, report_node_status, report_replica};
use shardplane::api::shard::{ObservedReplica, ReplicaRole, ReplicaState};
use shardplane::api::{DatabaseCluster, DatabaseNode, GitSync, GitSyncSpec, Shard};
use support::{TestEnv, control_plane, eventually, test_env};

/// The chart, by absolute path so that helm finds it whatever the working directory.
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/shardplane");

/// How long the API server may take to establish CRDs, update its RBAC cache, or (with
/// kube-controller-manager) collect garbage.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Values that turn on everything optional, so that every template renders.
const EVERYTHING_ON: [&str; 2] = ["--set", "gitSync.enabled=true"];

// ---------------------------------------------------------------------------------------
// Helpers

/// stdout and stderr of a finished command, for assertion messages.
fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs helm (no namespace needed) and returns its output.
async fn helm(args: &[&str]) -> Output {
    control_plane()
        .await
        .helm(args)
        .await
        .unwrap_or_else(|error| panic!("cannot run helm: {error}"))
}

/// `helm template <release> <chart> --namespace shardplane-system <extra>`, parsed into
/// one YAML value per object.
async fn render(release: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        release,
        CHART,
        "--namespace",
        "shardplane-system",
    ];
    args.extend_from_slice(extra);
    let output = helm(&args).await;
    assert!(
        output.status.success(),
        "helm template: {}",
        describe(&output)
    );
    let text = String::from_utf8(output.stdout).expect("helm template prints UTF-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .unwrap_or_else(|error| panic!("helm template printed invalid YAML: {error}"))
        })
        .filter(|object: &Value| !object.is_null())
        .collect()
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// The rendered object of `kind` named `name`; panics with the names present if missing.
fn find<'a>(objects: &'a [Value], wanted_kind: &str, wanted_name: &str) -> &'a Value {
    objects
        .iter()
        .find(|object| kind(object) == wanted_kind && name(object) == wanted_name)
        .unwrap_or_else(|| {
            let present: Vec<String> = objects
                .iter()
                .map(|object| format!("{}/{}", kind(object), name(object)))
                .collect();
            panic!("no {wanted_kind}/{wanted_name} rendered; rendered: {present:?}")
        })
}

/// The `value` of the environment variable `name` in a rendered container's `env`, or, for one
/// set from a field, its `valueFrom`.
fn env_value<'a>(env: &'a Value, name: &str) -> Option<&'a Value> {
    let var = env.as_sequence()?.iter().find(|var| var["name"] == name)?;
    var.get("value").or_else(|| var.get("valueFrom"))
}

/// Whether a rendered ClusterRole only extends Kubernetes' built-in roles (by aggregation
/// labels), granting nothing by itself.
fn is_aggregated(role: &Value) -> bool {
    role["metadata"]["labels"]
        .as_mapping()
        .is_some_and(|labels| {
            labels.keys().any(|key| {
                key.as_str()
                    .is_some_and(|key| key.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
            })
        })
}

/// One RBAC rule, as rendered.
#[derive(Debug)]
struct Rule {
    api_groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    resource_names: Vec<String>,
}

fn string_list(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|item| {
                    item.as_str()
                        .unwrap_or_else(|| panic!("non-string in an RBAC rule: {item:?}"))
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The rules of a rendered Role or ClusterRole.
fn rules(role: &Value) -> Vec<Rule> {
    role["rules"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{} has no rules", name(role)))
        .iter()
        .map(|rule| {
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "{} grants non-resource URLs: {rule:?}",
                name(role)
            );
            Rule {
                api_groups: string_list(&rule["apiGroups"]),
                resources: string_list(&rule["resources"]),
                verbs: string_list(&rule["verbs"]),
                resource_names: string_list(&rule["resourceNames"]),
            }
        })
        .collect()
}

/// Whether `rules` allow `verb` on every object of `resource` (e.g. "shards" or
/// "shards/status") in `group`. Rules limited to named objects do not count.
fn allows(rules: &[Rule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|rule| {
        rule.resource_names.is_empty()
            && rule.api_groups.iter().any(|g| g == group || g == "*")
            && rule.resources.iter().any(|r| r == resource || r == "*")
            && rule.verbs.iter().any(|v| v == verb || v == "*")
    })
}

/// Installs the chart as `release` into the test's namespace without `--wait`: there is no
/// kubelet, so pods never run; the objects are what is under test. Returns helm's output
/// (which ends with the chart's NOTES).
async fn install(env: &TestEnv, release: &str, extra: &[&str]) -> String {
    let mut args = vec!["install", release, CHART];
    args.extend_from_slice(extra);
    let output = env.helm(&args).await;
    assert!(
        output.status.success(),
        "helm install: {}",
        describe(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The user name of a ServiceAccount of the test's namespace, for `kubectl --as`.
fn service_account(env: &TestEnv, name: &str) -> String {
    format!("system:serviceaccount:{}:{name}", env.namespace)
}

/// Binds each user to Kubernetes' built-in ClusterRoles (`view`, `edit`, `admin`) in the
/// test's namespace, as a cluster's administrators grant people rights; the control plane's
/// clusterrole-aggregation controller adds what the chart aggregates into them. Returns once
/// the aggregated rights show (an admin may approve Plans), so that a right checked as refused
/// is not refused merely because aggregation has not happened yet.
async fn bind_roles(env: &TestEnv, users: &[(&str, &[&str])]) {
    for (user, roles) in users {
        for role in *roles {
            let output = env
                .kubectl([
                    "create",
                    "rolebinding",
                    &format!("{user}-{role}"),
                    &format!("--clusterrole={role}"),
                    &format!("--user={user}"),
                ])
                .await;
            assert!(
                output.status.success(),
                "create rolebinding: {}",
                describe(&output)
            );
        }
    }
    let probe = format!("shardplane-aggregation-probe-{}", env.namespace);
    let output = env
        .kubectl([
            "create",
            "rolebinding",
            "aggregation-probe",
            "--clusterrole=admin",
            &format!("--user={probe}"),
        ])
        .await;
    assert!(output.status.success(), "{}", describe(&output));
    let aggregated = eventually(SETTLE_TIMEOUT, || {
        can_i(env, &probe, &["approve", "plans.shardplane.io"])
    })
    .await;
    assert!(
        aggregated,
        "the chart's rights never reached the built-in admin role"
    );
}

/// `kubectl auth can-i <args>` as `user`.
async fn can_i(env: &TestEnv, user: &str, args: &[&str]) -> bool {
    let impersonate = format!("--as={user}");
    let mut full = vec!["auth", "can-i"];
    full.extend_from_slice(args);
    full.push(&impersonate);
    let output = env.kubectl(&full).await;
    match String::from_utf8_lossy(&output.stdout).trim() {
        "yes" => true,
        "no" => false,
        _ => panic!("kubectl auth can-i {args:?}: {}", describe(&output)),
    }
}

/// How long a right that should be granted may take to show: the RBAC authorizer learns of
/// new bindings through a watch.
const RBAC_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks `(user, kubectl auth can-i arguments, expected answer)` and describes
/// each that is wrong. A right that should be granted is polled for (a lagging cache can only
/// say "no"); one that should be refused is asked once.
async fn wrong_rights(env: &TestEnv, expectations: &[(&str, &[&str], bool)]) -> Vec<String> {
    let mut wrong = Vec::new();
    for &(user, args, expected) in expectations {
        let answer = if expected {
            eventually(RBAC_SETTLE_TIMEOUT, || can_i(env, user, args)).await
        } else {
            can_i(env, user, args).await
        };
        if answer != expected {
            wrong.push(format!(
                "{user} {args:?}: expected {}",
                if expected { "yes" } else { "no" }
            ));
        }
    }
    wrong
}

// ---------------------------------------------------------------------------------------
// Lint and values schema

#[tokio::test]
async fn lint_strict_passes_with_default_and_optional_values() {
    let default = helm(&["lint", "--strict", CHART]).await;
    assert!(
        default.status.success(),
        "helm lint: {}",
        describe(&default)
    );

    let mut args = vec!["lint", "--strict", CHART];
    args.extend_from_slice(&EVERYTHING_ON);
    args.extend_from_slice(&["--set", "operator.watchNamespace=team-a"]);
    let everything = helm(&args).await;
    assert!(
        everything.status.success(),
        "helm lint with optional values: {}",
        describe(&everything)
    );
}

#[tokio::test]
async fn lint_rejects_unknown_values_and_names_them() {
    for (set, location) in [
        ("bogus=1", "at '':"),
        ("operator.bogus=1", "at '/operator':"),
        ("operator.service.bogus=1", "at '/operator/service':"),
        ("gitSync.bogus=1", "at '/gitSync':"),
        (
            "gitSync.webhook.service.bogus=1",
            "at '/gitSync/webhook/service':",
        ),
        ("image.bogus=1", "at '/image':"),
    ] {
        let output = helm(&["lint", "--strict", CHART, "--set", set]).await;
        let text = describe(&output);
        assert!(!output.status.success(), "--set {set} was accepted: {text}");
        assert!(
            text.contains(location) && text.contains("additional properties 'bogus' not allowed"),
            "--set {set}: the error should name the key 'bogus' {location}: {text}"
        );
    }
}

#[tokio::test]
async fn values_of_the_wrong_type_or_missing_are_refused() {
    for (set, expected) in [
        ("operator.replicas=two", "/operator/replicas"),
        ("operator.replicas=0", "/operator/replicas"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        (
            "operator.watchNamespace=Not_A_Namespace",
            "/operator/watchNamespace",
        ),
        ("gitSync.webhook.port=0", "/gitSync/webhook/port"),
        // Repositories are GitSync resources now, not chart values.
        (
            "gitSync.repository=https://git.example.com/x.git",
            "'repository'",
        ),
    ] {
        let output = helm(&["template", "r", CHART, "--set", set]).await;
        let text = describe(&output);
        assert!(!output.status.success(), "--set {set} was accepted: {text}");
        assert!(
            text.contains(expected),
            "--set {set} should name {expected}: {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Rendered manifests

#[tokio::test]
async fn rendered_rbac_has_no_wildcards() {
    let scoped = ["--set", "operator.watchNamespace=team-a"];
    for extra in [&[][..], &EVERYTHING_ON[..], &scoped[..]] {
        let objects = render("wild", extra).await;
        let roles: Vec<&Value> = objects
            .iter()
            .filter(|object| matches!(kind(object), "Role" | "ClusterRole"))
            .collect();
        assert!(
            roles.len() >= 2,
            "expected the operator's and the agent's roles with {extra:?}, got {}",
            roles.len()
        );
        for role in roles {
            assert!(
                role.get("aggregationRule").is_none(),
                "{} aggregates other roles",
                name(role)
            );
            for rule in rules(role) {
                assert!(
                    !rule.verbs.is_empty() && !rule.resources.is_empty(),
                    "{}: rule without verbs or resources: {rule:?}",
                    name(role)
                );
                for field in [
                    &rule.api_groups,
                    &rule.resources,
                    &rule.verbs,
                    &rule.resource_names,
                ] {
                    assert!(
                        field.iter().all(|entry| !entry.contains('*')),
                        "{} ({extra:?}) has a wildcard: {rule:?}",
                        name(role)
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn rendered_agent_and_git_sync_rules_are_least_privilege() {
    let mut values = EVERYTHING_ON.to_vec();
    values.extend(["--set", "agent.nodes={n1}"]);
    let objects = render("least", &values).await;

    let agent = rules(find(&objects, "Role", "least-shardplane-agent"));
    let own = rules(find(&objects, "Role", "least-shardplane-agent-n1"));
    for resource in ["shards", "tables", "plans"] {
        for verb in ["create", "delete", "deletecollection"] {
            assert!(
                !allows(&agent, "shardplane.io", resource, verb),
                "the agent may {verb} {resource}"
            );
        }
    }
    for verb in ["update", "patch"] {
        for resource in ["plans", "plans/status", "shards", "tables"] {
            assert!(
                !allows(&agent, "shardplane.io", resource, verb),
                "the agent may {verb} {resource}"
            );
        }
    }
    assert!(
        !allows(&agent, "", "secrets", "list"),
        "the agent may enumerate Secrets"
    );
    // Objects of one node only by name, in that node's own Role: no agent may write every
    // node's status or Lease, or read every Secret.
    for (group, resource, verb) in [
        ("shardplane.io", "databasenodes", "patch"),
        ("shardplane.io", "databasenodes/status", "patch"),
        ("coordination.k8s.io", "leases", "patch"),
        ("coordination.k8s.io", "leases", "update"),
        ("", "secrets", "get"),
    ] {
        for (whose, rules) in [("shared", &agent), ("node's", &own)] {
            assert!(
                !allows(rules, group, resource, verb),
                "the agents' {whose} Role may {verb} every {resource}"
            );
        }
    }
    let named = |resource: &str| -> Vec<String> {
        own.iter()
            .filter(|rule| rule.resources.iter().any(|r| r == resource))
            .flat_map(|rule| rule.resource_names.clone())
            .collect()
    };
    assert_eq!(named("databasenodes/status"), ["n1"]);
    assert_eq!(named("leases"), ["shardplane-node-n1"]);
    assert_eq!(named("secrets"), ["n1-tls"]);
    // What it needs, so that the checks above are not vacuous.
    assert!(allows(&agent, "shardplane.io", "shards/status", "patch"));
    assert!(allows(&agent, "shardplane.io", "databasenodes", "create"));
    assert!(allows(&agent, "coordination.k8s.io", "leases", "create"));
    assert!(allows(&agent, "shardplane.io", "databaseclusters", "watch"));

    let git_sync = rules(find(&objects, "Role", "least-shardplane-git-sync"));
    let subresources: Vec<&String> = git_sync
        .iter()
        .flat_map(|rule| &rule.resources)
        .filter(|resource| resource.contains('/'))
        .collect();
    assert_eq!(
        subresources,
        ["gitsyncs/status"],
        "git-sync writes specs, and status only of GitSyncs: {git_sync:?}"
    );
    assert!(!allows(&git_sync, "", "secrets", "list"));
    assert!(!allows(&git_sync, "shardplane.io", "gitsyncs", "create"));
    assert!(!allows(&git_sync, "shardplane.io", "plans", "patch"));
    assert!(!allows(
        &git_sync,
        "shardplane.io",
        "schemaversions",
        "create"
    ));
    assert!(allows(&git_sync, "shardplane.io", "shards", "delete"));
    assert!(allows(
        &git_sync,
        "shardplane.io",
        "gitsyncs/status",
        "patch"
    ));
    assert!(
        !allows(&git_sync, "", "secrets", "get"),
        "git-sync may read every Secret of its namespaces (the operator's webhook key among them)"
    );
    // Neither the agent nor the operator touches GitSyncs.
    let operator = rules(find(&objects, "ClusterRole", "least-shardplane-operator"));
    for (who, rules) in [("agent", &agent), ("operator", &operator)] {
        assert!(
            rules
                .iter()
                .flat_map(|rule| &rule.resources)
                .all(|resource| !resource.starts_with("gitsyncs")),
            "the {who} has rights on GitSyncs: {rules:?}"
        );
    }
}

#[tokio::test]
async fn operator_is_cluster_wide_by_default_and_namespaced_when_scoped() {
    let cluster_wide = render("wide", &[]).await;
    let cluster_bindings: Vec<&str> = cluster_wide
        .iter()
        .filter(|object| kind(object) == "ClusterRoleBinding")
        .map(name)
        .collect();
    assert_eq!(
        cluster_bindings,
        ["wide-shardplane-operator"],
        "only the operator is granted rights cluster-wide"
    );
    find(&cluster_wide, "ClusterRole", "wide-shardplane-operator");

    let wide_env = &find(&cluster_wide, "Deployment", "wide-shardplane-operator")["spec"]["template"]
        ["spec"]["containers"][0]["env"];
    assert_eq!(
        env_value(wide_env, "SHARDPLANE_WATCH_NAMESPACE"),
        None,
        "an unscoped operator must not be told to watch one namespace"
    );

    let scoped = render("narrow", &["--set", "operator.watchNamespace=team-a"]).await;
    assert!(
        scoped
            .iter()
            .all(|object| kind(object) != "ClusterRoleBinding"
                && (kind(object) != "ClusterRole" || is_aggregated(object))),
        "a scoped operator needs nothing cluster-scoped"
    );
    let strictly_namespaced = render(
        "strict",
        &[
            "--set",
            "operator.watchNamespace=team-a",
            "--set",
            "rbac.aggregateToDefaultRoles=false",
        ],
    )
    .await;
    assert!(
        strictly_namespaced
            .iter()
            .all(|object| !kind(object).starts_with("Cluster")),
        "nothing cluster-scoped is left when the built-in roles are left alone too"
    );
    let operator_roles: Vec<(&str, &str)> = scoped
        .iter()
        .filter(|object| kind(object) == "Role" && name(object).contains("operator"))
        .map(|object| {
            (
                object["metadata"]["namespace"].as_str().unwrap_or_default(),
                name(object),
            )
        })
        .collect();
    assert_eq!(
        operator_roles,
        [
            ("team-a", "narrow-shardplane-operator"),
            (
                "shardplane-system",
                "narrow-shardplane-operator-leader-election"
            ),
        ]
    );
    let leader_election = rules(find(
        &scoped,
        "Role",
        "narrow-shardplane-operator-leader-election",
    ));
    assert!(
        leader_election.len() == 1 && leader_election[0].resources == ["leases"],
        "the release namespace grants the operator its Lease and nothing else: {leader_election:?}"
    );
    let deployment = find(&scoped, "Deployment", "narrow-shardplane-operator");
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(
        env_value(env, "SHARDPLANE_WATCH_NAMESPACE"),
        Some(&Value::from("team-a")),
        "the operator is told which namespace to watch"
    );

    // Watching the release namespace itself: one Role there, no separate leader-election Role.
    let own = render(
        "own",
        &["--set", "operator.watchNamespace=shardplane-system"],
    )
    .await;
    let own_roles: Vec<&str> = own
        .iter()
        .filter(|object| kind(object) == "Role" && name(object).contains("operator"))
        .map(name)
        .collect();
    assert_eq!(own_roles, ["own-shardplane-operator"]);
}

#[tokio::test]
async fn object_names_are_prefixed_with_the_release_name() {
    let alpha = render("alpha", &EVERYTHING_ON).await;
    let beta = render("beta", &EVERYTHING_ON).await;
    for (release, objects) in [("alpha", &alpha), ("beta", &beta)] {
        for object in objects.iter() {
            assert!(
                name(object).starts_with(&format!("{release}-")),
                "{}/{} is not prefixed with the release name {release}",
                kind(object),
                name(object)
            );
        }
    }
}

#[tokio::test]
async fn operator_deployment_is_hardened_and_probed() {
    let objects = render("hard", &[]).await;
    let deployment = find(&objects, "Deployment", "hard-shardplane-operator");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "hard-shardplane-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let anti_affinity =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti_affinity["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        anti_affinity["podAffinityTerm"]["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"],
        "the anti-affinity must select the operator's own pods"
    );

    let container = &pod["containers"][0];
    assert_eq!(
        container["command"],
        serde_yaml::to_value(["shardplane", "operator"]).unwrap()
    );
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(
        security["capabilities"]["drop"],
        serde_yaml::to_value(["ALL"]).unwrap()
    );
    assert_eq!(container["ports"][0]["name"], "metrics");
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    assert_eq!(
        container["args"],
        serde_yaml::to_value(["--listen=0.0.0.0:9090"]).unwrap(),
        "the operator must serve on the port the probes and the Service use"
    );
    assert_eq!(
        env_value(&container["env"], "SHARDPLANE_LEASE_NAMESPACE"),
        Some(&serde_yaml::from_str("fieldRef: {fieldPath: metadata.namespace}").unwrap()),
        "the leader-election Lease belongs in the release namespace, where the RBAC allows it"
    );
    assert_eq!(
        env_value(&container["env"], "SHARDPLANE_LEASE_DURATION_SECONDS"),
        Some(&Value::from("4"))
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !container["resources"][bound][resource].is_null(),
                "no {bound}.{resource}"
            );
        }
    }
    assert_eq!(
        container["image"], "ghcr.io/shardplane/shardplane:0.1.0",
        "the image tag defaults to the appVersion"
    );

    // Optional parts stay off by default: no git-sync, no agent workload.
    for object in &objects {
        assert!(
            !name(object).contains("git-sync"),
            "git-sync rendered by default: {}/{}",
            kind(object),
            name(object)
        );
        assert!(
            !matches!(kind(object), "DaemonSet" | "StatefulSet"),
            "an agent workload rendered by default: {}",
            name(object)
        );
    }
}

/// The operator's Lease requests, and nothing else of anyone, go to the API server's
/// `leader-election` priority level; the FlowSchema can be turned off.
#[tokio::test]
async fn only_the_operators_lease_requests_are_prioritised() {
    let objects = render(
        "prio",
        &["--set", "operator.leaderElection.leaseDurationSeconds=15"],
    )
    .await;
    let schema = find(
        &objects,
        "FlowSchema",
        "prio-shardplane-operator-leader-election",
    );
    let spec = &schema["spec"];
    assert_eq!(
        spec["priorityLevelConfiguration"]["name"],
        "leader-election"
    );
    let precedence = spec["matchingPrecedence"].as_u64().unwrap();
    assert!(
        (201..9000).contains(&precedence),
        "precedence {precedence}: after the built-in leader-election schemas, before the \
         catch-all service-account one"
    );
    let rules = spec["rules"].as_sequence().unwrap();
    assert_eq!(rules.len(), 1);
    let subjects = rules[0]["subjects"].as_sequence().unwrap();
    assert_eq!(
        subjects,
        &[serde_yaml::from_str::<Value>(
            "{kind: ServiceAccount, serviceAccount: {name: prio-shardplane-operator, \
             namespace: shardplane-system}}"
        )
        .unwrap()]
    );
    assert!(rules[0]["nonResourceRules"].is_null());
    assert_eq!(
        rules[0]["resourceRules"],
        serde_yaml::from_str::<Value>(
            "[{apiGroups: [coordination.k8s.io], resources: [leases], \
             verbs: [get, create, update, patch], namespaces: [shardplane-system]}]"
        )
        .unwrap()
    );
    let deployment = find(&objects, "Deployment", "prio-shardplane-operator");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env_value(&container["env"], "SHARDPLANE_LEASE_DURATION_SECONDS"),
        Some(&Value::from("15"))
    );

    let off = render(
        "prio",
        &["--set", "operator.leaderElection.flowSchema=false"],
    )
    .await;
    assert!(!off.iter().any(|object| kind(object) == "FlowSchema"));
}

#[tokio::test]
async fn git_sync_serves_exactly_the_namespaces_it_has_roles_in() {
    for (extra, expected) in [
        (&EVERYTHING_ON[..], &["shardplane-system"][..]),
        (
            &[
                "--set",
                "gitSync.enabled=true",
                "--set",
                "gitSync.namespaces={db-a,db-b}",
            ][..],
            &["db-a", "db-b"][..],
        ),
    ] {
        let objects = render("gs", extra).await;
        let role_namespaces: Vec<&str> = objects
            .iter()
            .filter(|object| kind(object) == "Role" && name(object) == "gs-shardplane-git-sync")
            .map(|object| object["metadata"]["namespace"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(role_namespaces, expected, "git-sync's Roles with {extra:?}");

        let deployment = find(&objects, "Deployment", "gs-shardplane-git-sync");
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "gs-shardplane-git-sync");
        let container = &pod["containers"][0];
        assert_eq!(
            container["command"],
            serde_yaml::to_value(["shardplane", "git-sync"]).unwrap()
        );
        let env = container["env"].as_sequence().expect("git-sync has env");
        let served = env
            .iter()
            .find(|var| var["name"] == "SHARDPLANE_WATCH_NAMESPACES")
            .and_then(|var| var["value"].as_str())
            .expect("git-sync is told which namespaces to serve");
        assert_eq!(
            served,
            expected.join(","),
            "served namespaces != Role namespaces"
        );
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(
            security["capabilities"]["drop"],
            serde_yaml::to_value(["ALL"]).unwrap()
        );
        // The checkout must be writable although the root filesystem is not.
        let checkout = env
            .iter()
            .find(|var| var["name"] == "SHARDPLANE_GIT_CHECKOUT_DIR")
            .and_then(|var| var["value"].as_str())
            .expect("git-sync is told where to clone");
        assert!(
            container["volumeMounts"]
                .as_sequence()
                .is_some_and(|mounts| mounts.iter().any(|m| m["mountPath"] == checkout)),
            "nothing writable is mounted at {checkout}"
        );

        let service = find(&objects, "Service", "gs-shardplane-git-sync-webhook");
        assert_eq!(service["spec"]["ports"][0]["targetPort"], "webhook");
        assert_eq!(container["ports"][0]["name"], "webhook");
        assert_eq!(
            service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"],
            "the webhook Service must select the git-sync pod"
        );
    }
}

#[tokio::test]
async fn people_rights_extend_the_built_in_view_edit_and_admin_roles() {
    let objects = render("people", &[]).await;
    for (role, built_in) in [
        ("people-shardplane-view", &["view", "edit", "admin"][..]),
        ("people-shardplane-edit", &["edit", "admin"][..]),
        ("people-shardplane-admin", &["admin"][..]),
    ] {
        let labels = &find(&objects, "ClusterRole", role)["metadata"]["labels"];
        let mut aggregated_into: Vec<&str> = labels
            .as_mapping()
            .into_iter()
            .flatten()
            .filter(|(_, value)| value.as_str() == Some("true"))
            .filter_map(|(key, _)| {
                key.as_str()?
                    .strip_prefix("rbac.authorization.k8s.io/aggregate-to-")
            })
            .collect();
        aggregated_into.sort_unstable();
        let mut expected = built_in.to_vec();
        expected.sort_unstable();
        assert_eq!(
            aggregated_into, expected,
            "{role} extends the wrong built-in roles"
        );
    }
    let off = render("people", &["--set", "rbac.aggregateToDefaultRoles=false"]).await;
    assert!(
        off.iter().all(|object| !is_aggregated(object)),
        "rbac.aggregateToDefaultRoles=false still extends the built-in roles"
    );
}

// ---------------------------------------------------------------------------------------
// Against the API server

#[tokio::test]
async fn install_creates_identities_rbac_operator_service_and_established_crds() {
    let env = test_env().await;
    let mut values = EVERYTHING_ON.to_vec();
    values.extend(["--set", "agent.nodes={n1,n2}"]);
    let printed = install(&env, "inst", &values).await;
    let notes = printed
        .split_once("NOTES:")
        .map(|(_, notes)| notes)
        .unwrap_or_default();
    for expected in [
        "kubectl get shardplane",
        "kubectl get gitsyncs",
        "inst-shardplane-operator",
        "inst-shardplane-agent-<node>",
        "n1, n2",
    ] {
        assert!(
            notes.contains(expected),
            "NOTES lack {expected:?}:\n{printed}"
        );
    }
    let ns = env.namespace.as_str();

    let service_accounts: Api<ServiceAccount> = env.api();
    for component in ["operator", "agent-n1", "agent-n2", "git-sync"] {
        let wanted = format!("inst-shardplane-{component}");
        service_accounts
            .get(&wanted)
            .await
            .unwrap_or_else(|error| panic!("ServiceAccount {wanted}: {error}"));
    }

    // The Lease's FlowSchema is accepted and names a priority level this API server has.
    let schemas: Api<FlowSchema> = Api::all(env.client.clone());
    let schema = "inst-shardplane-operator-leader-election";
    let resolved = eventually(SETTLE_TIMEOUT, || async {
        schemas
            .get(schema)
            .await
            .ok()
            .and_then(|s| s.status?.conditions)
            .is_some_and(|conditions| {
                conditions.iter().any(|c| {
                    c.type_.as_deref() == Some("Dangling") && c.status.as_deref() == Some("False")
                })
            })
    })
    .await;
    assert!(
        resolved,
        "FlowSchema {schema} is missing or dangling: {:?}",
        schemas.get(schema).await.map(|s| s.status)
    );

    let roles: Api<Role> = env.api();
    let bindings: Api<RoleBinding> = env.api();
    for (role, service_account) in [
        ("inst-shardplane-agent-n1", "inst-shardplane-agent-n1"),
        ("inst-shardplane-agent-n2", "inst-shardplane-agent-n2"),
        ("inst-shardplane-git-sync", "inst-shardplane-git-sync"),
    ] {
        let made = roles
            .get(role)
            .await
            .unwrap_or_else(|error| panic!("Role {role}: {error}"));
        assert!(
            made.rules.is_some_and(|rules| !rules.is_empty()),
            "{role} has no rules"
        );
        let binding = bindings
            .get(role)
            .await
            .unwrap_or_else(|error| panic!("RoleBinding {role}: {error}"));
        assert_eq!(
            (
                binding.role_ref.kind.as_str(),
                binding.role_ref.name.as_str()
            ),
            ("Role", role)
        );
        let subjects = binding.subjects.unwrap_or_default();
        assert!(
            subjects.len() == 1
                && subjects[0].kind == "ServiceAccount"
                && subjects[0].name == service_account
                && subjects[0].namespace.as_deref() == Some(ns),
            "RoleBinding {role} binds {subjects:?}"
        );
    }
    let shared = bindings.get("inst-shardplane-agent").await.unwrap();
    let mut bound: Vec<String> = shared
        .subjects
        .unwrap_or_default()
        .into_iter()
        .map(|subject| subject.name)
        .collect();
    bound.sort_unstable();
    assert_eq!(
        (shared.role_ref.name.as_str(), bound),
        (
            "inst-shardplane-agent",
            vec![
                "inst-shardplane-agent-n1".to_owned(),
                "inst-shardplane-agent-n2".to_owned()
            ]
        ),
        "the agents' shared Role is bound to other than every node's agent"
    );
    let cluster_role = Api::<ClusterRole>::all(env.client.clone())
        .get("inst-shardplane-operator")
        .await
        .expect("the operator's ClusterRole");
    assert!(cluster_role.rules.is_some_and(|rules| rules.len() >= 5));
    let cluster_binding = Api::<ClusterRoleBinding>::all(env.client.clone())
        .get("inst-shardplane-operator")
        .await
        .expect("the operator's ClusterRoleBinding");
    assert_eq!(cluster_binding.role_ref.name, "inst-shardplane-operator");
    let subjects = cluster_binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].name, "inst-shardplane-operator");
    assert_eq!(subjects[0].namespace.as_deref(), Some(ns));

    let deployment = env
        .api::<Deployment>()
        .get("inst-shardplane-operator")
        .await
        .expect("the operator Deployment");
    let spec = deployment.spec.expect("a Deployment has a spec");
    assert_eq!(spec.replicas, Some(2));
    let pod_labels = spec
        .template
        .metadata
        .and_then(|meta| meta.labels)
        .unwrap_or_default();
    env.api::<Deployment>()
        .get("inst-shardplane-git-sync")
        .await
        .expect("the git-sync Deployment, enabled for this install");
    env.api::<Service>()
        .get("inst-shardplane-git-sync-webhook")
        .await
        .expect("the git-sync webhook Service");

    let service = env
        .api::<Service>()
        .get("inst-shardplane-operator-metrics")
        .await
        .expect("the metrics Service");
    let service_spec = service.spec.expect("a Service has a spec");
    let ports = service_spec.ports.unwrap_or_default();
    assert!(
        ports.len() == 1 && ports[0].port == 9090 && ports[0].name.as_deref() == Some("metrics"),
        "metrics Service ports: {ports:?}"
    );
    let selector = service_spec.selector.unwrap_or_default();
    assert!(
        !selector.is_empty()
            && selector
                .iter()
                .all(|(key, value)| pod_labels.get(key) == Some(value)),
        "the metrics Service selector {selector:?} must match the operator pods {pod_labels:?}"
    );

    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    for crd in shardplane::api::crds() {
        let crd_name = crd.metadata.name.expect("a CRD has a name");
        let established = eventually(SETTLE_TIMEOUT, || {
            let crds = crds.clone();
            let crd_name = crd_name.clone();
            async move {
                crds.get(&crd_name).await.is_ok_and(|crd| {
                    crd.status
                        .and_then(|status| status.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|condition| {
                            condition.type_ == "Established" && condition.status == "True"
                        })
                })
            }
        })
        .await;
        assert!(established, "CRD {crd_name} is not Established");
    }
}

/// Real requests under one node's agent identity, not `auth can-i`, sent as the agent's code
/// sends them (`renew_lease`, `report_node_status`, `report_replica`): node n1's agent
/// registers its node, renews its Lease, reports its status and its replica, reads its
/// certificate, the credentials and its cluster — and is refused, each with a message, when
/// it writes node n2's Lease, status or replica entry, the operator's Lease, a shard's primary,
/// the operator's part of its own node's status, another node's registration, an approval on
/// its node, or reads n2's certificate or the webhook's key.
#[tokio::test]
async fn each_agent_writes_only_its_own_node_lease_status_and_replica_entries() {
    let env = test_env().await;
    install(&env, "agentid", &["--set", "agent.nodes={n1,n2}"]).await;
    let node_spec = |name: &str| {
        serde_json::json!({"apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
            "metadata": {"name": name},
            "spec": {"cluster": "commerce", "region": "eu", "zone": "eu-a", "address": "127.0.0.1",
                     "ports": {"first": 20000, "last": 20031},
                     "capacity": {"storageBytes": 1_000_000_000i64}}})
    };
    let secret = |name: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                           "stringData": {"k": "v"}})
    };
    let lease = |name: &str| {
        serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                           "metadata": {"name": name}, "spec": {"holderIdentity": "x"}})
    };
    let manifests = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
         "metadata": {"name": "commerce"},
         "spec": {"regions": [{"name": "eu", "zones": ["eu-a", "eu-b"]}], "replicationFactor": 2}},
        node_spec("n2"),
        {"apiVersion": "shardplane.io/v1alpha1", "kind": "Shard", "metadata": {"name": "orders-0"},
         "spec": {"table": "orders", "range": {}}},
        secret("n1-tls"), secret("n2-tls"), secret("shardplane-postgres"),
        lease(shardplane::protocol::OPERATOR_LEASE), lease("shardplane-node-n2"),
    ]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("objects.yaml");
    std::fs::write(&path, serde_yaml::to_string(&manifests).unwrap()).unwrap();
    let applied = env.kubectl(["apply", "-f", path.to_str().unwrap()]).await;
    assert!(applied.status.success(), "{}", describe(&applied));
    // The operator's decisions and n2's report, as the admin (standing in for them) writes them.
    let shards: Api<Shard> = env.api();
    let decided = serde_json::json!({"status": {
        "primary": {"node": "n2", "epoch": 1},
        "desiredReplicas": [{"node": "n2", "role": "Primary"}, {"node": "n1", "role": "Secondary"}],
    }});
    shards
        .patch_status("orders-0", &PatchParams::default(), &Patch::Merge(decided))
        .await
        .unwrap();
    let primary = ObservedReplica {
        node: "n2".into(),
        role: ReplicaRole::Primary,
        state: ReplicaState::InSync,
        endpoint: None,
        lag_bytes: Some(0),
        epoch: Some(1),
        received_lsn: None,
        last_seen_time: None,
    };
    report_replica(&shards, "orders-0", "n2", Some(&primary))
        .await
        .unwrap();

    let mut config = env.control_plane.kube_config().await.unwrap();
    config.auth_info.impersonate = Some(service_account(&env, "agentid-shardplane-agent-n1"));
    let agent = kube::Client::try_from(config).unwrap();
    let leases: Api<Lease> = Api::namespaced(agent.clone(), &env.namespace);
    let nodes: Api<DatabaseNode> = Api::namespaced(agent.clone(), &env.namespace);
    let agent_shards: Api<Shard> = Api::namespaced(agent.clone(), &env.namespace);
    let secrets: Api<Secret> = Api::namespaced(agent.clone(), &env.namespace);
    // RBAC and the policy reach the API server through informers: allow them a moment.
    let settled = eventually(SETTLE_TIMEOUT, || async {
        renew_lease(&leases, "n1").await.is_ok()
            && renew_lease(&leases, "n2")
                .await
                .is_err_and(|e| refused(&e, ""))
    })
    .await;
    assert!(settled, "n1's agent never renewed only its own Lease");

    let mut wrong = Vec::new();
    let mut expect_ok = |what: &str, result: Result<(), kube::Error>| {
        if let Err(error) = result {
            wrong.push(format!("{what}: refused: {error}"));
        }
    };
    let own_node: DatabaseNode = serde_json::from_value(node_spec("n1")).unwrap();
    expect_ok(
        "registering its node",
        nodes
            .create(&PostParams::default(), &own_node)
            .await
            .map(drop),
    );
    expect_ok("renewing its Lease", renew_lease(&leases, "n1").await);
    expect_ok(
        "reporting its node's status",
        report_node_status(
            &nodes,
            "n1",
            serde_json::json!({"version": "0.1.0", "agentEpoch": 3, "usedBytes": 10}),
        )
        .await,
    );
    let report = ObservedReplica {
        node: "n1".into(),
        role: ReplicaRole::Secondary,
        state: ReplicaState::CatchingUp,
        endpoint: None,
        lag_bytes: Some(0),
        epoch: Some(1),
        received_lsn: None,
        last_seen_time: None,
    };
    expect_ok(
        "reporting its replica",
        report_replica(&agent_shards, "orders-0", "n1", Some(&report)).await,
    );
    for name in ["n1-tls", "shardplane-postgres"] {
        expect_ok(
            &format!("reading Secret {name}"),
            secrets.get(name).await.map(drop),
        );
    }
    expect_ok(
        "listing DatabaseClusters",
        Api::<DatabaseCluster>::namespaced(agent.clone(), &env.namespace)
            .list(&Default::default())
            .await
            .map(drop),
    );

    let mut expect_refused = |what: &str, result: Result<(), kube::Error>, says: &str| match result
    {
        Ok(()) => wrong.push(format!("{what}: allowed")),
        Err(error) if !refused(&error, says) => wrong.push(format!(
            "{what}: not refused as expected ({says:?}): {error}"
        )),
        Err(_) => {}
    };
    expect_refused(
        "renewing n2's Lease",
        renew_lease(&leases, "n2").await,
        "cannot patch resource \"leases\"",
    );
    expect_refused(
        "renewing n3's Lease (creating it)",
        renew_lease(&leases, "n3").await,
        "cannot patch resource \"leases\"",
    );
    expect_refused(
        "creating the Lease of node n3",
        leases
            .create(
                &PostParams::default(),
                &serde_json::from_value(lease("shardplane-node-n3")).unwrap(),
            )
            .await
            .map(drop),
        "may write only its own Lease",
    );
    let operator_lease =
        serde_json::json!({"spec": {"holderIdentity": "agentid-shardplane-agent-n1"}});
    expect_refused(
        "taking the operator's Lease",
        leases
            .patch(
                shardplane::protocol::OPERATOR_LEASE,
                &PatchParams::default(),
                &Patch::Merge(operator_lease),
            )
            .await
            .map(drop),
        "",
    );
    expect_refused(
        "registering node n3",
        nodes
            .create(
                &PostParams::default(),
                &serde_json::from_value(node_spec("n3")).unwrap(),
            )
            .await
            .map(drop),
        "may write only its own DatabaseNode",
    );
    expect_refused(
        "reporting n2's status",
        report_node_status(&nodes, "n2", serde_json::json!({"version": "9.9.9"})).await,
        "",
    );
    expect_refused(
        "setting its own node's phase",
        report_node_status(&nodes, "n1", serde_json::json!({"phase": "Online"})).await,
        "the operator's part of its DatabaseNode's status",
    );
    let forged = ObservedReplica {
        node: "n2".into(),
        state: ReplicaState::Down,
        ..report.clone()
    };
    expect_refused(
        "reporting n2's replica",
        report_replica(&agent_shards, "orders-0", "n2", Some(&forged)).await,
        "only its own entries",
    );
    expect_refused(
        "withdrawing n2's replica",
        report_replica(&agent_shards, "orders-0", "n2", None).await,
        "only its own entries",
    );
    let seize = serde_json::json!({"status": {"primary": {"node": "n1", "epoch": 2}}});
    expect_refused(
        "making itself the shard's primary",
        agent_shards
            .patch_status("orders-0", &PatchParams::default(), &Patch::Merge(seize))
            .await
            .map(drop),
        "the operator's decisions",
    );
    let approve = serde_json::json!({"metadata": {"annotations": {"shardplane.io/approve-plan": "a".repeat(64)}}});
    expect_refused(
        "approving a plan on its node",
        nodes
            .patch("n1", &PatchParams::default(), &Patch::Merge(approve))
            .await
            .map(drop),
        "",
    );
    for name in ["n2-tls", "agentid-shardplane-operator-webhook-tls"] {
        expect_refused(
            &format!("reading Secret {name}"),
            secrets.get(name).await.map(drop),
            "",
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let shard = shards.get("orders-0").await.unwrap();
    let status = shard.status.unwrap();
    assert_eq!(
        status.primary.map(|p| p.node).as_deref(),
        Some("n2"),
        "the primary changed"
    );
    let reported: Vec<(String, ReplicaState)> = status
        .replicas
        .iter()
        .map(|r| (r.node.clone(), r.state))
        .collect();
    assert_eq!(
        reported,
        [
            ("n2".to_owned(), ReplicaState::InSync),
            ("n1".to_owned(), ReplicaState::CatchingUp)
        ],
        "the replica reports are not n2's own and n1's own"
    );
}

/// Whether `error` is the API server refusing a request (403 Forbidden) with a message that
/// contains `says`.
fn refused(error: &kube::Error, says: &str) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 403 && status.message.contains(says))
}

#[tokio::test]
async fn service_accounts_get_exactly_their_rights() {
    let env = test_env().await;
    let mut values = EVERYTHING_ON.to_vec();
    values.extend([
        "--set",
        "agent.nodes={n1}",
        "--set",
        "gitSync.secretNames={repo-token}",
    ]);
    install(&env, "authz", &values).await;
    let agent = service_account(&env, "authz-shardplane-agent-n1");
    let agent = agent.as_str();
    let git_sync = service_account(&env, "authz-shardplane-git-sync");
    let git_sync = git_sync.as_str();
    let operator = service_account(&env, "authz-shardplane-operator");
    let operator = operator.as_str();
    let wrong = wrong_rights(
        &env,
        &[
            (
                agent,
                &[
                    "patch",
                    "databasenodes.shardplane.io/n1",
                    "--subresource=status",
                ],
                true,
            ),
            (
                agent,
                &[
                    "patch",
                    "databasenodes.shardplane.io/n2",
                    "--subresource=status",
                ],
                false,
            ),
            (agent, &["patch", "databasenodes.shardplane.io/n1"], false),
            (
                agent,
                &["patch", "shards.shardplane.io", "--subresource=status"],
                true,
            ),
            (agent, &["create", "databasenodes.shardplane.io"], true),
            (agent, &["watch", "schemaversions.shardplane.io"], true),
            (
                agent,
                &["update", "leases.coordination.k8s.io/shardplane-node-n1"],
                true,
            ),
            (
                agent,
                &["update", "leases.coordination.k8s.io/shardplane-node-n2"],
                false,
            ),
            (
                agent,
                &["update", "leases.coordination.k8s.io/shardplane-operator"],
                false,
            ),
            (agent, &["get", "secrets/n1-tls"], true),
            (agent, &["get", "secrets/shardplane-postgres"], true),
            (agent, &["get", "secrets/n2-tls"], false),
            (
                agent,
                &["get", "secrets/authz-shardplane-operator-webhook-tls"],
                false,
            ),
            (agent, &["list", "secrets"], false),
            (agent, &["get", "secrets", "--namespace=default"], false),
            (agent, &["delete", "shards.shardplane.io"], false),
            (agent, &["create", "shards.shardplane.io"], false),
            (agent, &["patch", "shards.shardplane.io"], false),
            (agent, &["delete", "tables.shardplane.io"], false),
            (agent, &["create", "plans.shardplane.io"], false),
            (agent, &["patch", "plans.shardplane.io"], false),
            (agent, &["get", "gitsyncs.shardplane.io"], false),
            (
                agent,
                &["list", "databasenodes.shardplane.io", "--all-namespaces"],
                false,
            ),
            (git_sync, &["patch", "shards.shardplane.io"], true),
            (git_sync, &["delete", "tables.shardplane.io"], true),
            (git_sync, &["get", "secrets/repo-token"], true),
            (git_sync, &["get", "secrets"], false),
            (
                git_sync,
                &["get", "secrets/authz-shardplane-operator-webhook-tls"],
                false,
            ),
            (git_sync, &["get", "secrets/shardplane-postgres"], false),
            (git_sync, &["watch", "gitsyncs.shardplane.io"], true),
            (
                git_sync,
                &["patch", "gitsyncs.shardplane.io", "--subresource=status"],
                true,
            ),
            (git_sync, &["list", "secrets"], false),
            (git_sync, &["get", "secrets", "--namespace=default"], false),
            (git_sync, &["create", "gitsyncs.shardplane.io"], false),
            (
                git_sync,
                &["patch", "shards.shardplane.io", "--subresource=status"],
                false,
            ),
            (git_sync, &["create", "plans.shardplane.io"], false),
            (git_sync, &["create", "schemaversions.shardplane.io"], false),
            (
                operator,
                &["list", "shards.shardplane.io", "--all-namespaces"],
                true,
            ),
            (
                operator,
                &[
                    "patch",
                    "plans.shardplane.io",
                    "--subresource=status",
                    "--all-namespaces",
                ],
                true,
            ),
            (
                operator,
                &[
                    "update",
                    "tables.shardplane.io",
                    "--subresource=finalizers",
                    "--namespace=default",
                ],
                true,
            ),
            // What its code never does.
            (
                operator,
                &["update", "shards.shardplane.io", "--namespace=default"],
                false,
            ),
            (operator, &["create", "shards.shardplane.io"], false),
            (operator, &["delete", "tables.shardplane.io"], false),
            (
                operator,
                &["create", "databaseclusters.shardplane.io"],
                false,
            ),
            (operator, &["delete", "databasenodes.shardplane.io"], false),
            (operator, &["update", "secrets"], false),
            (operator, &["create", "leases.coordination.k8s.io"], true),
            (operator, &["delete", "secrets"], false),
            (
                operator,
                &["patch", "gitsyncs.shardplane.io", "--subresource=status"],
                false,
            ),
            (operator, &["create", "deployments.apps"], false),
            (
                operator,
                &["create", "customresourcedefinitions.apiextensions.k8s.io"],
                false,
            ),
        ],
    )
    .await;
    assert!(
        wrong.is_empty(),
        "in namespace {}, wrong rights:\n{}",
        env.namespace,
        wrong.join("\n")
    );
}

#[tokio::test]
async fn scoped_operator_has_no_rights_outside_its_namespaces() {
    let release_env = test_env().await;
    let watched = test_env().await;
    let set = format!("operator.watchNamespace={}", watched.namespace);
    install(&release_env, "scoped", &["--set", &set]).await;
    let operator = service_account(&release_env, "scoped-shardplane-operator");
    let operator = operator.as_str();
    let in_watched = format!("--namespace={}", watched.namespace);
    let wrong = wrong_rights(
        &release_env,
        &[
            (
                operator,
                &["patch", "tables.shardplane.io", &in_watched],
                true,
            ),
            (operator, &["get", "secrets", &in_watched], true),
            // Leader election in its own namespace, and nothing else there.
            (operator, &["patch", "leases.coordination.k8s.io"], true),
            (operator, &["list", "shards.shardplane.io"], false),
            (operator, &["get", "secrets"], false),
            (
                operator,
                &["list", "shards.shardplane.io", "--all-namespaces"],
                false,
            ),
            (operator, &["get", "secrets", "--namespace=default"], false),
        ],
    )
    .await;
    assert!(
        wrong.is_empty(),
        "operator in {} watching {}, wrong rights:\n{}",
        release_env.namespace,
        watched.namespace,
        wrong.join("\n")
    );
}

#[tokio::test]
async fn uninstall_removes_the_release_and_keeps_the_crds() {
    let env = test_env().await;
    install(&env, "gone", &[]).await;
    let deployments: Api<Deployment> = env.api();
    let deployment = deployments
        .get("gone-shardplane-operator")
        .await
        .expect("the operator Deployment");

    // In a cluster the Deployment owns ReplicaSets; there is no deployment controller here,
    // so make one as it would, and check that uninstalling leaves it to the garbage collector.
    let replica_set: ReplicaSet = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "gone-shardplane-operator-1",
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": deployment.metadata.name,
                "uid": deployment.metadata.uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "replicas": 0,
            "selector": deployment.spec.as_ref().map(|spec| &spec.selector),
            "template": deployment.spec.as_ref().map(|spec| &spec.template),
        },
    }))
    .expect("a valid ReplicaSet");
    env.api::<ReplicaSet>()
        .create(&PostParams::default(), &replica_set)
        .await
        .expect("create the operator's ReplicaSet");

    let output = env.helm(["uninstall", "gone"]).await;
    assert!(
        output.status.success(),
        "helm uninstall: {}",
        describe(&output)
    );

    let gone = eventually(SETTLE_TIMEOUT, || async {
        deployments
            .get_opt("gone-shardplane-operator")
            .await
            .is_ok_and(|d| d.is_none())
            && env
                .api::<ReplicaSet>()
                .get_opt("gone-shardplane-operator-1")
                .await
                .is_ok_and(|r| r.is_none())
    })
    .await;
    assert!(
        gone,
        "the operator Deployment or its ReplicaSet outlived helm uninstall"
    );
    for component in ["operator", "agent"] {
        let left = env
            .api::<ServiceAccount>()
            .get_opt(&format!("gone-shardplane-{component}"))
            .await
            .expect("get ServiceAccount");
        assert!(
            left.is_none(),
            "ServiceAccount of the {component} outlived helm uninstall"
        );
    }
    let cluster_role = Api::<ClusterRole>::all(env.client.clone())
        .get_opt("gone-shardplane-operator")
        .await
        .expect("get ClusterRole");
    assert!(
        cluster_role.is_none(),
        "the operator's ClusterRole outlived helm uninstall"
    );
    let output = env.helm(["list", "--short"]).await;
    assert!(
        output.status.success() && output.stdout.trim_ascii().is_empty(),
        "releases left: {}",
        describe(&output)
    );

    // Helm never deletes CRDs: doing so would delete every Shard and Table in the cluster.
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    for crd in shardplane::api::crds() {
        let crd_name = crd.metadata.name.expect("a CRD has a name");
        assert!(
            crds.get_opt(&crd_name).await.expect("get CRD").is_some(),
            "CRD {crd_name} was deleted by helm uninstall"
        );
    }
}

/// A `shardplane` subcommand running in the background as one of the chart's ServiceAccounts,
/// killed when dropped (also when the test panics).
struct ShardplaneProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl ShardplaneProcess {
    /// Starts `shardplane <args>` with `KUBECONFIG=<kubeconfig>` and `envs`, logging to
    /// `<work>/<args[0]>.log`.
    fn spawn(
        work: &std::path::Path,
        kubeconfig: &std::path::Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> ShardplaneProcess {
        let log = work.join(format!("{}.log", args[0]));
        let log_file = std::fs::File::create(&log).expect("create the log file");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_shardplane"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log file"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start shardplane {args:?}: {error}"));
        ShardplaneProcess { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ShardplaneProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `git <args>` in `repo`, panicking with its output on failure; returns stdout.
fn git(repo: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .current_dir(repo)
        .args([
            "-c",
            "user.name=Shardplane Test",
            "-c",
            "user.email=test@shardplane.invalid",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        describe(&output)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A kubeconfig for the test control plane whose only credential is a token of `service_account`.
async fn service_account_kubeconfig(env: &TestEnv, service_account: &str, path: &std::path::Path) {
    let output = env
        .kubectl(["create", "token", service_account, "--duration=1h"])
        .await;
    assert!(
        output.status.success(),
        "kubectl create token: {}",
        describe(&output)
    );
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let admin: Value = serde_yaml::from_str(
        &std::fs::read_to_string(env.control_plane.kubeconfig_path()).expect("admin kubeconfig"),
    )
    .expect("admin kubeconfig is YAML");
    let ca = admin["clusters"][0]["cluster"]["certificate-authority"].clone();
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sandbox", "cluster": {
            "server": env.control_plane.server_url(),
            "certificate-authority": ca,
        }}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "sandbox", "context": {
            "cluster": "sandbox", "user": service_account, "namespace": env.namespace,
        }}],
        "current-context": "sandbox",
    });
    std::fs::write(path, serde_yaml::to_string(&kubeconfig).unwrap()).expect("write kubeconfig");
}

/// The `Ready` condition of a GitSync and the commit last tried: (status, message, commit).
async fn git_sync_ready(
    api: &Api<GitSync>,
    name: &str,
) -> Option<(String, String, Option<String>)> {
    let object = api.get(name).await.ok()?;
    let status = object.status?;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    let ready_status = serde_json::to_value(ready.status).ok()?;
    Some((
        ready_status.as_str()?.to_owned(),
        ready.message.clone(),
        status.last_attempted_commit,
    ))
}

/// Waits until GitSync `name` has tried `commit` and its `Ready` condition is `ready`
/// ("True": applied, "False": refused); whether it came to that in time.
async fn git_sync_reached(api: &Api<GitSync>, name: &str, commit: &str, ready: &str) -> bool {
    eventually(SETTLE_TIMEOUT, || async {
        git_sync_ready(api, name)
            .await
            .is_some_and(|(status, _, tried)| status == ready && tried.as_deref() == Some(commit))
    })
    .await
}

#[tokio::test]
async fn git_sync_syncs_a_repository_with_nothing_but_its_chart_rights() {
    let env = test_env().await;
    install(&env, "e2e", &EVERYTHING_ON).await;
    let work = tempfile::tempdir().expect("temporary folder");

    // A repository holding the examples, as a team's database repository would.
    let repo = work.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    // The manifests only: git-sync applies every YAML file, and examples/ also holds a CI
    // workflow in a subfolder.
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.extension().is_some_and(|ext| ext == "yaml") {
            std::fs::copy(&path, repo.join(path.file_name().unwrap())).unwrap();
        }
    }
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "the examples"]);

    // git-sync as the chart deploys it: the chart's ServiceAccount, its namespaces only.
    let kubeconfig = work.path().join("kubeconfig");
    service_account_kubeconfig(&env, "e2e-shardplane-git-sync", &kubeconfig).await;
    let checkout = work.path().join("checkout");
    let process = ShardplaneProcess::spawn(
        work.path(),
        &kubeconfig,
        &["git-sync"],
        &[
            ("SHARDPLANE_WATCH_NAMESPACES", &env.namespace),
            ("SHARDPLANE_GIT_CHECKOUT_DIR", &checkout.to_string_lossy()),
        ],
    );

    let spec: GitSyncSpec = serde_json::from_value(serde_json::json!({
        "url": format!("file://{}", repo.display()),
        "intervalSeconds": 5,
    }))
    .expect("a valid GitSync spec");
    let git_syncs: Api<GitSync> = env.api();
    git_syncs
        .create(&PostParams::default(), &GitSync::new("databases", spec))
        .await
        .expect("create the GitSync");

    let first = git(&repo, &["rev-parse", "HEAD"]);
    let applied = git_sync_reached(&git_syncs, "databases", &first, "True").await;
    assert!(
        applied,
        "git-sync did not apply the examples with its chart rights: {:?}\n--- git-sync log\n{}",
        git_sync_ready(&git_syncs, "databases").await,
        process.log()
    );
    for (kind, name) in [
        ("databasecluster", "commerce"),
        ("table", "customers"),
        ("shard", "customers-0"),
    ] {
        let output = env
            .kubectl(["get", &format!("{kind}.shardplane.io/{name}")])
            .await;
        assert!(
            output.status.success(),
            "{kind}/{name} was not applied: {}",
            describe(&output)
        );
    }

    // A commit declaring a kind outside git-sync's rights is refused as a whole: the API
    // server forbids it at the dry-run, so the valid object beside it is not applied either.
    let staging = std::fs::read_to_string(repo.join("cluster.yaml"))
        .unwrap()
        .replace("name: commerce", "name: staging");
    std::fs::write(repo.join("staging.yaml"), staging).unwrap();
    std::fs::write(
        repo.join("smuggled.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: smuggled\ndata:\n  a: b\n",
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(
        &repo,
        &[
            "commit",
            "--quiet",
            "-m",
            "a ConfigMap git-sync may not write",
        ],
    );
    let second = git(&repo, &["rev-parse", "HEAD"]);
    let refused = git_sync_reached(&git_syncs, "databases", &second, "False").await;
    let ready = git_sync_ready(&git_syncs, "databases").await;
    assert!(
        refused,
        "git-sync did not refuse the commit: {ready:?}\n--- git-sync log\n{}",
        process.log()
    );
    let (_, message, _) = ready.unwrap_or_default();
    assert!(
        message.contains("ConfigMap/smuggled") && message.contains("forbidden"),
        "the refusal should name the object and say it is forbidden: {message}"
    );
    for (kind, name) in [
        ("configmap", "smuggled"),
        ("databasecluster.shardplane.io", "staging"),
    ] {
        let output = env
            .kubectl(["get", kind, name, "--ignore-not-found", "-o", "name"])
            .await;
        assert!(
            output.status.success() && output.stdout.trim_ascii().is_empty(),
            "{kind}/{name} was applied from a refused commit: {}",
            describe(&output)
        );
    }

    // A DatabaseNode made by hand is not the repository's: a commit declaring the same name
    // is refused (git-sync's objects policy), and the hand-made node is left as it was.
    let hand_made = "apiVersion: shardplane.io/v1alpha1\nkind: DatabaseNode\nmetadata:\n  name: by-hand\n\
                     spec:\n  cluster: commerce\n  region: eu-west\n  zone: eu-west-a\n\
                     \x20 address: 127.0.0.1\n  ports: {first: 16000, last: 16010}\n\
                     \x20 capacity: {storageBytes: 1000000000}\n";
    let path = work.path().join("by-hand.yaml");
    std::fs::write(&path, hand_made).unwrap();
    let made = env.kubectl(["apply", "-f", path.to_str().unwrap()]).await;
    assert!(made.status.success(), "{}", describe(&made));
    std::fs::remove_file(repo.join("smuggled.yaml")).unwrap();
    std::fs::remove_file(repo.join("staging.yaml")).unwrap();
    std::fs::write(
        repo.join("by-hand.yaml"),
        hand_made.replace("last: 16010", "last: 16020"),
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(
        &repo,
        &["commit", "--quiet", "-m", "declare a Shard made by hand"],
    );
    let third = git(&repo, &["rev-parse", "HEAD"]);
    let refused = git_sync_reached(&git_syncs, "databases", &third, "False").await;
    let ready = git_sync_ready(&git_syncs, "databases").await;
    let (_, message, _) = ready.clone().unwrap_or_default();
    assert!(
        refused && message.contains("by-hand") && message.contains("was not applied from git"),
        "a commit taking over a hand-made node was not refused with a message saying so: \
         {ready:?}\n--- git-sync log\n{}",
        process.log()
    );
    let untouched = env
        .kubectl([
            "get",
            "databasenode.shardplane.io/by-hand",
            "-o=jsonpath={.spec.ports.last}",
        ])
        .await;
    assert_eq!(String::from_utf8_lossy(&untouched.stdout), "16010");

    // A merged commit approves a plan: the approval annotation on the plan's target, applied
    // under git-sync's own identity, passes the approvals policy.
    std::fs::remove_file(repo.join("by-hand.yaml")).unwrap();
    let approval = "a".repeat(64);
    let cluster = std::fs::read_to_string(repo.join("cluster.yaml"))
        .unwrap()
        .replacen(
            "name: commerce",
            &format!(
                "name: commerce\n  annotations:\n    shardplane.io/approve-plan: \"{approval}\""
            ),
            1,
        );
    std::fs::write(repo.join("cluster.yaml"), cluster).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "--quiet", "-m", "approve the drop plan"]);
    let fourth = git(&repo, &["rev-parse", "HEAD"]);
    let approved = git_sync_reached(&git_syncs, "databases", &fourth, "True").await;
    assert!(
        approved,
        "git-sync did not apply the approving commit: {:?}\n--- git-sync log\n{}",
        git_sync_ready(&git_syncs, "databases").await,
        process.log()
    );
    let live = env
        .kubectl([
            "get",
            "databasecluster.shardplane.io/commerce",
            "-o=jsonpath={.metadata.annotations}",
        ])
        .await;
    let annotations = String::from_utf8_lossy(&live.stdout);
    assert!(
        annotations.contains(&approval)
            && annotations.contains("\"shardplane.io/git-sync\":\"databases\""),
        "the approval or the GitSync stamp is missing: {annotations}"
    );
}

#[tokio::test]
async fn operator_runs_with_nothing_but_its_chart_rights() {
    let release_env = test_env().await;
    let watched = test_env().await;
    let scope = format!("operator.watchNamespace={}", watched.namespace);
    install(&release_env, "op", &["--set", &scope]).await;
    let work = tempfile::tempdir().expect("temporary folder");

    // Something to reconcile in the watched namespace.
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let applied = eventually(SETTLE_TIMEOUT, || async {
        watched
            .kubectl(["apply", "-f", examples])
            .await
            .status
            .success()
    })
    .await;
    assert!(applied, "kubectl apply examples/ kept failing");

    // The operator as the chart deploys it: its ServiceAccount's token, its namespaces.
    let kubeconfig = work.path().join("kubeconfig");
    service_account_kubeconfig(&release_env, "op-shardplane-operator", &kubeconfig).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("--listen=127.0.0.1:{port}");
    let process = ShardplaneProcess::spawn(
        work.path(),
        &kubeconfig,
        &["operator", &listen],
        &[
            ("SHARDPLANE_WATCH_NAMESPACE", &watched.namespace),
            ("SHARDPLANE_LEASE_NAMESPACE", &release_env.namespace),
            ("POD_NAME", "operator-under-test"),
        ],
    );

    let leases: Api<Lease> = release_env.api();
    let leading = eventually(SETTLE_TIMEOUT, || async {
        leases
            .get_opt("shardplane-operator")
            .await
            .ok()
            .flatten()
            .and_then(|lease| lease.spec?.holder_identity)
            .as_deref()
            == Some("operator-under-test")
    })
    .await;
    assert!(
        leading,
        "the operator did not take its Lease in the release namespace\n--- operator log\n{}",
        process.log()
    );

    for object in [
        "databasecluster.shardplane.io/commerce",
        "table.shardplane.io/customers",
    ] {
        let reconciled = eventually(SETTLE_TIMEOUT, || async {
            let output = watched
                .kubectl(["get", object, "-o", "jsonpath={.status.observedGeneration}"])
                .await;
            output.status.success() && !output.stdout.trim_ascii().is_empty()
        })
        .await;
        assert!(
            reconciled,
            "the operator wrote no status on {object}\n--- operator log\n{}",
            process.log()
        );
    }
    let log = process.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the operator was refused something its work needs:\n{log}"
    );
}

#[tokio::test]
async fn people_can_read_declare_and_approve_according_to_their_role() {
    let env = test_env().await;
    install(&env, "people", &[]).await;
    bind_roles(
        &env,
        &[
            ("viewer", &["view"]),
            ("editor", &["view", "edit"]),
            ("approver", &["view", "edit", "admin"]),
        ],
    )
    .await;
    let wrong = wrong_rights(
        &env,
        &[
            ("viewer", &["list", "tables.shardplane.io"][..], true),
            ("viewer", &["watch", "plans.shardplane.io"][..], true),
            ("viewer", &["get", "gitsyncs.shardplane.io"][..], true),
            ("viewer", &["create", "tables.shardplane.io"][..], false),
            ("viewer", &["get", "secrets"][..], false),
            ("viewer", &["approve", "plans.shardplane.io"][..], false),
            (
                "viewer",
                &["patch", "tables.shardplane.io", "--subresource=status"][..],
                false,
            ),
            ("editor", &["create", "tables.shardplane.io"][..], true),
            ("editor", &["delete", "shards.shardplane.io"][..], true),
            (
                "editor",
                &["patch", "databasenodes.shardplane.io"][..],
                true,
            ),
            ("editor", &["create", "gitsyncs.shardplane.io"][..], true),
            ("editor", &["patch", "plans.shardplane.io"][..], false),
            ("editor", &["approve", "plans.shardplane.io"][..], false),
            ("editor", &["delete", "plans.shardplane.io"][..], false),
            (
                "editor",
                &["update", "tables.shardplane.io", "--subresource=status"][..],
                false,
            ),
            (
                "editor",
                &[
                    "patch",
                    "databasenodes.shardplane.io",
                    "--subresource=status",
                ][..],
                false,
            ),
            (
                "editor",
                &["patch", "plans.shardplane.io", "--subresource=status"][..],
                false,
            ),
            (
                "editor",
                &["create", "schemaversions.shardplane.io"][..],
                false,
            ),
            (
                "editor",
                &["patch", "shards.shardplane.io", "--subresource=status"][..],
                false,
            ),
            ("approver", &["patch", "plans.shardplane.io"][..], true),
            ("approver", &["approve", "plans.shardplane.io"][..], true),
            (
                "approver",
                &["create", "schemaversions.shardplane.io"][..],
                false,
            ),
            (
                "approver",
                &["patch", "shards.shardplane.io", "--subresource=status"][..],
                false,
            ),
            (
                "approver",
                &["patch", "plans.shardplane.io", "--subresource=status"][..],
                false,
            ),
            ("approver", &["create", "plans.shardplane.io"][..], false),
            (
                "approver",
                &["list", "tables.shardplane.io", "--all-namespaces"][..],
                false,
            ),
        ],
    )
    .await;
    assert!(wrong.is_empty(), "wrong rights:\n{}", wrong.join("\n"));
}

/// Approving a Plan — by its `spec.approval` or by the hash annotation on its target — is
/// refused, with a message saying who may approve, unless the requester holds the verb
/// `approve` on plans (admin through the chart's roles; git-sync for merged commits); the
/// approver a Plan records must be the requester. Enforced by the chart's
/// ValidatingAdmissionPolicy, evaluated by the real API server.
#[tokio::test]
async fn only_approvers_approve_plans_and_the_approver_is_the_requester() {
    let env = test_env().await;
    let mut values = EVERYTHING_ON.to_vec();
    values.extend(["--set", "agent.nodes={eu-a-1}"]);
    install(&env, "appr", &values).await;
    bind_roles(
        &env,
        &[
            ("editor", &["view", "edit"]),
            ("approver", &["view", "edit", "admin"]),
        ],
    )
    .await;
    let hash = "a".repeat(64);
    // The cluster as a repository declared it (git-sync may only change what it applied).
    let manifests = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
         "metadata": {"name": "commerce", "annotations": {"shardplane.io/git-sync": "databases"}},
         "spec": {"regions": [{"name": "eu", "zones": ["eu-a"]}], "replicationFactor": 1}},
        {"apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
         "metadata": {"name": "eu-a-1"},
         "spec": {"cluster": "commerce", "region": "eu", "zone": "eu-a", "address": "127.0.0.1",
                  "ports": {"first": 20000, "last": 20031},
                  "capacity": {"storageBytes": 1_000_000_000i64}}},
        {"apiVersion": "shardplane.io/v1alpha1", "kind": "Plan",
         "metadata": {"name": "drop-orders"},
         "spec": {"cluster": "commerce", "target": {"kind": "SchemaVersion", "name": "orders-v2"},
                  "purpose": "SchemaRollout",
                  "cause": {"kind": "GitCommit", "commit": "4f1c2a9", "detail": "drop column note"},
                  "risk": "Destructive", "hash": hash, "summary": "drop column orders.note",
                  "steps": [{"id": 0, "action": "ApplySchema", "shard": "orders-0",
                             "detail": "{\"ApplySchema\":{\"shard\":\"orders-0\",\"version\":2}}",
                             "reason": "canary wave"}]}},
    ]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("objects.yaml");
    std::fs::write(&path, serde_yaml::to_string(&manifests).unwrap()).unwrap();
    let applied = env.kubectl(["apply", "-f", path.to_str().unwrap()]).await;
    assert!(applied.status.success(), "{}", describe(&applied));

    // The agent tries on its own DatabaseNode (which RBAC no longer lets it patch); the
    // others on the cluster.
    let annotate = |user: String, value: &str, dry_run: bool| {
        let env = &env;
        let target = if user.ends_with("-agent-eu-a-1") {
            "databasenode/eu-a-1"
        } else {
            "databasecluster/commerce"
        };
        let mut args = vec![
            "annotate".to_owned(),
            "--overwrite".to_owned(),
            target.to_owned(),
            format!("shardplane.io/approve-plan={value}"),
            format!("--as={user}"),
        ];
        if dry_run {
            args.push("--dry-run=server".to_owned());
        }
        async move { env.kubectl(&args).await }
    };
    let approve = |user: &str, approved_by: &str| {
        let env = &env;
        let patch = serde_json::json!({"spec": {"approval": {"planHash": hash, "approvedBy": approved_by}}})
            .to_string();
        let args = vec![
            "patch".to_owned(),
            "plan/drop-orders".to_owned(),
            "--type=merge".to_owned(),
            format!("--patch={patch}"),
            format!("--as={user}"),
        ];
        async move { env.kubectl(&args).await }
    };
    // The policy and the bindings reach the API server through informers: wait (without
    // changing anything) until an editor's approval is refused.
    let enforced = eventually(SETTLE_TIMEOUT, || async {
        !annotate("editor".into(), &hash, true)
            .await
            .status
            .success()
    })
    .await;
    assert!(enforced, "an editor's approval was never refused");

    let mut wrong = Vec::new();
    let agent = service_account(&env, "appr-shardplane-agent-eu-a-1");
    for (who, output, says) in [
        (
            "an editor annotating",
            annotate("editor".into(), &hash, false).await,
            "may not approve Plans",
        ),
        (
            "the agent annotating",
            annotate(agent.clone(), &hash, false).await,
            "cannot patch resource \"databasenodes\"",
        ),
        (
            "the agent patching the Plan",
            approve(&agent, &agent).await,
            "\"drop-orders\" is forbidden",
        ),
    ] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() || !stderr.contains(says) {
            wrong.push(format!(
                "{who} was not refused as it should be: {}",
                describe(&output)
            ));
        }
    }
    let editor_patch = approve("editor", "editor").await;
    if editor_patch.status.success() {
        wrong.push(format!(
            "an editor approved the Plan: {}",
            describe(&editor_patch)
        ));
    }
    let impostor = approve("approver", "alice").await;
    if impostor.status.success()
        || !String::from_utf8_lossy(&impostor.stderr).contains("must be your own user name")
    {
        wrong.push(format!(
            "an approval recorded as someone else: {}",
            describe(&impostor)
        ));
    }
    for (who, output) in [
        (
            "an admin patching the Plan",
            approve("approver", "approver").await,
        ),
        (
            "an admin annotating",
            annotate("approver".into(), &hash, false).await,
        ),
        (
            "git-sync annotating (a merged commit)",
            annotate(
                service_account(&env, "appr-shardplane-git-sync"),
                &"b".repeat(64),
                false,
            )
            .await,
        ),
    ] {
        if !output.status.success() {
            wrong.push(format!("{who} was refused: {}", describe(&output)));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let plan: shardplane::api::Plan = env.api().get("drop-orders").await.unwrap();
    assert_eq!(
        plan.spec.approval.map(|a| a.approved_by).as_deref(),
        Some("approver")
    );
}

// ---------------------------------------------------------------------------------------
// The Table admission webhook

/// The base64-decoded `key` of a rendered Secret's `data`.
fn secret_data(secret: &Value, key: &str) -> String {
    use std::io::Write;
    let encoded = secret["data"][key].as_str().unwrap_or_default();
    let mut child = std::process::Command::new("base64")
        .arg("--decode")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("base64 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(encoded.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8(output.stdout).expect("PEM is text")
}

/// Runs openssl with `args` in `dir`; returns (succeeded, stdout + stderr).
fn openssl(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test]
async fn admission_webhook_is_registered_served_and_trusted_with_the_chart_certificate() {
    let objects = render("hook", &[]).await;
    let hook = find(
        &objects,
        "ValidatingWebhookConfiguration",
        "hook-shardplane-operator-tables",
    );
    let webhook = &hook["webhooks"][0];
    assert_eq!(webhook["name"], "tables.shardplane.io");
    assert_eq!(
        webhook["failurePolicy"], "Ignore",
        "the default documented in docs/helm.md"
    );
    assert_eq!(webhook["sideEffects"], "None");
    assert_eq!(
        webhook["rules"][0]["resources"],
        serde_yaml::to_value(["tables"]).unwrap()
    );
    assert_eq!(
        webhook["rules"][0]["operations"],
        serde_yaml::to_value(["CREATE", "UPDATE"]).unwrap()
    );
    assert!(
        webhook["namespaceSelector"].is_null(),
        "an operator of every namespace validates every namespace"
    );
    let client = &webhook["clientConfig"]["service"];
    assert_eq!(client["path"], shardplane::controller::TABLE_WEBHOOK_PATH);
    assert_eq!(client["namespace"], "shardplane-system");
    let service = find(&objects, "Service", client["name"].as_str().unwrap());
    assert_eq!(service["spec"]["ports"][0]["port"], client["port"]);
    let target = &service["spec"]["ports"][0]["targetPort"];

    // The operator pods listen where the Service sends, with the Secret's certificate.
    let deployment = find(&objects, "Deployment", "hook-shardplane-operator");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let port = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| &p["name"] == target)
        .unwrap_or_else(|| panic!("no container port named {target:?}"));
    assert_eq!(
        env_value(&container["env"], "SHARDPLANE_ADMISSION_ADDRESS"),
        Some(&Value::from(format!(
            "0.0.0.0:{}",
            port["containerPort"].as_u64().unwrap()
        )))
    );
    let mount = &container["volumeMounts"][0];
    for (variable, file) in [
        ("SHARDPLANE_ADMISSION_CERT", "tls.crt"),
        ("SHARDPLANE_ADMISSION_KEY", "tls.key"),
    ] {
        assert_eq!(
            env_value(&container["env"], variable),
            Some(&Value::from(format!(
                "{}/{file}",
                mount["mountPath"].as_str().unwrap()
            )))
        );
    }
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let secret = find(
        &objects,
        "Secret",
        volume["secret"]["secretName"].as_str().unwrap(),
    );
    assert_eq!(
        secret["data"]["ca.crt"], webhook["clientConfig"]["caBundle"],
        "the API server must trust the CA that signed the serving certificate"
    );

    // The serving certificate is signed by that CA, names the Service as the API server
    // calls it, and belongs to the key the pods are given.
    let dir = tempfile::tempdir().unwrap();
    for file in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::write(dir.path().join(file), secret_data(secret, file)).unwrap();
    }
    let host = format!("{}.shardplane-system.svc", client["name"].as_str().unwrap());
    let (verified, text) = openssl(
        dir.path(),
        &[
            "verify",
            "-CAfile",
            "ca.crt",
            "-verify_hostname",
            &host,
            "tls.crt",
        ],
    );
    assert!(
        verified,
        "the certificate does not verify for {host}: {text}"
    );
    let (_, from_cert) = openssl(dir.path(), &["x509", "-in", "tls.crt", "-noout", "-pubkey"]);
    let (_, from_key) = openssl(dir.path(), &["pkey", "-in", "tls.key", "-pubout"]);
    assert!(from_cert.contains("BEGIN PUBLIC KEY"), "{from_cert}");
    assert_eq!(from_cert, from_key, "tls.key is not the certificate's key");
}

#[tokio::test]
async fn admission_webhook_values_scope_harden_or_remove_it() {
    let scoped = render(
        "hook",
        &[
            "--set",
            "operator.watchNamespace=team-a",
            "--set",
            "operator.admissionWebhook.failurePolicy=Fail",
        ],
    )
    .await;
    let webhook = &find(
        &scoped,
        "ValidatingWebhookConfiguration",
        "hook-shardplane-operator-tables",
    )["webhooks"][0];
    assert_eq!(webhook["failurePolicy"], "Fail");
    assert_eq!(
        webhook["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "team-a",
        "an operator of one namespace must not be asked about others"
    );

    let off = render(
        "hook",
        &["--set", "operator.admissionWebhook.enabled=false"],
    )
    .await;
    for object in &off {
        assert!(
            !name(object).contains("webhook") && kind(object) != "ValidatingWebhookConfiguration",
            "rendered with the webhook disabled: {}/{}",
            kind(object),
            name(object)
        );
    }
    let container = &find(&off, "Deployment", "hook-shardplane-operator")["spec"]["template"]["spec"]
        ["containers"][0];
    assert!(env_value(&container["env"], "SHARDPLANE_ADMISSION_ADDRESS").is_none());

    let output = helm(&[
        "lint",
        "--strict",
        CHART,
        "--set",
        "operator.admissionWebhook.failurePolicy=Sometimes",
    ])
    .await;
    let text = describe(&output);
    assert!(
        !output.status.success() && text.contains("/operator/admissionWebhook/failurePolicy"),
        "an unknown failurePolicy was accepted or not named: {text}"
    );
}

#[tokio::test]
async fn installed_webhook_keeps_its_certificate_on_upgrade_and_admits_tables_while_no_pod_runs() {
    let env = test_env().await;
    install(&env, "hook", &[]).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = env.api();
    let ca = |secret: k8s_openapi::api::core::v1::Secret| {
        secret
            .data
            .unwrap_or_default()
            .remove("ca.crt")
            .map(|b| b.0)
    };
    let before = ca(secrets
        .get("hook-shardplane-operator-webhook-tls")
        .await
        .expect("the webhook's certificate Secret"));
    assert!(before.is_some());
    let configuration = Api::<
        k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration,
    >::all(env.client.clone())
    .get("hook-shardplane-operator-tables")
    .await
    .expect("the ValidatingWebhookConfiguration");
    let bundle = configuration.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .map(|b| b.0);
    assert_eq!(bundle, before, "the caBundle is not the Secret's CA");

    let output = env.helm(["upgrade", "hook", CHART]).await;
    assert!(
        output.status.success(),
        "helm upgrade: {}",
        describe(&output)
    );
    let after = ca(secrets
        .get("hook-shardplane-operator-webhook-tls")
        .await
        .unwrap());
    assert_eq!(after, before, "helm upgrade replaced the webhook's CA");

    // No operator pod runs here (no kubelet): with the default failurePolicy Ignore a Table is
    // still admitted (the operator judges it when it runs).
    let table = serde_json::json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
        "metadata": {"name": "orders"},
        "spec": {"cluster": "main", "shardKey": "id", "primaryKey": ["id"],
                 "columns": [{"name": "id", "type": "bigint", "nullable": false}]}
    });
    let tables: Api<shardplane::api::Table> = env.api();
    let admitted = eventually(SETTLE_TIMEOUT, || async {
        tables
            .create(
                &PostParams::default(),
                &serde_json::from_value(table.clone()).unwrap(),
            )
            .await
            .is_ok()
    })
    .await;
    assert!(admitted, "a Table was refused while no webhook pod runs");
    let output = env.helm(["uninstall", "hook"]).await;
    assert!(
        output.status.success(),
        "helm uninstall: {}",
        describe(&output)
    );
}
