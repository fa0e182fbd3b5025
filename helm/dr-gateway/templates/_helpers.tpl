{{/*
Chart name, truncated to 63 characters (DNS label limit).
*/}}
{{- define "dr-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: <release>-<chart>, or the release name when it
already contains the chart name. Truncated to 63 characters.
*/}}
{{- define "dr-gateway.fullname" -}}
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
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "dr-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels identifying this release of the chart (no component).
*/}}
{{- define "dr-gateway.instanceLabels" -}}
app.kubernetes.io/name: {{ include "dr-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels for every object. Callers add app.kubernetes.io/component.
*/}}
{{- define "dr-gateway.labels" -}}
helm.sh/chart: {{ include "dr-gateway.chart" . }}
{{ include "dr-gateway.instanceLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dr-gateway
{{- end }}

{{/*
Selector labels of the gateway pods. The component keeps the helm test pod
(component "test") out of the Services, the PDB and the spread constraints.
*/}}
{{- define "dr-gateway.selectorLabels" -}}
{{ include "dr-gateway.instanceLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{/*
Name of the ServiceAccount.
*/}}
{{- define "dr-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dr-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Gateway image reference: repository@digest, or repository:tag (tag defaults
to appVersion).
*/}}
{{- define "dr-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the DR API key and webhook secrets.
*/}}
{{- define "dr-gateway.secretName" -}}
{{- default (include "dr-gateway.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Name of the internal gRPC Service (the "main" name clients dial).
*/}}
{{- define "dr-gateway.grpcServiceName" -}}
{{- include "dr-gateway.fullname" . }}
{{- end }}

{{/*
Name of the headless twin of the gRPC Service (service.grpc.headless.enabled).
*/}}
{{- define "dr-gateway.grpcHeadlessServiceName" -}}
{{- printf "%s-headless" (include "dr-gateway.grpcServiceName" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/*
Name of the webhook Service.
*/}}
{{- define "dr-gateway.webhookServiceName" -}}
{{- printf "%s-webhook" (include "dr-gateway.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
Name of the container and Service port that serves /metrics.
*/}}
{{- define "dr-gateway.metricsPortName" -}}
{{- if .Values.serviceMonitor.port }}
{{- .Values.serviceMonitor.port }}
{{- else if .Values.metrics.port -}}
metrics
{{- else -}}
http
{{- end }}
{{- end }}

{{/*
PromQL label matchers selecting this release's series in the alerts: the
release namespace and the job the ServiceMonitor gives them (the webhook
Service's name), unless prometheusRule.selector says otherwise.
*/}}
{{- define "dr-gateway.alertSelector" -}}
{{- if .Values.prometheusRule.selector -}}
{{ .Values.prometheusRule.selector }}
{{- else -}}
namespace="{{ .Release.Namespace }}",job="{{ include "dr-gateway.webhookServiceName" . }}"
{{- end }}
{{- end }}

{{/*
How many pods may run at once: replicaCount, or the HPA's maxReplicas.
*/}}
{{- define "dr-gateway.maxPods" -}}
{{- if .Values.autoscaling.enabled }}
{{- .Values.autoscaling.maxReplicas | int }}
{{- else }}
{{- .Values.replicaCount | int }}
{{- end }}
{{- end }}

{{/*
How many pods run at least: replicaCount, or the HPA's minReplicas.
*/}}
{{- define "dr-gateway.minPods" -}}
{{- if .Values.autoscaling.enabled }}
{{- .Values.autoscaling.minReplicas | int }}
{{- else }}
{{- .Values.replicaCount | int }}
{{- end }}
{{- end }}

{{/*
Pods assumed to share the DR key until they count each other through NATS:
config.upstreamRateLimitReplicas, or the most pods that run.
*/}}
{{- define "dr-gateway.rateLimitReplicas" -}}
{{- if kindIs "invalid" .Values.config.upstreamRateLimitReplicas }}
{{- max 1 (include "dr-gateway.maxPods" . | int) }}
{{- else }}
{{- .Values.config.upstreamRateLimitReplicas | int }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the explicit value, checked to outlast the
preStop sleep plus the gateway's drain, or that sum plus a 10 s margin.
*/}}
{{- define "dr-gateway.terminationGracePeriodSeconds" -}}
{{- $needed := add .Values.preStopSleepSeconds .Values.config.shutdownGraceSeconds }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $needed 10 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than preStopSleepSeconds (%d) + config.shutdownGraceSeconds (%d) = %d, or the kubelet kills the gateway before it has drained; leave it null to compute it" (int .Values.terminationGracePeriodSeconds) (int .Values.preStopSleepSeconds) (int .Values.config.shutdownGraceSeconds) (int $needed)) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}

{{/*
Checks the schema also makes, repeated here with full sentences because
helm's schema errors cannot carry a custom message.
*/}}
{{- define "dr-gateway.validate" -}}
{{- if and (gt (include "dr-gateway.maxPods" . | int) 1) (not .Values.bus.url) }}
{{- fail "more than one gateway pod (replicaCount > 1 or autoscaling.maxReplicas > 1) needs bus.url: pods share webhook events through NATS JetStream; without it each pod keeps its own in-memory events. Set bus.url (e.g. nats://nats.nats.svc:4222; run NATS with the nats/nats chart, JetStream enabled) or use one replica." }}
{{- end }}
{{- if and .Values.bus.credentialsSecret (not .Values.bus.url) }}
{{- fail "bus.credentialsSecret is set but bus.url is empty: set bus.url too" }}
{{- end }}
{{- include "dr-gateway.validateSecurity" . }}
{{- end }}

{{/*
=== securing the gRPC API (tls.*, auth.*) ===
*/}}

{{/*
Name of the Secret with the gRPC listener's certificate and key.
*/}}
{{- define "dr-gateway.tlsSecretName" -}}
{{- default (printf "%s-grpc-tls" (include "dr-gateway.fullname" . | trunc 54 | trimSuffix "-")) .Values.tls.secretName }}
{{- end }}

{{/*
Name of the Secret with the client CA bundle (mutual TLS).
*/}}
{{- define "dr-gateway.clientCaSecretName" -}}
{{- default (include "dr-gateway.tlsSecretName" .) .Values.tls.clientAuth.caSecretName }}
{{- end }}

{{/*
Whether the chart renders a policy ConfigMap from values (rules given, no
existing ConfigMap named).
*/}}
{{- define "dr-gateway.policyFromValues" -}}
{{- if and (not .Values.auth.policy.existingConfigMap) .Values.auth.policy.rules }}true{{ end }}
{{- end }}

{{/*
Name of the ConfigMap holding policy.toml; empty when there is no policy.
*/}}
{{- define "dr-gateway.policyConfigMapName" -}}
{{- if .Values.auth.policy.existingConfigMap }}
{{- .Values.auth.policy.existingConfigMap }}
{{- else if include "dr-gateway.policyFromValues" . }}
{{- printf "%s-auth-policy" (include "dr-gateway.fullname" . | trunc 51 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the token file; empty when there are no tokens.
*/}}
{{- define "dr-gateway.tokensSecretName" -}}
{{- if .Values.auth.tokens.existingSecret }}
{{- .Values.auth.tokens.existingSecret }}
{{- else if .Values.auth.tokens.entries }}
{{- printf "%s-auth-tokens" (include "dr-gateway.fullname" . | trunc 51 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/*
Namespaces the policy's identities name, one per line: SPIFFE ids
spiffe://<trust domain>/ns/<ns>/sa/<sa> and dns:<service>.<ns>.svc[.cluster.local].
A line "*" means some identity names no namespace (a token, another URI,
anonymous), so the namespaces alone cannot admit every caller.
*/}}
{{- define "dr-gateway.policyNamespaces" -}}
{{- range .Values.auth.policy.rules }}
{{- range .identities }}
{{- if regexMatch "^spiffe://[^/]+/ns/[^/]+/sa/[^/]+$" . }}
{{ regexReplaceAll "^spiffe://[^/]+/ns/([^/]+)/sa/.*$" . "${1}" }}
{{- else if regexMatch "^dns:[^.]+\\.[^.]+\\.svc(\\.cluster\\.local)?$" . }}
{{ regexReplaceAll "^dns:[^.]+\\.([^.]+)\\.svc.*$" . "${1}" }}
{{- else }}
*
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks of the security values, with sentences helm's schema errors cannot give.
*/}}
{{- define "dr-gateway.validateSecurity" -}}
{{- if and (ne .Values.tls.clientAuth.mode "none") (not .Values.tls.enabled) }}
{{- fail "tls.clientAuth.mode needs tls.enabled: client certificates are checked in the TLS handshake" }}
{{- end }}
{{- if and .Values.auth.required (eq .Values.tls.clientAuth.mode "none") (not (include "dr-gateway.tokensSecretName" .)) }}
{{- fail "auth.required needs a way to authenticate: tls.clientAuth.mode optional or required, or bearer tokens (auth.tokens.existingSecret or auth.tokens.entries)" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) (not .Values.tls.certManager.enabled) }}
{{- fail "tls.enabled needs a certificate: name an existing kubernetes.io/tls Secret in tls.secretName, or set tls.certManager.enabled (with tls.certManager.issuerRef.name)" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name (the cert-manager Issuer or ClusterIssuer that signs the gateway's certificate)" }}
{{- end }}
{{- if and .Values.tls.enabled .Values.metrics.enabled .Values.metrics.port (eq (int .Values.metrics.port) (int .Values.tls.healthPort)) }}
{{- fail (printf "metrics.port (%d) is tls.healthPort: give /metrics a port of its own" (int .Values.metrics.port)) }}
{{- end }}
{{- end }}

{{/*
A Kubernetes memory quantity ("256Mi", "1Gi", "512M", "1.5Gi", "268435456") in
bytes.
*/}}
{{- define "dr-gateway.quantityBytes" -}}
{{- $q := toString . -}}
{{- $units := list (list "Ki" 1024) (list "Mi" 1048576) (list "Gi" 1073741824) (list "Ti" 1099511627776) (list "k" 1000) (list "K" 1000) (list "M" 1000000) (list "G" 1000000000) (list "T" 1000000000000) -}}
{{- $bytes := "" -}}
{{- range $units -}}
{{- if and (eq $bytes "") (hasSuffix (index . 0) $q) -}}
{{- $bytes = mulf (float64 (trimSuffix (index . 0) $q)) (index . 1) | floor | int64 | toString -}}
{{- end -}}
{{- end -}}
{{- if eq $bytes "" -}}{{- $bytes = float64 $q | floor | int64 | toString -}}{{- end -}}
{{- $bytes -}}
{{- end }}

{{/*
DR_GATEWAY_EVENT_LOG_MAX_BYTES: config.eventLog.maxBytes, or
config.eventLog.memoryPercent of resources.limits.memory.
*/}}
{{- define "dr-gateway.eventLogMaxBytes" -}}
{{- with .Values.config.eventLog.maxBytes -}}
{{- . -}}
{{- else -}}
{{- $limit := dig "limits" "memory" "" .Values.resources -}}
{{- if not $limit -}}
{{- fail "resources.limits.memory is not set: the in-memory event log's byte bound derives from it (or set config.eventLog.maxBytes)" -}}
{{- end -}}
{{- $bytes := include "dr-gateway.quantityBytes" $limit | int64 -}}
{{- if le $bytes 0 -}}
{{- fail (printf "resources.limits.memory %q is not a memory quantity" (toString $limit)) -}}
{{- end -}}
{{- div (mul $bytes (int64 .Values.config.eventLog.memoryPercent)) 100 -}}
{{- end -}}
{{- end }}
