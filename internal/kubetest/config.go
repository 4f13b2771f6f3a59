package kubetest

import (
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"k8s.io/client-go/rest"
)

// writeConfig makes the PKI, the kubeconfigs of the components, and the
// containerd, CNI and kubelet configuration files.
func (c *Cluster) writeConfig() (*pki, error) {
	p, err := newPKI(filepath.Join(c.dir, "pki"))
	if err != nil {
		return nil, err
	}
	nodeIP := net.ParseIP(NodeIP)
	specs := []certSpec{
		{name: "apiserver", cn: "kube-apiserver", server: true,
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			ips: []net.IP{net.IPv4(127, 0, 0, 1), nodeIP, net.IPv4(10, 96, 0, 1)}},
		{name: "apiserver-kubelet", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}},
		{name: "kubelet-serving", cn: NodeName, dns: []string{NodeName}, ips: []net.IP{nodeIP}, server: true},
	}
	for _, s := range specs {
		if _, _, err := p.issue(s); err != nil {
			return nil, err
		}
	}
	if err := p.serviceAccountKeys(); err != nil {
		return nil, err
	}
	inside := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	for _, k := range []struct{ name, cn, org string }{
		{"controller-manager", "system:kube-controller-manager", ""},
		{"scheduler", "system:kube-scheduler", ""},
		{"kubelet", "system:node:" + NodeName, "system:nodes"},
		// kube-router (WithNetworkPolicies) reads pods, namespaces, policies
		// and the node; inside a throwaway bed the masters group saves an
		// RBAC manifest for it.
		{"network-policy", "kube-router", "system:masters"},
	} {
		s := certSpec{name: k.name, cn: k.cn}
		if k.org != "" {
			s.orgs = []string{k.org}
		}
		cert, key, err := p.issue(s)
		if err != nil {
			return nil, err
		}
		if err := writeKubeconfig(filepath.Join(c.dir, k.name+".kubeconfig"), inside, p.caPEM(), cert, key); err != nil {
			return nil, err
		}
	}

	containerd := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
    max_conf_num = 1
`, filepath.Join(c.dir, "containerd", "root"), filepath.Join(c.dir, "containerd", "state"),
		filepath.Join(c.dir, "containerd.sock"), filepath.Join(c.dir, "containerd.sock.ttrpc"),
		filepath.Join(c.dir, "containerd", "opt"), PauseRef, cniBinDir, filepath.Join(c.dir, "cni"))
	if err := os.WriteFile(filepath.Join(c.dir, "containerd.toml"), []byte(containerd), 0o600); err != nil {
		return nil, fmt.Errorf("write containerd config: %w", err)
	}

	// No ipMasq: pods need no way out, and the bed adds no NAT rules.
	cni := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "kubetest",
  "plugins": [
    {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": %q,
              "ranges": [[{"subnet": %q, "gateway": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, bridgeName, filepath.Join(c.dir, "cni-ipam"), PodSubnet, NodeIP)
	if err := os.WriteFile(filepath.Join(c.dir, "cni", "10-kubetest.conflist"), []byte(cni), 0o600); err != nil {
		return nil, fmt.Errorf("write cni config: %w", err)
	}

	// Eviction thresholds are near zero and image GC is off: a loaded CI disk
	// must not taint the node or delete the imported images mid-test.
	kubelet := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: %[2]s
tlsPrivateKeyFile: %[3]s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %[4]s
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
cgroupRoot: %[5]s
failCgroupV1: false
failSwapOn: false
makeIPTablesUtilChains: false
containerRuntimeEndpoint: unix://%[6]s
volumePluginDir: %[7]s
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
registerNode: true
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
rotateCertificates: false
serverTLSBootstrap: false
protectKernelDefaults: false
`, NodeIP, p.path("kubelet-serving.crt"), p.path("kubelet-serving.key"), p.path("ca.crt"),
		c.cgroupRoot, filepath.Join(c.dir, "containerd.sock"), filepath.Join(c.dir, "kubelet-plugins"))
	if err := os.WriteFile(filepath.Join(c.dir, "kubelet.yaml"), []byte(kubelet), 0o600); err != nil {
		return nil, fmt.Errorf("write kubelet config: %w", err)
	}
	return p, nil
}

// writeAdminKubeconfig issues the admin certificate (system:masters) and
// writes admin.kubeconfig for the host-side proxy at addr.
func (c *Cluster) writeAdminKubeconfig(addr string) (*rest.Config, error) {
	p := c.pki
	cert, key, err := p.issue(certSpec{name: "admin", cn: "kubetest-admin", orgs: []string{"system:masters"}})
	if err != nil {
		return nil, err
	}
	host := "https://" + addr
	c.kubeconfig = filepath.Join(c.dir, "admin.kubeconfig")
	if err := writeKubeconfig(c.kubeconfig, host, p.caPEM(), cert, key); err != nil {
		return nil, err
	}
	return &rest.Config{
		Host:            host,
		TLSClientConfig: rest.TLSClientConfig{CAData: p.caPEM(), CertData: cert, KeyData: key},
		QPS:             100,
		Burst:           200,
	}, nil
}

func writeKubeconfig(path, server string, ca, cert, key []byte) error {
	b64 := base64.StdEncoding.EncodeToString
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: kubetest
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: kubetest
  context:
    cluster: kubetest
    user: kubetest
current-context: kubetest
`, server, b64(ca), b64(cert), b64(key))
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	return nil
}
