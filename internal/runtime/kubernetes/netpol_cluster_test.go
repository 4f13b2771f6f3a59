package kubernetes

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"atelier/internal/agentpki"
	"atelier/internal/kubetest"
)

// Addresses the policy test puts on the bed's node (its kt0 bridge): one
// that stands for the internet, the metadata service, and two on an
// operator's private network of which only the first is allowed.
const (
	npInternet  = "198.51.100.1"
	npMetadata  = "169.254.169.254"
	npAllowed   = "192.168.77.1"
	npPrivate   = "192.168.77.2"
	npNodePort  = 18080
	npDevPort   = 8080
	npAgentPort = 9998
	npRegistry  = 4873
)

// TestNetworkPolicyEnforced checks the NetworkPolicies the driver applies by
// traffic, on a bed whose policies a real controller (kube-router) enforces:
// pods labelled as sandbox A probe everything around them, a pod labelled
// as the manager and an unrelated pod probe sandbox B, and each sees exactly
// what the host firewall would allow. Deleting the policies opens what they
// closed, so the closed results are the policies' doing.
func TestNetworkPolicyEnforced(t *testing.T) {
	c := kubetest.Start(t, kubetest.WithNetworkPolicies())
	ns := c.Namespace(t)
	bb := c.BusyboxImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ca, err := agentpki.LoadOrCreate(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(c.Clientset(), Options{
		Namespace: ns, AgentPort: npAgentPort, RegistryPort: npRegistry, CA: ca,
		EgressAllow: []netip.Prefix{netip.MustParsePrefix(npAllowed + "/32")},
		Log:         slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	const a, b = "netpolsbxa01", "netpolsbxb01"
	for id, owner := range map[string]string{a: "alice", b: "bob"} {
		if err := d.ensurePolicy(ctx, id, owner); err != nil {
			t.Fatal(err)
		}
	}

	np := &npBed{t: t, ctx: ctx, c: c, ns: ns, image: bb}
	// Listeners first, each checked from the node (always let through).
	bIP := np.pod("sandbox-b", labels(b, "bob", RoleSandbox), false, listen(npDevPort, npAgentPort), "")
	np.waitServing(bIP, npDevPort)
	np.pod("node", nil, true, "ip addr add "+npInternet+"/32 dev kt0 && ip addr add "+npMetadata+"/32 dev kt0 && "+
		"ip addr add "+npAllowed+"/32 dev kt0 && ip addr add "+npPrivate+"/32 dev kt0 && "+listen(npNodePort), "")
	np.waitServing(kubetest.NodeIP, npNodePort)
	otherIP := np.pod("other", map[string]string{"app": "unrelated"}, false, listen(npDevPort),
		probe(map[string]string{"b-dev": bIP + ":8080"}))
	np.waitServing(otherIP, npDevPort)
	mgrIP := np.pod("manager", map[string]string{LabelRole: RoleManager}, false, listen(npRegistry, npDevPort),
		probe(map[string]string{"b-dev": bIP + ":8080", "b-agent": fmt.Sprintf("%s:%d", bIP, npAgentPort), "other": otherIP + ":8080"}))
	np.waitServing(mgrIP, npRegistry)
	hostPort := func(ip string) string { return fmt.Sprintf("%s:%d", ip, npNodePort) }
	np.pod("sandbox-a", labels(a, "alice", RoleSandbox), false, "true", probe(map[string]string{
		"b-dev": bIP + ":8080", "b-agent": fmt.Sprintf("%s:%d", bIP, npAgentPort), "other": otherIP + ":8080",
		"manager-registry": fmt.Sprintf("%s:%d", mgrIP, npRegistry), "manager-other": mgrIP + ":8080",
		"node": hostPort(kubetest.NodeIP), "metadata": hostPort(npMetadata), "internet": hostPort(npInternet),
		"allowed-private": hostPort(npAllowed), "private": hostPort(npPrivate),
	}))

	np.expect("sandbox-a", map[string]bool{
		"b-dev": false, "b-agent": false, // no sandbox-to-sandbox
		"other": false, "node": false, "metadata": false, "private": false, // no cluster-internal, node, metadata or LAN
		"manager-registry": true, "manager-other": false, // the npm cache port only
		"internet": true, "allowed-private": true, // the internet and network.egressAllowCidrs
	})
	np.expect("manager", map[string]bool{"b-dev": true, "b-agent": true, "other": true})
	np.expect("other", map[string]bool{"b-dev": false})

	// The control: without the policies the same probes get through.
	for _, id := range []string{a, b} {
		if err := c.Clientset().NetworkingV1().NetworkPolicies(ns).Delete(ctx, PolicyName(id), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	np.expect("sandbox-a", map[string]bool{"b-dev": true, "node": true, "metadata": true, "private": true})
	np.expect("other", map[string]bool{"b-dev": true})
}

// listen serves a page on each port with busybox httpd.
func listen(ports ...int) string {
	s := "mkdir -p /www && echo ok > /www/index.html"
	for _, p := range ports {
		s += fmt.Sprintf(" && httpd -p %d -h /www", p)
	}
	return s
}

// probe is a loop that tries to connect to each target (name=ip:port; nc,
// as the static busybox's wget crashes) and prints one "round
// name=open|closed ..." line per pass.
func probe(targets map[string]string) string {
	var names []string
	for n := range targets {
		names = append(names, n)
	}
	sort.Strings(names)
	var list []string
	for _, n := range names {
		list = append(list, n+"="+targets[n])
	}
	return `while :; do line=round; for t in ` + strings.Join(list, " ") + `; do ` +
		`a=${t#*=}; if echo | timeout 3 nc -w 2 "${a%:*}" "${a##*:}" >/dev/null 2>&1; then line="$line ${t%%=*}=open"; ` +
		`else line="$line ${t%%=*}=closed"; fi; done; echo "$line"; sleep 0.5; done`
}

type npBed struct {
	t     *testing.T
	ctx   context.Context
	c     *kubetest.Cluster
	ns    string
	image string
}

// pod runs busybox with setup then, if set, loop; it returns the Pod's IP
// once Running. A hostNetwork pod is the node itself (NET_ADMIN for its
// addresses).
func (np *npBed) pod(name string, lbl map[string]string, hostNet bool, setup, loop string) string {
	np.t.Helper()
	script := setup
	if loop == "" {
		loop = "exec sleep 3600"
	}
	script += " && " + loop
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: np.ns, Labels: lbl},
		Spec: corev1.PodSpec{
			HostNetwork:                   hostNet,
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name: "c", Image: np.image, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/bin/sh", "-c", script},
			}},
		},
	}
	if hostNet {
		p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{
			Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}},
		}
	}
	pods := np.c.Clientset().CoreV1().Pods(np.ns)
	if _, err := pods.Create(np.ctx, p, metav1.CreateOptions{}); err != nil {
		np.t.Fatalf("create pod %s: %v", name, err)
	}
	for {
		got, err := pods.Get(np.ctx, name, metav1.GetOptions{})
		if err == nil && got.Status.Phase == corev1.PodRunning && got.Status.PodIP != "" {
			return got.Status.PodIP
		}
		if err == nil && (got.Status.Phase == corev1.PodFailed || got.Status.Phase == corev1.PodSucceeded) {
			np.t.Fatalf("pod %s ended: %s\n%s", name, got.Status.Phase, np.logs(name))
		}
		select {
		case <-np.ctx.Done():
			np.t.Fatalf("pod %s not running: %v", name, np.ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitServing waits until ip:port answers from the node.
func (np *npBed) waitServing(ip string, port int) {
	np.t.Helper()
	hc := np.c.HTTPClient()
	hc.Timeout = 2 * time.Second
	url := fmt.Sprintf("http://%s:%d/", ip, port)
	for {
		res, err := hc.Get(url)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-np.ctx.Done():
			np.t.Fatalf("%s never answered: %v", url, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (np *npBed) logs(name string) string {
	rc, err := np.c.Clientset().CoreV1().Pods(np.ns).GetLogs(name, &corev1.PodLogOptions{TailLines: new(int64(3))}).Stream(np.ctx)
	if err != nil {
		return "(logs: " + err.Error() + ")"
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return string(b)
}

// expect waits (up to a minute: the controller applies a change within
// a sync) until a whole round of the pod's probes shows want, and fails
// with the last round otherwise.
func (np *npBed) expect(name string, want map[string]bool) {
	np.t.Helper()
	began := time.Now()
	deadline := began.Add(time.Minute)
	var last string
	for {
		lines := strings.Split(strings.TrimSpace(np.logs(name)), "\n")
		last = lines[len(lines)-1]
		if ok := strings.HasPrefix(last, "round "); ok {
			got := map[string]bool{}
			for _, f := range strings.Fields(last)[1:] {
				k, v, _ := strings.Cut(f, "=")
				got[k] = v == "open"
			}
			match := true
			for k, v := range want {
				if g, seen := got[k]; !seen || g != v {
					match = false
				}
			}
			if match {
				np.t.Logf("%s: %s (after %s)", name, last, time.Since(began).Round(time.Millisecond))
				return
			}
		}
		if time.Now().After(deadline) {
			np.t.Fatalf("%s: want %v, last round: %s", name, want, last)
		}
		time.Sleep(time.Second)
	}
}
