{{/* Names and labels shared by every template. */}}

{{- define "clonepool.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "clonepool.agent" -}}{{ include "clonepool.fullname" . }}-agent{{- end -}}
{{- define "clonepool.coordinator" -}}{{ include "clonepool.fullname" . }}-coordinator{{- end -}}
{{- define "clonepool.agentToken" -}}{{ include "clonepool.fullname" . }}-agent-token{{- end -}}
{{- define "clonepool.apiToken" -}}{{ .Values.coordinator.apiTokenSecret | default (printf "%s-api-token" (include "clonepool.fullname" .)) }}{{- end -}}

{{- define "clonepool.labels" -}}
app.kubernetes.io/name: clonepool
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "clonepool.agentSelector" -}}
app.kubernetes.io/name: clonepool
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "clonepool.coordinatorSelector" -}}
app.kubernetes.io/name: clonepool
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: coordinator
{{- end -}}

{{- define "clonepool.image" -}}
{{ .Values.images.clonepool.repository }}:{{ .Values.images.clonepool.tag }}
{{- end -}}

{{- define "clonepool.workloadImage" -}}
{{ .Values.images.workload.repository }}:{{ .Values.images.workload.tag }}
{{- end -}}
