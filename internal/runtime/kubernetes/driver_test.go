package kubernetes

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"atelier/internal/agentpki"
	"atelier/internal/sandbox"
)

const ns = "atelier-sandboxes"

// kubelet stands in for the node: a Pod created through the fake
// clientset gets the status a node would give it (sandbox Pods run with an
// address, fill Pods succeed), unless a test says otherwise.
type kubelet struct {
	mu       sync.Mutex
	nextIP   int
	failFill bool
	failPod  bool
	// startFail makes the next pods of a role fail to start (StartError).
	startFail map[string]int
	// external: another reactor plays the node; this one only counts.
	external bool
	created  map[string]int // pods created, by role
	// dialExit is the exit code a policy check's dialer Pod ends with.
	dialExit int32
}

func (k *kubelet) react(action k8stesting.Action) (bool, runtime.Object, error) {
	p := action.(k8stesting.CreateAction).GetObject().(*corev1.Pod)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.created[p.Labels[LabelRole]]++
	if k.external {
		return false, nil, nil
	}
	if role := p.Labels[LabelRole]; k.startFail[role] > 0 {
		k.startFail[role]--
		p.Status.Phase = corev1.PodFailed
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "c", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: 128, Reason: "StartError", Message: "runc create failed: cannot start a stopped process"}}}}
		return false, nil, nil
	}
	switch p.Labels[LabelRole] {
	case RoleProbe:
		if slices.Contains(p.Spec.Containers[0].Command, "listen") {
			k.nextIP++
			p.Status.Phase, p.Status.PodIP = corev1.PodRunning, fmt.Sprintf("10.244.0.%d", k.nextIP)
			break
		}
		p.Status.Phase = corev1.PodFailed
		if k.dialExit == 0 {
			p.Status.Phase = corev1.PodSucceeded
		}
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "netcheck", State: corev1.ContainerState{
			Terminated: &corev1.ContainerStateTerminated{ExitCode: k.dialExit}}}}
	case RoleFill:
		p.Status.Phase = corev1.PodSucceeded
		if k.failFill {
			p.Status.Phase = corev1.PodFailed
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "fill", State: corev1.ContainerState{
				Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Reason: "Error", Message: "copy-rootfs: no space left on device"}}}}
		}
	case RoleSandbox:
		k.nextIP++
		p.Status.Phase, p.Status.PodIP = corev1.PodRunning, fmt.Sprintf("10.244.0.%d", k.nextIP)
		if k.failPod {
			p.Status.Phase, p.Status.PodIP = corev1.PodPending, ""
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: containerName, State: corev1.ContainerState{
				Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImageNeverPull", Message: "image not present"}}}}
		}
	}
	return false, nil, nil // the tracker stores the Pod with its status
}

type bed struct {
	cs  *fake.Clientset
	k   *kubelet
	d   *Driver
	ca  *agentpki.CA
	ctx context.Context
}

