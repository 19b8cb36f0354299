{{/*
Prefix of every object's name: the release name, with "-shardplane" added unless the release
name already says it. Cluster-scoped objects (ClusterRoles, ClusterRoleBindings) of two
releases therefore never collide.
*/}}
{{- define "shardplane.fullname" -}}
{{- if contains "shardplane" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-shardplane" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: shardplane.componentName (list $ "operator"). */}}
{{- define "shardplane.componentName" -}}
{{- printf "%s-%s" (include "shardplane.fullname" (index . 0)) (index . 1) -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "shardplane.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: shardplane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shardplane
{{- end -}}

{{/* Selector labels of one component: shardplane.selectorLabels (list $ "operator"). */}}
{{- define "shardplane.selectorLabels" -}}
app.kubernetes.io/name: shardplane
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels of one component's objects. */}}
{{- define "shardplane.componentLabels" -}}
{{ include "shardplane.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The image reference; the tag defaults to the chart's appVersion. */}}
{{- define "shardplane.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
Namespaces a component's Roles are created in: the given list, or the release namespace when
it is empty. Returns a JSON list; use with fromJsonArray.
*/}}
{{- define "shardplane.namespacesOrRelease" -}}
{{- $namespaces := index . 1 -}}
{{- if $namespaces -}}
{{- $namespaces | uniq | toJson -}}
{{- else -}}
{{- list (index . 0).Release.Namespace | toJson -}}
{{- end -}}
{{- end -}}

{{/* The container securityContext shared by every Shardplane container. */}}
{{- define "shardplane.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end -}}

{{/* The pod securityContext shared by every Shardplane pod. */}}
{{- define "shardplane.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
