package workspace

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/agent"
	agentsrv "atelier/internal/guest"
	"atelier/internal/store"
)

// TestCredentialBrokerOwners: the broker answers each sandbox's guest
// with its own owner's sources: alice's sandbox gets alice's token for
// the source's host, bob's sandbox asking for the same host gets none.
func TestCredentialBrokerOwners(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc, st, _ := newService(t)
	if _, err := svc.CreateSource(ctx, "alice", SourceInput{Name: "tls", URL: "https://git.example.test", Token: "tok-alice"}); err != nil {
		t.Fatal(err)
	}
	clients, socks := map[string]*agent.Client{}, map[string]string{}
	for _, o := range []struct{ owner, id string }{{"alice", "aaaaaaaaaaaa"}, {"bob", "bbbbbbbbbbbb"}} {
		w, err := svc.Create(ctx, o.owner, "w"+o.owner, Config{}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.InsertSandbox(ctx, store.Sandbox{ID: o.id, Name: o.id, OwnerID: o.owner, WorkspaceID: w.ID, Status: store.StatusRunning}, 0); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		srv := agentsrv.NewServer(agentsrv.Options{SandboxID: o.id, FileRoots: []string{dir}, LogDir: filepath.Join(dir, "log"),
			ConfigPath: filepath.Join(dir, "etc", "config.json"), EtcDir: filepath.Join(dir, "etc")})
		sctx, scancel := context.WithCancel(ctx)
		done := make(chan struct{}, 2)
		main, gsock := filepath.Join(dir, "a.sock"), filepath.Join(dir, "etc", "git-credential.sock")
		go func() { _ = srv.ServeUnix(sctx, main); done <- struct{}{} }()
		go func() { _ = srv.ServeCredSocket(sctx, gsock); done <- struct{}{} }()
		t.Cleanup(func() {
			scancel()
			<-done
			<-done
			sh, c := context.WithTimeout(context.Background(), 10*time.Second)
			defer c()
			_ = srv.Shutdown(sh)
		})
		clients[o.id], socks[o.id] = agent.New(agent.UnixDialer(main)), gsock
	}
	b := &CredentialBroker{Workspaces: svc, Store: st, Log: slog.New(slog.DiscardHandler), Wait: time.Second, Every: 100 * time.Millisecond,
		Agent: func(_ context.Context, id string) (*agent.Client, error) { return clients[id], nil }}
	bdone := make(chan struct{})
	go func() { b.Run(ctx); close(bdone) }()
	defer func() { cancel(); <-bdone }()

	ask := func(id string) (int, agent.GitCredentialAnswer) {
		t.Helper()
		hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socks[id])
		}}}
		var res *http.Response
		var err error
		for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if res, err = hc.Post("http://guest/git/credential", "application/json", strings.NewReader(`{"protocol":"https","host":"git.example.test"}`)); err == nil || time.Now().After(end) {
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
	if code, a := ask("aaaaaaaaaaaa"); code != 200 || a.Password != "tok-alice" || a.Username != "x-access-token" {
		t.Fatalf("alice's sandbox: %d %+v", code, a)
	}
	if code, a := ask("bbbbbbbbbbbb"); code != 403 || a.Password != "" {
		t.Fatalf("bob's sandbox: %d %+v", code, a)
	}
}
