{{/* Labels every object of the release carries. */}}
{{- define "trellis.labels" -}}
app.kubernetes.io/part-of: trellis
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{/* The Secret holding the join tokens: the user's, or the chart's. */}}
{{- define "trellis.joinSecret" -}}
{{- .Values.join.existingSecret | default "trellis-join" -}}
{{- end -}}

{{/* An image reference: `trellis.image (list . "controlplane")`. */}}
{{- define "trellis.image" -}}
{{- $root := index . 0 -}}
{{- $name := index $root.Values.images (index . 1) -}}
{{- printf "%s/%s:%s" $root.Values.images.registry $name ($root.Values.images.tag | default $root.Chart.AppVersion) -}}
{{- end -}}
