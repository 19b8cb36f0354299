{{/*
RBAC rules of each component, shared by their ClusterRole or Roles. Every verb, resource and
API group is named: no wildcards, so a new resource or verb is never granted by accident.
*/}}

{{/*
The operator: reads every Shardplane resource and reports on it; writes only what its code
writes (each verb below names the code path). Nothing it never does: no create of clusters,
nodes, tables or shards (people and git declare them), no delete but of Plans and replaced
Shards, no update, no Secret deletion.
*/}}
{{- define "shardplane.operatorRules" -}}
- apiGroups: ["shardplane.io"]
  resources: ["databaseclusters", "databasenodes", "tables", "shards", "schemaversions", "plans"]
  verbs: ["get", "list", "watch"]
{{- /* Finalizers on nodes (drain before removal) and tables (drop their data), by merge patch. */}}
- apiGroups: ["shardplane.io"]
  resources: ["databasenodes", "tables"]
  verbs: ["patch"]
{{- /* Plans it decides (and removes once superseded or kept long enough); SchemaVersions it derives from Tables; Shards a split or merge replaced. */}}
- apiGroups: ["shardplane.io"]
  resources: ["plans"]
  verbs: ["create", "delete"]
- apiGroups: ["shardplane.io"]
  resources: ["schemaversions"]
  verbs: ["create"]
- apiGroups: ["shardplane.io"]
  resources: ["shards"]
  verbs: ["delete"]
- apiGroups: ["shardplane.io"]
  resources:
    - databaseclusters/status
    - databasenodes/status
    - tables/status
    - shards/status
    - schemaversions/status
    - plans/status
  verbs: ["patch"]
{{- /* The objects it makes are owned (blockOwnerDeletion) by clusters and nodes (certificate Secrets, Plans), tables (SchemaVersions) and schema versions (rollout Plans): OwnerReferencesPermissionEnforcement asks for this. */}}
- apiGroups: ["shardplane.io"]
  resources:
    - databaseclusters/finalizers
    - databasenodes/finalizers
    - tables/finalizers
    - schemaversions/finalizers
  verbs: ["update"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- /* Leader election, and node liveness when an agent's own lease must be read. */}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "patch"]
{{- /* Certificate authorities and node certificates, which it creates and renews (never deletes: they go with their owner), watched for the heartbeat keys. */}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
{{- end -}}

{{/*
The node agents: rules every node's agent shares. Each registers its DatabaseNode, reports the
replicas it observes on Shards and reads the schema it must apply. It never creates, deletes
or re-specifies Shards, Tables or Plans: those decisions are the operator's. The writes here
that could touch another node's objects (creating a DatabaseNode or a Lease, writing a Shard's
status) are confined to the writer's own node by the agents policy (agent-policy.yaml).
*/}}
{{- define "shardplane.agentRules" -}}
{{- /* Registration creates its own DatabaseNode once; it never changes a node's spec. */}}
- apiGroups: ["shardplane.io"]
  resources: ["databasenodes"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: ["shardplane.io"]
  resources: ["shards/status"]
  verbs: ["get", "update", "patch"]
{{- /* The cluster its node belongs to (credentials' Secret name, settings), and the schema it applies. */}}
- apiGroups: ["shardplane.io"]
  resources: ["databaseclusters", "shards", "tables", "schemaversions"]
  verbs: ["get", "list", "watch"]
{{- /* Its node liveness Lease, the first time (server-side apply creates it); renewals are the node's own Role. */}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- /* The clusters' PostgreSQL credentials, by name: no other Secret, no list. */}}
{{- with .Values.agent.credentialsSecrets }}
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: {{ toJson . }}
  verbs: ["get"]
{{- end }}
{{- end -}}

{{/*
One node's agent: the objects only that node's agent may touch, by name. Called with the node's
name.
*/}}
{{- define "shardplane.agentNodeRules" -}}
- apiGroups: ["shardplane.io"]
  resources: ["databasenodes/status"]
  resourceNames: [{{ . | quote }}]
  verbs: ["get", "update", "patch"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  resourceNames: [{{ printf "shardplane-node-%s" . | quote }}]
  verbs: ["get", "update", "patch"]
{{- /* Its certificate, key and heartbeat key, which the operator issues (src/tls: <node>-tls). */}}
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: [{{ printf "%s-tls" . | quote }}]
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
{{- /* The credentials and webhook Secrets GitSyncs may name, by name: no other Secret (the operator's webhook key, the agents' certificates, the PostgreSQL credentials), no list. */}}
{{- with .Values.gitSync.secretNames }}
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: {{ toJson . }}
  verbs: ["get"]
{{- end }}
{{- end -}}
