package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddytls"

	"atelier/internal/config"
	"atelier/internal/store"
)

// TestDevHostFlood replays the flood of issue 10 (one sandbox registered
// 1 024 hosts in 0.6 s) with the default caps: a sandbox stops at
// domain.maxDevHostsPerSandbox, a user's sandboxes together at
// domain.maxDevHostsPerUser, and what was refused never reaches the table.
func TestDevHostFlood(t *testing.T) {
	h := newHarness(t, nil)
	perSandbox, perUser := h.cfg.Domain.MaxDevHostsPerSandbox, h.cfg.Domain.MaxDevHostsPerUser
	if perSandbox != 32 || perUser != 128 {
		t.Fatalf("defaults %d/%d, want 32/128", perSandbox, perUser)
	}
	ctx := context.Background()
	ids := []string{sbA, sbB, "cccccccccccc", "dddddddddddd", "eeeeeeeeeeee", "ffffffffffff"}
	total := 0
	for _, id := range ids {
		h.sandbox(id, "127.0.0.1") // all of user u1
		ok := 0
		for i := 0; i < 40; i++ {
			_, err := h.e.ExposeDev(ctx, id, DevExposure{Name: "n" + strconv.Itoa(i), Port: 3000})
			var qe *QuotaError
			switch {
			case err == nil:
				ok++
			case errors.As(err, &qe):
				// The sandbox's cap is checked first when both are full.
				wantKey := "domain.maxDevHostsPerSandbox"
				if ok < perSandbox {
					wantKey = "domain.maxDevHostsPerUser"
				}
				if qe.Key != wantKey || !strings.Contains(err.Error(), wantKey) {
					t.Fatalf("sandbox %s, expose %d: %v, want %s", id, i, err, wantKey)
				}
			default:
				t.Fatalf("expose %d: %v", i, err)
			}
		}
		total += ok
		if want := min(perSandbox, perUser-(total-ok)); ok != want {
			t.Fatalf("sandbox %s took %d dev hosts, want %d", id, ok, want)
		}
	}
	if total != perUser {
		t.Fatalf("the user holds %d dev hosts, want %d", total, perUser)
	}
	rs, err := h.st.ListRoutes(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	dev := 0
	for _, r := range rs {
		if r.Kind == store.RouteDev {
			dev++
		}
	}
	if dev != perUser || h.e.table.len() != len(rs) {
		t.Fatalf("%d dev routes stored, %d routes in the table for %d stored", dev, h.e.table.len(), len(rs))
	}
	// Another user is not held back by this one.
	if err := h.st.InsertSandbox(ctx, store.Sandbox{ID: "gggggggggggg", OwnerID: "u2", Image: "dev-base", Status: store.StatusRunning, IP: "127.0.0.1"}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := h.e.ExposeDev(ctx, "gggggggggggg", DevExposure{Name: "web", Port: 3000}); err != nil {
		t.Fatalf("another user: %v", err)
	}
}

// TestNewCertificateRate: on-demand issuance for known hosts is a token
// bucket of domain.tls.maxNewCertsPerHour; the dashboard and hosts whose
// certificate is already in storage (loads and renewals ask too) never
// wait for it.
func TestNewCertificateRate(t *testing.T) {
	h := newHarness(t, func(c *config.Config, _ *Options) { c.Domain.TLS.MaxNewCertsPerHour = 2 })
	h.sandbox(sbA, "127.0.0.1") // sandbox-, opencode-, browser-
	ctx := context.Background()
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "web", Port: 3000, Aliases: []DevAlias{{"a", 3001}, {"b", 3002}}}); err != nil {
		t.Fatal(err)
	}
	host := func(label string) string { return label + "-" + sbA + ".atelier.test" }
	// A certificate an earlier run obtained, as certmagic stores it.
	stored := host("dev-web-b")
	dir := filepath.Join(h.cfg.Server.DataDir, "caddy", "certificates", "acme-v02.api.letsencrypt.org-directory", stored)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, stored+".crt"), []byte("-----BEGIN CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &permission{e: h.e}
	steps := []struct {
		name      string
		host      string
		advance   time.Duration
		allowed   bool
		throttled bool
	}{
		{"first new host", host("sandbox"), 0, true, false},
		{"second new host", host("opencode"), 0, true, false},
		{"third within the hour", host("browser"), 0, false, true},
		{"the dashboard", "sandbox.atelier.test", 0, true, false},
		{"a host with a stored certificate", stored, 0, true, false},
		{"unknown name: refused, not throttled", "dev-nope-" + sbA + ".atelier.test", 0, false, false},
		{"half an hour later: one more", host("browser"), 30 * time.Minute, true, false},
		{"and then none", host("dev-web"), 0, false, true},
		{"an hour later", host("dev-web"), time.Hour, true, false},
	}
	throttled := int64(0)
	for _, st := range steps {
		h.clock.add(st.advance)
		err := p.CertificateAllowed(ctx, st.host)
		if (err == nil) != st.allowed || (err != nil && !errors.Is(err, caddytls.ErrPermissionDenied)) {
			t.Fatalf("%s: %v, want allowed=%v", st.name, err, st.allowed)
		}
		if st.throttled {
			throttled++
			if !strings.Contains(err.Error(), "domain.tls.maxNewCertsPerHour") {
				t.Fatalf("%s: %v does not name the key", st.name, err)
			}
		}
		if got := h.e.throttledCerts.Load(); got != throttled {
			t.Fatalf("%s: %d throttled, want %d", st.name, got, throttled)
		}
	}

	// 0 is no limit.
	cfg := testConfig(t)
	cfg.Domain.TLS.MaxNewCertsPerHour = 0
	if e, err := New(Options{Config: cfg, Store: h.st, Log: h.e.log}); err != nil || e.newCerts != nil {
		t.Fatalf("maxNewCertsPerHour 0: limiter %v, %v", e.newCerts, err)
	}
}

// TestNewCertificateRateAtHandshake: with the hour's budget spent, a TLS
// handshake for a known host without a certificate fails in the permission
// module, before any ACME exchange, and nothing is stored.
func TestNewCertificateRateAtHandshake(t *testing.T) {
	h := newHarness(t, func(c *config.Config, _ *Options) {
		c.Domain.TLS.Email = "ops@atelier.test"
		c.Domain.TLS.MaxNewCertsPerHour = 1
	})
	if h.e.TLSMode() != TLSACME {
		t.Fatalf("mode %s", h.e.TLSMode())
	}
	h.sandbox(sbA, "127.0.0.1")
	// Spend the budget without reaching a CA, which tests cannot.
	if err := h.e.CertificateAllowed("sandbox-" + sbA + ".atelier.test"); err != nil {
		t.Fatal(err)
	}
	name := "opencode-" + sbA + ".atelier.test"
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp",
		"127.0.0.1:"+strconv.Itoa(h.cfg.Domain.HTTPSPort), &tls.Config{ServerName: name, InsecureSkipVerify: true})
	if err == nil {
		conn.Close()
		t.Fatalf("TLS handshake for %s succeeded", name)
	}
	if n := h.e.throttledCerts.Load(); n != 1 {
		t.Fatalf("%d issuances deferred, want 1 (handshake error: %v)", n, err)
	}
	if m, _ := filepath.Glob(filepath.Join(h.cfg.Server.DataDir, "caddy", "certificates", "*", "*")); len(m) != 0 {
		t.Fatalf("certificates stored: %v", m)
	}
}
