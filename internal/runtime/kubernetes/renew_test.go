package kubernetes

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"atelier/internal/agentpki"
	"atelier/internal/sandbox"
)

// A sandbox running for eleven months gets a new agent certificate in its
// Secret before the old one expires; a fresh one, a stopped sandbox's
// (no Secret) and a Secret that is not a sandbox's are left alone, and
// Upkeep looks at most once an hour.
func TestRenewAgentCerts(t *testing.T) {
	now := time.Now()
	clock := now
	b := newBed(t, func(o *Options) { o.Now = func() time.Time { return clock } })
	const old, fresh, stopped = "k8srenew0001", "k8srenew0002", "k8srenew0003"
	for _, id := range []string{old, fresh, stopped} {
		if _, err := b.d.Clone(b.ctx, "dev-base", id); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.d.Boot(b.ctx, sandbox.Instance{ID: old, Owner: "u1"}); err != nil {
		t.Fatal(err)
	}
	// Not close to expiry: nothing changes.
	if got, err := b.d.RenewAgentCerts(b.ctx); err != nil || len(got) != 0 {
		t.Fatalf("renewed a fresh certificate: %v %v", got, err)
	}
	first := b.agentCert(t, old)

	// Eleven and a half months later the old sandbox is still running; a
	// second one has just booted (its certificate is new).
	clock = now.Add(350 * 24 * time.Hour)
	if err := b.d.Boot(b.ctx, sandbox.Instance{ID: fresh, Owner: "u1"}); err != nil {
		t.Fatal(err)
	}
	// A Secret of the namespace that is not a sandbox's credential.
	other := buildSecret(ns, "k8srenew0009", "", nil, []byte("x"), nil)
	other.Name = "unrelated"
	if _, err := b.cs.CoreV1().Secrets(ns).Create(b.ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	freshSerial := b.agentCert(t, fresh).SerialNumber
	if err := b.d.Upkeep(b.ctx); err != nil {
		t.Fatal(err)
	}
	renewed := b.agentCert(t, old)
	if renewed.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("the certificate close to expiry was not renewed")
	}
	if !slices.Equal(renewed.DNSNames, []string{agentpki.ServerName(old)}) || renewed.NotAfter.Before(first.NotAfter) {
		t.Fatalf("renewed certificate: names %v, expires %v (old %v)", renewed.DNSNames, renewed.NotAfter, first.NotAfter)
	}
	if got := b.agentCert(t, fresh); got.SerialNumber.Cmp(freshSerial) != 0 {
		t.Fatal("a certificate far from expiry was renewed")
	}
	if got, _ := b.cs.CoreV1().Secrets(ns).Get(b.ctx, "unrelated", metav1.GetOptions{}); string(got.Data[agentpki.CertFile]) != "x" {
		t.Fatal("a Secret that is not a sandbox's credential was rewritten")
	}
	if _, err := b.cs.CoreV1().Secrets(ns).Get(b.ctx, SecretName(stopped), metav1.GetOptions{}); err == nil {
		t.Fatal("a credential was made for a sandbox that is not running")
	}
	// The renewed Secret still holds this sandbox's key for its certificate
	// and the CA, so the agent's server config loads it.
	sec, _ := b.cs.CoreV1().Secrets(ns).Get(b.ctx, SecretName(old), metav1.GetOptions{})
	dir := t.TempDir()
	for name, data := range sec.Data {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := agentpki.ServerConfig(dir); err != nil {
		t.Fatalf("the renewed credential does not load: %v", err)
	}

	// An unreadable certificate is replaced too, but Upkeep does not look
	// again within the hour; after it, it does.
	sec.Data[agentpki.CertFile] = []byte("broken")
	if _, err := b.cs.CoreV1().Secrets(ns).Update(b.ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(renewCheckEvery - time.Minute)
	if err := b.d.Upkeep(b.ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.cs.CoreV1().Secrets(ns).Get(b.ctx, SecretName(old), metav1.GetOptions{}); string(got.Data[agentpki.CertFile]) != "broken" {
		t.Fatal("upkeep looked again within the hour")
	}
	clock = clock.Add(time.Minute)
	if err := b.d.Upkeep(b.ctx); err != nil {
		t.Fatal(err)
	}
	if again := b.agentCert(t, old); again.SerialNumber.Cmp(renewed.SerialNumber) == 0 {
		t.Fatal("upkeep did not replace the unreadable certificate after an hour")
	}
}
