{{- define "cachestack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cachestack.fullname" -}}
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

{{- define "cachestack.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "cachestack.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "cachestack.selector" -}}
app.kubernetes.io/name: {{ include "cachestack.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "cachestack.gateway.image" -}}
{{- printf "%s:%s" .Values.gateway.image.repository (default .Chart.AppVersion .Values.gateway.image.tag) }}
{{- end }}

{{- define "cachestack.embedder.fullname" -}}
{{- printf "%s-embedder" (include "cachestack.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cachestack.vllm.fullname" -}}
{{- printf "%s-vllm" (include "cachestack.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cachestack.redis.fullname" -}}
{{- printf "%s-redis" (include "cachestack.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Secret and key holding the Redis password the gateway uses; empty name: no password. */}}
{{- define "cachestack.redis.secretName" -}}
{{- if .Values.redis.enabled }}
{{- default (include "cachestack.redis.fullname" .) .Values.redis.auth.existingSecret }}
{{- else }}
{{- .Values.redis.external.existingSecret }}
{{- end }}
{{- end }}

{{- define "cachestack.redis.secretKey" -}}
{{- if .Values.redis.enabled }}
{{- if .Values.redis.auth.existingSecret }}{{ .Values.redis.auth.existingSecretKey }}{{ else }}redis-password{{ end }}
{{- else }}
{{- .Values.redis.external.existingSecretKey }}
{{- end }}
{{- end }}

{{- define "cachestack.redis.url" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s.%s.svc.%s:%d/0" (include "cachestack.redis.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.redis.port) }}
{{- else }}
{{- required "redis.external.url is required when redis.enabled is false" .Values.redis.external.url }}
{{- end }}
{{- end }}

{{- define "cachestack.auth.secretName" -}}
{{- default (printf "%s-auth" (include "cachestack.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "cachestack.auth.enabled" -}}
{{- if or .Values.auth.existingSecret .Values.auth.tenants .Values.auth.adminKey }}true{{ end }}
{{- end }}

{{- define "cachestack.auth.hasAdmin" -}}
{{- if or .Values.auth.adminKey (and .Values.auth.existingSecret .Values.auth.adminKeyKey) }}true{{ end }}
{{- end }}

{{- define "cachestack.auth.hasKeys" -}}
{{- if or .Values.auth.tenants (and .Values.auth.existingSecret .Values.auth.keysFileKey) }}true{{ end }}
{{- end }}

{{- define "cachestack.hfToken.secretName" -}}
{{- if .Values.vllm.hfToken.existingSecret }}{{ .Values.vllm.hfToken.existingSecret }}{{ else if .Values.vllm.hfToken.value }}{{ printf "%s-hf-token" (include "cachestack.fullname" .) }}{{ end }}
{{- end }}

{{/*
One model entry with the chart's defaults filled in: (dict "ctx" $ "model" $m).
Booleans are resolved with hasKey so an explicit `false` wins over a default `true`.
*/}}
{{- define "cachestack.model" -}}
{{- $m := deepCopy .model }}
{{- $v := .ctx.Values.vllm }}
{{- $_ := set $m "servedModelName" (default $m.model $m.servedModelName) }}
{{- $_ := set $m "enablePrefixCaching" (ternary $m.enablePrefixCaching true (hasKey $m "enablePrefixCaching")) }}
{{- $_ := set $m "enablePromptTokensDetails" (ternary $m.enablePromptTokensDetails true (hasKey $m "enablePromptTokensDetails")) }}
{{- $_ := set $m "gpus" (ternary $m.gpus 1 (hasKey $m "gpus")) }}
{{- $_ := set $m "replicas" (ternary $m.replicas 1 (hasKey $m "replicas")) }}
{{- if not (hasKey $m "nodeSelector") }}{{ $_ := set $m "nodeSelector" $v.nodeSelector }}{{ end }}
{{- if not (hasKey $m "tolerations") }}{{ $_ := set $m "tolerations" $v.tolerations }}{{ end }}
{{- if not (hasKey $m "affinity") }}{{ $_ := set $m "affinity" $v.affinity }}{{ end }}
{{- $_ := set $m "image" (mergeOverwrite (deepCopy $v.image) (default dict $m.image)) }}
{{- toYaml $m }}
{{- end }}

{{/* NetworkPolicy peer for Prometheus: call with .Values.networkPolicy.prometheus. */}}
{{- define "cachestack.np.prometheus" -}}
- namespaceSelector:
    {{- toYaml .namespaceSelector | nindent 4 }}
  podSelector:
    {{- toYaml .podSelector | nindent 4 }}
{{- end }}

{{/*
A memory quantity ("32Gi", "512Mi", "1Ti", or bytes as an integer) in MiB, for the offload
arithmetic; other suffixes fail so the sum is never silently wrong: (dict "q" "32Gi" "where" "models[a]").
*/}}
{{- define "cachestack.memMi" -}}
{{- $q := toString .q }}
{{- if regexMatch "^[0-9]+Gi$" $q }}{{ mul (trimSuffix "Gi" $q | atoi) 1024 }}
{{- else if regexMatch "^[0-9]+Mi$" $q }}{{ trimSuffix "Mi" $q | atoi }}
{{- else if regexMatch "^[0-9]+Ti$" $q }}{{ mul (trimSuffix "Ti" $q | atoi) 1048576 }}
{{- else if regexMatch "^[0-9]+$" $q }}{{ div (atoi $q) 1048576 }}
{{- else }}{{ fail (printf "%s: memory %q must be a whole number of Mi, Gi or Ti (or bytes) when kvOffload is enabled, so the chart can add the offload size to it" .where $q) }}
{{- end }}
{{- end }}

{{/* MiB back to a quantity: whole GiB print as Gi. */}}
{{- define "cachestack.miQuantity" -}}
{{- $mi := int . }}
{{- if eq (mod $mi 1024) 0 }}{{ div $mi 1024 }}Gi{{ else }}{{ $mi }}Mi{{ end }}
{{- end }}
