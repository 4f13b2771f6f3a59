package kubernetes

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// LeaseLock is the manager replicas' leader lock as a Kubernetes Lease
// (coordination.k8s.io/v1) in the manager's namespace, for a deployment
// on a cluster: the holder and its renew time live in the API server, which
// orders the replicas' writes by resourceVersion, so two replicas that read
// the same expired Lease cannot both take it (the second update is a
// conflict). The manager's Role grants get, create and update on leases;
// a release clears the holder rather than deleting the object.
type LeaseLock struct {
	Client    kubernetes.Interface
	Namespace string
	// Name of the Lease; one per job that must run once.
	Name string
	// Now replaces time.Now (tests).
	Now func() time.Time
}

func (l *LeaseLock) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// Acquire makes holder the Lease's holder for ttl when nobody holds it, the
// holder's lease ran out, or holder holds it already (a renewal). It
// reports whether holder holds it, the current holder and when its lease
// ends. A write lost to another replica is not an error: that one won.
func (l *LeaseLock) Acquire(ctx context.Context, holder string, ttl time.Duration) (bool, string, time.Time, error) {
	if holder == "" || ttl < time.Second {
		return false, "", time.Time{}, fmt.Errorf("lease %s: empty holder or ttl %s under a second", l.Name, ttl)
	}
	leases := l.Client.CoordinationV1().Leases(l.Namespace)
	now := l.now()
	secs := int32((ttl + time.Second - 1) / time.Second)
	mine := coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &secs,
		RenewTime: &metav1.MicroTime{Time: now}}
	cur, err := leases.Get(ctx, l.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		mine.AcquireTime = &metav1.MicroTime{Time: now}
		_, err := leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: l.Name, Namespace: l.Namespace,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "atelier"}}, Spec: mine}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return l.Acquire(ctx, holder, ttl) // another replica created it first: read its claim
		}
		if err != nil {
			return false, "", time.Time{}, fmt.Errorf("create lease %s/%s: %w", l.Namespace, l.Name, err)
		}
		return true, holder, now.Add(ttl), nil
	}
	if err != nil {
		return false, "", time.Time{}, fmt.Errorf("get lease %s/%s: %w", l.Namespace, l.Name, err)
	}
	other, ends := holderOf(cur)
	if other != "" && other != holder && now.Before(ends) {
		return false, other, ends, nil
	}
	next := cur.DeepCopy()
	if other != holder {
		mine.AcquireTime = &metav1.MicroTime{Time: now}
		n := int32(0)
		if cur.Spec.LeaseTransitions != nil {
			n = *cur.Spec.LeaseTransitions
		}
		n++
		mine.LeaseTransitions = &n
	} else {
		mine.AcquireTime, mine.LeaseTransitions = cur.Spec.AcquireTime, cur.Spec.LeaseTransitions
	}
	next.Spec = mine
	if _, err := leases.Update(ctx, next, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsConflict(err) {
			// Another replica wrote first; its claim stands.
			return false, other, ends, nil
		}
		return false, "", time.Time{}, fmt.Errorf("update lease %s/%s: %w", l.Namespace, l.Name, err)
	}
	return true, holder, now.Add(ttl), nil
}

// Release clears holder's claim so another replica takes over at once; a
// Lease held by someone else, or by nobody, is left alone.
func (l *LeaseLock) Release(ctx context.Context, holder string) error {
	leases := l.Client.CoordinationV1().Leases(l.Namespace)
	cur, err := leases.Get(ctx, l.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get lease %s/%s: %w", l.Namespace, l.Name, err)
	}
	if h, _ := holderOf(cur); h != holder {
		return nil
	}
	next := cur.DeepCopy()
	next.Spec.HolderIdentity = nil
	if _, err := leases.Update(ctx, next, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("release lease %s/%s: %w", l.Namespace, l.Name, err)
	}
	return nil
}

// holderOf is a Lease's holder and when its claim ends (renew time plus
// duration); no holder or no renew time is an expired claim.
func holderOf(l *coordinationv1.Lease) (string, time.Time) {
	s := l.Spec
	if s.HolderIdentity == nil || s.RenewTime == nil || s.LeaseDurationSeconds == nil {
		return "", time.Time{}
	}
	return *s.HolderIdentity, s.RenewTime.Add(time.Duration(*s.LeaseDurationSeconds) * time.Second)
}