func newBed(t *testing.T, tweak ...func(*Options)) *bed {
	t.Helper()
	ca, err := agentpki.LoadOrCreate(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	cs := fake.NewClientset()
	k := &kubelet{created: map[string]int{}}
	cs.PrependReactor("create", "pods", k.react)
	o := Options{
		Namespace: ns, StorageClass: "local-path", DiskBytes: 10 << 30, AgentPort: 9998, RegistryPort: 4873,
		Images: map[string]Image{
			"dev-base": {Ref: "localhost/atelier/dev-base:test"},
			"snapped":  {Ref: "localhost/atelier/snapped:test", Snapshot: "snapped-root"},
		},
		CA: ca, Poll: time.Millisecond, PodTimeout: 2 * time.Second, Log: slog.New(slog.DiscardHandler),
	}
	for _, f := range tweak {
		f(&o)
	}
	d, err := New(cs, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return &bed{cs: cs, k: k, d: d, ca: ca, ctx: ctx}
}

// labelled lists what carries id's label, as "kind/name".
func (b *bed) labelled(t *testing.T, id string) []string {
	t.Helper()
	sel := metav1.ListOptions{LabelSelector: LabelSandbox + "=" + id}
	var out []string
	pods, _ := b.cs.CoreV1().Pods(ns).List(b.ctx, sel)
	for _, x := range pods.Items {
		out = append(out, "pod/"+x.Name)
	}
	pvcs, _ := b.cs.CoreV1().PersistentVolumeClaims(ns).List(b.ctx, sel)
	for _, x := range pvcs.Items {
		out = append(out, "pvc/"+x.Name)
	}
	secs, _ := b.cs.CoreV1().Secrets(ns).List(b.ctx, sel)
	for _, x := range secs.Items {
		out = append(out, "secret/"+x.Name)
	}
	pols, _ := b.cs.NetworkingV1().NetworkPolicies(ns).List(b.ctx, sel)
	for _, x := range pols.Items {
		out = append(out, "networkpolicy/"+x.Name)
	}
	slices.Sort(out)
	return out
}

func (b *bed) agentCert(t *testing.T, id string) *x509.Certificate {
	t.Helper()
	s, err := b.cs.CoreV1().Secrets(ns).Get(b.ctx, SecretName(id), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(s.Data[agentpki.CertFile])
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLifecycle(t *testing.T) {
	b := newBed(t)
	const id = "k8ssandbox01"
	inst := sandbox.Instance{ID: id, Owner: "user-1", Vcpus: 2, MemoryMB: 2048}

	disk, err := b.d.Clone(b.ctx, "dev-base", id)
	if err != nil || disk != ClaimName(id) {
		t.Fatalf("clone: %q %v", disk, err)
	}
	pvc, _ := b.cs.CoreV1().PersistentVolumeClaims(ns).Get(b.ctx, ClaimName(id), metav1.GetOptions{})
	if pvc.Annotations[AnnotFilled] != "copy" || *pvc.Spec.StorageClassName != "local-path" || pvc.Spec.DataSource != nil {
		t.Fatalf("disk: %+v", pvc)
	}
	if b.k.created[RoleFill] != 1 {
		t.Fatalf("fill pods: %d", b.k.created[RoleFill])
	}
	if _, err := b.cs.CoreV1().Pods(ns).Get(b.ctx, FillName(id), metav1.GetOptions{}); err == nil {
		t.Fatal("fill pod left behind")
	}
	// A retried create or a start never refills a filled disk.
	if _, err := b.d.Clone(b.ctx, "dev-base", id); err != nil || b.k.created[RoleFill] != 1 {
		t.Fatalf("second clone refilled: %v, %d fills", err, b.k.created[RoleFill])
	}

	if err := b.d.Boot(b.ctx, inst); err != nil {
		t.Fatal(err)
	}
	ip, err := b.d.Address(b.ctx, id)
	if err != nil || ip != "10.244.0.1" {
		t.Fatalf("address %q %v", ip, err)
	}
	if alive, err := b.d.Alive(b.ctx, id); !alive || err != nil {
		t.Fatalf("alive %v %v", alive, err)
	}
	if pvc, _ := b.cs.CoreV1().PersistentVolumeClaims(ns).Get(b.ctx, ClaimName(id), metav1.GetOptions{}); pvc.Labels[LabelOwner] != "user-1" {
		t.Fatalf("the disk is not labelled with its owner after boot: %v", pvc.Labels)
	}
	first := b.agentCert(t, id)
	if !slices.Equal(first.DNSNames, []string{agentpki.ServerName(id)}) {
		t.Fatalf("agent cert names %v", first.DNSNames)
	}
	want := []string{"networkpolicy/" + PolicyName(id), "pod/" + PodName(id), "pvc/" + ClaimName(id), "secret/" + SecretName(id)}
	if got := b.labelled(t, id); !slices.Equal(got, want) {
		t.Fatalf("after boot: %v, want %v", got, want)
	}
	if err := b.d.Boot(b.ctx, inst); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("a second boot of a running sandbox: %v", err)
	}
	if again := b.agentCert(t, id); again.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatal("a refused boot replaced the running sandbox's credential")
	}

	// Stop: the Pod and its credential go, the disk and policy stay.
	if err := b.d.Stop(b.ctx, id); err != nil {
		t.Fatal(err)
	}
	if got := b.labelled(t, id); !slices.Equal(got, []string{"networkpolicy/" + PolicyName(id), "pvc/" + ClaimName(id)}) {
		t.Fatalf("after stop: %v", got)
	}
	if alive, _ := b.d.Alive(b.ctx, id); alive {
		t.Fatal("alive after stop")
	}
	if err := b.d.Stop(b.ctx, id); err != nil {
		t.Fatalf("stop of a stopped sandbox: %v", err)
	}

	// Start: a new Pod on the same disk, a new credential (the rotation).
	if err := b.d.Boot(b.ctx, inst); err != nil {
		t.Fatal(err)
	}
	if ip, _ := b.d.Address(b.ctx, id); ip != "10.244.0.2" {
		t.Fatalf("address after start %q", ip)
	}
	if second := b.agentCert(t, id); second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("start kept the old agent certificate")
	}
	pod, _ := b.cs.CoreV1().Pods(ns).Get(b.ctx, PodName(id), metav1.GetOptions{})
	if pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName != ClaimName(id) {
		t.Fatalf("start's pod is not on the disk: %+v", pod.Spec.Volumes)
	}

	// Destroy: nothing labelled with the id is left; twice is success.
	for range 2 {
		if err := b.d.Destroy(b.ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := b.d.Delete(b.ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.labelled(t, id); len(got) != 0 {
		t.Fatalf("after destroy: %v", got)
	}
}

func TestCloneFromSnapshot(t *testing.T) {
	b := newBed(t)
	const id = "k8ssnapshot1"
	if _, err := b.d.Clone(b.ctx, "snapped", id); err != nil {
		t.Fatal(err)
	}
	pvc, _ := b.cs.CoreV1().PersistentVolumeClaims(ns).Get(b.ctx, ClaimName(id), metav1.GetOptions{})
	ds := pvc.Spec.DataSource
	if ds == nil || ds.Kind != "VolumeSnapshot" || *ds.APIGroup != "snapshot.storage.k8s.io" || ds.Name != "snapped-root" {
		t.Fatalf("data source %+v", ds)
	}
	if b.k.created[RoleFill] != 0 {
		t.Fatal("a disk restored from a snapshot was also copied")
	}
	if err := b.d.Boot(b.ctx, sandbox.Instance{ID: id, Vcpus: 1, MemoryMB: 512}); err != nil {
		t.Fatal(err)
	}
	pod, _ := b.cs.CoreV1().Pods(ns).Get(b.ctx, PodName(id), metav1.GetOptions{})
	if pod.Spec.Containers[0].Image != "localhost/atelier/snapped:test" {
		t.Fatalf("image %q", pod.Spec.Containers[0].Image)
	}
}

func TestFailures(t *testing.T) {
	t.Run("unknown image", func(t *testing.T) {
		b := newBed(t)
		if _, err := b.d.ImageSize(b.ctx, "nope"); err == nil {
			t.Fatal("size of an unknown image")
		}
		if _, err := b.d.Clone(b.ctx, "nope", "k8sbadimage1"); err == nil || !strings.Contains(err.Error(), "sandbox.kubernetes.images") {
			t.Fatalf("clone: %v", err)
		}
	})
	t.Run("fill fails", func(t *testing.T) {
		b := newBed(t)
		b.k.failFill = true
		const id = "k8sfillfail1"
		_, err := b.d.Clone(b.ctx, "dev-base", id)
		if err == nil || !strings.Contains(err.Error(), "no space left on device") {
			t.Fatalf("clone: %v", err)
		}
		if _, err := b.cs.CoreV1().Pods(ns).Get(b.ctx, FillName(id), metav1.GetOptions{}); err == nil {
			t.Fatal("failed fill pod left behind")
		}
		if err := b.d.Boot(b.ctx, sandbox.Instance{ID: id}); err == nil || !strings.Contains(err.Error(), "never filled") {
			t.Fatalf("boot on an unfilled disk: %v", err)
		}
		// The service's undo of the volume step.
		if err := b.d.Delete(b.ctx, id); err != nil {
			t.Fatal(err)
		}
		if got := b.labelled(t, id); len(got) != 1 || !strings.HasPrefix(got[0], "networkpolicy/") {
			t.Fatalf("after undo: %v (the policy goes with the runtime's destroy)", got)
		}
	})
	t.Run("pod never runs", func(t *testing.T) {
		b := newBed(t)
		const id = "k8spodfail01"
		if _, err := b.d.Clone(b.ctx, "dev-base", id); err != nil {
			t.Fatal(err)
		}
		b.k.failPod = true
		err := b.d.Boot(b.ctx, sandbox.Instance{ID: id, Vcpus: 1, MemoryMB: 512})
		if err == nil || !strings.Contains(err.Error(), "ErrImageNeverPull") {
			t.Fatalf("boot: %v", err)
		}
		if err := b.d.Destroy(b.ctx, id); err != nil {
			t.Fatal(err)
		}
		if got := b.labelled(t, id); !slices.Equal(got, []string{"pvc/" + ClaimName(id)}) {
			t.Fatalf("after the undo: %v", got)
		}
	})
	t.Run("a pod the node fails to start is tried once more", func(t *testing.T) {
		b := newBed(t)
		const id = "k8sstartfl01"
		b.k.startFail = map[string]int{RoleFill: 1, RoleSandbox: 1}
		if _, err := b.d.Clone(b.ctx, "dev-base", id); err != nil {
			t.Fatalf("clone after one failed start: %v", err)
		}
		if err := b.d.Boot(b.ctx, sandbox.Instance{ID: id, Vcpus: 1, MemoryMB: 512}); err != nil {
			t.Fatalf("boot after one failed start: %v", err)
		}
		if b.k.created[RoleFill] != 2 || b.k.created[RoleSandbox] != 2 {
			t.Fatalf("pods created: %v, want two of each", b.k.created)
		}
		// Twice in a row is an error, with the node's reason.
		if err := b.d.Stop(b.ctx, id); err != nil {
			t.Fatal(err)
		}
		b.k.startFail[RoleSandbox] = 2
		err := b.d.Boot(b.ctx, sandbox.Instance{ID: id, Vcpus: 1, MemoryMB: 512})
		if err == nil || !strings.Contains(err.Error(), "StartError") || b.k.created[RoleSandbox] != 4 {
			t.Fatalf("boot failing twice: %v, %d sandbox pods", err, b.k.created[RoleSandbox])
		}
		// A container that ran and failed is not tried again.
		b.k.failFill = true
		if _, err := b.d.Clone(b.ctx, "dev-base", "k8sstartfl02"); err == nil || b.k.created[RoleFill] != 3 {
			t.Fatalf("a failed fill was retried: %v, %d fill pods", err, b.k.created[RoleFill])
		}
	})
	t.Run("bad ids", func(t *testing.T) {
		b := newBed(t)
		for _, id := range []string{"", "UPPER", "a/b", strings.Repeat("a", 40)} {
			if err := b.d.Destroy(b.ctx, id); err == nil {
				t.Errorf("destroy %q accepted", id)
			}
			if _, err := b.d.Clone(b.ctx, "dev-base", id); err == nil {
				t.Errorf("clone %q accepted", id)
			}
		}
	})
}

func TestListInventory(t *testing.T) {
	b := newBed(t)
	for _, id := range []string{"k8slisted001", "k8slisted002"} {
		if _, err := b.d.Clone(b.ctx, "dev-base", id); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.d.Boot(b.ctx, sandbox.Instance{ID: "k8slisted001", Vcpus: 1, MemoryMB: 512}); err != nil {
		t.Fatal(err)
	}
	// Not Atelier's: no managed-by label, or a label that is no id.
	b.cs.CoreV1().Pods(ns).Create(b.ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "other", Labels: map[string]string{LabelSandbox: "k8sforeign01"}}}, metav1.CreateOptions{})
	b.cs.CoreV1().Secrets(ns).Create(b.ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "weird", Labels: map[string]string{LabelManaged: ManagedBy, LabelSandbox: "Not-An-Id"}}}, metav1.CreateOptions{})
	got, err := b.d.List(b.ctx)
	slices.Sort(got)
	if err != nil || !slices.Equal(got, []string{"k8slisted001", "k8slisted002"}) {
		t.Fatalf("runtimes %v %v", got, err)
	}
	vols, err := b.d.Volumes(b.ctx)
	if err != nil || len(vols) != 2 || vols[0].SizeBytes != 10<<30 {
		t.Fatalf("volumes %+v %v", vols, err)
	}
}

func TestPodSpec(t *testing.T) {
	for _, rc := range []string{"", "kata-fc"} {
		t.Run("runtimeClass="+rc, func(t *testing.T) {
			o := Options{Namespace: ns, RuntimeClassName: rc, AgentPort: 9998, DiskBytes: 1 << 30}
			p := o.buildPod(sandbox.Instance{ID: "k8sspec00001", Owner: "user-1", Vcpus: 2, MemoryMB: 3072}, Image{Ref: "img:1"})
			if rc == "" && p.Spec.RuntimeClassName != nil || rc != "" && *p.Spec.RuntimeClassName != rc {
				t.Fatalf("runtimeClassName %v", p.Spec.RuntimeClassName)
			}
			if *p.Spec.AutomountServiceAccountToken || *p.Spec.EnableServiceLinks || p.Spec.HostNetwork || p.Spec.HostPID {
				t.Fatal("the pod sees the cluster's API token, Services or host namespaces")
			}
			if p.Spec.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Fatal("no RuntimeDefault seccomp")
			}
			if len(p.Spec.SecurityContext.Sysctls) != 2 {
				t.Fatalf("sysctls %v", p.Spec.SecurityContext.Sysctls)
			}
			c := p.Spec.Containers[0]
			sc := c.SecurityContext
			if *sc.Privileged || *sc.AllowPrivilegeEscalation || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
				slices.Contains(sc.Capabilities.Add, "SYS_ADMIN") || slices.Contains(sc.Capabilities.Add, "NET_ADMIN") || slices.Contains(sc.Capabilities.Add, "NET_RAW") || len(sc.Capabilities.Add) != 13 {
				t.Fatalf("security context %+v", sc)
			}
			if c.Command[0] != "/sbin/atelier-agent" || c.Command[1] != "init" || !slices.Contains(c.Args, "--listen-tls") {
				t.Fatalf("PID 1 %v %v", c.Command, c.Args)
			}
			req, lim := c.Resources.Requests, c.Resources.Limits
			if req.Cpu().String() != "2" || lim.Cpu().String() != "2" || req.Memory().String() != "3Gi" || lim.Memory().Value() != 3072<<20 {
				t.Fatalf("resources %v %v", req, lim)
			}
			if p.Labels[LabelSandbox] != "k8sspec00001" || p.Labels[LabelOwner] != "user-1" || p.Labels[LabelManaged] != ManagedBy {
				t.Fatalf("labels %v", p.Labels)
			}
			var secrets []string
			for _, v := range p.Spec.Volumes {
				if v.Secret != nil {
					secrets = append(secrets, v.Secret.SecretName)
					if *v.Secret.DefaultMode != 0o400 {
						t.Fatalf("credential mode %o", *v.Secret.DefaultMode)
					}
				}
			}
			if !slices.Equal(secrets, []string{SecretName("k8sspec00001")}) {
				t.Fatalf("secrets mounted %v", secrets)
			}
			for _, m := range c.VolumeMounts {
				if m.Name == tlsVolume && !m.ReadOnly {
					t.Fatal("credential mounted writable")
				}
			}
		})
	}
	// An owner id a label cannot hold is left out, not mangled.
	o := Options{Namespace: ns}
	if l := o.buildPod(sandbox.Instance{ID: "k8sspec00002", Owner: "github:someone@example"}, Image{}).Labels; l[LabelOwner] != "" {
		t.Fatalf("owner label %q", l[LabelOwner])
	}
}

