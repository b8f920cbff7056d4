{{/*
Names and labels.
*/}}
{{- define "helix.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "helix.fullname" -}}
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

{{- define "helix.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "helix.selectorLabels" -}}
app.kubernetes.io/name: {{ include "helix.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "helix.labels" -}}
helm.sh/chart: {{ include "helix.chart" . }}
{{ include "helix.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: helix
{{- end }}

{{/* Labels of one service's objects; context: dict "root" $ "svc" <entry of helix.services> */}}
{{- define "helix.componentSelectorLabels" -}}
{{ include "helix.selectorLabels" .root }}
app.kubernetes.io/component: {{ .svc.name }}
{{- end }}

{{- define "helix.componentLabels" -}}
{{ include "helix.labels" .root }}
app.kubernetes.io/component: {{ .svc.name }}
{{- end }}

{{/* <fullname>-<service>: the Service's name, hence the host in HELIX_<SERVICE>_URL */}}
{{- define "helix.componentName" -}}
{{- printf "%s-%s" (include "helix.fullname" .root) .svc.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The services of deploy/fleet.json, in its order: name (the role of `hx serve` and the
Service suffix), key (its block in values.yaml), env (the HELIX_<env>_URL endpoint
variable), localIndex (keeps an index on disk: a StatefulSet with a volume per replica).
*/}}
{{- define "helix.services" -}}
- {name: storage, key: storage, env: STORAGE, localIndex: false}
- {name: search, key: search, env: SEARCH, localIndex: true}
- {name: graph, key: graph, env: GRAPH, localIndex: true}
- {name: llm-router, key: llmRouter, env: LLM_ROUTER, localIndex: false}
- {name: orchestrator, key: orchestrator, env: ORCHESTRATOR, localIndex: false}
- {name: jobs, key: jobs, env: JOBS, localIndex: false}
- {name: notifications, key: notifications, env: NOTIFICATIONS, localIndex: false}
- {name: gateway, key: gateway, env: GATEWAY, localIndex: false}
{{- end }}

{{/* The ports of deploy/fleet.json */}}
{{- define "helix.grpcPort" -}}50051{{- end }}
{{- define "helix.metricsPort" -}}9464{{- end }}
{{- define "helix.gatewayPort" -}}9470{{- end }}

{{/* Provider and integration keys (the seed's list); llm-router and orchestrator get them */}}
{{- define "helix.providerKeyNames" -}}
- ANTHROPIC_API_KEY
- OPENAI_API_KEY
- GOOGLE_API_KEY
- XAI_API_KEY
- DEEPSEEK_API_KEY
- OPENROUTER_API_KEY
- MISTRAL_API_KEY
- TOGETHER_API_KEY
- FIREWORKS_API_KEY
- PERPLEXITY_API_KEY
- CLOUDFLARE_API_KEY
- CLOUDFLARE_ACCOUNT_ID
- VENICE_API_KEY
- COHERE_API_KEY
- AWS_ACCESS_KEY_ID
- AWS_SECRET_ACCESS_KEY
- AWS_DEFAULT_REGION
- COMPOSIO_API_KEY
{{- end }}

{{/* The services that get the provider keys */}}
{{- define "helix.providerKeyConsumers" -}}
- llm-router
- orchestrator
{{- end }}

{{- define "helix.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "helix.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "helix.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* true when the chart renders the fleet (mode fleet), else the embedded pod */}}
{{- define "helix.fleet" -}}
{{- if eq .Values.mode "fleet" }}true{{ end }}
{{- end }}

{{/* The embedded pod's volume claim: persistence.existingClaim, or the chart's */}}
{{- define "helix.embeddedClaimName" -}}
{{- default (printf "%s-data" (include "helix.fullname" .)) .Values.embedded.persistence.existingClaim }}
{{- end }}

{{/* The Secret with the admin and provider keys: the chart's, or existingSecret */}}
{{- define "helix.secretName" -}}
{{- default (include "helix.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* The Secret holding the fleet token: grpcToken.existingSecret, or the chart's */}}
{{- define "helix.grpcTokenSecretName" -}}
{{- default (printf "%s-grpc-token" (include "helix.fullname" .)) .Values.grpcToken.existingSecret }}
{{- end }}

{{- define "helix.grpcTokenSecretKey" -}}
{{- if .Values.grpcToken.existingSecret }}
{{- .Values.grpcToken.existingSecretKey }}
{{- else }}
{{- "grpc.token" }}
{{- end }}
{{- end }}

{{/* Where every pod finds the fleet token (deploy/fleet.json HELIX_GRPC_TOKEN_FILE) */}}
{{- define "helix.grpcTokenDir" -}}/run/secrets/helix{{- end }}

{{/* Where HELIX_DATABASE_URL comes from: database.existingSecret, or the chart's Secret */}}
{{- define "helix.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- $_ := required "set database.url (postgres://USER:PASSWORD@HOST:5432/DB) or database.existingSecret" .Values.database.url }}
{{- printf "%s-database" (include "helix.fullname" .) }}
{{- end }}
{{- end }}

{{- define "helix.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else }}
{{- "HELIX_DATABASE_URL" }}
{{- end }}
{{- end }}

{{/*
The environment every process shares (deploy/fleet.json common_env, endpoints pointing
at this release's Services), as a YAML map: the ConfigMap's data, and inline in the
migration Job (a pre-install hook runs before the ConfigMap exists). HELIX_DATABASE_URL
comes from a Secret, never from here.
*/}}
{{- define "helix.commonEnv" -}}
HELIX_HOME: /data
HELIX_NATS_URL: {{ .Values.nats.url | quote }}
HELIX_QDRANT_URL: {{ .Values.qdrant.url | quote }}
HELIX_GRPC_ADDR: {{ printf "0.0.0.0:%s" (include "helix.grpcPort" .) | quote }}
HELIX_METRICS_ADDR: {{ printf "0.0.0.0:%s" (include "helix.metricsPort" .) | quote }}
HELIX_GRPC_TOKEN_FILE: {{ printf "%s/grpc.token" (include "helix.grpcTokenDir" .) | quote }}
HELIX_LOG_FORMAT: {{ .Values.log.format | quote }}
HELIX_LOG: {{ .Values.log.level | quote }}
{{- range $svc := include "helix.services" . | fromYamlArray }}
HELIX_{{ $svc.env }}_URL: {{ printf "http://%s:%s" (include "helix.componentName" (dict "root" $ "svc" $svc)) (include "helix.grpcPort" $) | quote }}
{{- end }}
HELIX_MIGRATE: {{ ternary "false" "true" .Values.migrations.enabled | quote }}
{{- include "helix.settingsEnv" . }}
{{- end }}

{{/*
The environment of the embedded pod (mode embedded): `hx up` runs every service in one
process, so there are no endpoints to name; no HELIX_DATABASE_URL, HELIX_NATS_URL or
HELIX_QDRANT_URL, so SQLite, the in-process bus and the embedded vector index in
HELIX_HOME (the volume claim) are used; no HELIX_MIGRATE, so each service migrates its
own schema at start. The listeners bind every interface for the probes and the Service;
gRPC demands the fleet token, as in the fleet.
*/}}
{{- define "helix.embeddedEnv" -}}
HELIX_HOME: /data
HELIX_GRPC_ADDR: {{ printf "0.0.0.0:%s" (include "helix.grpcPort" .) | quote }}
HELIX_METRICS_ADDR: {{ printf "0.0.0.0:%s" (include "helix.metricsPort" .) | quote }}
HELIX_GATEWAY_ADDR: {{ printf "0.0.0.0:%s" (include "helix.gatewayPort" .) | quote }}
HELIX_GRPC_TOKEN_FILE: {{ printf "%s/grpc.token" (include "helix.grpcTokenDir" .) | quote }}
HELIX_LOG_FORMAT: {{ .Values.log.format | quote }}
HELIX_LOG: {{ .Values.log.level | quote }}
{{- include "helix.settingsEnv" . }}
{{- end }}

{{/* The Helix settings both shapes share (config, otel): empty values are left out */}}
{{- define "helix.settingsEnv" -}}
{{- with .Values.config }}
{{- if .env }}
HELIX_ENV: {{ .env | quote }}
{{- end }}
{{- if .corsOrigins }}
HELIX_CORS_ORIGINS: {{ .corsOrigins | quote }}
{{- end }}
{{- if .dailyBudget }}
HELIX_DAILY_BUDGET: {{ .dailyBudget | toString | quote }}
{{- end }}
{{- if .budgetAction }}
HELIX_BUDGET_ACTION: {{ .budgetAction | quote }}
{{- end }}
{{- if .toolMode }}
HELIX_TOOL_MODE: {{ .toolMode | quote }}
{{- end }}
{{- end }}
{{- if .Values.otel.endpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ .Values.otel.endpoint | quote }}
{{- end }}
{{- if .Values.otel.resourceAttributes }}
OTEL_RESOURCE_ATTRIBUTES: {{ .Values.otel.resourceAttributes | quote }}
{{- end }}
{{- end }}

{{/* The shared probe timings merged with a service's overrides; context: dict "root" "cfg" */}}
{{- define "helix.probeTimings" -}}
{{- $probes := deepCopy .root.Values.probes }}
{{- $probes = mergeOverwrite $probes (deepCopy (default dict .cfg.probes)) }}
{{- toYaml $probes }}
{{- end }}

{{/* A rolling restart when configuration or secrets change */}}
{{- define "helix.configChecksum" -}}
{{- $config := include (print .Template.BasePath "/configmap.yaml") . }}
{{- $secret := include (print .Template.BasePath "/secret.yaml") . }}
{{- printf "%s\n%s" $config $secret | sha256sum }}
{{- end }}
