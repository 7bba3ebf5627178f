{{/*
Pod template of the repository Job (mode job): export -> build-repo into a fresh directory ->
publish (completion marker, rename, `current` symlink, prune). Every step skips work when the
build is already complete, so a rerun with the same inputs costs seconds.
*/}}
{{- define "segserve.repositoryJob.podTemplate" -}}
{{- $triton := .Values.triton }}
{{- $job := $triton.modelRepository.job }}
{{- $buildId := include "segserve.repositoryJob.buildId" . }}
{{- $image := include "segserve.repositoryJob.image" . }}
{{- $mount := trimSuffix "/" $job.checkpoints.mountPath }}
{{- $tensorrt := eq $triton.graphBackend "tensorrt" }}
{{- $artifacts := include "segserve.repositoryJob.artifacts" . }}
{{- /* tensorrt: export (engine build) and build-repo (engine checks) get one GPU. */}}
{{- $gpuResources := deepCopy $job.resources }}
{{- if $tensorrt }}
{{- $limits := get $gpuResources "limits" | default dict }}
{{- $_ := set $limits $triton.gpu.resourceName 1 }}
{{- $_ := set $gpuResources "limits" $limits }}
{{- end -}}
metadata:
  labels:
    {{- include "segserve.selectorLabels" . | nindent 4 }}
    app.kubernetes.io/component: model-repository
    segserve.io/repository-build: {{ $buildId | quote }}
  {{- with $job.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "segserve.serviceAccountName" . }}
  automountServiceAccountToken: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  restartPolicy: Never
  {{- if and $tensorrt $triton.runtimeClassName }}
  runtimeClassName: {{ $triton.runtimeClassName }}
  {{- end }}
  # Triton's ids: the files it writes are Triton's to read.
  securityContext:
    {{- include "segserve.podSecurityContext" (dict "ctx" $triton.securityContext) | nindent 4 }}
  initContainers:
    # Step 1: checkpoints -> ONNX graphs + manifest in /models/artifacts (cached by checkpoint hash).
    - name: export
      image: {{ $image | quote }}
      imagePullPolicy: {{ $job.image.pullPolicy }}
      command: ["/bin/sh", "-c"]
      args:
        - |
          if [ -f "/models/builds/$BUILD_ID/complete" ]; then
            echo "model repository build $BUILD_ID is already complete: nothing to export"; exit 0
          fi
          {{- if $tensorrt }}
          mkdir -p /models/trt-timing-cache
          {{- end }}
          exec segserve export "$@"
        - export
        - --families
        - {{ join "," $job.families | quote }}
        - --out
        - {{ $artifacts }}
        {{- range $family, $path := $job.checkpoints.paths }}
        - --checkpoint
        - {{ printf "%s=%s/%s" $family $mount (trimAll "/" $path) | quote }}
        {{- end }}
        {{- range $family, $uri := $job.hub.checkpoints }}
        - --checkpoint
        - {{ printf "%s=%s" $family $uri | quote }}
        {{- end }}
        {{- if $job.hub.allowUnpinned }}
        - --allow-unpinned
        {{- end }}
        {{- range $family, $sha := $job.expectSha256 }}
        - --expect-sha256
        - {{ printf "%s=%s" $family $sha | quote }}
        {{- end }}
        {{- if $tensorrt }}
        - --tensorrt
        - --trt-precision
        - {{ $triton.tensorrt.precision | quote }}
        - --trt-workspace-gib
        - {{ $triton.tensorrt.workspaceGiB | quote }}
        - --trt-timing-cache
        - {{ printf "/models/trt-timing-cache/%s.cache" (include "segserve.trt.key" .) | quote }}
        {{- end }}
        {{- range $job.exportArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        {{- include "segserve.repositoryJob.env" . | nindent 8 }}
        {{- include "segserve.repositoryJob.hubEnv" . | nindent 8 }}
      {{- with $job.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml $gpuResources | nindent 8 }}
      securityContext:
        {{- include "segserve.containerSecurityContext" (dict "ctx" $triton.securityContext) | nindent 8 }}
      volumeMounts:
        - name: models
          mountPath: /models
        - name: tmp
          mountPath: /tmp
        {{- if $job.checkpoints.claimName }}
        - name: checkpoints
          mountPath: {{ $mount }}
          readOnly: true
        {{- end }}
    # Step 2: artifacts -> repository in a fresh directory that nothing serves yet.
    - name: build-repo
      image: {{ $image | quote }}
      imagePullPolicy: {{ $job.image.pullPolicy }}
      command: ["/bin/sh", "-c"]
      args:
        - |
          set -e
          if [ -f "/models/builds/$BUILD_ID/complete" ]; then
            echo "model repository build $BUILD_ID is already complete: nothing to build"; exit 0
          fi
          mkdir -p /models/builds
          rm -rf "/models/builds/.partial-$BUILD_ID"
          exec segserve build-repo "$@"
        - build-repo
        - --target
        - {{ $job.target | quote }}
        - --artifacts
        - {{ $artifacts }}
        - --out
        - /models/builds/.partial-{{ $buildId }}/repository
        {{- with include "segserve.graphBackendArgs" . | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- range $job.buildRepoArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        {{- include "segserve.repositoryJob.env" . | nindent 8 }}
      {{- with $job.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml $gpuResources | nindent 8 }}
      securityContext:
        {{- include "segserve.containerSecurityContext" (dict "ctx" $triton.securityContext) | nindent 8 }}
      volumeMounts:
        - name: models
          mountPath: /models
        - name: tmp
          mountPath: /tmp
  containers:
    # Step 3: marker, then one atomic rename makes the build visible; Triton pods wait for the marker.
    - name: publish
      image: {{ $image | quote }}
      imagePullPolicy: {{ $job.image.pullPolicy }}
      command: ["/bin/sh", "-c"]
      args:
        - |
          set -eu
          {{- if eq $triton.graphBackend "onnxruntime-trt" }}
          {{- if eq $triton.trtCache.volume "claim" }}
          mkdir -p {{ printf "/models/trt-cache/%s" (include "segserve.trt.key" .) | quote }}
          {{- end }}
          {{- if hasPrefix "/models/" $triton.trtCache.path }}
          mkdir -p {{ $triton.trtCache.path | quote }}  # mount point of Triton's engine cache
          {{- end }}
          {{- end }}
          cd /models/builds
          if [ ! -f "$BUILD_ID/complete" ]; then
            date -u +%Y-%m-%dT%H:%M:%SZ > ".partial-$BUILD_ID/complete"
            rm -rf "$BUILD_ID"
            mv ".partial-$BUILD_ID" "$BUILD_ID"
          fi
          rm -rf ".partial-$BUILD_ID"
          touch "$BUILD_ID/complete"
          ln -sfn "builds/$BUILD_ID" /models/.current-new
          mv -Tf /models/.current-new /models/current
          echo "model repository ready: /models/builds/$BUILD_ID/repository (/models/current -> builds/$BUILD_ID)"
          if [ "$KEEP_BUILDS" -gt 0 ]; then
            ls -1t -- */complete | tail -n "+$((KEEP_BUILDS + 1))" | while read -r marker; do
              old="${marker%/complete}"
              if [ "$old" != "$BUILD_ID" ]; then echo "removing old build $old"; rm -rf -- "$old"; fi
            done
          fi
      env:
        - name: BUILD_ID
          value: {{ $buildId | quote }}
        - name: KEEP_BUILDS
          value: {{ $job.keepBuilds | quote }}
      resources:
        requests:
          cpu: 50m
          memory: 64Mi
        limits:
          memory: 256Mi
      securityContext:
        {{- include "segserve.containerSecurityContext" (dict "ctx" $triton.securityContext) | nindent 8 }}
      volumeMounts:
        - name: models
          mountPath: /models
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: models
      persistentVolumeClaim:
        claimName: {{ include "segserve.repositoryJob.claimName" . }}
    - name: tmp
      emptyDir:
        sizeLimit: 10Gi
    {{- if $job.checkpoints.claimName }}
    - name: checkpoints
      persistentVolumeClaim:
        claimName: {{ $job.checkpoints.claimName }}
        readOnly: true
    {{- end }}
  {{- $nodeSelector := $job.nodeSelector }}
  {{- $tolerations := $job.tolerations }}
  {{- $affinity := $job.affinity }}
  {{- if $tensorrt }}
  {{- /* The GPU pool, and the GPU model the engines are for. */}}
  {{- $nodeSelector = merge (fromYaml (include "segserve.triton.nodeSelector" .)) (deepCopy $job.nodeSelector) }}
  {{- $tolerations = concat $triton.tolerations $job.tolerations | uniq }}
  {{- $affinity = $job.affinity | default $triton.affinity }}
  {{- end }}
  {{- with $nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{- define "segserve.repositoryJob.env" -}}
{{- $job := .Values.triton.modelRepository.job -}}
- name: BUILD_ID
  value: {{ include "segserve.repositoryJob.buildId" . | quote }}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
{{- with $job.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Hugging Face Hub settings of the export step only: its cache on the claim, offline mode, a mirror,
and the token from a Secret (never in values, never given to the other steps).
*/}}
{{- define "segserve.repositoryJob.hubEnv" -}}
{{- $hub := .Values.triton.modelRepository.job.hub -}}
- name: HF_HUB_CACHE
  value: {{ $hub.cacheDir | quote }}
- name: HF_HUB_DISABLE_TELEMETRY
  value: "1"
{{- if $hub.offline }}
- name: HF_HUB_OFFLINE
  value: "1"
{{- end }}
{{- with $hub.endpoint }}
- name: HF_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- if $hub.tokenSecret.name }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $hub.tokenSecret.name | quote }}
      key: {{ $hub.tokenSecret.key | quote }}
{{- end }}
{{- end }}
