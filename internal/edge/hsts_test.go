package edge

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"

	"atelier/internal/config"
	"atelier/internal/edge/edgetest"
)

// TestHSTS checks every answer over HTTPS carries the edge's
// Strict-Transport-Security (the guest's own replaced), and none over plain
// HTTP, where browsers ignore it and it must not be sent.
func TestHSTS(t *testing.T) {
	cert, key, _ := edgetest.WildcardCert(t, "atelier.test")
	h := newHarness(t, func(c *config.Config, _ *Options) {
		c.Domain.TLS.CertPath, c.Domain.TLS.KeyPath = cert, key
	})
	// A guest that sets its own policy.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Strict-Transport-Security", "max-age=0")
		io.WriteString(w, "guest")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	h.sandbox(sbA, "127.0.0.1")
	ctx := context.Background()
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "pub", Port: l.Addr().(*net.TCPAddr).Port, Public: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.e.ExposeDev(ctx, sbA, DevExposure{Name: "web", Port: l.Addr().(*net.TCPAddr).Port}); err != nil {
		t.Fatal(err)
	}
	https := "127.0.0.1:" + strconv.Itoa(h.cfg.Domain.HTTPSPort)
	c := &http.Client{
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", https)
			},
		},
	}
	t.Cleanup(c.CloseIdleConnections)
	for _, tt := range []struct {
		name, host string
		status     int
	}{
		{"guest", "dev-pub-" + sbA + ".atelier.test", 200},
		{"dashboard", "sandbox.atelier.test", 200},
		{"login redirect", "dev-web-" + sbA + ".atelier.test", 302},
		{"unknown host page", "dev-nope-" + sbA + ".atelier.test", 404},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res, err := c.Get("https://" + tt.host + "/")
			if err != nil {
				t.Fatal(err)
			}
			body(t, res)
			if got := res.Header.Values("Strict-Transport-Security"); res.StatusCode != tt.status || len(got) != 1 || got[0] != HSTS {
				t.Fatalf("%d, Strict-Transport-Security %q, want %d and only %q", res.StatusCode, got, tt.status, HSTS)
			}
		})
	}
	// Plain HTTP: the redirect to HTTPS carries none.
	res := h.do("GET", "dev-pub-"+sbA+".atelier.test", "/", nil)
	body(t, res)
	if res.StatusCode != http.StatusPermanentRedirect || res.Header.Get("Strict-Transport-Security") != "" {
		t.Fatalf("plain HTTP: %d, Strict-Transport-Security %q", res.StatusCode, res.Header.Get("Strict-Transport-Security"))
	}
}

// TestNoHSTSWithoutTLS: an edge serving plain HTTP (localhost, mock mode)
// never sends the header, even when the guest does.
func TestNoHSTSWithoutTLS(t *testing.T) {
	h := newHarness(t, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Strict-Transport-Security", "max-age=600")
		io.WriteString(w, "guest")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	h.sandbox(sbA, "127.0.0.1")
	if _, err := h.e.ExposeDev(context.Background(), sbA, DevExposure{Name: "pub", Port: l.Addr().(*net.TCPAddr).Port, Public: true}); err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"dev-pub-" + sbA + ".atelier.test", "sandbox.atelier.test"} {
		res := h.do("GET", host, "/", nil)
		body(t, res)
		if res.StatusCode != 200 || res.Header.Get("Strict-Transport-Security") != "" {
			t.Fatalf("%s over HTTP: %d, Strict-Transport-Security %q", host, res.StatusCode, res.Header.Get("Strict-Transport-Security"))
		}
	}
}
