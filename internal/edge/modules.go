package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"
)

// Atelier's Caddy modules, registered in this binary and named in the static
// JSON config. Each carries the id of the Edge it serves, so the modules find
// their routing table without any global routing state.
func init() {
	// Importing Caddy redirects the standard library's logger to Caddy's
	// stderr JSON logger; Atelier logs through slog, so put it back.
	stdlog.SetOutput(os.Stderr)
	stdlog.SetFlags(stdlog.LstdFlags)
	stdlog.SetPrefix("")

	caddy.RegisterModule(authHandler{})
	caddy.RegisterModule(upstreams{})
	caddy.RegisterModule(permission{})
	caddy.RegisterModule(transport{})
	caddy.RegisterModule(logWriter{})
	caddy.RegisterModule(listenerWrapper{})
}

// instances maps an instance id to its Edge while the Edge runs.
var instances sync.Map

func lookupInstance(id string) (*Edge, error) {
	v, ok := instances.Load(id)
	if !ok {
		return nil, fmt.Errorf("atelier edge instance %q not registered", id)
	}
	return v.(*Edge), nil
}

// dialVar carries the chosen guest address from the auth handler to the
// upstream source within one request.
const dialVar = "atelier.dial"

// authHandler is http.handlers.atelier_auth: it resolves the host, serves
// the dashboard, the edge's own pages and the login handshake, checks the
// per-host cookie, strips Atelier's credentials, then hands the request to
// reverse_proxy.
type authHandler struct {
	Instance string `json:"instance"`
	e        *Edge
}

func (authHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.atelier_auth", New: func() caddy.Module { return new(authHandler) }}
}

func (h *authHandler) Provision(caddy.Context) (err error) {
	h.e, err = lookupInstance(h.Instance)
	return err
}

func (h *authHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	h.e.drain.change(0, 1)
	defer h.e.drain.change(0, -1)
	return h.e.serve(w, r, next)
}

// upstreams is http.reverse_proxy.upstreams.atelier: the guest address the
// auth handler resolved for this request.
type upstreams struct {
	Instance string `json:"instance"`
}

func (upstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.reverse_proxy.upstreams.atelier", New: func() caddy.Module { return new(upstreams) }}
}

func (u *upstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	dial, _ := caddyhttp.GetVar(r.Context(), dialVar).(string)
	if dial == "" {
		return nil, errors.New("no atelier route resolved for this request")
	}
	return []*reverseproxy.Upstream{{Dial: dial}}, nil
}

// permission is tls.permission.atelier: on-demand certificates only for the
// dashboard and hosts in the routing table, so unknown names never trigger
// an issuance (and never eat into the CA's rate limits).
type permission struct {
	Instance string `json:"instance"`
	e        *Edge
}

func (permission) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "tls.permission.atelier", New: func() caddy.Module { return new(permission) }}
}

func (p *permission) Provision(caddy.Context) (err error) {
	p.e, err = lookupInstance(p.Instance)
	return err
}

func (p *permission) CertificateAllowed(_ context.Context, name string) error {
	return p.e.CertificateAllowed(name)
}

// CertificateAllowed is the on-demand TLS policy: nil for the dashboard and
// for hosts in the routing table, the latter within
// domain.tls.maxNewCertsPerHour unless storage already holds a certificate
// for them. Certmagic asks before loading a certificate from storage and
// before renewing one, so those must not spend the budget: only a first
// issuance does.
func (e *Edge) CertificateAllowed(name string) error {
	name = normalizeHost(name)
	if name == e.dashboardHost {
		return nil
	}
	if !e.table.has(name) {
		e.refusedCerts.Add(1)
		return fmt.Errorf("%w: %s is not an Atelier host", caddytls.ErrPermissionDenied, name)
	}
	if e.newCerts == nil || e.hasStoredCert(name) {
		return nil
	}
	if !e.newCerts.AllowN(e.now(), 1) {
		e.throttledCerts.Add(1)
		e.log.Warn("edge: new certificate deferred: domain.tls.maxNewCertsPerHour reached", "host", name,
			"limit", e.cfg.Domain.TLS.MaxNewCertsPerHour)
		return fmt.Errorf("%w: new certificates for %s wait: domain.tls.maxNewCertsPerHour (%d) reached",
			caddytls.ErrPermissionDenied, name, e.cfg.Domain.TLS.MaxNewCertsPerHour)
	}
	return nil
}

// hasStoredCert reports whether Caddy's storage holds a certificate for
// name from any issuer (certificates/<issuer>/<name>/<name>.crt). Names in
// the table are DNS labels, so they hold no glob metacharacters.
func (e *Edge) hasStoredCert(name string) bool {
	m, _ := filepath.Glob(filepath.Join(e.caddyDir(), "certificates", "*", name, name+".crt"))
	return len(m) > 0
}

