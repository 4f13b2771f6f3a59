package edge

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"atelier/internal/auth"
	"atelier/internal/store"
)

// The login handshake of a sandbox host (Coder's subdomain-app pattern):
// the dashboard session cookie is host-only on the dashboard, so a sandbox
// host sends the browser to the dashboard's /auth/edge, which checks the
// session and ownership and sends it back to AuthPath with a one-time code;
// the edge trades the code for a cookie valid on that one host only.
const (
	// AuthPath is served by the edge on every sandbox host.
	AuthPath = "/__atelier/auth"
	// CodeTTL bounds the life of a one-time code.
	CodeTTL = 5 * time.Minute
	// CookieTTL bounds the life of a sandbox host's cookie.
	CookieTTL = 12 * time.Hour
	// sessionRecheck is how long a checked session is trusted before the
	// store is asked again: logout reaches the edge within this delay.
	sessionRecheck = 30 * time.Second
)

// Methods recorded in an edge cookie.
const (
	methodSession = "s"
	methodMock    = "m"
)

var (
	// ErrUnknownHost is returned for a host that is not in the routing table.
	ErrUnknownHost = errors.New("unknown sandbox host")
	// ErrNotBrowser is returned when the caller did not sign in with the
	// dashboard: API tokens and the unix socket cannot open sandbox hosts.
	ErrNotBrowser = errors.New("sandbox hosts open with a dashboard login")
)

// HostSandbox reports which sandbox a host belongs to.
func (e *Edge) HostSandbox(host string) (string, bool) {
	return e.table.sandboxOf(normalizeHost(host))
}

// Grant mints a one-time code for host and returns the URL that trades it
// for the host's cookie. The caller has checked that p may use the sandbox.
func (e *Edge) Grant(ctx context.Context, host, next string, p auth.Principal) (string, error) {
	host = normalizeHost(host)
	if !e.table.has(host) {
		return "", fmt.Errorf("grant %s: %w", host, ErrUnknownHost)
	}
	if p.Method != auth.MethodCookie && p.Method != auth.MethodMock {
		return "", fmt.Errorf("grant %s: %w", host, ErrNotBrowser)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("grant %s: read random: %w", host, err)
	}
	code := base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(code))
	err := e.st.PutEdgeCode(ctx, store.EdgeCode{
		Hash: sum[:], Host: host, UserID: p.User.ID, SessionID: p.SessionID,
		Next: safeNext(next), ExpiresAt: e.now().Add(CodeTTL),
	})
	if err != nil {
		return "", fmt.Errorf("grant %s: %w", host, err)
	}
	return e.hostURL(host) + AuthPath + "?code=" + url.QueryEscape(code), nil
}

// exchange serves AuthPath: a valid code for this host becomes the host's
// cookie and a redirect to where the user was going.
func (e *Edge) exchange(w http.ResponseWriter, r *http.Request, host string) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	code := r.URL.Query().Get("code")
	if code == "" {
		e.page(w, http.StatusBadRequest, pageBadCode, host)
		return
	}
	sum := sha256.Sum256([]byte(code))
	c, err := e.st.TakeEdgeCode(r.Context(), sum[:], e.now())
	if err != nil || c.Host != host {
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			e.log.Error("edge login: take code", "host", host, "err", err)
		}
		e.page(w, http.StatusForbidden, pageBadCode, host)
		return
	}
	method := methodSession
	if c.SessionID == "" {
		method = methodMock
	}
	exp := e.now().Add(CookieTTL)
	http.SetCookie(w, &http.Cookie{
		Name:     e.cookieName,
		Value:    e.signCookie(host, method, c.UserID, c.SessionID, exp),
		Path:     "/",
		MaxAge:   int(CookieTTL / time.Second),
		HttpOnly: true,
		Secure:   e.secure,
		SameSite: http.SameSiteLaxMode,
	})
	http.Redirect(w, r, safeNext(c.Next), http.StatusFound)
}

// challenge answers a request without a valid cookie: a page load goes to
// the dashboard to sign in; anything else (a fetch, a WebSocket, a POST)
// gets 401, never the sandbox's content.
func (e *Edge) challenge(w http.ResponseWriter, r *http.Request, host string) {
	w.Header().Set("Cache-Control", "no-store")
	if (r.Method == http.MethodGet || r.Method == http.MethodHead) && r.Header.Get("Upgrade") == "" {
		q := url.Values{"host": {host}, "next": {r.URL.RequestURI()}}
		w.Header().Set("Location", e.dashboardURL+"/auth/edge?"+q.Encode())
		w.WriteHeader(http.StatusFound)
		return
	}
	e.page(w, http.StatusUnauthorized, pageSignIn, host)
}

