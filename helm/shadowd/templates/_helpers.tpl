{{/* Names, labels and the pieces every pod shares. */}}

{{- define "shadowd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name. 47 characters at most: KubeRay appends a 6-character suffix to a
RayService's name for its RayCluster, whose name may not exceed 53.
*/}}
{{- define "shadowd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "shadowd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shadowd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shadowd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shadowd.labels" -}}
helm.sh/chart: {{ include "shadowd.chart" . }}
{{ include "shadowd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shadowd
{{- end }}

{{- define "shadowd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shadowd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "shadowd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Fixed ports inside the pods; the chart writes them into the config too. */}}
{{- define "shadowd.httpPort" -}}8000{{- end }}
{{- define "shadowd.metricsPort" -}}9100{{- end }}
{{- define "shadowd.rayMetricsPort" -}}8080{{- end }}
{{- define "shadowd.dashboardPort" -}}8265{{- end }}
{{- define "shadowd.configDir" -}}/etc/shadowd{{- end }}

{{- define "shadowd.kafkaSaslUserEnv" -}}SHADOWD_KAFKA_SASL_USERNAME{{- end }}
{{- define "shadowd.kafkaSaslPasswordEnv" -}}SHADOWD_KAFKA_SASL_PASSWORD{{- end }}

{{/*
The shadowd config file: the values' `config` plus the keys that must agree
with this chart's mounts, ports and Secrets. Works on a deep copy so that
.Values stay untouched for the other templates.
*/}}
{{- define "shadowd.config" -}}
{{- if not .Values.auth.existingSecret }}
{{- fail "auth.existingSecret is required: the chart serves on 0.0.0.0, and shadowd refuses that without API tokens. Create a Secret whose key tokens.yaml holds a YAML list of {name, token, scopes} (docs/security.md) and name it in auth.existingSecret" }}
{{- end }}
{{- $cfg := deepCopy .Values.config }}
{{- $auth := (get $cfg "auth") | default dict }}
{{- $_ := set $auth "tokens_file" (printf "%s/%s" .Values.auth.mountPath .Values.auth.key) }}
{{- $_ = set $cfg "auth" $auth }}
{{- $_ = set $cfg "data_dir" .Values.persistence.mountPath }}
{{- $serving := (get $cfg "serving") | default dict }}
{{- $_ = set $serving "host" "0.0.0.0" }}
{{- $_ = set $serving "port" (include "shadowd.httpPort" . | int) }}
{{- if eq .Values.mode "rayservice" }}
{{- /* the hub holds the state: place it on the head, the one pod with the data volume */}}
{{- $_ = set $serving "hub_resources" (dict "shadowd_state" 0.01) }}
{{- end }}
{{- $_ = set $cfg "serving" $serving }}
{{- $metrics := (get $cfg "metrics") | default dict }}
{{- $_ = set $metrics "host" "0.0.0.0" }}
{{- $_ = set $metrics "port" (include "shadowd.metricsPort" . | int) }}
{{- $_ = set $cfg "metrics" $metrics }}
{{- if or .Values.kafka.sasl.existingSecret .Values.kafka.tls.existingSecret }}
{{- $annotations := (get $cfg "annotations") | default dict }}
{{- $sink := (get $annotations "sink") | default dict }}
{{- $kafka := and (eq (get $sink "type" | default "") "kafka") $sink }}
{{- if and (not $kafka) (not .Values.existingConfigSecret) }}
{{- fail "kafka.sasl.existingSecret / kafka.tls.existingSecret are set, but config.annotations.sink is not type kafka: set config.annotations.sink to {type: kafka, bootstrap_servers: [...]}" }}
{{- end }}
{{- if and $kafka .Values.kafka.sasl.existingSecret }}
{{- $_ = set $kafka "sasl_username_env" (include "shadowd.kafkaSaslUserEnv" .) }}
{{- $_ = set $kafka "sasl_password_env" (include "shadowd.kafkaSaslPasswordEnv" .) }}
{{- end }}
{{- if and $kafka .Values.kafka.tls.existingSecret }}
{{- $tls := .Values.kafka.tls }}
{{- $_ = set $kafka "ssl_cafile" (printf "%s/%s" $tls.mountPath $tls.caKey) }}
{{- if $tls.certKey }}
{{- $_ = set $kafka "ssl_certfile" (printf "%s/%s" $tls.mountPath $tls.certKey) }}
{{- end }}
{{- if $tls.keyKey }}
{{- $_ = set $kafka "ssl_keyfile" (printf "%s/%s" $tls.mountPath $tls.keyKey) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* Pod-level security context: Pod Security Standards "restricted". */}}
{{- define "shadowd.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security context: Pod Security Standards "restricted", read-only root. */}}
{{- define "shadowd.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Scheduling and identity shared by every pod. Arg: dict "root" $ "apiToken" BOOL.
Only the Ray head with the in-tree autoscaler needs an API token (its sidecar
scales the worker pods; KubeRay binds the Role to this ServiceAccount).
*/}}
{{- define "shadowd.podCommon" -}}
{{- $apiToken := .apiToken }}
{{- with .root }}
serviceAccountName: {{ include "shadowd.serviceAccountName" . }}
automountServiceAccountToken: {{ $apiToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "shadowd.podSecurityContext" . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod template metadata. Arg: dict "root" $ "component" NAME. */}}
{{- define "shadowd.podMetadata" -}}
{{- $root := .root -}}
labels:
  {{- include "shadowd.selectorLabels" $root | nindent 2 }}
  app.kubernetes.io/component: {{ .component }}
  {{- with $root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include "shadowd.config" $root | sha256sum }}
  {{- with $root.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Environment of every shadowd/Ray container: Secrets by reference only. */}}
{{- define "shadowd.env" -}}
# Caches (torch, Ray's temp files) go to the writable /tmp volume; the root filesystem is read-only.
- name: HOME
  value: /tmp
{{- with .Values.kafka.sasl.existingSecret }}
- name: {{ include "shadowd.kafkaSaslUserEnv" $ }}
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.kafka.sasl.usernameKey }}
- name: {{ include "shadowd.kafkaSaslPasswordEnv" $ }}
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.kafka.sasl.passwordKey }}
{{- end }}
{{- with .Values.grafana.token.existingSecret }}
- name: GRAFANA_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.grafana.token.key }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Mounts: the only writable paths are /tmp (Ray's /tmp/ray too), /dev/shm and the data dir. */}}
{{- define "shadowd.volumeMounts" -}}
- name: config
  mountPath: {{ include "shadowd.configDir" . }}
  readOnly: true
- name: data
  mountPath: {{ .Values.persistence.mountPath }}
- name: tmp
  mountPath: /tmp
- name: shm
  mountPath: /dev/shm
{{- if .Values.models.existingClaim }}
- name: models
  mountPath: {{ .Values.models.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: {{ .Values.kafka.tls.mountPath }}
  readOnly: true
{{- end }}
- name: auth-tokens
  mountPath: {{ .Values.auth.mountPath }}
  readOnly: true
{{- end }}

{{/*
Volumes. Args: dict "root" $ "persistent" BOOL "shmSize" QUANTITY.
Only types the "restricted" profile allows: configMap, secret, emptyDir, persistentVolumeClaim.
*/}}
{{- define "shadowd.volumes" -}}
{{- $root := .root -}}
- name: config
  {{- if $root.Values.existingConfigSecret }}
  secret:
    secretName: {{ $root.Values.existingConfigSecret }}
    items:
      - key: config.yaml
        path: config.yaml
  {{- else }}
  configMap:
    name: {{ include "shadowd.fullname" $root }}-config
  {{- end }}
- name: data
  {{- if and .persistent $root.Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ $root.Values.persistence.existingClaim | default (printf "%s-data" (include "shadowd.fullname" $root)) }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: tmp
  emptyDir: {}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shmSize }}
{{- with $root.Values.models.existingClaim }}
- name: models
  persistentVolumeClaim:
    claimName: {{ . }}
    readOnly: true
{{- end }}
{{- with $root.Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      {{- range $key := list $root.Values.kafka.tls.caKey $root.Values.kafka.tls.certKey $root.Values.kafka.tls.keyKey }}
      {{- if $key }}
      - key: {{ $key }}
        path: {{ $key }}
      {{- end }}
      {{- end }}
{{- end }}
- name: auth-tokens
  secret:
    secretName: {{ $root.Values.auth.existingSecret }}
    # Owner root, group fsGroup: readable by the shadowd user, by no one else.
    defaultMode: 0440
    items:
      - key: {{ $root.Values.auth.key }}
        path: {{ $root.Values.auth.key }}
{{- end }}
