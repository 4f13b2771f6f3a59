package edge

import (
	"fmt"
	"html"
	"net/http"
)

// page is one of the edge's own answers: never an empty 200 or a bare 502.
type pageKind struct {
	title   string
	message string
	// refresh reloads the page after this many seconds (0: never).
	refresh int
}

var (
	pageUnknown  = pageKind{"No such sandbox", "There is no sandbox service at %s. The sandbox may have been deleted, or the dev command is not exposed.", 0}
	pageStopped  = pageKind{"Sandbox not running", "The sandbox behind %s is not running. Start it from the dashboard.", 0}
	pageStarting = pageKind{"Starting…", "Nothing answers at %s yet: the sandbox or its service is still starting. This page reloads by itself.", 2}
	pageSignIn   = pageKind{"Sign in required", "%s needs a dashboard login. Open it in a browser to sign in.", 0}
	pageBadCode  = pageKind{"Login link expired", "The login link for %s is invalid or was already used. Reload the sandbox page to sign in again.", 0}
	pageLoop     = pageKind{"Loop", "%s points at the edge's own port.", 0}
	// pageMockTool answers the tool hosts in mock mode, whose "guests" are
	// processes on this machine: routing them to its 8080, 3000 and 6080
	// would show whatever the developer runs there.
	pageMockTool = pageKind{"Not in mock mode", "%s would be a sandbox's VS Code, OpenCode or browser. In mock mode a sandbox is a local process of yours, with none of them: use exec, the terminal and its dev commands, whose exposed hosts are served.", 0}
	// pageCrossOrigin answers a write or WebSocket another site's page sent.
	pageCrossOrigin = pageKind{"Cross-site request refused", "%s accepts changes and WebSockets only from its own pages; this request came from another site.", 0}
)

func (e *Edge) page(w http.ResponseWriter, status int, p pageKind, host string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	refresh := ""
	if p.refresh > 0 {
		h.Set("Retry-After", fmt.Sprint(p.refresh))
		refresh = fmt.Sprintf(`<meta http-equiv="refresh" content="%d">`, p.refresh)
	}
	w.WriteHeader(status)
	msg := fmt.Sprintf(html.EscapeString(p.message), "<b>"+html.EscapeString(host)+"</b>")
	fmt.Fprintf(w, `<!doctype html><html><head><meta charset="utf-8"><title>%s</title>%s
<style>body{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222}h1{font-size:1.4em}</style>
</head><body><h1>%s</h1><p>%s</p><p><a href="%s">Dashboard</a></p></body></html>
`, html.EscapeString(p.title), refresh, html.EscapeString(p.title), msg, html.EscapeString(e.dashboardURL))
}
