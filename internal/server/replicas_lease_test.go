package server

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	netmock "atelier/internal/network/mock"
	"atelier/internal/runtime/kubernetes"
	rtmock "atelier/internal/runtime/mock"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
	"atelier/internal/store"
	"atelier/internal/testenv"
)

// Replicas on a cluster lead through a Kubernetes Lease (here a fake
// clientset's): one leads, the store's own lease row is never written, and
// the other takes over at once when the leader stops and releases it.
func TestReplicasLeadThroughAKubernetesLease(t *testing.T) {
	url := testenv.PostgresDB(t)
	cs := fake.NewClientset()
	withLease := func(o *Options) {
		o.LeaderLock = &kubernetes.LeaseLock{Client: cs, Namespace: "atelier", Name: leaseName}
	}
	drv := &sandbox.Drivers{Runtime: rtmock.New(), Network: netmock.New(), Volumes: stmock.New(t.TempDir())}
	const ttl = 2 * time.Second
	a, _, stopA := replicaWith(t, url, drv, ttl, withLease)
	waitFor(t, 5*time.Second, "A leads", a.Leading)
	b, _, _ := replicaWith(t, url, drv, ttl, withLease)
	time.Sleep(ttl / 2)
	if b.Leading() {
		t.Fatal("B leads while A holds the Lease")
	}
	l, err := cs.CoordinationV1().Leases("atelier").Get(context.Background(), leaseName, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != a.ReplicaID() {
		t.Fatalf("the Lease: %+v %v, want held by A (%s)", l, err, a.ReplicaID())
	}
	var row store.Leadership
	if found, err := a.Store.GetSetting(context.Background(), "leader:"+leaderName, &row); err != nil || found {
		t.Fatalf("the store's lease row was written (%+v, %v): the Lease is the only lock", row, err)
	}
	stopA()
	took := waitFor(t, ttl, "B leads once A released the Lease", b.Leading)
	t.Logf("B led %s after A stopped (Lease released, %s TTL)", took.Round(time.Millisecond), ttl)
}
