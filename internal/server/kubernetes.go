package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"

	"k8s.io/client-go/dynamic"

	"atelier/internal/agentpki"
	"atelier/internal/api"
	"atelier/internal/config"
	"atelier/internal/runtime/kubernetes"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// kubeDrivers builds the kubernetes runtime's drivers: Pods for the
// runtime, PVCs for the volumes, and no host links (the pod network is the
// cluster's, confined by NetworkPolicies the runtime applies).
func kubeDrivers(ctx context.Context, cfg *config.Config, opts Options, log *slog.Logger) (sandbox.Drivers, sandbox.Inventory, api.HostReports, error) {
	k := cfg.Sandbox.Kubernetes
	images, err := kubernetes.ParseImages(k.Images, k.Snapshots)
	if err != nil {
		return sandbox.Drivers{}, sandbox.Inventory{}, nil, err
	}
	caDir := k.CADir
	if caDir == "" {
		caDir = filepath.Join(cfg.Server.DataDir, "agent-ca")
	}
	ca, err := agentpki.LoadOrCreate(caDir)
	if err != nil {
		return sandbox.Drivers{}, sandbox.Inventory{}, nil, fmt.Errorf("sandbox.kubernetes.caDir: %w", err)
	}
	deny := kubernetes.DefaultEgressDeny()
	for _, c := range k.ClusterCIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return sandbox.Drivers{}, sandbox.Inventory{}, nil, fmt.Errorf("sandbox.kubernetes.clusterCidrs %q: %w", c, err)
		}
		deny = append(deny, p.Masked())
	}
	var allow []netip.Prefix
	for _, c := range cfg.Network.EgressAllowCIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return sandbox.Drivers{}, sandbox.Inventory{}, nil, fmt.Errorf("network.egressAllowCidrs %q: %w", c, err)
		}
		allow = append(allow, p.Masked())
	}
	rc, err := kubernetes.RestConfig(k.Kubeconfig)
	if err != nil {
		return sandbox.Drivers{}, sandbox.Inventory{}, nil, err
	}
	cs, err := kubernetes.NewClient(rc)
	if err != nil {
		return sandbox.Drivers{}, sandbox.Inventory{}, nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return sandbox.Drivers{}, sandbox.Inventory{}, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	ko := kubernetes.Options{
		Namespace: k.Namespace, RuntimeClassName: k.RuntimeClassName, StorageClass: k.StorageClass,
		DiskBytes: int64(k.DiskGB) << 30, Images: images, DefaultImage: cfg.Sandbox.DefaultImage, AgentPort: cfg.Advanced.VM.Agent.Port,
		RegistryPort: cfg.Advanced.Server.Verdaccio.Port, DNSServers: cfg.Network.DNSServers,
		EgressDeny: deny, EgressAllow: allow, CA: ca, Log: log,
		Snapshots: dyn, SnapshotClass: k.SnapshotClass,
	}
	if opts.Kubernetes != nil {
		opts.Kubernetes(&ko)
	}
	d, err := kubernetes.New(cs, ko)
	if err != nil {
		return sandbox.Drivers{}, sandbox.Inventory{}, nil, err
	}
	log.Info("kubernetes runtime", "namespace", k.Namespace, "runtime_class", k.RuntimeClassName,
		"storage_class", k.StorageClass, "images", len(images), "api", rc.Host)
	inv := sandbox.Inventory{Runtimes: d.List, Volumes: d.Volumes, Upkeep: d.Upkeep}
	pc := newPolicyCheck(d.CheckPolicyEnforcement, k.AllowUnenforcedPolicies, log)
	return sandbox.Drivers{Runtime: kubeRuntime{d}, Network: noLinks{}, Volumes: d}, inv, kubeReports{d, pc}, nil
}

// kubeRuntime adds the readiness check: the API server answers for the
// namespace.
type kubeRuntime struct{ *kubernetes.Driver }

func (k kubeRuntime) Check(ctx context.Context) error { return k.Ping(ctx) }

// noLinks is the Network of a runtime whose guests are on a cluster's pod
// network: nothing on this host to attach.
type noLinks struct{}

func (noLinks) Attach(context.Context, string, store.Lease) (string, error) { return "", nil }
func (noLinks) Detach(context.Context, string) error                        { return nil }

// kubeReports answer the System page for a cluster: disks are PVCs, the
// firewall is the NetworkPolicies, in the state the check found them.
type kubeReports struct {
	d      *kubernetes.Driver
	policy *policyCheck
}

func (k kubeReports) StoragePools(ctx context.Context) ([]api.StoragePool, error) {
	vs, err := k.d.Volumes(ctx)
	if err != nil {
		return nil, err
	}
	p := api.StoragePool{}
	p.Driver = "kubernetes"
	p.Volumes = len(vs)
	for _, v := range vs {
		p.UsedBytes += v.SizeBytes
	}
	return []api.StoragePool{p}, nil
}

func (k kubeReports) Network(ctx context.Context) (api.HostNetwork, error) {
	ids, err := k.d.List(ctx)
	if err != nil {
		return api.HostNetwork{}, err
	}
	state, detail := k.policy.report()
	return api.HostNetwork{LinkKind: "kubernetes", BridgeAddrs: []string{}, Links: len(ids), LinksUp: len(ids),
		Firewall: api.Firewall{State: state, Tables: []string{}, Missing: []string{}, Drops: map[string]uint64{}, Error: detail}}, nil
}
