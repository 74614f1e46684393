#!/bin/bash
# run-rayjob.sh TEMPLATE [TEMPLATE...]: run a copy of each suspended RayJob template in turn
# (cluster/base/rayjob-*.yaml), wait until it ends, and exit non-zero as soon as one fails, so
# that the Kubernetes Job running this script (the nightly CronJob, or the bootstrap) reports
# the pipeline's outcome. Old copies are deleted: the newest $KEEP_RAYJOBS of each template stay.
# Needs kubectl and jq (both in registry.k8s.io/kubectl) and the qadwh-rayjob-runner Role.
set -euo pipefail

keep=${KEEP_RAYJOBS:-7}
poll=${POLL_SECONDS:-20}
running=""

stop_running() {  # the Job was stopped (deadline, deletion): stop the RayJob too
  if [ -n "$running" ]; then
    echo "stopping: deleting RayJob $running"
    kubectl delete rayjob "$running" --wait=false || true
  fi
  exit 143
}
trap stop_running TERM INT

prune() {
  local template=$1 old
  old=$(kubectl get rayjobs -l "qadwh.io/template=$template" \
    -o jsonpath='{range .items[*]}{.metadata.creationTimestamp} {.metadata.name}{"\n"}{end}' \
    | sort -r | tail -n "+$((keep + 1))" | cut -d' ' -f2)
  for name in $old; do
    kubectl delete rayjob "$name" --wait=false
  done
}

run() {
  local template=$1 name state deployment job
  name="$template-$(date -u +%Y%m%d-%H%M%S)"
  # the copy: the template's spec, running, with a label naming its template
  kubectl get rayjob "$template" -o json | jq --arg name "$name" --arg template "$template" '{
      apiVersion, kind,
      metadata: {name: $name, labels: ((.metadata.labels // {}) + {"qadwh.io/template": $template})},
      spec: (.spec + {suspend: false})
    }' | kubectl create -f -
  running=$name
  echo "$(date -u +%FT%TZ) RayJob $name created from $template"
  while :; do
    state=$(kubectl get rayjob "$name" -o jsonpath='{.status.jobDeploymentStatus} {.status.jobStatus}')
    read -r deployment job <<<"$state" || true
    # KubeRay v1.7 ends a RayJob in Complete, Failed or ValidationFailed (rayjob_types.go)
    case "${deployment:-}" in
      Complete | Failed | ValidationFailed) break ;;
    esac
    sleep "$poll" & wait $!
  done
  running=""
  echo "$(date -u +%FT%TZ) RayJob $name: deployment ${deployment:-?}, job ${job:-?}"
  kubectl logs "job/$name" --tail=200 || true  # the submitter's log: the job's own output
  prune "$template"
  if [ "$deployment" != Complete ] || [ "${job:-}" != SUCCEEDED ]; then
    echo "RayJob $name failed: $(kubectl get rayjob "$name" -o jsonpath='{.status.reason} {.status.message}')" >&2
    return 1
  fi
}

[ $# -gt 0 ] || { echo "usage: $0 TEMPLATE [TEMPLATE...]" >&2; exit 2; }
for template in "$@"; do
  run "$template"
done
