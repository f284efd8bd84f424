{{/*
Names, labels and the derived settings shared by the templates.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "enigma.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: "<release>-<chart>", or the release name alone when it
already contains the chart name. Truncated to 63 characters (DNS label limit).
*/}}
{{- define "enigma.fullname" -}}
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

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "enigma.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "enigma.namespace" -}}
{{- .Release.Namespace }}
{{- end }}

{{/* Labels on every object of the release, besides the selector labels. */}}
{{- define "enigma.baseLabels" -}}
helm.sh/chart: {{ include "enigma.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: enigma
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the relay's objects. */}}
{{- define "enigma.labels" -}}
{{ include "enigma.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
{{ include "enigma.baseLabels" . }}
{{- end }}

{{/* Selector labels of the relay pods (immutable once installed). */}}
{{- define "enigma.selectorLabels" -}}
app.kubernetes.io/name: {{ include "enigma.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: relay
{{- end }}

{{/* Name of the in-chart Redis objects. */}}
{{- define "enigma.redisServer.fullname" -}}
{{- printf "%s-redis" (include "enigma.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{- define "enigma.redisServer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "enigma.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{/* Labels of the in-chart Redis objects. */}}
{{- define "enigma.redisServer.labels" -}}
{{ include "enigma.redisServer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.redisServer.image.tag | trunc 63 | trimSuffix "-" | quote }}
{{ include "enigma.baseLabels" . }}
{{- end }}

{{- define "enigma.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "enigma.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {registry, repository, tag, digest}; the digest wins
over the tag. Call with (dict "image" .Values.image "default" .Chart.AppVersion).
*/}}
{{- define "enigma.imageRef" -}}
{{- $repo := .image.repository }}
{{- if .image.registry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" .image.registry) .image.repository }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (toString (.image.tag | default .default)) }}
{{- end }}
{{- end }}

{{/*
The relay's image. No image is published, so there is no default to fall back on: a chart that
rendered one would install pods stuck in ImagePullBackOff. The message says how to make one.
*/}}
{{- define "enigma.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- $_ := required (printf "image.repository is not set: no enigma-server image is published, build and push your own first (from the repository root: docker build -f deploy/Dockerfile -t REGISTRY/enigma-server:%s . && docker push REGISTRY/enigma-server:%s), then install with --set image.repository=REGISTRY/enigma-server" $tag $tag) .Values.image.repository }}
{{- include "enigma.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) }}
{{- end }}

{{/*
How the relay reaches Redis. One of:
  none             no Redis: the in-memory single-node engine
  server           the in-chart Redis (redisServer.enabled)
  url              redis.url, kept in the chart's Secret
  urlPassword      redis.url inline (it references $(REDIS_PASSWORD)); password in the chart's Secret
  existingUrl      the whole URL from redis.existingSecret
  existingPassword redis.url inline; password from redis.existingSecret
*/}}
{{- define "enigma.redis.mode" -}}
{{- $r := .Values.redis }}
{{- if .Values.redisServer.enabled }}server
{{- else if and $r.existingSecret $r.url }}existingPassword
{{- else if $r.existingSecret }}existingUrl
{{- else if and $r.url $r.password }}urlPassword
{{- else if $r.url }}url
{{- else }}none
{{- end }}
{{- end }}

{{/* Whether the relay uses Redis: "true" or "". */}}
{{- define "enigma.redis.enabled" -}}
{{- if ne (include "enigma.redis.mode" .) "none" }}true{{ end }}
{{- end }}

{{/* Whether a password is injected as $(REDIS_PASSWORD): "true" or "". */}}
{{- define "enigma.redis.hasPassword" -}}
{{- $mode := include "enigma.redis.mode" . }}
{{- if or (eq $mode "urlPassword") (eq $mode "existingPassword") (eq $mode "server") }}true{{ end }}
{{- end }}

{{/*
Whether the in-chart Redis' password is generated by the chart (neither redis.password nor
redis.existingSecret given): "true" or "". secret.yaml keeps it across upgrades.
*/}}
{{- define "enigma.redis.generatedPassword" -}}
{{- if and .Values.redisServer.enabled (not .Values.redis.password) (not .Values.redis.existingSecret) }}true{{ end }}
{{- end }}

{{/* Key of the Redis password in the Secret named by enigma.secret.name. */}}
{{- define "enigma.redis.passwordKey" -}}
{{- if .Values.redis.existingSecret }}{{ .Values.redis.existingSecretPasswordKey }}{{ else }}redis-password{{ end }}
{{- end }}

{{/* Whether the chart renders its own Secret: "true" or "". */}}
{{- define "enigma.secret.create" -}}
{{- $mode := include "enigma.redis.mode" . }}
{{- if or (eq $mode "url") (eq $mode "urlPassword") (and (eq $mode "server") (not .Values.redis.existingSecret)) }}true{{ end }}
{{- end }}

{{/* Name of the Secret the Redis URL/password come from. */}}
{{- define "enigma.secret.name" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecret }}
{{- else }}
{{- include "enigma.fullname" . }}
{{- end }}
{{- end }}

{{/* The in-chart Redis URL (it always has a password; the kubelet expands it). */}}
{{- define "enigma.redisServer.url" -}}
redis://:$(REDIS_PASSWORD)@{{ include "enigma.redisServer.fullname" . }}:6379/0
{{- end }}

{{/* Seconds of preStop sleep actually configured (0 when there is no hook). */}}
{{- define "enigma.preStopSeconds" -}}
{{- if eq .Values.lifecycle.preStop.mode "none" }}0{{ else }}{{ int64 .Values.lifecycle.preStop.sleepSeconds }}{{ end }}
{{- end }}

{{/* config.server.shutdown_grace_ms rounded up to whole seconds. */}}
{{- define "enigma.shutdownGraceSeconds" -}}
{{- div (add (int64 .Values.config.server.shutdown_grace_ms) 999) 1000 }}
{{- end }}

{{/*
terminationGracePeriodSeconds: explicit, or preStop sleep + shutdown grace +
margin, so the kubelet never kills the relay in the middle of its drain.
*/}}
{{- define "enigma.terminationGrace" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (include "enigma.preStopSeconds" . | int64) (include "enigma.shutdownGraceSeconds" . | int64) (int64 .Values.terminationGraceMarginSeconds) }}
{{- else }}
{{- int64 .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
Checks that values.schema.json cannot express. Rendering fails with a message
that names the values to change.
*/}}
{{- define "enigma.validate" -}}
{{- $mode := include "enigma.redis.mode" . }}
{{- $r := .Values.redis }}
{{- if eq $mode "none" }}
{{- if .Values.autoscaling.enabled }}
{{- fail "\n\nenigma: autoscaling.enabled=true needs Redis. Without Redis the relay uses its in-memory engine, which is single-node: every replica would hold its own users and inboxes and messages between users on different pods would be lost.\nConfigure Redis with redis.url, redis.existingSecret, or redisServer.enabled=true (for trying it out), or disable autoscaling." }}
{{- end }}
{{- if gt (int64 .Values.replicaCount) 1 }}
{{- fail (printf "\n\nenigma: replicaCount=%d needs Redis. Without Redis the relay uses its in-memory engine, which is single-node: every replica would hold its own users and inboxes and messages between users on different pods would be lost.\nConfigure Redis with redis.url, redis.existingSecret, or redisServer.enabled=true (for trying it out), or set replicaCount=1." (int64 .Values.replicaCount)) }}
{{- end }}
{{- end }}
{{- if and $r.password (not $r.url) (not .Values.redisServer.enabled) }}
{{- fail "\n\nenigma: redis.password is set but redis.url is empty: set redis.url (with $(REDIS_PASSWORD) where the password goes) or redisServer.enabled=true." }}
{{- end }}
{{- if and (eq (toString .Values.updateStrategy.maxSurge) "0") (eq (toString .Values.updateStrategy.maxUnavailable) "0") }}
{{- fail "\n\nenigma: updateStrategy.maxSurge and updateStrategy.maxUnavailable cannot both be 0." }}
{{- end }}
{{- if and .Values.redisServer.enabled $r.url }}
{{- fail "\n\nenigma: redisServer.enabled=true runs a Redis inside the release; do not also set redis.url (choose one Redis). Its password may come from redis.password or redis.existingSecret." }}
{{- end }}
{{- if and .Values.redisServer.enabled $r.existingSecret (not $r.existingSecretPasswordKey) }}
{{- fail "\n\nenigma: redisServer.enabled=true with redis.existingSecret reads the in-chart Redis' password from that Secret: set redis.existingSecretPasswordKey." }}
{{- end }}
{{- if $r.tls.caSecret }}
{{- if or (eq $mode "none") (eq $mode "server") }}
{{- fail "\n\nenigma: redis.tls.caSecret is for TLS to an external Redis (a rediss:// redis.url or redis.existingSecret); the in-chart Redis speaks plain TCP inside the cluster." }}
{{- end }}
{{- if and $r.url (not (hasPrefix "rediss://" $r.url)) }}
{{- fail (printf "\n\nenigma: redis.tls.caSecret is set but redis.url is not rediss:// (got %q): the CA would never be used." $r.url) }}
{{- end }}
{{- if not $r.tls.caSecretKey }}
{{- fail "\n\nenigma: redis.tls.caSecret needs redis.tls.caSecretKey." }}
{{- end }}
{{- end }}
{{- if eq (int64 .Values.metricsPort) (int64 .Values.containerPort) }}
{{- fail "\n\nenigma: metricsPort must differ from containerPort: /metrics is served on its own port, never on the public one." }}
{{- end }}
{{- if and $r.password $r.existingSecret }}
{{- fail "\n\nenigma: set the Redis password either in redis.password or in redis.existingSecret, not both." }}
{{- end }}
{{- if and $r.url (not (or (hasPrefix "redis://" $r.url) (hasPrefix "rediss://" $r.url))) }}
{{- fail (printf "\n\nenigma: redis.url must start with redis:// or rediss:// (got %q)." $r.url) }}
{{- end }}
{{- if or (eq $mode "urlPassword") (eq $mode "existingPassword") }}
{{- if not (contains "$(REDIS_PASSWORD)" $r.url) }}
{{- fail "\n\nenigma: a Redis password is configured (redis.password or redis.existingSecret) but redis.url does not use it. Write it into the URL as $(REDIS_PASSWORD), e.g. redis://:$(REDIS_PASSWORD)@redis.example:6379/0 (Kubernetes substitutes it at container start)." }}
{{- end }}
{{- end }}
{{- if and (eq $mode "url") (contains "$(REDIS_PASSWORD)" $r.url) }}
{{- fail "\n\nenigma: redis.url references $(REDIS_PASSWORD) but no password is configured: set redis.password or redis.existingSecret (+ redis.existingSecretPasswordKey)." }}
{{- end }}
{{- if and (eq $mode "existingUrl") (not $r.existingSecretUrlKey) }}
{{- fail "\n\nenigma: redis.existingSecret without redis.url reads the whole URL from the Secret: set redis.existingSecretUrlKey." }}
{{- end }}
{{- if and (eq $mode "existingPassword") (not $r.existingSecretPasswordKey) }}
{{- fail "\n\nenigma: redis.existingSecret with redis.url reads the password from the Secret: set redis.existingSecretPasswordKey." }}
{{- end }}
{{- $floor := add (include "enigma.preStopSeconds" . | int64) (include "enigma.shutdownGraceSeconds" . | int64) }}
{{- if le (include "enigma.terminationGrace" . | int64) $floor }}
{{- fail (printf "\n\nenigma: terminationGracePeriodSeconds=%s must be greater than lifecycle.preStop.sleepSeconds + config.server.shutdown_grace_ms (%d s), or pods are killed in the middle of their drain. Leave it empty to derive it." (include "enigma.terminationGrace" .) $floor) }}
{{- end }}
{{- if le (int64 .Values.config.server.idle_timeout_ms) (int64 .Values.config.server.ping_interval_ms) }}
{{- fail "\n\nenigma: config.server.idle_timeout_ms must be longer than config.server.ping_interval_ms." }}
{{- end }}
{{- if lt (int64 .Values.config.limits.outbound_queue_bytes) (mul 2 (int64 .Values.config.limits.max_payload_bytes)) }}
{{- fail "\n\nenigma: config.limits.outbound_queue_bytes must hold at least two frames of config.limits.max_payload_bytes." }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int64 .Values.autoscaling.minReplicas) (int64 .Values.autoscaling.maxReplicas)) }}
{{- fail "\n\nenigma: autoscaling.minReplicas must not exceed autoscaling.maxReplicas." }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (or .Values.autoscaling.targetCPUUtilizationPercentage .Values.autoscaling.targetMemoryUtilizationPercentage .Values.autoscaling.customMetric.enabled)) }}
{{- fail "\n\nenigma: autoscaling.enabled=true needs at least one target: targetCPUUtilizationPercentage, targetMemoryUtilizationPercentage or customMetric." }}
{{- end }}
{{- if and (eq .Values.lifecycle.preStop.mode "sleep") (lt (int64 .Values.lifecycle.preStop.sleepSeconds) 1) }}
{{- fail "\n\nenigma: lifecycle.preStop.sleepSeconds must be at least 1 with mode=sleep (use mode=none to skip the hook)." }}
{{- end }}
{{- end }}

{{/*
One TOML value: string, bool, number or a list of them. Whole numbers print as
integers (Helm hands numbers to templates as float64, which would otherwise
print as 1e+06).
*/}}
{{- define "enigma.tomlValue" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}
{{- toJson $v }}
{{- else if kindIs "bool" $v }}
{{- $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) }}
{{- if eq (float64 $v) (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if kindIs "map" $v }}
{{- $items := list }}
{{- range $k, $item := $v }}{{ $items = append $items (printf "%s = %s" $k (include "enigma.tomlValue" $item)) }}{{ end }}
{{- printf "{ %s }" (join ", " $items) }}
{{- else if kindIs "slice" $v }}
{{- $items := list }}
{{- range $v }}{{ $items = append $items (include "enigma.tomlValue" .) }}{{ end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else }}
{{- fail (printf "enigma: config value %v (%s) cannot be written as TOML" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{/* The relay's TOML configuration file, from .Values.config. */}}
{{- define "enigma.configToml" -}}
# enigma-server configuration, rendered by the {{ include "enigma.chart" . }} Helm chart.
# ENIGMA__SECTION__KEY environment variables override these values.
{{- $config := deepCopy .Values.config }}
{{- /* Behind the chart's ingress the controller's pods name the client (see values.yaml). */}}
{{- if and .Values.ingress.enabled (empty (dig "server" "trusted_proxies" list $config)) }}
{{- $_ := set $config.server "trusted_proxies" .Values.ingress.trustedProxies }}
{{- end }}
{{- range $section, $settings := $config }}

[{{ $section }}]
{{- range $key, $value := $settings }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ include "enigma.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pod anti-affinity from podAntiAffinityPreset. */}}
{{- define "enigma.podAntiAffinity" -}}
{{- if eq .Values.podAntiAffinityPreset "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "enigma.selectorLabels" . | nindent 10 }}
{{- else if eq .Values.podAntiAffinityPreset "soft" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "enigma.selectorLabels" . | nindent 12 }}
{{- end }}
{{- end }}