// transport is http.reverse_proxy.transport.atelier: Caddy's HTTP transport
// whose dials go through the Edge's DialFunc (the guests' namespace).
type transport struct {
	Instance string `json:"instance"`
	rt       *reverseproxy.HTTPTransport
}

func (transport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.reverse_proxy.transport.atelier", New: func() caddy.Module { return new(transport) }}
}

func (t *transport) Provision(ctx caddy.Context) error {
	e, err := lookupInstance(t.Instance)
	if err != nil {
		return err
	}
	t.rt = &reverseproxy.HTTPTransport{}
	if err := t.rt.Provision(ctx); err != nil {
		return fmt.Errorf("provision atelier transport: %w", err)
	}
	if dial := e.dial; dial != nil {
		t.rt.Transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				// Marked as a dial error so reverse_proxy retries it within
				// the retry window: nothing reached the guest.
				return nil, reverseproxy.NewDialError(err)
			}
			return c, nil
		}
	}
	return nil
}

func (t *transport) RoundTrip(r *http.Request) (*http.Response, error) { return t.rt.RoundTrip(r) }

func (t *transport) Cleanup() error { return t.rt.Cleanup() }

// listenerWrapper is caddy.listeners.atelier: it tells the Edge when Caddy
// has really closed its listeners (see drain).
type listenerWrapper struct {
	Instance string `json:"instance"`
	e        *Edge
}

func (listenerWrapper) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "caddy.listeners.atelier", New: func() caddy.Module { return new(listenerWrapper) }}
}

func (l *listenerWrapper) Provision(caddy.Context) (err error) {
	l.e, err = lookupInstance(l.Instance)
	return err
}

func (l *listenerWrapper) WrapListener(ln net.Listener) net.Listener { return l.e.drain.listen(ln) }

// logWriter is caddy.logging.writers.atelier: Caddy's logs go to the Edge's
// slog logger instead of stderr.
type logWriter struct {
	Instance string `json:"instance"`
}

func (logWriter) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "caddy.logging.writers.atelier", New: func() caddy.Module { return new(logWriter) }}
}

func (l *logWriter) String() string    { return "atelier:" + l.Instance }
func (l *logWriter) WriterKey() string { return "atelier:" + l.Instance }

func (l *logWriter) OpenWriter() (io.WriteCloser, error) {
	e, err := lookupInstance(l.Instance)
	if err != nil {
		return nil, err
	}
	return slogWriter{e.log.With("component", "caddy")}, nil
}

// quietCaddy are Caddy's lines about choices Atelier made on purpose (no
// admin API, its own log writer, plain HTTP on a localhost edge): news at
// every start to nobody, so they are logged at debug level.
var quietCaddy = map[string]bool{
	"admin endpoint disabled":                           true,
	"redirected default logger":                         true,
	"automatic HTTPS is completely disabled for server": true,
	"server is listening only on the HTTP port, so no automatic HTTPS will be applied to this server": true,
	"HTTP/2 skipped because it requires TLS":                                                          true,
	"HTTP/3 skipped because it requires TLS":                                                          true,
	"started background certificate maintenance":                                                      true,
	"stopped background certificate maintenance":                                                      true,
}

// slogWriter turns Caddy's JSON log lines into slog records.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(line, &m) != nil {
			w.log.Info(string(line))
			continue
		}
		level := slog.LevelInfo
		switch m["level"] {
		case "debug":
			level = slog.LevelDebug
		case "warn":
			level = slog.LevelWarn
		case "error", "dpanic", "panic", "fatal":
			level = slog.LevelError
		}
		msg, _ := m["msg"].(string)
		if quietCaddy[msg] {
			level = slog.LevelDebug
		}
		attrs := make([]any, 0, 2*len(m))
		for k, v := range m {
			switch k {
			case "level", "msg", "ts":
				continue
			}
			attrs = append(attrs, k, v)
		}
		w.log.Log(context.Background(), level, msg, attrs...)
	}
	return len(p), nil
}

func (slogWriter) Close() error { return nil }

// dialAddr is the guest address of a target.
func dialAddr(ip string, port int) string {
	return net.JoinHostPort(ip, strconv.Itoa(port))
}

var (
	_ caddyhttp.MiddlewareHandler = (*authHandler)(nil)
	_ caddy.ListenerWrapper       = (*listenerWrapper)(nil)
	_ caddy.Provisioner           = (*authHandler)(nil)
	_ reverseproxy.UpstreamSource = (*upstreams)(nil)
	_ caddytls.OnDemandPermission = (*permission)(nil)
	_ http.RoundTripper           = (*transport)(nil)
	_ caddy.CleanerUpper          = (*transport)(nil)
	_ caddy.WriterOpener          = (*logWriter)(nil)
)
