{{/*
Object name prefix: the release name when it already says "toolwarden", else "<release>-toolwarden".
*/}}
{{- define "toolwarden.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains "toolwarden" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-toolwarden" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
Common labels. app.kubernetes.io/name is always "toolwarden": the workers' NetworkPolicies admit
gateway pods by it, so it is not overridable.
*/}}
{{- define "toolwarden.labels" -}}
app.kubernetes.io/name: toolwarden
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "toolwarden.selectorLabels" -}}
app.kubernetes.io/name: toolwarden
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "toolwarden.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "toolwarden.workerImage" -}}
{{- $tag := .Values.worker.image.tag | default .Chart.AppVersion -}}
{{- if .Values.worker.image.digest -}}
{{- printf "%s@%s" .Values.worker.image.repository .Values.worker.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.worker.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
"auto" means: on when the cluster serves the Prometheus Operator's API.
*/}}
{{- define "toolwarden.serviceMonitorEnabled" -}}
{{- $v := .Values.serviceMonitor.enabled -}}
{{- if or (eq (toString $v) "true") (and (eq (toString $v) "auto") (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) -}}
true
{{- end -}}
{{- end -}}

{{- define "toolwarden.prometheusRuleEnabled" -}}
{{- $v := .Values.prometheusRule.enabled -}}
{{- if or (eq (toString $v) "true") (and (eq (toString $v) "auto") (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) -}}
true
{{- end -}}
{{- end -}}

{{/*
Pod and container security contexts: Pod Security Standard "restricted" plus a read-only root.
*/}}
{{- define "toolwarden.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "toolwarden.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Default anti-affinity: prefer one replica per node. Arguments: (dict "ctx" $ "component" "gateway").
*/}}
{{- define "toolwarden.antiAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "toolwarden.selectorLabels" .ctx | nindent 12 }}
            app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
RBAC from a file under files/rbac/ (a copy of deploy/rbac/<component>.yaml, kept identical by
scripts/check-chart.sh): its ClusterRoles and Roles, with their rules unchanged, bound to the chart's
ServiceAccount. Names keep the file's suffix after "toolwarden". Arguments:
(dict "ctx" $ "component" "gateway" "serviceAccount" NAME).
*/}}
{{- define "toolwarden.rbacFromFile" -}}
{{- $ctx := .ctx -}}
{{- $component := .component -}}
{{- $sa := .serviceAccount -}}
{{- $fullname := include "toolwarden.fullname" $ctx -}}
{{- $file := printf "files/rbac/%s.yaml" $component -}}
{{- $text := $ctx.Files.Get $file -}}
{{- if not $text }}{{ fail (printf "chart file %s is missing" $file) }}{{ end -}}
{{- range $doc := regexSplit "(?m)^---[ \t]*$" $text -1 }}
{{- $obj := fromYaml $doc }}
{{- if and $obj (hasKey $obj "kind") (has $obj.kind (list "ClusterRole" "Role")) }}
{{- $name := printf "%s%s" $fullname (trimPrefix "toolwarden" $obj.metadata.name) }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ $obj.kind }}
metadata:
  name: {{ $name }}
  {{- if eq $obj.kind "Role" }}
  namespace: {{ $ctx.Release.Namespace }}
  {{- end }}
  labels:
    {{- include "toolwarden.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
rules:
  {{- toYaml $obj.rules | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ $obj.kind }}Binding
metadata:
  name: {{ $name }}
  {{- if eq $obj.kind "Role" }}
  namespace: {{ $ctx.Release.Namespace }}
  {{- end }}
  labels:
    {{- include "toolwarden.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {{ $obj.kind }}
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ $sa }}
    namespace: {{ $ctx.Release.Namespace }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Egress to cluster DNS and the API server. Argument: the root context.
*/}}
{{- define "toolwarden.egressDnsAndApi" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .Values.clusterDns.namespace }}
      podSelector:
        matchLabels:
          {{- toYaml .Values.clusterDns.podLabels | nindent 10 }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
- to:
    {{- range .Values.networkPolicy.apiServer.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- range .Values.networkPolicy.apiServer.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end -}}

{{/*
OTEL_* variables of a container when tracing is on (docs/tracing.md); `service` is its service.name.
*/}}
{{- define "toolwarden.tracingEnv" -}}
{{- $t := .root.Values.tracing -}}
{{- if $t.enabled }}
{{- if not $t.endpoint }}
{{- fail "tracing.enabled needs tracing.endpoint: the collector's OTLP/HTTP base URL, such as http://otel-collector.observability:4318" }}
{{- end }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $t.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: http/protobuf
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $t.sampler | quote }}
{{- with $t.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- with $t.headersSecret }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: headers
{{- end }}
{{- end }}
{{- end -}}

{{/*
NetworkPolicy egress to the trace collector, when tracing is on.
*/}}
{{- define "toolwarden.egressTracing" -}}
{{- $t := .Values.tracing -}}
{{- if $t.enabled }}
# The OpenTelemetry collector (tracing.collectorPeers, or anywhere when empty), on its OTLP/HTTP port.
- ports:
    - {protocol: TCP, port: {{ $t.collectorPort }}}
  {{- with $t.collectorPeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}
