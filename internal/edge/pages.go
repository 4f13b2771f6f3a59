package edge

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"strings"

	"atelier/internal/agent"
	"atelier/internal/sandbox"
	"atelier/internal/store"
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
	msg := fmt.Sprintf(html.EscapeString(p.message), "<b>"+html.EscapeString(host)+"</b>")
	e.render(w, status, p.title, msg, p.refresh, e.dashboardURL, "Dashboard")
}

// render writes one of the edge's pages; msgHTML is already escaped. The
// page has no script and no form: its one action is a link to the
// dashboard, whose own page makes any change (a form here would be a
// cross-origin write the dashboard refuses). The link leaves a frame: the
// dashboard shows the tool hosts in frames.
func (e *Edge) render(w http.ResponseWriter, status int, title, msgHTML string, refresh int, link, linkText string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	meta := ""
	if refresh > 0 {
		h.Set("Retry-After", fmt.Sprint(refresh))
		meta = fmt.Sprintf(`<meta http-equiv="refresh" content="%d">`, refresh)
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, `<!doctype html><html><head><meta charset="utf-8"><title>%s</title>%s
<style>body{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222}h1{font-size:1.4em}</style>
</head><body><h1>%s</h1><p>%s</p><p><a href="%s" target="_top">%s</a></p></body></html>
`, html.EscapeString(title), meta, html.EscapeString(title), msgHTML, html.EscapeString(link), html.EscapeString(linkText))
}

// toolNames are what the starting page calls the service of a tool host.
var toolNames = map[string]string{
	store.RouteVSCode:   "VS Code",
	store.RouteOpenCode: "OpenCode",
	store.RouteBrowser:  "The browser",
}

// Services tells the starting page of a tool host which service it waits
// for and in what state (the lifecycle service's cache of the agents'
// reports; it spends at most half a second on a slow agent).
type Services interface {
	ServiceByRole(ctx context.Context, sandboxID, role string, fresh bool) (st sandbox.ServiceState, ok, known bool)
}

// SetServices installs the source of service states; nil: the starting
// page names no service.
func (e *Edge) SetServices(s Services) { e.services.Store(&s) }

func (e *Edge) servicesOf() Services {
	if p := e.services.Load(); p != nil {
		return *p
	}
	return nil
}

// servicePage is the answer for a tool host whose service is known not to
// come up by waiting (off, failed), ok false otherwise. An image without
// the service is told only after the wait: the owner may serve the port
// with a program of their own.
func (e *Edge) servicePage(ctx context.Context, t target) (title, msg string, refresh int, link, linkText string, ok bool) {
	name, tool := toolNames[t.kind]
	svcs := e.servicesOf()
	if !tool || svcs == nil {
		return
	}
	st, has, known := svcs.ServiceByRole(ctx, t.sandboxID, t.kind, true)
	if !known {
		return
	}
	sbPage := strings.TrimSuffix(e.dashboardURL, "/") + "/sandboxes/" + t.sandboxID
	switch {
	case !has:
		return
	case st.State == agent.StateFailed || (st.State == agent.StateExited && st.Wanted):
		why := ""
		if st.LastError != "" {
			why = " (" + html.EscapeString(st.LastError) + ")"
		}
		return name + " failed", fmt.Sprintf("%s could not start or keeps stopping%s. Its log and a restart are on the sandbox's page in the dashboard; this page reloads by itself.", html.EscapeString(name), why), 5, sbPage, "Open the sandbox in the dashboard", true
	case !st.Wanted && (st.State == agent.StateStopped || st.State == agent.StateExited):
		if t.kind == store.RouteBrowser {
			return "The browser is off", "The browser of this sandbox starts on demand, since it costs memory. Start it from the sandbox's page in the dashboard; this page reloads by itself and shows it once it answers.", 5, sbPage + "#browser", "Start the browser from the dashboard", true
		}
		return name + " is stopped", fmt.Sprintf("%s was stopped. Start it from the sandbox's page in the dashboard; this page reloads by itself.", html.EscapeString(name)), 5, sbPage, "Open the sandbox in the dashboard", true
	}
	return
}

// starting answers a request that found its guest port closed: for a tool
// host, the page names the service and its state; otherwise the plain
// starting page.
func (e *Edge) starting(w http.ResponseWriter, r *http.Request, t target, host string) {
	if title, msg, refresh, link, text, ok := e.servicePage(r.Context(), t); ok {
		e.render(w, http.StatusServiceUnavailable, title, msg, refresh, link, text)
		return
	}
	name, tool := toolNames[t.kind]
	svcs := e.servicesOf()
	if !tool || svcs == nil {
		e.page(w, http.StatusServiceUnavailable, pageStarting, host)
		return
	}
	state := ""
	st, has, known := svcs.ServiceByRole(r.Context(), t.sandboxID, t.kind, false)
	if known && !has {
		noun := strings.TrimPrefix(name, "The ")
		e.render(w, http.StatusServiceUnavailable, "No "+noun,
			fmt.Sprintf("Nothing answers at <b>%s</b>: this sandbox's image has no %s. This page reloads by itself.", html.EscapeString(host), html.EscapeString(noun)),
			pageStarting.refresh, e.dashboardURL, "Dashboard")
		return
	}
	if known {
		state = " (" + html.EscapeString(st.State) + ", not answering yet)"
		if st.State == agent.StateStopping {
			e.render(w, http.StatusServiceUnavailable, name+" is stopping", html.EscapeString(name)+" is stopping. This page reloads by itself.", 2, e.dashboardURL, "Dashboard")
			return
		}
	}
	e.render(w, http.StatusServiceUnavailable, name+" is starting",
		fmt.Sprintf("%s at <b>%s</b> is starting%s. This page reloads by itself.", html.EscapeString(name), html.EscapeString(host), state),
		pageStarting.refresh, e.dashboardURL, "Dashboard")
}
