{{/*
Names. One operator per cluster (its MutatingWebhookConfiguration and ClusterRoles are cluster-wide),
so the default full name is the chart name, not `<release>-<chart>`: the webhook Service is then
`lumigo-operator-webhook` whatever the release is called.
*/}}
{{- define "lumigo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lumigo.fullname" -}}
{{- default (include "lumigo.name" .) .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- end }}

{{- define "lumigo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "lumigo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "lumigo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lumigo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "lumigo.proxySelectorLabels" -}}
app.kubernetes.io/name: {{ include "lumigo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: telemetry-proxy
{{- end }}

{{- define "lumigo.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ default .Chart.AppVersion .Values.operator.image.tag }}
{{- end }}

{{- define "lumigo.injectorImage" -}}
{{- $tag := default .Chart.AppVersion .Values.injector.image.tag }}
{{- $digest := .Values.injector.image.digest | default "" }}
{{- if $digest }}
{{- /* The digest pins the image; the tag beside it only tells a reader the version. */}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" $digest) }}{{ fail "injector.image.digest must be sha256: and 64 lowercase hex digits" }}{{ end }}
{{- .Values.injector.image.repository }}:{{ $tag }}@{{ $digest }}
{{- else }}
{{- if eq $tag "latest" }}{{ fail "injector.image.tag must be pinned, not latest" }}{{ end }}
{{- .Values.injector.image.repository }}:{{ $tag }}
{{- end }}
{{- end }}

{{- define "lumigo.serviceAccountName" -}}
{{ include "lumigo.fullname" . }}
{{- end }}

{{- define "lumigo.webhookService" -}}
{{ include "lumigo.fullname" . }}-webhook
{{- end }}

{{- define "lumigo.webhookSecret" -}}
{{ include "lumigo.fullname" . }}-webhook-tls
{{- end }}

{{- define "lumigo.proxyName" -}}
{{ include "lumigo.fullname" . }}-telemetry-proxy
{{- end }}

{{/* Where instrumented apps send OTLP: the proxy's Service, or the exporter endpoint itself. */}}
{{- define "lumigo.otlpBase" -}}
{{- if .Values.telemetryProxy.enabled -}}
http://{{ include "lumigo.proxyName" . }}.{{ .Release.Namespace }}.svc.cluster.local:{{ .Values.telemetryProxy.port }}
{{- else -}}
{{ trimSuffix "/" .Values.telemetryProxy.exporter.endpoint }}
{{- end }}
{{- end }}

{{- define "lumigo.engine" -}}
{{- $engine := .Values.admission.engine }}
{{- if not (has $engine (list "builtin" "kubewarden")) }}{{ fail (printf "admission.engine must be builtin or kubewarden, not %q" $engine) }}{{ end }}
{{- $engine }}
{{- end }}

{{/*
injector.payloadDelivery, checked, as the operator's flag spells it (image-volume).
*/}}
{{- define "lumigo.payloadDelivery" -}}
{{- /* `default`: values reused from a release older than the setting lack it. */}}
{{- $delivery := .Values.injector.payloadDelivery | default "auto" }}
{{- if not (has $delivery (list "auto" "imageVolume" "initContainer")) }}{{ fail (printf "injector.payloadDelivery must be auto, imageVolume or initContainer, not %q" $delivery) }}{{ end }}
{{- kebabcase $delivery }}
{{- end }}

{{/*
The namespaces nothing is instrumented in, as a JSON list: the cluster's own (always, whatever the
values say: the operator protects them too), protectedNamespaces.namespaces, and the release namespace.
The webhook is not sent their requests, the operator's rollout leaves them alone
(LUMIGO_PROTECTED_NAMESPACES), and templates/admission-guard.yaml refuses its writes there.
*/}}
{{- define "lumigo.protectedNamespaces" -}}
{{- concat (list "kube-system" "kube-public" "kube-node-lease") .Values.protectedNamespaces.namespaces (list .Release.Namespace) | uniq | toJson }}
{{- end }}

{{/* The restricted-profile security context every container of the chart runs with. */}}
{{- define "lumigo.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "lumigo.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Whether the proxy counts spans per workload for the operator: it needs the proxy and k8sattributes. */}}
{{- define "lumigo.verifyTracing" -}}
{{- if and .Values.telemetryProxy.enabled .Values.telemetryProxy.k8sattributes .Values.tracingVerification.enabled -}}
true
{{- end }}
{{- end }}

{{/* monitoredNamespaces as the operator reads it (LUMIGO_MONITORED_NAMESPACES), checked here so that a
bad value is an install-time error; empty when nothing is monitored. */}}
{{- define "lumigo.monitoredNamespaces" -}}
{{- $selection := .Values.monitoredNamespaces -}}
{{- if kindIs "string" $selection -}}
{{- if ne $selection "all" }}{{ fail (printf "monitoredNamespaces: %q is neither a list of names, \"all\", nor a label selector" $selection) }}{{ end -}}
{"all":true}
{{- else if kindIs "slice" $selection -}}
{{- range $selection }}{{ if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (toString .)) }}{{ fail (printf "monitoredNamespaces: %q is not a namespace name" (toString .)) }}{{ end }}{{ end -}}
{{- if $selection }}{{ dict "names" $selection | toJson }}{{ end -}}
{{- else if kindIs "map" $selection -}}
{{- range $key, $_ := $selection }}{{ if not (has $key (list "matchLabels" "matchExpressions")) }}{{ fail (printf "monitoredNamespaces: a label selector has matchLabels and matchExpressions, not %q" $key) }}{{ end }}{{ end -}}
{{- range (default (list) $selection.matchExpressions) }}{{ if not (has .operator (list "In" "NotIn" "Exists" "DoesNotExist")) }}{{ fail (printf "monitoredNamespaces: unknown operator %q in matchExpressions" (toString .operator)) }}{{ end }}{{ end -}}
{{ dict "selector" $selection | toJson }}
{{- else if $selection -}}
{{ fail "monitoredNamespaces: a list of names, \"all\", or a label selector" }}
{{- end -}}
{{- end }}

{{/* The Secret of the release namespace holding the token of the monitored namespaces. */}}
{{- define "lumigo.tokenSecret" -}}
{{- if .Values.lumigoToken.existingSecret.name -}}
{{ .Values.lumigoToken.existingSecret.name }}
{{- else if .Values.lumigoToken.value -}}
{{ include "lumigo.fullname" . }}-lumigo-token
{{- end -}}
{{- end }}

{{- define "lumigo.tokenSecretKey" -}}
{{- if .Values.lumigoToken.existingSecret.name -}}
{{ .Values.lumigoToken.existingSecret.key }}
{{- else -}}
token
{{- end -}}
{{- end }}
