// Package dashboard serves the web app built from web/ (Vite writes it to
// dist/app, which git ignores) from the atelier binary itself: the pages of
// the single-page app, its hashed assets, and /docs, the OpenAPI document
// rendered by a bundled Swagger UI. Nothing is loaded from another origin.
//
// The embed compiles before the app is built (dist holds a committed
// README); the pages then say how to build it.
package dashboard

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"regexp"
	"strings"
	"sync"
)

//go:embed all:dist
var embedded embed.FS

// Pages are the app's client-side routes: each serves index.html and the
// app's router draws the page. The API server registers them as public
// routes (the shell carries no data; every call it makes is authenticated).
var Pages = []string{
	"/{$}", "/login", "/sandboxes", "/sandboxes/{id}", "/system", "/images", "/settings", "/workspaces",
}

// Options shape the headers of the app's pages.
type Options struct {
	// FrameSrc are the origins the app may frame: the sandbox hosts whose
	// tools (VS Code, OpenCode, the browser) the split view shows, e.g.
	// "https://*.example.com".
	FrameSrc []string
}

// Handler serves the built app, or the "not built" page.
type Handler struct {
	files fs.FS // rooted at the build output; nil when not built
	csp   string

	mu    sync.Mutex
	cache map[string]*asset
}

type asset struct {
	body, gz []byte
	etag     string
	ctype    string
}

// New loads the embedded build.
func New(o Options) *Handler {
	h := &Handler{cache: map[string]*asset{}}
	if sub, err := fs.Sub(embedded, "dist/app"); err == nil {
		if _, err := fs.Stat(sub, "index.html"); err == nil {
			h.files = sub
		}
	}
	h.csp = CSP(o.FrameSrc)
	return h
}

// CSP is the Content-Security-Policy of every page: scripts, styles, fonts,
// images and connections (fetch, the event stream, terminal WebSockets)
// from the dashboard's own origin only; frames only of the sandbox hosts;
// no plugins, no <base>, and no framing of the dashboard by anyone.
// Inline styles are allowed: xterm.js and Swagger UI set them; inline
// scripts are not.
func CSP(frameSrc []string) string {
	frames := "'none'"
	if len(frameSrc) > 0 {
		frames = strings.Join(frameSrc, " ")
	}
	return strings.Join([]string{
		"default-src 'self'",
		"script-src 'self'",
		"style-src 'self' 'unsafe-inline'",
		"img-src 'self' data: blob:",
		"font-src 'self' data:",
		"connect-src 'self'",
		"worker-src 'self' blob:",
		"frame-src " + frames,
		"frame-ancestors 'none'",
		"form-action 'self'",
		"base-uri 'none'",
		"object-src 'none'",
	}, "; ")
}

// Built reports whether the app was built into this binary.
func (h *Handler) Built() bool { return h.files != nil }

// App serves index.html for every page route.
func (h *Handler) App() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.page(w, r, "index.html")
	})
}

// Docs serves /docs: Swagger UI over /openapi.json.
func (h *Handler) Docs() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.page(w, r, "docs.html")
	})
}

// Assets serves /assets/{path...}. Names Vite hashed are immutable.
func (h *Handler) Assets() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(path.Clean("/"+r.PathValue("path")), "/")
		if h.files == nil || name == "" {
			http.NotFound(w, r)
			return
		}
		a, err := h.load("assets/" + name)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		if hashed.MatchString(name) {
			w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			w.Header().Set("Cache-Control", "no-cache")
		}
		h.write(w, r, a)
	})
}

// hashed matches the content hash Vite puts in asset names (name-3xKq9_aZ.js).
var hashed = regexp.MustCompile(`-[A-Za-z0-9_-]{8}\.[a-z0-9]+$`)

func (h *Handler) page(w http.ResponseWriter, r *http.Request, name string) {
	hdr := w.Header()
	hdr.Set("Content-Security-Policy", h.csp)
	hdr.Set("X-Frame-Options", "DENY")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "same-origin")
	hdr.Set("Cross-Origin-Opener-Policy", "same-origin")
	hdr.Set("Cache-Control", "no-cache")
	if h.files == nil {
		hdr.Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write(notBuilt)
		return
	}
	a, err := h.load(name)
	if err != nil {
		http.Error(w, "dashboard page missing from the build: "+name, http.StatusInternalServerError)
		return
	}
	h.write(w, r, a)
}

// write answers with the asset, gzipped when the client takes it.
func (h *Handler) write(w http.ResponseWriter, r *http.Request, a *asset) {
	hdr := w.Header()
	hdr.Set("Content-Type", a.ctype)
	hdr.Set("ETag", a.etag)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Add("Vary", "Accept-Encoding")
	if match := r.Header.Get("If-None-Match"); match != "" && strings.Contains(match, a.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	body := a.body
	if a.gz != nil && acceptsGzip(r) {
		hdr.Set("Content-Encoding", "gzip")
		body = a.gz
	}
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(body)
}

func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		enc, q, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(enc), "gzip") && strings.ReplaceAll(q, " ", "") != "q=0" {
			return true
		}
	}
	return false
}

// load reads a file of the build once and keeps it with its gzip form.
func (h *Handler) load(name string) (*asset, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if a, ok := h.cache[name]; ok {
		return a, nil
	}
	body, err := fs.ReadFile(h.files, name)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	a := &asset{body: body, etag: `"` + hex.EncodeToString(sum[:8]) + `"`, ctype: mime.TypeByExtension(path.Ext(name))}
	if a.ctype == "" {
		a.ctype = "application/octet-stream"
	}
	if compressible(a.ctype) && len(body) > 512 {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		_, _ = zw.Write(body)
		_ = zw.Close()
		a.gz = buf.Bytes()
	}
	h.cache[name] = a
	return a, nil
}

func compressible(ctype string) bool {
	for _, p := range []string{"text/", "application/javascript", "text/javascript", "application/json", "image/svg"} {
		if strings.HasPrefix(ctype, p) {
			return true
		}
	}
	return false
}

// GzipSizes reports the JS and CSS the app ships, compressed as served: the
// entry page's own scripts and styles (first load) and every page's
// (total; /docs's Swagger UI, loaded by /docs alone, is not counted). Zero
// when the app is not built.
func (h *Handler) GzipSizes() (firstLoad, total int, err error) {
	if h.files == nil {
		return 0, 0, nil
	}
	index, err := fs.ReadFile(h.files, "index.html")
	if err != nil {
		return 0, 0, err
	}
	first := map[string]bool{}
	for _, m := range assetRef.FindAllSubmatch(index, -1) {
		first["assets/"+string(m[1])] = true
	}
	err = fs.WalkDir(h.files, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if ext := path.Ext(p); (ext != ".js" && ext != ".css") || strings.HasPrefix(p, "assets/docs/") {
			return nil
		}
		a, err := h.load(p)
		if err != nil {
			return err
		}
		n := len(a.body)
		if a.gz != nil {
			n = len(a.gz)
		}
		total += n
		if first[p] {
			firstLoad += n
		}
		return nil
	})
	return firstLoad, total, err
}

var assetRef = regexp.MustCompile(`(?:src|href)="/assets/([^"]+\.(?:js|css))"`)

var notBuilt = []byte(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Atelier: dashboard not built</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; line-height: 1.5">
<h1>Dashboard not built</h1>
<p>This atelier binary was compiled without the web app. Build it with <code>make build</code>
(Node.js and npm are its only extra prerequisites) and start the manager again, or use <code>make run</code>.</p>
<p>The API works without it: its OpenAPI document is at <a href="/openapi.json">/openapi.json</a>.</p>
</body></html>
`)
