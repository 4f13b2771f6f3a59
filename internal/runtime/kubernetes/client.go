package kubernetes

import (
	"fmt"
	"net/netip"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"atelier/internal/network"
)

// DefaultEgressDeny is what the host firewall blocks (every non-public
// IPv4 prefix, the clusters' usual pod and Service ranges among them, and
// the metadata address).
func DefaultEgressDeny() []netip.Prefix { return network.BlockedEgress() }

// RestConfig is the cluster's: from the kubeconfig file when one is given,
// else the Pod's in-cluster service account.
func RestConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config (set sandbox.kubernetes.kubeconfig outside a cluster): %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("sandbox.kubernetes.kubeconfig %s: %w", kubeconfig, err)
	}
	return c, nil
}

// NewClient is a clientset for the config.
func NewClient(c *rest.Config) (kubernetes.Interface, error) {
	cs, err := kubernetes.NewForConfig(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return cs, nil
}
