package kubetest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// KubeRouterVersion is the kube-router build-netpol.sh builds.
const KubeRouterVersion = "2.1.0"

// kubeRouterHealthPort is kube-router's health port inside the bed.
const kubeRouterHealthPort = 20244

// Option changes how Start brings a bed up.
type Option func(*startOptions)

type startOptions struct {
	netpol bool
}

// WithNetworkPolicies makes the bed enforce NetworkPolicies, which its
// bridge CNI alone does not: kube-router's policy controller (only that:
// no routing, no service proxy, no CNI) runs in the bed's namespaces and
// turns each policy into iptables and ipset rules there, with bridged pod
// traffic passing through iptables (br_netfilter, per network namespace).
// Traffic from the node itself to a pod is always let through, as in most
// CNIs (the kubelet's probes; here also the test process and a manager
// running on the host).
func WithNetworkPolicies() Option { return func(o *startOptions) { o.netpol = true } }

// netpolPrerequisites says why policies cannot be enforced here, or "".
func netpolPrerequisites(binDir string) string {
	if _, err := os.Stat(filepath.Join(binDir, "netpol", "kube-router")); err != nil {
		return "kube-router missing in " + filepath.Join(binDir, "netpol") + " (run internal/kubetest/build-netpol.sh)"
	}
	for _, b := range []string{"iptables", "ipset"} {
		if _, err := exec.LookPath(b); err != nil {
			return b + " not found (apt-get install iptables ipset)"
		}
	}
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
		return "the kernel has no br_netfilter (bridged pod traffic would bypass iptables)"
	}
	return ""
}

// startNetworkPolicies starts kube-router's policy controller and waits
// until it reports healthy (its controllers have synced once).
func (c *Cluster) startNetworkPolicies(ctx context.Context) error {
	// Per network namespace; on by default where br_netfilter is loaded,
	// set here so a host that changed the default cannot switch it off.
	set := exec.CommandContext(ctx, "nsenter", "--target", strconv.Itoa(c.nsPID), "--net", "--mount", "--",
		"sh", "-c", "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables")
	if out, err := set.CombinedOutput(); err != nil {
		return fmt.Errorf("enable bridged traffic through iptables in the bed: %w: %s", err, out)
	}
	if err := c.run("kube-router", filepath.Join(c.binDir, "netpol", "kube-router"),
		"--kubeconfig="+filepath.Join(c.dir, "network-policy.kubeconfig"),
		"--run-firewall=true", "--run-router=false", "--run-service-proxy=false", "--enable-cni=false",
		"--enable-pod-egress=false", "--hostname-override="+NodeName,
		"--service-cluster-ip-range="+ServiceCIDR, "--health-port="+strconv.Itoa(kubeRouterHealthPort),
		"--iptables-sync-period=1m", "--v=1"); err != nil {
		return err
	}
	url := fmt.Sprintf("http://%s:%d/healthz", NodeIP, kubeRouterHealthPort)
	hc := c.HTTPClient()
	return c.poll(ctx, "kube-router healthy", func() (bool, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		res, err := hc.Do(req)
		if err != nil {
			return false, err
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK, fmt.Errorf("kube-router health: %s", res.Status)
	})
}
