package edge

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"

	"atelier/internal/auth"
	"atelier/internal/config"
)

// restartable is the manager's auth service across restarts: each restart
// builds a new one from a changed configuration over the same store.
type restartable struct{ p atomic.Pointer[auth.Service] }

func (r *restartable) CheckSession(ctx context.Context, sid, userID string) error {
	return r.p.Load().CheckSession(ctx, sid, userID)
}

// TestHostCookieEndsWithEligibility: a host cookie used to outlive the
// user's removal from auth.allowedUsers (only SSH was re-checked). Now the
// edge asks auth's one eligibility check behind its 30 s cache: once the
// cache runs out the cookie is refused and the dashboard session revoked.
func TestHostCookieEndsWithEligibility(t *testing.T) {
	var checker restartable
	h := newHarness(t, func(cfg *config.Config, o *Options) {
		checker.p.Store(auth.New(cfg, o.Store))
		o.Sessions = &checker
	})
	port := backend(t)
	h.sandbox(sbA, "127.0.0.1")
	if _, err := h.e.ExposeDev(context.Background(), sbA, DevExposure{Name: "web", Port: port}); err != nil {
		t.Fatal(err)
	}
	host := "dev-web-" + sbA + ".atelier.test"
	ck := http.Header{"Cookie": {h.login(host)}}
	if res := h.do("GET", host, "/", ck); res.StatusCode != http.StatusOK {
		t.Fatalf("allowed user: %d", res.StatusCode)
	}

	// Restart without the user on the allow-list.
	cfg := *h.cfg
	cfg.Auth.AllowedUsers = slices.DeleteFunc(slices.Clone(cfg.Auth.AllowedUsers), func(u string) bool { return u == "octocat" })
	checker.p.Store(auth.New(&cfg, h.st, auth.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))))

	h.clock.add(sessionRecheck - 1)
	if res := h.do("GET", host, "/", ck); res.StatusCode != http.StatusOK {
		t.Fatalf("within the cache: %d", res.StatusCode)
	}
	h.clock.add(2)
	res := h.do("GET", host, "/", ck)
	body(t, res)
	if res.StatusCode != http.StatusFound {
		t.Fatalf("removed user's host cookie after %v: %d, want the login redirect", sessionRecheck, res.StatusCode)
	}
	sess, err := h.st.GetSession(context.Background(), h.p.SessionID)
	if err != nil || sess.RevokedAt == nil {
		t.Fatalf("the session behind the cookie was not revoked: %+v, %v", sess, err)
	}
}
