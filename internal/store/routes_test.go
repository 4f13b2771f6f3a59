package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func hosts(rs []Route) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Host)
	}
	return out
}

func TestReplaceRoutes(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	for i := 1; i <= 2; i++ {
		if err := s.InsertSandbox(ctx, newSandbox(i, "u1", StatusRunning), 0); err != nil {
			t.Fatal(err)
		}
	}
	a, b := sbID(1), sbID(2)
	svc := []Route{
		{Host: "sandbox-" + a + ".x.test", SandboxID: a, Kind: RouteVSCode, Port: 8080},
		{Host: "opencode-" + a + ".x.test", SandboxID: a, Kind: RouteOpenCode, Port: 3000},
		{Host: "browser-" + a + ".x.test", SandboxID: a, Kind: RouteBrowser, Port: 6080},
	}
	if err := s.ReplaceRoutes(ctx, a, "", ServiceRouteKinds, svc); err != nil {
		t.Fatal(err)
	}
	// Replacing is idempotent: the same set again is no error and no duplicate.
	if err := s.ReplaceRoutes(ctx, a, "", ServiceRouteKinds, svc); err != nil {
		t.Fatal(err)
	}
	web := []Route{
		{Host: "dev-web-" + a + ".x.test", SandboxID: a, Kind: RouteDev, Name: "web", Port: 5173, Public: true},
		{Host: "dev-web-api-" + a + ".x.test", SandboxID: a, Kind: RouteDev, Name: "web", Alias: "api", Port: 8000},
	}
	if err := s.ReplaceRoutes(ctx, a, "web", []string{RouteDev}, web); err != nil {
		t.Fatal(err)
	}
	got, err := s.ListRoutes(ctx, a)
	if err != nil || len(got) != 5 {
		t.Fatalf("list: %v %v", hosts(got), err)
	}
	for _, r := range got {
		if r.Host == web[0].Host && (!r.Public || r.Port != 5173 || r.Name != "web" || r.CreatedAt.IsZero()) {
			t.Errorf("round trip: %+v", r)
		}
		if r.Host == web[1].Host && (r.Public || r.Alias != "api") {
			t.Errorf("round trip: %+v", r)
		}
	}

	tests := []struct {
		name    string
		sandbox string
		devName string
		routes  []Route
		want    error
	}{
		// dev "web-api" would take dev-web-api-<a>, which is web's alias host.
		{"host of another command", a, "web-api", []Route{{Host: web[1].Host, SandboxID: a, Kind: RouteDev, Name: "web-api", Port: 1}}, ErrDuplicate},
		{"host of another sandbox", b, "x", []Route{{Host: web[0].Host, SandboxID: b, Kind: RouteDev, Name: "x", Port: 1}}, ErrDuplicate},
		{"unknown sandbox", sbID(9), "x", []Route{{Host: "dev-x-" + sbID(9) + ".x.test", SandboxID: sbID(9), Kind: RouteDev, Name: "x", Port: 1}}, ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.ReplaceRoutes(ctx, tt.sandbox, tt.devName, []string{RouteDev}, tt.routes)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	// A route outside the replaced set is refused before touching the table.
	if err := s.ReplaceRoutes(ctx, a, "web", []string{RouteDev}, []Route{{Host: "h", SandboxID: b, Kind: RouteDev, Name: "web", Port: 1}}); err == nil {
		t.Error("route of another sandbox accepted")
	}
	if got, _ := s.ListRoutes(ctx, ""); len(got) != 5 {
		t.Fatalf("failed replacements changed the table: %v", hosts(got))
	}

	// Re-exposing web with only its own host drops the alias.
	if err := s.ReplaceRoutes(ctx, a, "web", []string{RouteDev}, web[:1]); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.ListRoutes(ctx, a); len(got) != 4 {
		t.Fatalf("after shrink: %v", hosts(got))
	}
	if err := s.ReplaceRoutes(ctx, a, "web", []string{RouteDev}, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.ListRoutes(ctx, a); len(got) != 3 {
		t.Fatalf("after unexpose: %v", hosts(got))
	}

	// Deleting the sandbox row takes its routes with it.
	if err := s.DeleteSandbox(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.ListRoutes(ctx, ""); len(got) != 0 {
		t.Fatalf("routes outlived their sandbox: %v", hosts(got))
	}
	if err := s.DeleteRoutes(ctx, b); err != nil {
		t.Fatalf("delete of nothing: %v", err)
	}
}

func TestEdgeCodesAreOneTime(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	now := time.Now()
	h := func(c string) []byte { x := sha256.Sum256([]byte(c)); return x[:] }
	if err := s.PutEdgeCode(ctx, EdgeCode{Hash: h("a"), Host: "Dev-X.test", UserID: "u1", SessionID: "s1", Next: "/p?q=1", ExpiresAt: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutEdgeCode(ctx, EdgeCode{Hash: h("old"), Host: "dev-x.test", UserID: "u1", ExpiresAt: now.Add(-time.Second)}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutEdgeCode(ctx, EdgeCode{Hash: h("a"), Host: "dev-x.test", UserID: "u1", ExpiresAt: now}); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("duplicate: %v", err)
	}
	if err := s.PutEdgeCode(ctx, EdgeCode{Host: "dev-x.test", UserID: "u1"}); err == nil {
		t.Fatal("empty hash accepted")
	}
	c, err := s.TakeEdgeCode(ctx, h("a"), now)
	if err != nil || c.Host != "dev-x.test" || c.UserID != "u1" || c.SessionID != "s1" || c.Next != "/p?q=1" {
		t.Fatalf("take: %+v %v", c, err)
	}
	if _, err := s.TakeEdgeCode(ctx, h("a"), now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second take: %v", err)
	}
	// The expired code was swept by the first take.
	if _, err := s.TakeEdgeCode(ctx, h("old"), now.Add(-time.Hour)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired code survived: %v", err)
	}
	if err := s.PutEdgeCode(ctx, EdgeCode{Hash: h("b"), Host: "dev-x.test", UserID: "u1", ExpiresAt: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TakeEdgeCode(ctx, h("b"), now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("code taken at its expiry: %v", err)
	}
}

func TestDevRouteLimits(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	for i, owner := range []string{"u1", "u1", "u2", "u1"} {
		if err := s.InsertSandbox(ctx, newSandbox(i+1, owner, StatusRunning), 0); err != nil {
			t.Fatal(err)
		}
	}
	a, b, c, e := sbID(1), sbID(2), sbID(3), sbID(4)
	dev := func(sb, name string, n int) []Route {
		var out []Route
		for i := 0; i < n; i++ {
			out = append(out, Route{Host: fmt.Sprintf("dev-%s-%d-%s.x.test", name, i, sb), SandboxID: sb, Kind: RouteDev, Name: name, Alias: fmt.Sprint(i), Port: 3000})
		}
		return out
	}
	lim := DevRouteLimits{PerSandbox: 3, PerUser: 5}
	steps := []struct {
		name   string
		sb     string
		dev    string
		n      int
		lim    DevRouteLimits
		scope  string // "" when allowed
		wanted int
	}{
		{"fill the sandbox", a, "web", 3, lim, "", 0},
		{"one more in the sandbox", a, "api", 1, lim, QuotaSandbox, 4},
		{"replace with as many", a, "web", 3, lim, "", 0},
		{"shrink", a, "web", 2, lim, "", 0},
		{"another sandbox of the user", b, "x", 3, lim, "", 0},
		{"one more for the user, in a third sandbox", e, "y", 1, lim, QuotaUser, 6},
		{"another user is not counted", c, "web", 3, lim, "", 0},
		{"limit lowered: same size passes", a, "web", 2, DevRouteLimits{PerSandbox: 1, PerUser: 1}, "", 0},
		{"limit lowered: growing refused", a, "web", 3, DevRouteLimits{PerSandbox: 1}, QuotaSandbox, 3},
		{"limit lowered: unexpose passes", b, "x", 0, DevRouteLimits{PerSandbox: 1, PerUser: 1}, "", 0},
		{"no limits", b, "big", 10, DevRouteLimits{}, "", 0},
	}
	for _, st := range steps {
		before, _ := s.ListRoutes(ctx, "")
		err := s.ReplaceDevRoutes(ctx, st.sb, st.dev, dev(st.sb, st.dev, st.n), st.lim)
		var qe *DevRouteQuotaError
		switch {
		case st.scope == "" && err != nil:
			t.Fatalf("%s: %v", st.name, err)
		case st.scope != "" && (!errors.As(err, &qe) || qe.Scope != st.scope || qe.Wanted != st.wanted):
			t.Fatalf("%s: err %v, want a %s quota error wanting %d", st.name, err, st.scope, st.wanted)
		case st.scope != "":
			if after, _ := s.ListRoutes(ctx, ""); len(after) != len(before) {
				t.Fatalf("%s: a refused change altered the routes: %d -> %d", st.name, len(before), len(after))
			}
		}
	}

	// Concurrent exposes cannot overshoot: the count and the insert are one
	// transaction.
	d := sbID(5)
	if err := s.InsertSandbox(ctx, newSandbox(5, "u3", StatusRunning), 0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var ok atomic.Int64
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := fmt.Sprintf("c%d", i)
			if s.ReplaceDevRoutes(ctx, d, name, dev(d, name, 1), DevRouteLimits{PerSandbox: 5}) == nil {
				ok.Add(1)
			}
		}(i)
	}
	wg.Wait()
	if got, _ := s.ListRoutes(ctx, d); ok.Load() != 5 || len(got) != 5 {
		t.Fatalf("%d concurrent exposes succeeded, %d routes, want 5", ok.Load(), len(got))
	}
}
