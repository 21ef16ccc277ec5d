{{/* The CSI driver name. Fixed: it is the plugin name GetPluginInfo returns. */}}
{{- define "spire-csi-driver.driverName" -}}csi.spire.io{{- end -}}

{{- define "spire-csi-driver.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "spire-csi-driver.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "spire-csi-driver.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "spire-csi-driver.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spire-csi-driver.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "spire-csi-driver.labels" -}}
helm.sh/chart: {{ include "spire-csi-driver.chart" . }}
{{ include "spire-csi-driver.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: csi-node-plugin
{{- with (merge (dict) (.Values.commonLabels | default dict) ((.Values.global).commonLabels | default dict)) }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "spire-csi-driver.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "spire-csi-driver.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
<registry>/<repository>:<tag>, or <registry>/<repository>@<digest>; global.imageRegistry wins over
image.registry. A repository that already starts with a registry host (a first path component
with "." or ":", or localhost, as image references are parsed) is used as is, so values written
before image.registry existed (repository: registry.example.com/spire/spire-csi-driver) keep
their meaning.
*/}}
{{- define "spire-csi-driver.image" -}}
{{- $registry := (.Values.global).imageRegistry | default .Values.image.registry -}}
{{- $host := first (splitList "/" .Values.image.repository) -}}
{{- $namesRegistry := and (contains "/" .Values.image.repository) (or (contains "." $host) (contains ":" $host) (eq $host "localhost")) -}}
{{- $name := ternary (printf "%s/%s" $registry .Values.image.repository) .Values.image.repository (and (ne $registry "") (not $namesRegistry)) -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $name .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $name (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* global.imagePullSecrets, then imagePullSecrets. */}}
{{- define "spire-csi-driver.imagePullSecrets" -}}
{{- $secrets := concat ((.Values.global).imagePullSecrets | default list) (.Values.imagePullSecrets | default list) -}}
{{- with $secrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The driver container's securityContext: the fields the driver cannot work without, then the
operator's additions (containerSecurityContext, seLinuxOptions), which cannot override them.
*/}}
{{- define "spire-csi-driver.containerSecurityContext" -}}
{{- $required := dict "privileged" true "runAsUser" 0 "runAsNonRoot" false "readOnlyRootFilesystem" true -}}
{{- $context := merge $required (deepCopy .Values.containerSecurityContext) -}}
{{- with .Values.seLinuxOptions }}
{{- $_ := set $context "seLinuxOptions" . -}}
{{- end }}
{{- toYaml $context -}}
{{- end -}}

{{/* kubeletRoot without a trailing slash; every kubelet path derives from it. */}}
{{- define "spire-csi-driver.kubeletRoot" -}}
{{- .Values.kubeletRoot | trimSuffix "/" -}}
{{- end -}}

{{/* Host dir of the CSI socket: <kubeletRoot>/plugins/csi.spire.io */}}
{{- define "spire-csi-driver.pluginDir" -}}
{{- printf "%s/plugins/%s" (include "spire-csi-driver.kubeletRoot" .) (include "spire-csi-driver.driverName" .) -}}
{{- end -}}

{{/* The agent admin socket as the driver sees it (the host dir is mounted at the same path). */}}
{{- define "spire-csi-driver.agentSocket" -}}
{{- printf "%s/%s" (.Values.agent.adminSocketDir | trimSuffix "/") .Values.agent.adminSocketName -}}
{{- end -}}

{{/* Fails the render on values that cannot work together. */}}
{{- define "spire-csi-driver.validate" -}}
{{- if and .Values.metrics.enabled (eq (int .Values.health.port) (int .Values.metrics.port)) -}}
{{- fail (printf "health.port and metrics.port must differ (both %v): the probes and /metrics are two named ports of the driver container" .Values.health.port) -}}
{{- end -}}
{{- $td := .Values.spire.trustDomain -}}
{{- if not (hasPrefix (printf "spiffe://%s/" $td) .Values.spire.delegateSpiffeId) -}}
{{- fail (printf "spire.delegateSpiffeId %q must be in spire.trustDomain %q: authorized_delegates name workloads of the agent's own trust domain" .Values.spire.delegateSpiffeId $td) -}}
{{- end -}}
{{- end -}}
