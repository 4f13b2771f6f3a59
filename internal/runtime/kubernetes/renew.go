package kubernetes

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"atelier/internal/agentpki"
)

// RenewBefore is how long before its expiry an agent's certificate is
// replaced. Certificates last a year and every boot issues a new one, so
// only a sandbox that has run for eleven months without a restart gets
// here; without renewal the manager could no longer reach its agent.
const RenewBefore = 30 * 24 * time.Hour

// renewCheckEvery bounds how often Upkeep reads the Secrets: the reconciler
// calls it at every pass, and a month's margin needs no finer look.
const renewCheckEvery = time.Hour

// Upkeep is the reconciler's chore for this runtime: at most once an hour,
// renew the agent certificates that are close to expiry.
func (d *Driver) Upkeep(ctx context.Context) error {
	now := d.now()
	d.mu.Lock()
	due := d.renewedAt.IsZero() || now.Sub(d.renewedAt) >= renewCheckEvery
	d.mu.Unlock()
	if !due {
		return nil
	}
	if _, err := d.RenewAgentCerts(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	d.renewedAt = now
	d.mu.Unlock()
	return nil
}

// RenewAgentCerts replaces, in place, every sandbox Secret whose agent
// certificate expires within RenewBefore (or cannot be read) with a new
// certificate and key from the CA, and returns the sandboxes renewed. The
// kubelet updates the Pod's mounted files (a Secret volume, not a subPath)
// and the agent re-reads them when they change, so a running sandbox keeps
// its agent reachable without a restart. A Secret deleted or replaced
// meanwhile (a stop, a boot) is left to that operation.
func (d *Driver) RenewAgentCerts(ctx context.Context) ([]string, error) {
	secrets := d.cs.CoreV1().Secrets(d.opts.Namespace)
	list, err := secrets.List(ctx, metav1.ListOptions{LabelSelector: LabelManaged + "=" + ManagedBy})
	if err != nil {
		return nil, fmt.Errorf("list agent credentials: %w", err)
	}
	now := d.now()
	var renewed []string
	for i := range list.Items {
		sec := &list.Items[i]
		id := sec.Labels[LabelSandbox]
		if checkID(id) != nil || sec.Name != SecretName(id) {
			continue
		}
		expiry, ok := certExpiry(sec.Data[agentpki.CertFile])
		if ok && expiry.Sub(now) > RenewBefore {
			continue
		}
		certPEM, keyPEM, err := d.opts.CA.IssueAgentAt(id, d.now())
		if err != nil {
			return renewed, err
		}
		upd := sec.DeepCopy()
		upd.Data = map[string][]byte{agentpki.CAFile: d.opts.CA.CertPEM(), agentpki.CertFile: certPEM, agentpki.KeyFile: keyPEM}
		if _, err := secrets.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
			if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
				continue
			}
			return renewed, fmt.Errorf("renew agent credential of %s: %w", id, err)
		}
		d.log.Info("agent certificate renewed", "sandbox_id", id, "expired", expiry.Format(time.RFC3339), "readable", ok)
		renewed = append(renewed, id)
	}
	return renewed, nil
}

func certExpiry(certPEM []byte) (time.Time, bool) {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return time.Time{}, false
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return time.Time{}, false
	}
	return c.NotAfter, true
}

func (d *Driver) now() time.Time {
	if d.opts.Now != nil {
		return d.opts.Now()
	}
	return time.Now()
}
