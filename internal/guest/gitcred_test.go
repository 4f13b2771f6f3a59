package guest

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/vsock"

	"atelier/internal/agent"
)

// TestGitCredentialRoundTrip: a request on the guest socket is held until
// the host's poll takes it and answers; a refusal is 403 with no password;
// the guest socket serves none of the host-only routes.
func TestGitCredentialRoundTrip(t *testing.T) {
	ta := startAgent(t, nil)
	sock := filepath.Join(t.TempDir(), "gc.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ta.srv.ServeCredSocket(ctx, sock) }()
	t.Cleanup(func() { cancel(); <-done })
	// The host: answers git.example.test only.
	go func() {
		for ctx.Err() == nil {
			reqs, err := ta.c.GitCredentialRequests(ctx, 5*time.Second)
			if err != nil {
				return
			}
			var ans []agent.GitCredentialAnswer
			for _, r := range reqs {
				a := agent.GitCredentialAnswer{ID: r.ID, Error: "not yours"}
				if r.Protocol == "https" && r.Host == "git.example.test" {
					a = agent.GitCredentialAnswer{ID: r.ID, Username: "u", Password: "tok-1"}
				}
				ans = append(ans, a)
			}
			_ = ta.c.GitCredentialAnswer(ctx, ans)
		}
	}()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	ask := func(body string) (int, agent.GitCredentialAnswer) {
		t.Helper()
		var res *http.Response
		var err error
		for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if res, err = hc.Post("http://guest/git/credential", "application/json", strings.NewReader(body)); err == nil || time.Now().After(end) {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var a agent.GitCredentialAnswer
		_ = json.NewDecoder(res.Body).Decode(&a)
		return res.StatusCode, a
	}
	if code, a := ask(`{"protocol":"https","host":"git.example.test"}`); code != 200 || a.Username != "u" || a.Password != "tok-1" {
		t.Fatalf("own host: %d %+v", code, a)
	}
	// Round trip guest socket -> held request -> host poll -> answer.
	lat := make([]time.Duration, 50)
	for i := range lat {
		start := time.Now()
		if code, _ := ask(`{"protocol":"https","host":"git.example.test"}`); code != 200 {
			t.Fatalf("ask %d: %d", i, code)
		}
		lat[i] = time.Since(start)
	}
	slices.Sort(lat)
	t.Logf("credential round trip over the agent, 50 asks: p50 %v, p99 %v", lat[25], lat[49])
	if code, a := ask(`{"protocol":"https","host":"other.test"}`); code != 403 || a.Password != "" {
		t.Fatalf("other host: %d %+v", code, a)
	}
	if code, _ := ask(`{"protocol":"ssh","host":"git.example.test"}`); code != 400 {
		t.Fatalf("ssh protocol: %d", code)
	}
	for _, p := range []string{agent.GitCredentialRequestsPath, agent.GitCredentialHelperPath, "/exec", "/health"} {
		res, err := hc.Get("http://guest" + p)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s on the guest socket: %d, want 404", p, res.StatusCode)
		}
	}
	// An answer for a request nobody made is dropped.
	if err := ta.c.GitCredentialAnswer(context.Background(), []agent.GitCredentialAnswer{{ID: "999", Password: "x"}}); err != nil {
		t.Fatal(err)
	}
	helper, err := ta.c.GitCredentialHelper(context.Background())
	if err != nil || !strings.HasPrefix(helper, "!'") || !strings.Contains(helper, "'git-credential' '--socket'") {
		t.Fatalf("helper %q, %v", helper, err)
	}
}

// TestGitCredentialHostOnlyOverVsock: on vsock the host-only routes answer
// the host's CID only, not a guest process dialling the local listener.
func TestGitCredentialHostOnlyOverVsock(t *testing.T) {
	ta := startAgent(t, nil)
	for _, tc := range []struct {
		cid  uint32
		want int
	}{{vsock.Host, 200}, {vsock.Local, 403}, {3, 403}} {
		r := httptest.NewRequest("GET", agent.GitCredentialRequestsPath+"?waitMs=0", nil)
		r = r.WithContext(context.WithValue(r.Context(), peerKey{}, net.Addr(&vsock.Addr{ContextID: tc.cid, Port: 1234})))
		w := httptest.NewRecorder()
		ta.srv.Handler().ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("cid %d: %d %s, want %d", tc.cid, w.Code, w.Body, tc.want)
		}
	}
}