// signCookie builds host|method|user|session|expiry, HMAC-signed.
func (e *Edge) signCookie(host, method, userID, sessionID string, exp time.Time) string {
	payload := strings.Join([]string{host, method, userID, sessionID, strconv.FormatInt(exp.Unix(), 10)}, "|")
	m := hmac.New(sha256.New, e.cookieKey)
	m.Write([]byte(payload))
	return base64.RawURLEncoding.EncodeToString([]byte(payload)) + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// cookieClaims is a verified edge cookie.
type cookieClaims struct {
	host, method, userID, sessionID string
	exp                             time.Time
}

func (e *Edge) verifyCookie(v string) (cookieClaims, bool) {
	p64, s64, ok := strings.Cut(v, ".")
	if !ok {
		return cookieClaims{}, false
	}
	payload, err1 := base64.RawURLEncoding.DecodeString(p64)
	sig, err2 := base64.RawURLEncoding.DecodeString(s64)
	if err1 != nil || err2 != nil {
		return cookieClaims{}, false
	}
	m := hmac.New(sha256.New, e.cookieKey)
	m.Write(payload)
	if !hmac.Equal(sig, m.Sum(nil)) {
		return cookieClaims{}, false
	}
	f := strings.Split(string(payload), "|")
	if len(f) != 5 {
		return cookieClaims{}, false
	}
	unix, err := strconv.ParseInt(f[4], 10, 64)
	if err != nil {
		return cookieClaims{}, false
	}
	return cookieClaims{host: f[0], method: f[1], userID: f[2], sessionID: f[3], exp: time.Unix(unix, 0)}, true
}

// authorized reports whether r carries a valid cookie for host whose
// dashboard session is still valid. A sibling sandbox may plant a cookie of
// the same name on the parent domain, so every cookie of that name is tried.
func (e *Edge) authorized(r *http.Request, host string) bool {
	for _, c := range r.CookiesNamed(e.cookieName) {
		cl, ok := e.verifyCookie(c.Value)
		if !ok || cl.host != host || !e.now().Before(cl.exp) {
			continue
		}
		switch cl.method {
		case methodMock:
			if e.mock {
				return true
			}
		case methodSession:
			if e.sessionValid(r.Context(), cl.sessionID, cl.userID) {
				return true
			}
		}
	}
	return false
}

// SessionChecker answers whether a dashboard session still admits its user
// (auth.Service.CheckSession: the session row, then the user's eligibility).
type SessionChecker interface {
	CheckSession(ctx context.Context, sid, userID string) error
}

// sessionValid checks the dashboard session behind a cookie and whether its
// user may still use Atelier, so logout, revocation or removal from the
// allow-list or the org closes the sandbox hosts too; answers are cached for
// sessionRecheck.
func (e *Edge) sessionValid(ctx context.Context, sid, userID string) bool {
	now := e.now()
	if v, ok := e.sessions.Load(sid); ok {
		if c := v.(sessionCheck); c.userID == userID && now.Sub(c.at) < sessionRecheck {
			return true
		}
	}
	if err := e.sessionCheck.CheckSession(ctx, sid, userID); err != nil {
		e.sessions.Delete(sid)
		if !errors.Is(err, auth.ErrUnauthenticated) {
			e.log.Warn("edge: check session", "err", err)
		}
		return false
	}
	e.sessions.Store(sid, sessionCheck{userID: userID, at: now})
	return true
}

type sessionCheck struct {
	userID string
	at     time.Time
}

// stripCredentials removes Atelier's cookies and every Authorization header
// so code in a sandbox never sees a login (the reference leaked a 7-day
// admin token to every sandbox).
func stripCredentials(h http.Header) {
	h.Del("Authorization")
	h.Del("Proxy-Authorization")
	lines := h["Cookie"]
	if len(lines) == 0 {
		return
	}
	dirty := false
	for _, l := range lines {
		if strings.Contains(l, "atelier_") {
			dirty = true
			break
		}
	}
	if !dirty {
		return
	}
	var kept []string
	for _, l := range lines {
		for _, part := range strings.Split(l, ";") {
			part = strings.TrimSpace(part)
			name, _, _ := strings.Cut(part, "=")
			if part == "" || isAtelierCookie(name) {
				continue
			}
			kept = append(kept, part)
		}
	}
	if len(kept) == 0 {
		h.Del("Cookie")
		return
	}
	h["Cookie"] = []string{strings.Join(kept, "; ")}
}

func isAtelierCookie(name string) bool {
	name = strings.TrimPrefix(strings.TrimPrefix(name, "__Host-"), "__Secure-")
	return strings.HasPrefix(name, "atelier_")
}
