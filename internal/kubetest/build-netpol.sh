#!/usr/bin/env bash
# Builds kube-router, used by the Kubernetes test bed only for its NetworkPolicy controller
# (--run-firewall: iptables and ipset rules in the bed's own network namespace), into
# $ATELIER_TEST_KUBE_DIR/netpol, once per machine: the directory records a hash of the version,
# this script's recipe and the Go version in .recipe, and nothing is done when it matches.
# The bed's bridge CNI enforces no NetworkPolicy; with this a test can check the policies
# Atelier applies by traffic. Separate from build.sh so that changing one never rebuilds the other.
set -euo pipefail

KUBE_ROUTER_VERSION=2.1.0 # also KubeRouterVersion in kubetest.go

GO="${GO:-go}"
kube="${ATELIER_TEST_KUBE_DIR:-/var/cache/atelier-test/kube/v1.37.2}"
out="$kube/netpol"

recipe="$( { echo "$KUBE_ROUTER_VERSION"; sed -n '/^# --- recipe ---$/,$p' "$0"; "$GO" version; } | sha256sum | cut -c1-16)"
if [ -f "$out/.recipe" ] && [ "$(cat "$out/.recipe")" = "$recipe" ] && [ -x "$out/kube-router" ]; then
	echo "kube-router: $out is current (recipe $recipe)"
	exit 0
fi

# --- recipe ---
echo "kube-router: building v$KUBE_ROUTER_VERSION into $out (about 4 min CPU)"
start=$(date +%s)
work="$(mktemp -d /tmp/atelier-kube-router.XXXXXX)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
cd "$work"
"$GO" mod init atelier-kube-router >/dev/null 2>&1
"$GO" get "github.com/cloudnativelabs/kube-router/v2@v$KUBE_ROUTER_VERSION" >/dev/null
"$GO" build -trimpath -ldflags "-s -w" -o "$work/kube-router" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
mkdir -p "$out"
rm -f "$out/.recipe"
install -m 0755 "$work/kube-router" "$out/kube-router.new"
mv -f "$out/kube-router.new" "$out/kube-router"
echo "$recipe" > "$out/.recipe"
echo "kube-router: built into $out in $(( $(date +%s) - start ))s (recipe $recipe)"
