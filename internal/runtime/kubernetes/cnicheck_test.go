package kubernetes

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
)

func TestCheckPolicyEnforcement(t *testing.T) {
	for _, c := range []struct {
		name     string
		dialExit int32
		noImages bool
		stuck    bool
		enforced bool
		err      string
	}{
		{name: "connected", dialExit: probeConnected},
		{name: "blocked", dialExit: probeBlocked, enforced: true},
		// An agent without netcheck answers neither way: no answer, not
		// "enforced".
		{name: "unknown command", dialExit: 2, err: "no answer"},
		{name: "success is no answer", dialExit: 0, err: "no answer"},
		{name: "no image", noImages: true, err: "sandbox.kubernetes.images is empty"},
		{name: "listener never runs", stuck: true, err: "listener"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := newBed(t, func(o *Options) {
				o.AgentPath = "/sbin/atelier-agent"
				o.DefaultImage = "dev-base"
				if c.noImages {
					o.Images, o.DefaultImage = nil, ""
				}
			})
			b.k.dialExit = c.dialExit
			if c.stuck {
				b.k.external = true
				b.cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
					p := a.(k8stesting.CreateAction).GetObject().(*corev1.Pod)
					p.Status.Phase = corev1.PodPending
					p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "netcheck", State: corev1.ContainerState{
						Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImageNeverPull", Message: "image not present"}}}}
					return false, nil, nil
				})
			}
			// What the cluster holds when the dialer is created.
			var (
				listener, dialer *corev1.Pod
				policies         []string
				listed           []string
			)
			b.cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
				p := a.(k8stesting.CreateAction).GetObject().(*corev1.Pod)
				if !slices.Contains(p.Spec.Containers[0].Command, "dial") {
					listener = p
					return false, nil, nil
				}
				dialer = p
				// The tracker, not the clientset: a reactor holds its lock.
				gv := networkingv1.SchemeGroupVersion
				o, err := b.cs.Tracker().List(gv.WithResource("networkpolicies"), gv.WithKind("NetworkPolicy"), ns)
				if err != nil {
					t.Error(err)
					return false, nil, nil
				}
				for _, x := range o.(*networkingv1.NetworkPolicyList).Items {
					policies = append(policies, x.Name)
				}
				b.d.mu.Lock()
				defer b.d.mu.Unlock()
				// List takes the lock: read the probing set as it would.
				for id := range b.d.probing {
					listed = append(listed, id)
				}
				return false, nil, nil
			})
			enforced, err := b.d.CheckPolicyEnforcement(b.ctx)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("check: %v %v, want an error with %q", enforced, err, c.err)
				}
			} else if err != nil || enforced != c.enforced {
				t.Fatalf("check: enforced %v, %v; want %v", enforced, err, c.enforced)
			}
			// Nothing left: no Pod, no policy, no id the reconciler skips.
			pods, _ := b.cs.CoreV1().Pods(ns).List(b.ctx, metav1.ListOptions{})
			pols, _ := b.cs.NetworkingV1().NetworkPolicies(ns).List(b.ctx, metav1.ListOptions{})
			if len(pods.Items)+len(pols.Items) > 0 || len(b.d.probing) > 0 {
				t.Fatalf("left behind: %d pods, %d policies, probing %v", len(pods.Items), len(pols.Items), b.d.probing)
			}
			if c.noImages || c.stuck {
				return
			}
			lid, did := listener.Labels[LabelSandbox], dialer.Labels[LabelSandbox]
			if !IsProbe(lid) || !IsProbe(did) || lid == did {
				t.Fatalf("probe ids %q %q", lid, did)
			}
			if want := []string{PolicyName(did), PolicyName(lid)}; !slices.Equal(slices.Sorted(slices.Values(policies)), slices.Sorted(slices.Values(want))) {
				t.Fatalf("policies at dial time %v, want %v", policies, want)
			}
			if len(listed) != 2 {
				t.Fatalf("ids kept from the reconciler during the check: %v", listed)
			}
			want := []string{"/sbin/atelier-agent", "netcheck", "dial", "10.244.0.1:9998"}
			for _, p := range []*corev1.Pod{listener, dialer} {
				id := p.Labels[LabelSandbox]
				s := p.Spec
				if p.Name != ProbeName(id) || p.Labels[LabelManaged] != ManagedBy || p.Labels[LabelRole] != RoleProbe ||
					s.Containers[0].Image != "localhost/atelier/dev-base:test" || s.RestartPolicy != corev1.RestartPolicyNever ||
					len(s.Volumes) > 0 || len(s.Containers[0].VolumeMounts) > 0 || *s.AutomountServiceAccountToken ||
					s.ActiveDeadlineSeconds == nil || !reflect.DeepEqual(s.Containers[0].SecurityContext, securityContext()) ||
					s.Containers[0].Resources.Limits.Memory().Value() > 64<<20 {
					t.Fatalf("probe pod %s: %+v %+v", p.Name, p.ObjectMeta, s)
				}
				// The sandbox policy selects it.
				pol := b.d.opts.buildPolicy(id, "")
				for k, v := range pol.Spec.PodSelector.MatchLabels {
					if p.Labels[k] != v {
						t.Fatalf("policy %s does not select pod %s", pol.Name, p.Name)
					}
				}
			}
			if got := dialer.Spec.Containers[0].Command; !slices.Equal(got[:4], want) {
				t.Fatalf("dialer runs %v, want %v...", got, want)
			}
			if got := listener.Spec.Containers[0].Command; !slices.Equal(got[:4], []string{"/sbin/atelier-agent", "netcheck", "listen", ":9998"}) {
				t.Fatalf("listener runs %v", got)
			}
		})
	}
}

// A probe a dead manager left is an orphan the reconciler's inventory
// lists (and Destroy removes); while a check runs, its ids are not listed.
func TestProbeLeftoversListed(t *testing.T) {
	b := newBed(t)
	id := probeID()
	if err := b.d.ensurePolicy(b.ctx, id, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := b.cs.CoreV1().Pods(ns).Create(b.ctx, b.d.opts.buildProbePod(id, "x", "listen", ":1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	b.d.probing[id] = true
	if got, err := b.d.List(b.ctx); err != nil || len(got) != 0 {
		t.Fatalf("list during a check: %v %v", got, err)
	}
	delete(b.d.probing, id)
	if got, err := b.d.List(b.ctx); err != nil || !slices.Equal(got, []string{id}) {
		t.Fatalf("list: %v %v, want the leftover %s", got, err, id)
	}
	if err := b.d.Destroy(b.ctx, id); err != nil {
		t.Fatal(err)
	}
	if got := b.labelled(t, id); len(got) > 0 {
		t.Fatalf("left after Destroy: %v", got)
	}
}
