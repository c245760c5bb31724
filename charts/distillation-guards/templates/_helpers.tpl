{{/* Names, labels and the few derived values every template shares. */}}

{{- define "dguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name; the release name alone when it already contains the chart name. */}}
{{- define "dguard.fullname" -}}
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

{{- define "dguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dguard.labels" -}}
helm.sh/chart: {{ include "dguard.chart" . }}
{{ include "dguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: distillation-guards
{{- end }}

{{- define "dguard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "dguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dguard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: the user's, or the one this chart creates. */}}
{{- define "dguard.s3SecretName" -}}
{{- if .Values.s3.existingSecret }}
{{- .Values.s3.existingSecret }}
{{- else }}
{{- printf "%s-s3" (include "dguard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "dguard.envConfigMapName" -}}
{{- printf "%s-env" (include "dguard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dguard.setupJobName" -}}
{{- printf "%s-setup" (include "dguard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dguard.pushgatewayName" -}}
{{- printf "%s-pushgateway" (include "dguard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where stages push metrics: an explicit URL wins, else the chart's own Pushgateway when enabled, else none. */}}
{{- define "dguard.pushgatewayUrl" -}}
{{- if .Values.pushgateway.url }}
{{- .Values.pushgateway.url }}
{{- else if .Values.pushgateway.enabled }}
{{- printf "http://%s.%s.svc:%d" (include "dguard.pushgatewayName" .) .Release.Namespace (int .Values.pushgateway.port) }}
{{- end }}
{{- end }}

{{/* Cross-field checks the schema cannot phrase clearly; each fails with one line naming the value. */}}
{{- define "dguard.validate" -}}
{{- if and (not .Values.s3.existingSecret) (or (not .Values.s3.accessKeyId) (not .Values.s3.secretAccessKey)) }}
{{- fail "s3: set s3.existingSecret to a Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or set both s3.accessKeyId and s3.secretAccessKey" }}
{{- end }}
{{- if and .Values.s3.existingSecret (or .Values.s3.accessKeyId .Values.s3.secretAccessKey) }}
{{- fail (printf "s3: existingSecret %q and accessKeyId/secretAccessKey are both set; use one of them" .Values.s3.existingSecret) }}
{{- end }}
{{- if .Values.reharden.enabled }}
{{- $rel := printf "%s/" (trimSuffix "/" .Values.reharden.releasesPrefix) }}
{{- $hard := printf "%s/" (trimSuffix "/" .Values.reharden.hardenedPrefix) }}
{{- if or (hasPrefix $rel $hard) (hasPrefix $hard $rel) }}
{{- fail (printf "reharden: hardenedPrefix %q and releasesPrefix %q overlap; hardened models must land outside the releases prefix and vice versa" .Values.reharden.hardenedPrefix .Values.reharden.releasesPrefix) }}
{{- end }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) .Values.rbac.create (not .Values.serviceAccount.name) }}
{{- fail "rbac.create binds a Role to the Job's ServiceAccount: set serviceAccount.name when serviceAccount.create is false" }}
{{- end }}
{{- end }}

{{/* One container of the setup Job: the dguard image running `dguard <args>` with no write access but $HOME and /tmp. */}}
{{- define "dguard.setupContainer" -}}
image: {{ include "dguard.image" .root }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
args:
  {{- toYaml .args | nindent 2 }}
env:
  - name: KFP_HOST
    value: {{ .root.Values.kfp.host | quote }}
  {{- if .root.Values.kfp.serviceAccountToken.enabled }}
  - name: KF_PIPELINES_SA_TOKEN_PATH
    value: /var/run/secrets/kubeflow/pipelines/token
  {{- end }}
securityContext:
  {{- toYaml .root.Values.securityContext | nindent 2 }}
resources:
  {{- toYaml .root.Values.setupJob.resources | nindent 2 }}
volumeMounts:
  - name: home
    mountPath: /home/dguard
  - name: tmp
    mountPath: /tmp
  {{- if .root.Values.kfp.serviceAccountToken.enabled }}
  - name: kfp-token
    mountPath: /var/run/secrets/kubeflow/pipelines
    readOnly: true
  {{- end }}
{{- end }}
