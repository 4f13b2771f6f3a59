package kubernetes

import (
	"context"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// The Lease as the replicas' leader lock: one holder at a time, renewals,
// takeover once a holder stops renewing, a release handing over at once,
// and a write lost to another replica counted as lost, not as an error.
func TestLeaseLock(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	t0 := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	now := t0
	lock := func() *LeaseLock {
		return &LeaseLock{Client: cs, Namespace: "atelier", Name: "atelier-leader", Now: func() time.Time { return now }}
	}
	a, b := lock(), lock()
	const ttl = 15 * time.Second
	type want struct {
		won    bool
		holder string
	}
	step := func(what string, l *LeaseLock, holder string, w want) {
		t.Helper()
		won, cur, _, err := l.Acquire(ctx, holder, ttl)
		if err != nil || won != w.won || cur != w.holder {
			t.Fatalf("%s: %v %q %v, want %v %q", what, won, cur, err, w.won, w.holder)
		}
	}
	step("a creates the Lease", a, "a", want{true, "a"})
	step("b while a holds it", b, "b", want{false, "a"})
	now = t0.Add(ttl - time.Second)
	step("a renews", a, "a", want{true, "a"})
	now = t0.Add(2*ttl - 2*time.Second)
	step("b before the renewed lease ends", b, "b", want{false, "a"})
	now = t0.Add(2*ttl + time.Second)
	step("b once a stopped renewing", b, "b", want{true, "b"})
	step("a after losing it", a, "a", want{false, "b"})

	l, err := cs.CoordinationV1().Leases("atelier").Get(ctx, "atelier-leader", metav1.GetOptions{})
	if err != nil || *l.Spec.HolderIdentity != "b" || *l.Spec.LeaseDurationSeconds != 15 || l.Spec.LeaseTransitions == nil || *l.Spec.LeaseTransitions != 1 {
		t.Fatalf("lease object: %+v %v", l, err)
	}
	if err := a.Release(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	step("a's release of b's lease changes nothing", a, "a", want{false, "b"})
	if err := b.Release(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	step("a at once after b's release", a, "a", want{true, "a"})

	// Two replicas read the same expired Lease; the API server takes the
	// first update and refuses the second (resourceVersion): that one lost.
	now = now.Add(2 * ttl)
	cs.PrependReactor("update", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewConflict(schema.GroupResource{Group: coordinationv1.GroupName, Resource: "leases"}, "atelier-leader", nil)
	})
	if won, _, _, err := b.Acquire(ctx, "b", ttl); err != nil || won {
		t.Fatalf("b losing the update race: %v %v, want lost without error", won, err)
	}
}
