package kubernetes

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"atelier/internal/agentpki"
	"atelier/internal/kubetest"
)

// TestPolicyCheckOnCluster runs the policy check on a real bed twice: its
// bridge CNI alone ignores NetworkPolicies (the check must say so), and
// with kube-router enforcing them (the check must see the dialer blocked).
// Either way the probes leave nothing behind.
func TestPolicyCheckOnCluster(t *testing.T) {
	for _, c := range []struct {
		name string
		opts []kubetest.Option
		want bool
	}{
		{"bridge only", nil, false},
		{"kube-router", []kubetest.Option{kubetest.WithNetworkPolicies()}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			begin := time.Now()
			bed := kubetest.Start(t, c.opts...)
			ns := bed.Namespace(t)
			ref := agentImage(t, bed)
			ca, err := agentpki.LoadOrCreate(filepath.Join(t.TempDir(), "ca"))
			if err != nil {
				t.Fatal(err)
			}
			d, err := New(bed.Clientset(), Options{
				Namespace: ns, Images: map[string]Image{"dev-base": {Ref: ref}}, AgentPath: "/sbin/atelier-agent",
				CA: ca, PodTimeout: 3 * time.Minute, Poll: 200 * time.Millisecond, Log: slog.New(slog.DiscardHandler),
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			t.Logf("bed and image ready in %v", time.Since(begin).Round(time.Millisecond))
			begin = time.Now()
			enforced, err := d.CheckPolicyEnforcement(ctx)
			t.Logf("check: enforced=%v err=%v in %v", enforced, err, time.Since(begin).Round(time.Millisecond))
			if err != nil || enforced != c.want {
				t.Fatalf("check: enforced %v, %v; want %v", enforced, err, c.want)
			}
			cs := bed.Clientset()
			pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			pols, err := cs.NetworkingV1().NetworkPolicies(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(pods.Items)+len(pols.Items) > 0 {
				t.Fatalf("left behind: %d pods, %d policies", len(pods.Items), len(pols.Items))
			}
		})
	}
}
