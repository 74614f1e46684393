#!/usr/bin/env bash
# Build the project image (Containerfile) in its CPU and GPU variants, push them, and pin the
# deployment to what was pushed:
#
#   REGISTRY=123456789012.dkr.ecr.us-west-2.amazonaws.com/qadwh scripts/build_image.sh [--no-push]
#
# Tags: <version>-<commit> (CPU) and <version>-<commit>-gpu, version from pyproject.toml, commit
# the checkout's HEAD (a checkout with uncommitted changes is refused: the tag must name what is
# in the image). After a push it writes cluster/image/{cpu,gpu}/kustomization.yaml (name, tag and
# digest) and ray-cluster.yaml's docker.image; commit those with the release.
# Needs docker (or podman: CONTAINER=podman) with a running engine and a login to the registry;
# the development machines of this project have no container engine, so it is run elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

push=1
[ "${1:-}" = "--no-push" ] && push=0
: "${REGISTRY:?set REGISTRY, e.g. 123456789012.dkr.ecr.us-west-2.amazonaws.com/qadwh}"
engine=${CONTAINER:-docker}
ray_base=rayproject/ray:2.60.0-py311
ray_gpu=rayproject/ray:2.60.0-py311-gpu

if [ -n "$(git status --porcelain -- qadwh_ray jobs configs pyproject.toml Containerfile)" ]; then
  echo "build_image.sh: uncommitted changes in what the image holds; commit them first" >&2
  exit 2
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
commit=$(git rev-parse --short=12 HEAD)
repo="$REGISTRY/qadwh-ray"
tag="$version-$commit"

build() {  # build VARIANT_TAG RAY_IMAGE TORCH_INDEX_URL
  "$engine" build -f Containerfile -t "$repo:$1" \
    --build-arg RAY_IMAGE="$2" --build-arg TORCH_INDEX_URL="$3" \
    --build-arg VERSION="$version" --build-arg REVISION="$(git rev-parse HEAD)" .
}
build "$tag" "$ray_base" https://download.pytorch.org/whl/cpu
build "$tag-gpu" "$ray_gpu" ""
echo "built $repo:$tag and $repo:$tag-gpu"
[ "$push" = 1 ] || exit 0

pin() {  # pin VARIANT TAG: push, read the digest, write the kustomize component
  "$engine" push "$repo:$2"
  local digest
  digest=$("$engine" image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$repo:$2" \
    | grep -m1 "^$repo@" | cut -d@ -f2)
  [ -n "$digest" ] || { echo "build_image.sh: no digest for $repo:$2 after the push" >&2; exit 1; }
  cat > "cluster/image/$1/kustomization.yaml" <<EOF
# Written by scripts/build_image.sh: the project image of the ${1^^} overlay's Ray pods and job
# submitters, pinned to the tag (version-commit) and digest it pushed.
apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
images:
  - name: qadwh-ray
    newName: $repo
    newTag: $2
    digest: $digest
EOF
  echo "pinned cluster/image/$1 to $repo:$2@$digest"
}
pin cpu "$tag"
pin gpu "$tag-gpu"
sed -i "s#^  image: .*#  image: $repo:$tag-gpu#" ray-cluster.yaml  # the launcher's docker.image
echo "ray-cluster.yaml uses $repo:$tag-gpu; commit cluster/image/ and ray-cluster.yaml"
