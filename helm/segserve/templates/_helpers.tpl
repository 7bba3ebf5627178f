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
{{- $triton := .Values.triton }}
{{- $job := $triton.modelRepository.job }}
{{- $inputs := dict "layout" 1 "image" (include "segserve.repositoryJob.image" .) "families" $job.families "target" $job.target "checkpoints" $job.checkpoints "expectSha256" $job.expectSha256 "exportArgs" $job.exportArgs "buildRepoArgs" $job.buildRepoArgs "env" $job.env "envFrom" $job.envFrom }}
{{- /* Hub checkpoints: added only when set, so that existing builds keep their ids. */}}
{{- if $job.hub.checkpoints }}
{{- $_ := set $inputs "hub" (dict "checkpoints" $job.hub.checkpoints "allowUnpinned" $job.hub.allowUnpinned "endpoint" $job.hub.endpoint) }}
{{- end }}
{{- /* Added only off the default backend, so that onnxruntime builds keep their ids. */}}
{{- if eq $triton.graphBackend "tensorrt" }}
{{- $_ := set $inputs "graphBackend" (dict "backend" "tensorrt" "gpu" $triton.gpu.product "tensorrt" $triton.tensorrt) }}
{{- else if eq $triton.graphBackend "onnxruntime-trt" }}
{{- $cache := dict "backend" "onnxruntime-trt" "path" $triton.trtCache.path }}
{{- if eq $triton.trtCache.volume "claim" }}
{{- /* The Job creates the cache directory before the marker that Triton waits for. */}}
{{- $_ := set $cache "claimDir" (include "segserve.trt.key" .) }}
{{- end }}
{{- $_ := set $inputs "graphBackend" $cache }}
{{- else if eq $triton.graphBackend "openvino" }}
{{- $_ := set $inputs "graphBackend" (dict "backend" "openvino" "openvino" $triton.openvino) }}
{{- end }}
{{- toJson $inputs | sha256sum | trunc 16 }}
{{- end }}

{{/*
TensorRT: engines are valid for one GPU model and one TensorRT version; this key names what is
kept for them (timing cache, engine cache, artifacts).
*/}}
{{- define "segserve.trt.key" -}}
{{- printf "%s-%s" .Values.triton.gpu.product .Values.triton.tensorrt.version }}
{{- end }}

{{/*
Directory of `segserve export --out`: in tensorrt mode one per GPU model, TensorRT version and
precision, so that engines built for other GPUs are never picked up from the export cache.
*/}}
{{- define "segserve.repositoryJob.artifacts" -}}
{{- if eq .Values.triton.graphBackend "tensorrt" }}
{{- printf "/models/artifacts-tensorrt/%s-%s" (include "segserve.trt.key" .) .Values.triton.tensorrt.precision }}
{{- else }}
{{- print "/models/artifacts" }}
{{- end }}
{{- end }}

{{/*
`segserve build-repo` arguments of the graph backend (none for the default).
*/}}
{{- define "segserve.graphBackendArgs" -}}
{{- $triton := .Values.triton }}
{{- if eq $triton.graphBackend "tensorrt" }}
- --graph-backend
- tensorrt
- --target-gpu
- {{ $triton.gpu.product | quote }}
{{- else if eq $triton.graphBackend "onnxruntime-trt" }}
- --graph-backend
- onnxruntime-trt
- --trt-cache-path
- {{ $triton.trtCache.path | quote }}
{{- else if eq $triton.graphBackend "openvino" }}
- --graph-backend
- openvino
- --precision
- {{ $triton.openvino.precision | quote }}
{{- end }}
{{- end }}

{{/*
Triton's nodeSelector: its own, plus the GPU model when one is set.
*/}}
{{- define "segserve.triton.nodeSelector" -}}
{{- $triton := .Values.triton }}
{{- $sel := deepCopy $triton.nodeSelector }}
{{- if and $triton.gpu.enabled $triton.gpu.product }}
{{- $_ := set $sel "nvidia.com/gpu.product" $triton.gpu.product }}
{{- end }}
{{- with $sel }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
Render-time checks of the graph backend.
*/}}
{{- define "segserve.validateGraphBackend" -}}
{{- $triton := .Values.triton }}
{{- $mode := $triton.modelRepository.mode }}
{{- $backend := $triton.graphBackend }}
{{- if and (has $backend (list "tensorrt" "onnxruntime-trt")) (not $triton.gpu.enabled) }}
{{- fail (printf "triton.graphBackend %s needs a GPU: set triton.gpu.enabled=true, or graphBackend openvino for CPU nodes" $backend) }}
{{- end }}
{{- if and (eq $backend "openvino") $triton.gpu.enabled }}
{{- fail "triton.graphBackend openvino is for CPU nodes (every model KIND_CPU): set triton.gpu.enabled=false" }}
{{- end }}
{{- if eq $backend "tensorrt" }}
{{- if not $triton.gpu.product }}
{{- fail "triton.gpu.product is required when triton.graphBackend is tensorrt: engines only load on the GPU model that built them. Set it to the nodes' nvidia.com/gpu.product label, e.g. NVIDIA-H100-80GB-HBM3" }}
{{- end }}
{{- if eq $mode "initExport" }}
{{- fail "triton.graphBackend tensorrt is built once by the repository Job (modelRepository.mode job); initExport would build engines in every Triton pod" }}
{{- end }}
{{- if and (eq $mode "job") (not $triton.modelRepository.job.image.repository) }}
{{- fail "triton.modelRepository.job.image.repository is required when triton.graphBackend is tensorrt: the orchestrator image has no CUDA or TensorRT; use an image with segserve[gpu] (TensorRT = triton.tensorrt.version)" }}
{{- end }}
{{- end }}
{{- if eq $backend "onnxruntime-trt" }}
{{- if and (eq $triton.trtCache.volume "claim") (ne $mode "job") }}
{{- fail "triton.trtCache.volume claim uses the repository claim of modelRepository.mode job; in other modes set triton.trtCache.volume=emptyDir" }}
{{- end }}
{{- if and (eq $triton.trtCache.volume "claim") (not $triton.gpu.product) }}
{{- fail "triton.gpu.product is required when triton.trtCache.volume is claim: the shared engine cache is kept per GPU model and TensorRT version" }}
{{- end }}
{{- $path := trimSuffix "/" $triton.trtCache.path }}
{{- if eq $path "/models" }}
{{- fail "triton.trtCache.path /models would hide the repository: use its own directory, e.g. /models/trt-cache" }}
{{- end }}
{{- range list "/models/builds" "/models/artifacts" "/models/artifacts-tensorrt" "/models/trt-timing-cache" "/models/current" "/tmp" "/dev/shm" }}
{{- if or (eq $path .) (hasPrefix (printf "%s/" .) $path) }}
{{- fail (printf "triton.trtCache.path %s would hide or sit inside %s: use its own directory, e.g. /models/trt-cache" $path .) }}
{{- end }}
{{- end }}
{{- end }}
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
