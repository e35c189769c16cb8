{{/*
Names, labels and derived values shared by ct's templates.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "ct.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name: "<release>-<chart>", or the release name when it already holds the chart's. */}}
{{- define "ct.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "ct.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "ct.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "ct.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ct
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* MLflow's objects. */}}
{{- define "ct.mlflow.fullname" -}}
{{- printf "%s-mlflow" (include "ct.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The labels that select MLflow's pods (Deployment, Service, NetworkPolicies). */}}
{{- define "ct.mlflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ct.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: mlflow
{{- end -}}

{{/* The prediction service's objects. */}}
{{- define "ct.serve.fullname" -}}
{{- printf "%s-serve" (include "ct.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ct.serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ct.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: serve
{{- end -}}

{{/* The namespace of the Airflow release that launches the step pods. */}}
{{- define "ct.airflowNamespace" -}}
{{- default .Release.Namespace .Values.airflow.namespace -}}
{{- end -}}

{{/* The ConfigMap holding ct.yaml; the Airflow values file names it too. */}}
{{- define "ct.configMapName" -}}
{{- printf "%s-config" (include "ct.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The tracking URI, by the Service's fully qualified name: step pods run in another namespace. */}}
{{- define "ct.mlflow.uri" -}}
{{- printf "http://%s.%s.svc.%s:%v" (include "ct.mlflow.fullname" .) .Release.Namespace .Values.clusterDomain .Values.mlflow.port -}}
{{- end -}}

{{/* "repository:tag", the tag defaulting to the chart's appVersion. Call with (list $ .Values.x.image). */}}
{{- define "ct.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/*
The labels KubernetesPodOperator puts on ct's step pods (plugins/ct_airflow/operators/step.py sets
app.kubernetes.io/part-of=ct and ct.step=<step>); the step pods' NetworkPolicy selects on both,
so that no other pod in a shared namespace is affected.
*/}}
{{- define "ct.stepPods.selector" -}}
matchLabels:
  app.kubernetes.io/part-of: ct
matchExpressions:
  - key: ct.step
    operator: Exists
{{- end -}}
