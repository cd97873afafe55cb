{{- define "cp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Common labels; call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "cp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "cp.selectorLabels" . }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "cp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cp.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cp.controlplaneImage" -}}
{{- printf "%s:%s" .Values.controlplane.image.repository (default .Chart.AppVersion .Values.controlplane.image.tag) -}}
{{- end -}}

{{/* The xDS Service's host name: what the Envoys dial and what the server certificate names. */}}
{{- define "cp.xdsHost" -}}
{{- printf "%s.%s.svc" (include "cp.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "cp.xdsAddress" -}}
{{- printf "%s:%d" (include "cp.xdsHost" .) (int .Values.xds.port) -}}
{{- end -}}

{{/* Where the xDS certificate files are mounted in every pod. */}}
{{- define "cp.tlsDir" -}}/etc/controlplane/xds-tls{{- end -}}

{{/* Name of the Secret with a component's xDS certificate; call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "cp.tlsSecret" -}}
{{- include "cp.validate" .ctx -}}
{{- if .ctx.Values.tls.certManager.enabled -}}
{{- printf "%s-xds-%s" (include "cp.fullname" .ctx) .component -}}
{{- else if eq .component "controlplane" -}}
{{- required "tls.existingSecret is required when tls.certManager.enabled is false and xds.insecure is false" .ctx.Values.tls.existingSecret -}}
{{- else -}}
{{- required (printf "tls.existingClientSecrets.%s is required when tls.certManager.enabled is false and xds.insecure is false" .component) (index .ctx.Values.tls.existingClientSecrets .component) -}}
{{- end -}}
{{- end -}}

{{/* xDS client options of the rate-limit and WAF services; call with (dict "ctx" $ "component" "waf"). */}}
{{- define "cp.xdsClientArgs" -}}
- --xds
- {{ include "cp.xdsAddress" .ctx }}
{{- if .ctx.Values.xds.insecure }}
- --insecure
{{- else }}
- --xds-ca
- {{ include "cp.tlsDir" .ctx }}/ca.crt
- --xds-cert
- {{ include "cp.tlsDir" .ctx }}/tls.crt
- --xds-key
- {{ include "cp.tlsDir" .ctx }}/tls.key
{{- end }}
{{- end -}}

{{- define "cp.tlsVolumeMount" -}}
{{- if not .ctx.Values.xds.insecure }}
- name: xds-tls
  mountPath: {{ include "cp.tlsDir" .ctx }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "cp.tlsVolume" -}}
{{- if not .ctx.Values.xds.insecure }}
- name: xds-tls
  secret:
    secretName: {{ include "cp.tlsSecret" . }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "cp.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "cp.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Spread across nodes and zones; call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "cp.topologySpread" -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: {{ .ctx.Values.topologySpread.nodes }}
    labelSelector:
      matchLabels:
        {{- include "cp.selectorLabels" . | nindent 8 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: {{ .ctx.Values.topologySpread.zones }}
    labelSelector:
      matchLabels:
        {{- include "cp.selectorLabels" . | nindent 8 }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "cp.selectorLabels" . | nindent 14 }}
{{- end -}}

{{/* Checks of value combinations the schema cannot express, all reported at once. */}}
{{- define "cp.validate" -}}
{{- $problems := list -}}
{{- if and (not .Values.xds.insecure) (not .Values.tls.certManager.enabled) -}}
{{- if not .Values.tls.existingSecret -}}
{{- $problems = append $problems "xDS mTLS needs certificates: set tls.certManager.enabled, or tls.existingSecret and tls.existingClientSecrets, or xds.insecure: true" -}}
{{- end -}}
{{- if not .Values.tls.existingClientSecrets.gateway -}}
{{- $problems = append $problems "tls.existingClientSecrets.gateway is required without tls.certManager.enabled (unless xds.insecure)" -}}
{{- end -}}
{{- if and .Values.rateLimits.global.enabled (not .Values.tls.existingClientSecrets.ratelimit) -}}
{{- $problems = append $problems "tls.existingClientSecrets.ratelimit is required with rateLimits.global.enabled without tls.certManager.enabled" -}}
{{- end -}}
{{- if and .Values.waf.enabled (not .Values.tls.existingClientSecrets.waf) -}}
{{- $problems = append $problems "tls.existingClientSecrets.waf is required with waf.enabled without tls.certManager.enabled" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.controlplane.sources.files .Values.controlplane.sources.existingConfigMap -}}
{{- $problems = append $problems "controlplane.sources: set files or existingConfigMap, not both" -}}
{{- end -}}
{{- if not (or .Values.controlplane.sources.files .Values.controlplane.sources.existingConfigMap .Values.controlplane.kubernetes.enabled) -}}
{{- $problems = append $problems "controlplane.sources: set files (specs and policies by file name) or existingConfigMap, or controlplane.kubernetes.enabled" -}}
{{- end -}}
{{- if and .Values.gateway.autoscaling.enabled (gt (int .Values.gateway.autoscaling.minReplicas) (int .Values.gateway.autoscaling.maxReplicas)) -}}
{{- $problems = append $problems "gateway.autoscaling.minReplicas is above gateway.autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and .Values.push.enabled (not .Values.controlplane.kubernetes.enabled) -}}
{{- $problems = append $problems "push.enabled keeps the pushed versions in the cluster, shared by the replicas: it needs controlplane.kubernetes.enabled" -}}
{{- end -}}
{{- if and .Values.push.enabled (not .Values.push.existingSecret) (or (not .Values.tls.certManager.enabled) .Values.xds.insecure) -}}
{{- $problems = append $problems "push.existingSecret (the push API's TLS certificate) is required with push.enabled unless cert-manager issues the xDS certificates (tls.certManager.enabled, xds.insecure false)" -}}
{{- end -}}
{{- if $problems -}}
{{- fail (printf "\n- %s" (join "\n- " $problems)) -}}
{{- end -}}
{{- end -}}

{{/* Non-empty when specs and policies are mounted from a ConfigMap. */}}
{{- define "cp.hasSources" -}}
{{- if or .Values.controlplane.sources.files .Values.controlplane.sources.existingConfigMap -}}true{{- end -}}
{{- end -}}

{{/* What `serve --kubernetes` reads and writes in a namespace (controlplane/kube/source.py):
list+watch (get for good measure) of its sources, status patches of the custom resources, Events. */}}
{{- define "cp.watchRules" -}}
- apiGroups: [controlplane.dev]
  resources: [apispecs, gatewaypolicies]
  verbs: [get, list, watch]
- apiGroups: [controlplane.dev]
  resources: [apispecs/status, gatewaypolicies/status]
  verbs: [patch, update]
- apiGroups: [""]
  resources: [configmaps, secrets, services]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* The geo database as a plain file renamed on change, which Envoy reloads (a ConfigMap or Secret
volume swaps a directory link instead, which it does not see): controlplane/filesync.py copies the
volume into an emptyDir at geoDatabase.mountPath, once before the pod's containers start, then
every geoDatabase.sync.intervalSeconds beside them. Call with (dict "ctx" $ "once" true|false). */}}
{{- define "cp.geoSyncContainer" -}}
{{- $geo := .ctx.Values.geoDatabase -}}
- name: geo-sync{{ if .once }}-first{{ end }}
  image: {{ include "cp.controlplaneImage" .ctx }}
  imagePullPolicy: {{ .ctx.Values.controlplane.image.pullPolicy }}
  command: [python, -m, controlplane]
  args:
    - sync-files
    - /var/run/controlplane/geo-source
    - {{ $geo.mountPath }}
    {{- if .once }}
    - --once
    {{- else }}
    - --interval
    - {{ $geo.sync.intervalSeconds | quote }}
    {{- end }}
  resources:
    {{- toYaml $geo.sync.resources | nindent 4 }}
  securityContext:
    {{- include "cp.containerSecurityContext" .ctx | nindent 4 }}
  volumeMounts:
    - name: geo-source
      mountPath: /var/run/controlplane/geo-source
      readOnly: true
    - name: geo-database
      mountPath: {{ $geo.mountPath }}
{{- end -}}

{{- define "cp.geoVolumes" -}}
- name: geo-source
  {{- toYaml .Values.geoDatabase.volume | nindent 2 }}
- name: geo-database
  emptyDir: {sizeLimit: {{ .Values.geoDatabase.sync.sizeLimit }}}
{{- end -}}
