{{/* The release's full name. */}}
{{- define "workspace-culler.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "workspace-culler.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "workspace-culler.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "workspace-culler.serviceAccountName" -}}
{{- default (include "workspace-culler.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The rules the controller needs on namespaced objects. */}}
{{- define "workspace-culler.namespacedRules" -}}
- apiGroups: ["kubeflow.org"]
  resources: ["workspaces"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kubeflow.org"]
  resources: ["workspaces/status"]
  verbs: ["patch"]
# Watched (a probe reads no pod from the apiserver); a pod is the workspace's only when its
# StatefulSet is owned by the Workspace.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods/exec"]
  verbs: ["create", "get"]
{{- if eq .Values.controller.httpMode "port-forward" }}
- apiGroups: [""]
  resources: ["pods/portforward"]
  verbs: ["create", "get"]
{{- end }}
# Events through the events.k8s.io API only (kube's Recorder; Culled and CullingSoon are
# created under names of their own, so a second one is refused rather than recorded).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
