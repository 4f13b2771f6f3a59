package api

import (
	"mime"
	"net/http"
	"strings"

	"atelier/internal/dashboard"
)

// registerDashboard serves the web app (internal/dashboard) on the manager
// port, and so on the dashboard host the edge hands to this handler: its
// page routes, its assets, and /docs. Every one is public: the shell holds
// no data, and every call the app makes is authenticated like any client's.
func (s *Server) registerDashboard() {
	c := s.d.Config
	var frames []string
	if p := c.URLPatterns()["vscode"]; p != "" {
		// "https://sandbox-{id}.example.com:8443" -> "https://*.example.com:8443"
		if scheme, rest, ok := strings.Cut(p, "://"); ok {
			if _, host, ok := strings.Cut(rest, "."); ok {
				frames = append(frames, scheme+"://*."+host)
			}
		}
	}
	d := dashboard.New(dashboard.Options{FrameSrc: frames})
	s.dash = d
	app := d.App()
	for _, p := range dashboard.Pages {
		h := app
		if p == "/{$}" {
			h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if wantsJSON(r) {
					s.index(w, r)
					return
				}
				app.ServeHTTP(w, r)
			})
		}
		s.registerPage("GET "+p, h)
	}
	s.registerPage("GET /assets/{path...}", d.Assets())
	s.mux.Handle("GET /docs", d.Docs())
}

// registerPage serves a route of the web app: public, and not an API
// operation, so it is audited (Routes) but not in the OpenAPI document.
func (s *Server) registerPage(pattern string, h http.Handler) {
	method, path, _ := strings.Cut(pattern, " ")
	s.mux.Handle(pattern, h)
	s.raw = append(s.raw, Route{Method: method, Path: path, Public: true})
	s.pages++
}

// wantsJSON keeps GET / the JSON service index for clients that ask for
// JSON and not for HTML (scripts, curl -H 'Accept: application/json').
func wantsJSON(r *http.Request) bool {
	html, js := false, false
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		switch mt {
		case "text/html", "application/xhtml+xml":
			html = true
		case "application/json":
			js = true
		}
	}
	return js && !html
}
