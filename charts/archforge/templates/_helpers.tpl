{{/* Names and labels shared by every object of the release. */}}

{{- define "archforge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "archforge.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "archforge.labels" -}}
{{ include "archforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "archforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "archforge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Leader election is on when asked for, and always with more than one replica. */}}
{{- define "archforge.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{- define "archforge.metricsPort" -}}
{{- regexFind "[0-9]+$" .Values.metrics.address -}}
{{- end -}}

{{/*
The rules the operator needs wherever ImageBuilds are watched (operator/src/rbac.rs lists
the same, and a test compares them).
*/}}
{{- define "archforge.watchedRules" -}}
# the controller's watch on ImageBuilds
- apiGroups: ["archforge.dev"]
  resources: ["imagebuilds"]
  verbs: ["list", "watch"]
# status is written with server-side apply
- apiGroups: ["archforge.dev"]
  resources: ["imagebuilds/status"]
  verbs: ["patch"]
# Jobs carry a blocking owner reference to their ImageBuild (OwnerReferencesPermissionEnforcement checks this)
- apiGroups: ["archforge.dev"]
  resources: ["imagebuilds/finalizers"]
  verbs: ["update"]
# one builder Job per platform, created (never applied over an existing object, so a Job of the same name that is not this ImageBuild's is left alone), read back by name when the name is taken, deleted when a run fails or is superseded
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# read-only: builder pods' termination messages carry the pushed digest or the log tail
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# read-only, by name: the push secret for index assembly and the git credentials for pinning the commit
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events on ImageBuilds; repeats are patched into a series
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
