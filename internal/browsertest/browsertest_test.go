package browsertest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"testing"
)

// TestRun shows the harness drives a real Chromium: a page served on
// loopback under a mapped name is rendered and its text read back.
func TestRun(t *testing.T) {
	Require(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><meta charset="utf-8"><p id="x">host=%s</p>`, r.Host)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port

	var got string
	err = Run(t, context.Background(), Options{
		MapHosts: []string{"*.atelier.test"},
		Args:     map[string]any{"url": fmt.Sprintf("http://a.atelier.test:%d/", port)},
		Script:   `await page.goto(args.url); return await page.textContent('#x');`,
	}, &got)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("host=a.atelier.test:%d", port); got != want {
		t.Fatalf("page text %q, want %q", got, want)
	}
}
