package kubernetes

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
)

// protectClaims plays the API server's claim protection on the fake
// clientset: a deleted claim is only marked terminating (still readable,
// filled), and goes after linger, as once the protection controller has
// removed its finalizer.
func protectClaims(t *testing.T, b *bed, linger time.Duration) {
	t.Helper()
	gvr := corev1.SchemeGroupVersion.WithResource("persistentvolumeclaims")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); wg.Wait() })
	b.cs.PrependReactor("delete", "persistentvolumeclaims", func(a k8stesting.Action) (bool, runtime.Object, error) {
		da := a.(k8stesting.DeleteAction)
		obj, err := b.cs.Tracker().Get(gvr, da.GetNamespace(), da.GetName())
		if err != nil {
			return true, nil, err
		}
		pvc := obj.(*corev1.PersistentVolumeClaim).DeepCopy()
		if pvc.DeletionTimestamp != nil {
			return true, nil, nil
		}
		now := metav1.Now()
		pvc.DeletionTimestamp = &now
		if err := b.cs.Tracker().Update(gvr, pvc, da.GetNamespace()); err != nil {
			return true, nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-time.After(linger):
				_ = b.cs.Tracker().Delete(gvr, da.GetNamespace(), da.GetName())
			case <-stop:
			}
		}()
		return true, nil, nil
	})
}

// A deleted disk lingers (terminating, still filled) until its protection
// is lifted. Delete returns only once it is gone, and a create that meets
// one being deleted (another manager's undo) waits and makes a new disk
// instead of booting on the vanishing one; a claim that never goes fails
// the wait at PodTimeout.
func TestDeletedClaimIsNeverReused(t *testing.T) {
	cases := []struct {
		name string
		// wait: Delete itself waits (else the claim is marked terminating
		// behind the driver's back and Clone meets it).
		wait   bool
		linger time.Duration
		err    bool
	}{
		{name: "delete waits until gone", wait: true, linger: 300 * time.Millisecond},
		{name: "clone waits for a terminating claim", linger: 300 * time.Millisecond},
		{name: "a claim that never goes times out", wait: true, linger: time.Hour, err: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := newBed(t)
			const id = "k8sclaim0001"
			if _, err := b.d.Clone(b.ctx, "dev-base", id); err != nil {
				t.Fatal(err)
			}
			protectClaims(t, b, tc.linger)
			if tc.wait {
				begin := time.Now()
				err := b.d.Delete(b.ctx, id)
				if tc.err {
					if err == nil || !errors.Is(err, context.DeadlineExceeded) {
						t.Fatalf("delete of a claim that stays: %v, want a timeout", err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if _, err := b.cs.CoreV1().PersistentVolumeClaims(ns).Get(b.ctx, ClaimName(id), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
					t.Fatalf("delete returned after %s with the claim still there: %v", time.Since(begin), err)
				}
			} else if err := b.cs.CoreV1().PersistentVolumeClaims(ns).Delete(b.ctx, ClaimName(id), metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, err := b.d.Clone(b.ctx, "dev-base", id); err != nil {
				t.Fatal(err)
			}
			pvc, err := b.cs.CoreV1().PersistentVolumeClaims(ns).Get(b.ctx, ClaimName(id), metav1.GetOptions{})
			if err != nil || pvc.DeletionTimestamp != nil || b.k.created[RoleFill] != 2 {
				t.Fatalf("the create after a delete: claim %+v (%v), %d fills; want a new claim, filled again", pvc, err, b.k.created[RoleFill])
			}
		})
	}
}
