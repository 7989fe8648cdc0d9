{{/*
The chart's name, or nameOverride.
*/}}
{{- define "shunt-cni.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The objects' name: the release name, then the chart name unless the release name contains it,
truncated to 63 characters (label values and DNS labels).
*/}}
{{- define "shunt-cni.fullname" -}}
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

{{/*
The helm.sh/chart label: name-version, "+" replaced (not allowed in label values).
*/}}
{{- define "shunt-cni.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: they never change for a release (a DaemonSet's selector is immutable).
*/}}
{{- define "shunt-cni.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shunt-cni.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The recommended labels, on every object.
*/}}
{{- define "shunt-cni.labels" -}}
helm.sh/chart: {{ include "shunt-cni.chart" . }}
{{ include "shunt-cni.selectorLabels" . }}
app.kubernetes.io/version: {{ include "shunt-cni.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: cni-node
app.kubernetes.io/part-of: shunt
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The eBPF agent's selector and labels: a name of its own, so that neither DaemonSet's selector
matches the other's pods.
*/}}
{{- define "shunt-cni.ebpfSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-ebpf" (include "shunt-cni.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shunt-cni.ebpfLabels" -}}
helm.sh/chart: {{ include "shunt-cni.chart" . }}
{{ include "shunt-cni.ebpfSelectorLabels" . }}
app.kubernetes.io/version: {{ include "shunt-cni.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: ebpf-agent
app.kubernetes.io/part-of: shunt
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "shunt-cni.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
Paths inside the container. The host directories are values; where the container sees them is
not, and the run directory is the same path on both sides, so the plugin (on the host) and the
installer (in the container) name the report socket alike.
*/}}
{{- define "shunt-cni.containerBinDir" -}}/host/opt/cni/bin{{- end }}
{{- define "shunt-cni.containerNetDir" -}}/host/etc/cni/net.d{{- end }}
{{- define "shunt-cni.runDir" -}}/var/run/shunt{{- end }}
