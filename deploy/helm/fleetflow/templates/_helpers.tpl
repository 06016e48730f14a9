{{/* Name of the chart's objects: the release name, with "fleetflow" added unless it is already in it. */}}
{{- define "fleetflow.fullname" -}}
{{- if contains "fleetflow" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-fleetflow" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fleetflow.labels" -}}
app.kubernetes.io/name: fleetflow
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component (gateway, worker, migrate, temporal-setup): pass (list . "gateway"). */}}
{{- define "fleetflow.selector" -}}
app.kubernetes.io/name: fleetflow
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "fleetflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "fleetflow.workerImage" -}}
{{- printf "%s:%s" .Values.workerImage.repository (.Values.workerImage.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Pod settings shared by every pod: service account, pull secrets, security context. */}}
{{- define "fleetflow.podCommon" -}}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* FLEETFLOW_DATABASE_URL from the database Secret; pass (list . "key") to read another key. */}}
{{- define "fleetflow.databaseEnv" -}}
{{- $ := . -}}{{- $key := "" -}}
{{- if kindIs "slice" . }}{{ $ = index . 0 }}{{ $key = index . 1 }}{{ end -}}
- name: FLEETFLOW_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret: the Secret with the registry's URL" $.Values.database.existingSecret }}
      key: {{ $key | default $.Values.database.urlKey }}
{{- end -}}

{{/* Temporal's address, namespace and task queue; TLS files when tlsSecret is set. */}}
{{- define "fleetflow.temporalEnv" -}}
{{- with .Values.temporal.address }}
- name: TEMPORAL_ADDRESS
  value: {{ . | quote }}
{{- end }}
{{- with .Values.temporal.namespace }}
- name: TEMPORAL_NAMESPACE
  value: {{ . | quote }}
{{- end }}
{{- if .Values.temporal.tlsSecret }}
- name: TEMPORAL_TLS
  value: "true"
- name: TEMPORAL_TLS_CLIENT_CERT_PATH
  value: /etc/fleetflow/temporal-tls/tls.crt
- name: TEMPORAL_TLS_CLIENT_KEY_PATH
  value: /etc/fleetflow/temporal-tls/tls.key
- name: TEMPORAL_TLS_SERVER_CA_CERT_PATH
  value: /etc/fleetflow/temporal-tls/ca.crt
{{- end }}
{{- end -}}

{{/* envFrom the optional Temporal Secret (TEMPORAL_API_KEY, ...). */}}
{{- define "fleetflow.temporalEnvFrom" -}}
{{- with .Values.temporal.existingSecret }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end -}}

{{/* FLEETFLOW_NATS_URL and, with caSecret, FLEETFLOW_NATS_CA. */}}
{{- define "fleetflow.natsEnv" -}}
- name: FLEETFLOW_NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "nats.existingSecret: the Secret with the NATS URL" .Values.nats.existingSecret }}
      key: {{ .Values.nats.urlKey }}
{{- if .Values.nats.caSecret }}
- name: FLEETFLOW_NATS_CA
  value: /etc/fleetflow/nats-ca/ca.crt
{{- end }}
{{- end -}}

{{/* Whole seconds of a duration written as Ns, Nm or Nh (worker.stopTimeout), for terminationGracePeriodSeconds. */}}
{{- define "fleetflow.seconds" -}}
{{- $d := toString . -}}
{{- if hasSuffix "h" $d -}}{{ mul (trimSuffix "h" $d | int) 3600 }}
{{- else if hasSuffix "m" $d -}}{{ mul (trimSuffix "m" $d | int) 60 }}
{{- else if hasSuffix "s" $d -}}{{ trimSuffix "s" $d | int }}
{{- else -}}{{ fail (printf "worker.stopTimeout %q: write it as Ns, Nm or Nh" $d) }}
{{- end -}}
{{- end -}}
