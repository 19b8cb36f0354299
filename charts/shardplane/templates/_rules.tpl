{{/*
RBAC rules of each component, shared by their ClusterRole or Roles. Every verb, resource and
API group is named: no wildcards, so a new resource or verb is never granted by accident.
*/}}

{{/* The operator: owns every Shardplane resource and reports on it. */}}
{{- define "shardplane.operatorRules" -}}
- apiGroups: ["shardplane.io"]
  resources: ["databaseclusters", "databasenodes", "tables", "shards", "schemaversions", "plans"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["shardplane.io"]
  resources:
    - databaseclusters/status
    - databasenodes/status
    - tables/status
    - shards/status
    - schemaversions/status
    - plans/status
  verbs: ["get", "update", "patch"]
{{- /* A replaced Shard is held by a finalizer until its data has moved (OwnerReferencesPermissionEnforcement also asks for this). */}}
- apiGroups: ["shardplane.io"]
  resources:
    - databaseclusters/finalizers
    - databasenodes/finalizers
    - tables/finalizers
    - shards/finalizers
    - schemaversions/finalizers
    - plans/finalizers
  verbs: ["update"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- /* Leader election, and node liveness when an agent's own lease must be read or fenced. */}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
{{- /* PostgreSQL credentials of the clusters it manages; their certificate authorities and node certificates, which it creates and renews (never deletes: they go with their owner). */}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
{{- end -}}

{{/*
The node agent: registers and updates its DatabaseNode, reports the replicas it observes on
Shards, reads the schema it must apply. It never creates, deletes or re-specifies Shards,
Tables or Plans: those decisions are the operator's.
*/}}
{{- define "shardplane.agentRules" -}}
- apiGroups: ["shardplane.io"]
  resources: ["databasenodes"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
- apiGroups: ["shardplane.io"]
  resources: ["databasenodes/status", "shards/status"]
  verbs: ["get", "update", "patch"]
{{- /* The cluster its node belongs to (credentials' Secret name, settings), and the schema it applies. */}}
- apiGroups: ["shardplane.io"]
  resources: ["databaseclusters", "shards", "tables", "schemaversions"]
  verbs: ["get", "list", "watch"]
{{- /* Its node liveness lease, renewed by server-side apply (a patch that creates it the first time). */}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update", "patch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- /* PostgreSQL credentials by name; no list, so it cannot enumerate Secrets. */}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end -}}

{{/*
git-sync: serves GitSyncs, applies what is in git into each GitSync's own namespace and prunes
what was removed from it. It writes the specs of the kinds a repository may declare, never
their status, and the status (inventory, conditions) of GitSyncs only. It cannot create
GitSyncs, so a repository cannot add repositories, and only reads Plans (to see approvals).
*/}}
{{- define "shardplane.gitSyncRules" -}}
- apiGroups: ["shardplane.io"]
  resources: ["gitsyncs"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["shardplane.io"]
  resources: ["gitsyncs/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: ["shardplane.io"]
  resources: ["databaseclusters", "databasenodes", "tables", "shards"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["shardplane.io"]
  resources: ["plans"]
  verbs: ["get", "list", "watch"]
{{- /* A merged commit may carry an approval (the approve-plan annotation on a plan's target): the approval policy checks this verb (approval-policy.yaml). */}}
- apiGroups: ["shardplane.io"]
  resources: ["plans"]
  verbs: ["approve"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- /* The credentials and webhook Secrets a GitSync names; no list, so it cannot enumerate Secrets. */}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end -}}
