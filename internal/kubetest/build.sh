#!/usr/bin/env bash
# Builds the Kubernetes test bed's binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kubectl, etcd) and the bed's pause binary into
# $ATELIER_TEST_KUBE_DIR (default /var/cache/atelier-test/kube/v$KUBE_VERSION), once per
# machine. The directory records the recipe hash (everything below the "recipe" marker in this
# script, the pause source and the Go version) in .recipe; when it matches and every binary is
# there, nothing is done.
#
# Kubernetes comes from the Go module proxy: the published k8s.io/kubernetes module has no
# staging/ tree, so its "k8s.io/X => ./staging/src/k8s.io/X" replaces are rewritten to the
# published k8s.io/X v0.MINOR.PATCH modules. etcd is a three-line etcdmain wrapper added to the
# same module, so everything compiles in ONE go build and shared packages build once.
set -euo pipefail

KUBE_VERSION=1.37.2 # also KubeVersion in kubetest.go
ETCD_VERSION=3.7.3

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
GO="${GO:-go}"
out="${ATELIER_TEST_KUBE_DIR:-/var/cache/atelier-test/kube/v$KUBE_VERSION}"

recipe="$( { echo "$KUBE_VERSION $ETCD_VERSION"; sed -n '/^# --- recipe ---$/,$p' "$here/build.sh"; cat "$here/pause/main.go"; "$GO" version; } | sha256sum | cut -c1-16)"
bins="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl etcd pause"
if [ -f "$out/.recipe" ] && [ "$(cat "$out/.recipe")" = "$recipe" ]; then
	ok=1
	for b in $bins; do [ -x "$out/$b" ] || ok=0; done
	if [ "$ok" = 1 ]; then
		echo "kube test bed: $out is current (recipe $recipe)"
		exit 0
	fi
fi

# --- recipe ---
echo "kube test bed: building Kubernetes v$KUBE_VERSION and etcd v$ETCD_VERSION into $out (about 20 min on 2 cores)"
start=$(date +%s)
work="$(mktemp -d /tmp/atelier-kube-build.XXXXXX)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
src="$("$GO" mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -d "$src" ] || { echo "kube test bed: k8s.io/kubernetes@v$KUBE_VERSION not downloaded" >&2; exit 1; }
cp -r "$src" "$work/k"
chmod -R u+w "$work/k"
cd "$work/k"
rm -f go.work go.work.sum
minor="${KUBE_VERSION#*.}"
staging="0.$minor"
# Published staging modules instead of the absent ./staging tree; the two sample modules
# are not published and nothing built here imports them.
sed -i -E \
	-e '/k8s\.io\/sample-(cli-plugin|controller)/d' \
	-e "s#^([[:space:]]*k8s\.io/[a-z0-9-]+) => \./staging/src/k8s\.io/[a-z0-9-]+#\1 => \1 v$staging#" \
	go.mod
mkdir -p cmd/atelier-etcd
cat > cmd/atelier-etcd/main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
"$GO" get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >/dev/null

major="${KUBE_VERSION%%.*}"
minoronly="${minor%%.*}"
ld="-s -w"
for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	ld="$ld -X '$p.gitVersion=v$KUBE_VERSION' -X '$p.gitMajor=$major' -X '$p.gitMinor=$minoronly'"
	ld="$ld -X '$p.gitTreeState=clean' -X '$p.buildDate=1970-01-01T00:00:00Z'"
done
mkdir -p "$work/bin"
"$GO" build -trimpath -ldflags "$ld" -o "$work/bin/" \
	./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubelet ./cmd/kubectl ./cmd/atelier-etcd
mv "$work/bin/atelier-etcd" "$work/bin/etcd"
cd "$repo"
GOFLAGS=-buildvcs=false "$GO" build -trimpath -ldflags "-s -w" -o "$work/bin/pause" ./internal/kubetest/pause

mkdir -p "$out"
rm -f "$out/.recipe"
for b in $bins; do
	install -m 0755 "$work/bin/$b" "$out/$b.new"
	mv -f "$out/$b.new" "$out/$b"
done
echo "$recipe" > "$out/.recipe"
echo "kube test bed: built $bins into $out in $(( $(date +%s) - start ))s (recipe $recipe)"
