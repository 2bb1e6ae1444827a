{{/* Chart name, overridable. */}}
{{- define "orpheus-tts-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name when it already contains the chart name
(so `helm install orpheus-tts-operator ...` does not repeat it), else <release>-<chart>.
*/}}
{{- define "orpheus-tts-operator.fullname" -}}
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

{{- define "orpheus-tts-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: never change them after install (a Deployment's selector is immutable). */}}
{{- define "orpheus-tts-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "orpheus-tts-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "orpheus-tts-operator.labels" -}}
helm.sh/chart: {{ include "orpheus-tts-operator.chart" . }}
{{ include "orpheus-tts-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The ServiceAccount the operator runs as (templates/rbac.yaml binds its permissions to it). */}}
{{- define "orpheus-tts-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "orpheus-tts-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag of an image value ({repository, tag}); the tag defaults to the appVersion. */}}
{{- define "orpheus-tts-operator.image" -}}
{{- $ctx := index . 0 }}{{- $image := index . 1 }}
{{- printf "%s:%s" $image.repository (default $ctx.Chart.AppVersion $image.tag) }}
{{- end }}
