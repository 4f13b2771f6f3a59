package dashboard

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
)

func serve(h http.Handler, path string, hdr map[string]string) *httptest.ResponseRecorder {
	mux := http.NewServeMux()
	mux.Handle("GET /assets/{path...}", h)
	mux.Handle("GET /", h)
	req := httptest.NewRequest("GET", path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	return rec
}

// TestNotBuilt: a binary compiled before the web build says how to build
// the app, on every page and on /docs.
func TestNotBuilt(t *testing.T) {
	h := &Handler{cache: map[string]*asset{}, csp: CSP(nil)}
	for _, hd := range []http.Handler{h.App(), h.Docs()} {
		rec := serve(hd, "/sandboxes", nil)
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "make build") {
			t.Fatalf("not built: %d %s", rec.Code, rec.Body)
		}
		if rec.Header().Get("Content-Security-Policy") == "" {
			t.Fatal("no CSP on the not-built page")
		}
	}
	if rec := serve(h.Assets(), "/assets/index-abcdefgh.js", nil); rec.Code != http.StatusNotFound {
		t.Fatalf("asset of an unbuilt app: %d", rec.Code)
	}
}

func built() *Handler {
	big := strings.Repeat("console.log('atelier');\n", 200)
	return &Handler{cache: map[string]*asset{}, csp: CSP([]string{"https://*.example.com"}), files: fstest.MapFS{
		"index.html":                  {Data: []byte(`<script type="module" src="/assets/index-Ab12_-xY.js"></script><link rel="stylesheet" href="/assets/index-Zz12_-xY.css">`)},
		"docs.html":                   {Data: []byte("<title>docs</title>")},
		"assets/index-Ab12_-xY.js":    {Data: []byte(big)},
		"assets/index-Zz12_-xY.css":   {Data: []byte("body{}")},
		"assets/Terminal-Cd34_-xY.js": {Data: []byte(big + big)},
		"assets/logo.svg":             {Data: []byte("<svg/>")},
	}}
}

// TestHeaders: pages carry the CSP and anti-framing headers and are
// revalidated; hashed assets are immutable, others revalidated; text is
// served gzipped to clients that take it; nothing escapes assets/.
func TestHeaders(t *testing.T) {
	h := built()
	rec := serve(h.App(), "/sandboxes/abc", nil)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "/assets/index-Ab12_-xY.js") {
		t.Fatalf("page: %d %s", rec.Code, rec.Body)
	}
	csp := rec.Header().Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'self'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "frame-src https://*.example.com", "object-src 'none'", "base-uri 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "script-src 'self' 'unsafe") {
		t.Errorf("CSP allows inline or eval'd scripts: %q", csp)
	}
	if rec.Header().Get("X-Frame-Options") != "DENY" || rec.Header().Get("Cache-Control") != "no-cache" {
		t.Errorf("page headers %v", rec.Header())
	}

	rec = serve(h.Assets(), "/assets/index-Ab12_-xY.js", map[string]string{"Accept-Encoding": "br, gzip"})
	if rec.Header().Get("Cache-Control") != "public, max-age=31536000, immutable" || rec.Header().Get("Content-Encoding") != "gzip" {
		t.Fatalf("hashed asset headers %v", rec.Header())
	}
	zr, err := gzip.NewReader(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(zr); !strings.HasPrefix(string(b), "console.log") {
		t.Fatalf("gzipped body %q", b)
	}
	if !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/javascript") {
		t.Errorf("content type %q", rec.Header().Get("Content-Type"))
	}
	etag := rec.Header().Get("ETag")
	if rec := serve(h.Assets(), "/assets/index-Ab12_-xY.js", map[string]string{"If-None-Match": etag}); rec.Code != http.StatusNotModified {
		t.Errorf("revalidation: %d", rec.Code)
	}
	if rec := serve(h.Assets(), "/assets/logo.svg", nil); rec.Header().Get("Cache-Control") != "no-cache" || rec.Header().Get("Content-Encoding") != "" {
		t.Errorf("unhashed asset headers %v", rec.Header())
	}
	for _, p := range []string{"/assets/../index.html", "/assets/%2e%2e/docs.html", "/assets/nope.js"} {
		if rec := serve(h.Assets(), p, nil); rec.Code == 200 && !strings.Contains(rec.Body.String(), "console") {
			t.Errorf("%s served %q", p, rec.Body)
		}
	}
}

// TestGzipSizes: the first load counts the entry page's own script and
// style; the total counts every script and style.
func TestGzipSizes(t *testing.T) {
	first, total, err := built().GzipSizes()
	if err != nil {
		t.Fatal(err)
	}
	if first <= 0 || total <= first {
		t.Fatalf("first %d, total %d", first, total)
	}
}
