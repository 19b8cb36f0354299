#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager, kubectl, helm)
# from Go modules into a cache folder outside the clone. Each binary is rebuilt only when it is
# missing or was built at another version. Prints the bin folder on its last line.
set -euo pipefail

K8S_VERSION=v1.34.4
STAGING_VERSION=v0.34.4
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.21.4

cache=${SHARDPLANE_CACHE:-$HOME/.cache/shardplane}
src=$cache/testenv/src
bin=$cache/testenv/bin
mkdir -p "$src" "$bin"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

# up_to_date NAME VERSION: true when bin/NAME exists and was built at VERSION.
up_to_date() { [ -x "$bin/$1" ] && [ "$(cat "$bin/$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" > "$bin/$1.version"; }

build_kubernetes() {
  if up_to_date kube-apiserver $K8S_VERSION && up_to_date kube-controller-manager $K8S_VERSION \
     && up_to_date kubectl $K8S_VERSION; then return; fi
  echo "building kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION" >&2
  local dir=$src/kubernetes
  mkdir -p "$dir"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  {
    echo "module shardplane.io/testenv/kubernetes"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # k8s.io/kubernetes points its staging modules at ./staging; use their published versions.
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" \
      | awk -v v=$STAGING_VERSION '{print "replace " $1 " => " $1 " " v}'
  } > "$dir/go.mod"
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=34"
    ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=2026-01-01T00:00:00Z"
  done
  (cd "$dir" && go build -ldflags "$ldflags" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl)
  for b in kube-apiserver kube-controller-manager kubectl; do stamp $b $K8S_VERSION; done
}

build_etcd() {
  if up_to_date etcd $ETCD_VERSION; then return; fi
  echo "building etcd $ETCD_VERSION" >&2
  local dir=$src/etcd
  mkdir -p "$dir"
  cat > "$dir/go.mod" <<GOMOD
module shardplane.io/testenv/etcd

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GOMOD
  cat > "$dir/main.go" <<'GO'
// etcd built as a main package: the server module's own main only calls etcdmain.Main.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$dir" && go mod tidy && go build -ldflags "-s -w" -o "$bin/etcd" .)
  stamp etcd $ETCD_VERSION
}

build_helm() {
  if up_to_date helm $HELM_VERSION; then return; fi
  echo "building helm $HELM_VERSION" >&2
  GOBIN=$bin go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  stamp helm $HELM_VERSION
}

build_etcd
build_kubernetes
build_helm
echo "$bin"
