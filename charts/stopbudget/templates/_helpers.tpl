{{/* Names, labels and shared fragments. */}}

{{- define "stopbudget.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stopbudget.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "stopbudget.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stopbudget.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stopbudget.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "stopbudget.labels" -}}
helm.sh/chart: {{ include "stopbudget.chart" . }}
{{ include "stopbudget.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stopbudget
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "stopbudget.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stopbudget.fullname" .) .Values.serviceAccount.name }}
{{- else if .Values.serviceAccount.name }}
{{- .Values.serviceAccount.name }}
{{- else }}
{{- fail "serviceAccount.name: set the name of an existing ServiceAccount when serviceAccount.create is false" }}
{{- end }}
{{- end }}

{{- define "stopbudget.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret and key holding the webhook token (generated or existing). */}}
{{- define "stopbudget.webhookSecretName" -}}
{{- default (printf "%s-webhook" (include "stopbudget.fullname" .)) .Values.webhook.token.existingSecret }}
{{- end }}

{{- define "stopbudget.webhookSecretKey" -}}
{{- if .Values.webhook.token.existingSecret }}{{ .Values.webhook.token.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* The Secret and key holding the Prometheus token; empty name: no token. */}}
{{- define "stopbudget.prometheusSecretName" -}}
{{- if .Values.prometheus.auth.existingSecret }}
{{- .Values.prometheus.auth.existingSecret }}
{{- else if .Values.prometheus.auth.token }}
{{- printf "%s-prometheus" (include "stopbudget.fullname" .) }}
{{- end }}
{{- end }}

{{- define "stopbudget.prometheusSecretKey" -}}
{{- if .Values.prometheus.auth.existingSecret }}{{ .Values.prometheus.auth.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/*
RBAC rules: exactly stopbudget.kube.PERMISSIONS, plus OPTIONAL_PERMISSIONS[v] for each
rbac.<v> that is true (tests/unit/chart/test_chart.py checks the rendered rules against them in both
modes). Namespaced resources go into a
Role per watched namespace, or into the ClusterRole when the operator watches
the whole cluster; cluster-scoped resources always go into the ClusterRole.
*/}}
{{- define "stopbudget.rules.namespaced" -}}
# StopPolicies: kopf lists and watches them and patches them (its finalizer and
# progress annotations; the operator removes stopbudget.io/audit-requested).
- apiGroups: ["stopbudget.io"]
  resources: ["stoppolicies"]
  verbs: ["list", "watch", "patch"]
# Their status subresource.
- apiGroups: ["stopbudget.io"]
  resources: ["stoppolicies/status"]
  verbs: ["patch"]
# Events about the policies (budget changes, audits, handler failures).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# The serving Deployment: read it, patch the budget (env, arg, annotation).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "patch"]
# ConfigMaps: read and patch the configMap sink; read the audits' golden sets.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "patch"]
{{- if .Values.rbac.aiGateway }}
# rbac.aiGateway: Envoy AI Gateway's AIServiceBackends, read and patched by the aiGateway
# sink (spec.bodyMutation.set).
- apiGroups: ["aigateway.envoyproxy.io"]
  resources: ["aiservicebackends"]
  verbs: ["get", "patch"]
{{- end }}
{{- if .Values.rbac.refreshPods }}
# rbac.refreshPods: the target Deployment's pods, listed by its selector and annotated
# after a configMap sink write (refreshPods: true), so kubelet refreshes the volume at once.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "patch"]
{{- end }}
{{- end }}

{{/*
Cluster-scoped rules (none today: the operator runs kopf with cluster scanning
disabled and without peering). A Role cannot grant them, so they would go into
a ClusterRole in both modes.
*/}}
{{- define "stopbudget.rules.cluster" -}}
{{- end }}

{{/*
Fail before anything is applied when a watched namespace does not exist: a Role in a
missing namespace would otherwise fail halfway through an install or upgrade with
`namespaces "x" not found`. `lookup` answers only against a cluster (install, upgrade,
--dry-run=server); offline (helm template, lint) it returns nothing, and then the check
is skipped: the probe is the namespace "default", which every cluster has.
*/}}
{{- define "stopbudget.checkWatchedNamespaces" -}}
{{- if lookup "v1" "Namespace" "" "default" }}
{{- $missing := list }}
{{- range .Values.operator.watchNamespaces }}
{{- if not (lookup "v1" "Namespace" "" .) }}
{{- $missing = append $missing . }}
{{- end }}
{{- end }}
{{- if $missing }}
{{- fail (printf "operator.watchNamespaces: namespace(s) %s do not exist: create them first (kubectl create namespace %s) or remove them from operator.watchNamespaces" (join ", " $missing) (join " " $missing)) }}
{{- end }}
{{- end }}
{{- end }}
