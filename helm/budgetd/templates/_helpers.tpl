{{- define "budgetd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "budgetd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of everything the chart makes, without a component. */}}
{{- define "budgetd.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "budgetd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "budgetd.labels" -}}
{{ include "budgetd.commonLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "budgetd.gatewayLabels" -}}
{{ include "budgetd.commonLabels" . }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "budgetd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "budgetd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "budgetd.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "budgetd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "budgetd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "budgetd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "budgetd.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "budgetd.policiesConfigMap" -}}
{{- default (printf "%s-policies" (include "budgetd.fullname" .)) .Values.existingPoliciesConfigMap -}}
{{- end -}}

{{/* The chart's own policy ConfigMap: user policies, the smoke-test org, an optional price table. */}}
{{- define "budgetd.ownsPolicies" -}}
{{- if not .Values.existingPoliciesConfigMap -}}true{{- end -}}
{{- end -}}

{{- define "budgetd.keysSecret" -}}
{{- default (printf "%s-keys" (include "budgetd.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "budgetd.smokeKeySecret" -}}
{{- printf "%s-smoke-key" (include "budgetd.fullname" .) -}}
{{- end -}}

{{/* Auth on needs keys: listed, in an existing Secret, or the smoke-test key. */}}
{{- define "budgetd.checkAuth" -}}
{{- if and .Values.auth.enabled (not .Values.auth.keys) (not .Values.auth.existingSecret) (not .Values.smokeTest.enabled) -}}
{{- fail "auth.enabled is true but no keys are given: set auth.keys (digests from `budgetd keys new`) or auth.existingSecret, or set auth.enabled=false explicitly (every caller may then act on every org)" -}}
{{- end -}}
{{- end -}}

{{/* "true" when budgets live in a Redis every replica shares. Without one, budgetd runs its
embedded in-memory store: a trial on one pod and one worker only (enforced here: several
processes would each keep their own budgets). */}}
{{- define "budgetd.redisConfigured" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret .Values.valkey.enabled -}}true{{- end -}}
{{- end -}}

{{- define "budgetd.checkStore" -}}
{{- if not (include "budgetd.redisConfigured" .) -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled (gt (int .Values.config.workers) 1) .Values.gateway.enabled -}}
{{- fail "several budgetd processes need a shared Redis: set redis.url or redis.existingSecret (or valkey.enabled=true for a trial). Without one, budgetd keeps budgets in one process's memory: replicaCount 1, config.workers 1, no autoscaling, no gateway." -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by the server and the gateway. */}}
{{- define "budgetd.env" -}}
- name: BUDGETD_HOST
  value: "0.0.0.0"
- name: BUDGETD_WORKERS
  value: {{ .Values.config.workers | quote }}
- name: BUDGETD_DURABILITY
  value: {{ .Values.config.durability | quote }}
- name: BUDGETD_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
- name: BUDGETD_ACCESS_LOG
  value: {{ .Values.config.accessLog | quote }}
- name: BUDGETD_TRACING
  value: {{ .Values.config.tracing | quote }}
- name: BUDGETD_POLICY_DIR
  value: /etc/budgetd/policies
{{- if .Values.pricingTable }}
- name: BUDGETD_PRICING_FILE
  value: /etc/budgetd/policies/pricing.yaml
{{- end }}
- name: BUDGETD_POLICY_POLL_S
  value: {{ .Values.config.policyPollSeconds | quote }}
- name: BUDGETD_SWEEP_INTERVAL_S
  value: {{ .Values.config.sweepIntervalSeconds | quote }}
- name: BUDGETD_REDIS_TIMEOUT_S
  value: {{ .Values.redis.timeoutSeconds | quote }}
{{- if (include "budgetd.redisConfigured" .) }}
- name: BUDGETD_REDIS_URL
{{- if .Values.redis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else if .Values.redis.url }}
  value: {{ .Values.redis.url | quote }}
{{- else }}
  value: {{ printf "redis://%s-valkey:6379/0" .Release.Name | quote }}
{{- end }}
{{- end }}
{{- if .Values.auth.enabled }}
- name: BUDGETD_KEYS_FILE
  value: /etc/budgetd/keys/{{ if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKey }}{{ else }}keys.yaml{{ end }}
{{- end }}
{{- if .Values.ledgerRetention.days }}
- name: BUDGETD_LEDGER_RETENTION_DAYS
  value: {{ .Values.ledgerRetention.days | quote }}
- name: BUDGETD_LEDGER_RETENTION_INTERVAL_S
  value: {{ .Values.ledgerRetention.intervalSeconds | quote }}
- name: BUDGETD_LEDGER_EXPORT_DIR
  value: /var/lib/budgetd/ledger
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "budgetd.volumeMounts" -}}
- name: policies
  mountPath: /etc/budgetd/policies
  readOnly: true
{{- if .Values.auth.enabled }}
- name: keys
  mountPath: /etc/budgetd/keys
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- if .Values.ledgerRetention.days }}
- name: ledger-export
  mountPath: /var/lib/budgetd/ledger
{{- end }}
{{- end -}}

{{/* Directories, not subPath mounts: a ConfigMap or Secret update swaps the ..data symlink and
budgetd, which polls the directory, sees it without a restart. */}}
{{- define "budgetd.volumes" -}}
- name: policies
  configMap:
    name: {{ include "budgetd.policiesConfigMap" . }}
{{- if .Values.auth.enabled }}
- name: keys
  secret:
    secretName: {{ include "budgetd.keysSecret" . }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.ledgerRetention.days }}
- name: ledger-export
  persistentVolumeClaim:
    claimName: {{ required "ledgerRetention.existingClaim is required when ledgerRetention.days > 0" .Values.ledgerRetention.existingClaim }}
{{- end }}
{{- end -}}

{{/* The chart-managed keys Secret: auth.keys plus ``extra`` entries. */}}
{{- define "budgetd.keysSecretManifest" -}}
{{- $root := .root }}
apiVersion: v1
kind: Secret
metadata:
  name: {{ include "budgetd.keysSecret" $root }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "budgetd.labels" $root | nindent 4 }}
type: Opaque
stringData:
  keys.yaml: |
    {{- dict "keys" (concat $root.Values.auth.keys .extra) | toYaml | nindent 4 }}
{{- end -}}
