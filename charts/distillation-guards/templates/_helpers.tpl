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

{{/* The CUDA image of the runs' GPU tasks: image.repository with image.gpuTag, or <tag>-cuda. */}}
{{- define "dguard.gpuImage" -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-cuda" (default .Chart.AppVersion .Values.image.tag)) .Values.image.gpuTag) }}
{{- end }}

{{/* `dguard upload/schedule --option ...` that compile cluster settings into the uploaded pipelines (a YAML list). */}}
{{- define "dguard.compileOptions" -}}
{{- $opts := list }}
{{- with .Values.imagePullSecrets }}
{{- $names := list }}
{{- range . }}{{ $names = append $names .name }}{{ end }}
{{- $opts = concat $opts (list "--option" (printf "image_pull_secrets=%s" (toJson $names))) }}
{{- end }}
{{- toYaml $opts }}
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
{{- if and .Values.s3.workloadIdentity (or .Values.s3.existingSecret .Values.s3.accessKeyId .Values.s3.secretAccessKey) }}
{{- fail "s3: workloadIdentity takes credentials from the runs' ServiceAccount; unset s3.existingSecret, s3.accessKeyId and s3.secretAccessKey" }}
{{- end }}
{{- if and (not .Values.s3.workloadIdentity) (not .Values.s3.existingSecret) (or (not .Values.s3.accessKeyId) (not .Values.s3.secretAccessKey)) }}
{{- fail "s3: set s3.existingSecret to a Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or set both s3.accessKeyId and s3.secretAccessKey (or s3.workloadIdentity=true: IRSA / Workload Identity)" }}
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
{{- if and .Values.runServiceAccount.create (not .Values.reharden.runServiceAccount) }}
{{- fail "runServiceAccount.create: set reharden.runServiceAccount to the name of the account to create for the runs" }}
{{- end }}
{{- if and .Values.runServiceAccount.create .Values.s3.workloadIdentity (not (or .Values.runServiceAccount.awsRoleArn .Values.runServiceAccount.gcpServiceAccount .Values.runServiceAccount.annotations)) }}
{{- fail "runServiceAccount.create with s3.workloadIdentity: set runServiceAccount.awsRoleArn (IRSA) or runServiceAccount.gcpServiceAccount (GKE Workload Identity), else the runs have no S3 credentials" }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) .Values.rbac.create (not .Values.serviceAccount.name) }}
{{- fail "rbac.create binds a Role to the Job's ServiceAccount: set serviceAccount.name when serviceAccount.create is false" }}
{{- end }}
{{- end }}

{{/* Pod template of a hook Job: root, component, init and containers (lists of {name, args}). */}}
{{- define "dguard.jobPod" -}}
{{- $root := .root }}
metadata:
  labels:
    {{- include "dguard.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $annotations := $root.Values.podAnnotations | default dict }}
  {{- if not $root.Values.istio.sidecarInject }}
  {{- $annotations = merge (deepCopy $annotations) (dict "sidecar.istio.io/inject" "false") }}
  {{- end }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "dguard.serviceAccountName" $root }}
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- with .init }}
  initContainers:
    {{- range . }}
    - name: {{ .name }}
      {{- include "dguard.setupContainer" (dict "root" $root "args" .args) | nindent 6 }}
    {{- end }}
  {{- end }}
  containers:
    {{- range .containers }}
    - name: {{ .name }}
      {{- include "dguard.setupContainer" (dict "root" $root "args" .args) | nindent 6 }}
    {{- end }}
  volumes:
    - name: home
      emptyDir: {}
    - name: tmp
      emptyDir: {}
    {{- if $root.Values.kfp.serviceAccountToken.enabled }}
    - name: kfp-token
      projected:
        sources:
          - serviceAccountToken:
              path: token
              audience: {{ $root.Values.kfp.serviceAccountToken.audience | quote }}
              expirationSeconds: {{ $root.Values.kfp.serviceAccountToken.expirationSeconds }}
    {{- end }}
  {{- with $root.Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
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
