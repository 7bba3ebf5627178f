{{/*
Names. Service names must be DNS-1035 labels (63 characters), so every component name is cut
to leave room for its suffix.
*/}}
{{- define "segserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "segserve.fullname" -}}
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

{{- define "segserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "segserve.triton.fullname" -}}
{{- printf "%s-triton" (include "segserve.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "segserve.triton.headlessName" -}}
{{- printf "%s-triton-headless" (include "segserve.fullname" . | trunc 47 | trimSuffix "-") }}
{{- end }}

{{- define "segserve.orchestrator.fullname" -}}
{{- printf "%s-orchestrator" (include "segserve.fullname" . | trunc 50 | trimSuffix "-") }}
{{- end }}

{{- define "segserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "segserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Labels.
*/}}
{{- define "segserve.labels" -}}
helm.sh/chart: {{ include "segserve.chart" . }}
{{ include "segserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: segserve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "segserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "segserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "segserve.triton.labels" -}}
{{ include "segserve.labels" . }}
app.kubernetes.io/component: triton
{{- end }}

{{- define "segserve.triton.selectorLabels" -}}
{{ include "segserve.selectorLabels" . }}
app.kubernetes.io/component: triton
{{- end }}

{{- define "segserve.orchestrator.labels" -}}
{{ include "segserve.labels" . }}
app.kubernetes.io/component: orchestrator
{{- end }}

{{- define "segserve.orchestrator.selectorLabels" -}}
{{ include "segserve.selectorLabels" . }}
app.kubernetes.io/component: orchestrator
{{- end }}

{{/*
The Secret holding the HMAC key of image and video ids: the user's, or the one the chart creates.
*/}}
{{- define "segserve.orchestrator.idKeySecret" -}}
{{- default (printf "%s-id-key" (include "segserve.orchestrator.fullname" .)) .Values.orchestrator.idKey.existingSecret }}
{{- end }}

{{/*
Images.
*/}}
{{- define "segserve.orchestrator.image" -}}
{{- printf "%s:%s" .Values.orchestrator.image.repository (default .Chart.AppVersion .Values.orchestrator.image.tag) }}
{{- end }}

{{/*
segserve's Triton image (docker/triton.Dockerfile); the tag defaults to <appVersion>-<NGC release>.
*/}}
{{- define "segserve.triton.image" -}}
{{- $img := .Values.triton.image }}
{{- printf "%s:%s" $img.repository (default (printf "%s-24.10" .Chart.AppVersion) $img.tag) }}
{{- end }}

{{- define "segserve.repositoryJob.image" -}}
{{- $img := .Values.triton.modelRepository.job.image }}
{{- if $img.repository }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- else }}
{{- include "segserve.orchestrator.image" . }}
{{- end }}
{{- end }}

{{- define "segserve.initExport.image" -}}
{{- $img := .Values.triton.modelRepository.initExport.image }}
{{- if $img.repository }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- else }}
{{- include "segserve.orchestrator.image" . }}
{{- end }}
{{- end }}

{{/*
Security contexts: the Kubernetes "restricted" Pod Security Standard.
Call with (dict "ctx" .Values.<component>.securityContext).
*/}}
{{- define "segserve.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .ctx.runAsUser }}
runAsGroup: {{ .ctx.runAsGroup }}
fsGroup: {{ .ctx.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "segserve.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .ctx.runAsUser }}
runAsGroup: {{ .ctx.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The value handed to tritonserver --model-repository.
*/}}
{{- define "segserve.triton.modelRepository" -}}
{{- $repo := .Values.triton.modelRepository }}
{{- if eq $repo.mode "objectStore" }}
{{- required "triton.modelRepository.objectStore.url is required in objectStore mode" $repo.objectStore.url }}
{{- else if eq $repo.mode "pvc" }}
{{- printf "/models/%s" (trimAll "/" $repo.pvc.path) | trimSuffix "/" }}
{{- else if eq $repo.mode "job" }}
{{- printf "/models/builds/%s/repository" (include "segserve.repositoryJob.buildId" .) }}
{{- else }}
{{- print "/models/repository" }}
{{- end }}
{{- end }}

{{/*
PodDisruptionBudget body. Call with the component's pdb values.
*/}}
{{- define "segserve.pdbBudget" -}}
{{- if not (kindIs "invalid" .minAvailable) }}
minAvailable: {{ if kindIs "string" .minAvailable }}{{ .minAvailable | quote }}{{ else }}{{ .minAvailable }}{{ end }}
{{- else }}
maxUnavailable: {{ if kindIs "string" .maxUnavailable }}{{ .maxUnavailable | quote }}{{ else }}{{ .maxUnavailable }}{{ end }}
{{- end }}
{{- end }}

{{/*
Prometheus peer for the network policies.
*/}}
{{- define "segserve.prometheusPeer" -}}
- namespaceSelector:
    {{- toYaml .Values.networkPolicy.prometheus.namespaceSelector | nindent 4 }}
  {{- with .Values.networkPolicy.prometheus.podSelector }}
  podSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
Repository Job (mode job).
buildId: hash of everything that decides the repository's content (image, families, checkpoints,
arguments, environment). It names the build directory /models/builds/<buildId> on the claim and is
pinned in the Triton pod template, so new inputs roll Triton onto the new build once it is complete.
*/}}
{{- define "segserve.repositoryJob.buildId" -}}
{{- $job := .Values.triton.modelRepository.job }}
{{- $inputs := dict "layout" 1 "image" (include "segserve.repositoryJob.image" .) "families" $job.families "target" $job.target "checkpoints" $job.checkpoints "expectSha256" $job.expectSha256 "exportArgs" $job.exportArgs "buildRepoArgs" $job.buildRepoArgs "env" $job.env "envFrom" $job.envFrom }}
{{- toJson $inputs | sha256sum | trunc 16 }}
{{- end }}

{{- define "segserve.repositoryJob.claimName" -}}
{{- default (printf "%s-model-repository" (include "segserve.fullname" . | trunc 46 | trimSuffix "-")) .Values.triton.modelRepository.job.storage.existingClaim }}
{{- end }}

{{/*
Job name: a Job's pod template is immutable, so the name carries a hash of the whole template
(which includes the buildId): changed inputs or Job settings give a new Job, unchanged ones the
same Job, which Helm leaves alone.
*/}}
{{- define "segserve.repositoryJob.name" -}}
{{- printf "%s-repo-%s" (include "segserve.fullname" . | trunc 47 | trimSuffix "-") (include "segserve.repositoryJob.podTemplate" . | sha256sum | trunc 10) }}
{{- end }}