func TestNetworkPolicy(t *testing.T) {
	deny := append(DefaultEgressDeny(), netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("0.0.0.0/0"))
	o := Options{Namespace: ns, RegistryPort: 4873, DNSServers: []string{"10.0.0.53"}, EgressDeny: deny,
		EgressAllow: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}}
	const id = "k8spolicy001"
	np := o.buildPolicy(id, "user-1")
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(k8slabels.Set(labels(id, "user-1", RoleSandbox))) || !sel.Matches(k8slabels.Set(labels(id, "", RoleFill))) {
		t.Fatal("the policy does not select the sandbox's pods")
	}
	if sel.Matches(k8slabels.Set(labels("k8spolicy002", "user-1", RoleSandbox))) {
		t.Fatal("the policy selects another sandbox")
	}
	if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}) {
		t.Fatalf("policy types %v", np.Spec.PolicyTypes)
	}
	// Ingress: the manager's pods only.
	if len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].From) != 1 {
		t.Fatalf("ingress %+v", np.Spec.Ingress)
	}
	from := np.Spec.Ingress[0].From[0]
	if from.IPBlock != nil || from.NamespaceSelector != nil || from.PodSelector.MatchLabels[LabelRole] != RoleManager {
		t.Fatalf("ingress from %+v", from)
	}
	// Egress, rule by rule.
	var internet *networkingv1.NetworkPolicyEgressRule
	var sawDNS, sawRegistry, sawAllow, sawOperatorDNS bool
	for i, r := range np.Spec.Egress {
		for _, to := range r.To {
			switch {
			case to.IPBlock != nil && to.IPBlock.CIDR == "0.0.0.0/0":
				internet = &np.Spec.Egress[i]
			case to.NamespaceSelector != nil && to.PodSelector.MatchLabels["k8s-app"] == "kube-dns":
				sawDNS = len(r.Ports) == 2 && r.Ports[0].Port.IntVal == 53
			case to.PodSelector != nil && to.PodSelector.MatchLabels[LabelRole] == RoleManager:
				sawRegistry = len(r.Ports) == 1 && r.Ports[0].Port.IntVal == 4873
			case to.IPBlock != nil && to.IPBlock.CIDR == "10.20.0.0/16":
				sawAllow = true
			case to.IPBlock != nil && to.IPBlock.CIDR == "10.0.0.53/32":
				sawOperatorDNS = len(r.Ports) == 2 && r.Ports[0].Port.IntVal == 53
			}
		}
	}
	if !sawDNS || !sawRegistry || !sawAllow || !sawOperatorDNS || internet == nil {
		t.Fatalf("egress rules: dns %v registry %v allow %v operator dns %v internet %v", sawDNS, sawRegistry, sawAllow, sawOperatorDNS, internet != nil)
	}
	except := internet.To[0].IPBlock.Except
	for _, must := range []string{"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8"} {
		if !slices.Contains(except, must) {
			t.Errorf("internet egress does not except %s: %v", must, except)
		}
	}
	if v6 := internet.To[1].IPBlock; v6.CIDR != "2000::/3" || !slices.Equal(v6.Except, []string{"2001:db8::/32"}) {
		t.Errorf("IPv6 egress %s except %v: want global unicast only, less the denied prefixes inside it", v6.CIDR, v6.Except)
	}
	if slices.Contains(except, "0.0.0.0/0") {
		t.Error("an except equal to its block (the API refuses the policy)")
	}
	if len(internet.Ports) != 0 {
		t.Errorf("internet egress limited to ports %v", internet.Ports)
	}
}

func TestParseImages(t *testing.T) {
	got, err := ParseImages([]string{"dev-base=localhost/atelier/dev-base:1", "node=reg.example:5000/a/node@sha256:abc"}, []string{"dev-base=dev-base-root"})
	if err != nil || got["dev-base"].Snapshot != "dev-base-root" || got["node"].Ref != "reg.example:5000/a/node@sha256:abc" {
		t.Fatalf("%+v %v", got, err)
	}
	for _, tc := range []struct{ images, snaps []string }{
		{[]string{"dev-base"}, nil},
		{[]string{"=ref"}, nil},
		{[]string{"a=x", "a=y"}, nil},
		{[]string{"a=x y"}, nil},
		{[]string{"a=x"}, []string{"b=snap"}},
		{[]string{"a=x"}, []string{"a=Bad/Name"}},
	} {
		if _, err := ParseImages(tc.images, tc.snaps); err == nil || !strings.Contains(err.Error(), "sandbox.kubernetes.") {
			t.Errorf("%v %v: %v", tc.images, tc.snaps, err)
		}
	}
}
