package store

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// TestWorkspacesRows runs on both backends: workspaces with secrets in one
// transaction, names unique per owner, updates, delete refused while a
// sandbox of it exists, git sources bound to their owner, prebuild state.
func TestWorkspacesRows(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	for _, u := range []string{"alice", "bob"} {
		if _, err := s.EnsureUser(ctx, User{ID: u, Login: u}); err != nil {
			t.Fatal(err)
		}
	}
	seal := func(id string, sec *WorkspaceSecret) error {
		sec.Sealed = []byte("sealed:" + id + ":" + sec.Name)
		return nil
	}
	w, err := s.CreateWorkspace(ctx, Workspace{OwnerID: "alice", Name: "web", Config: json.RawMessage(`{"repos":[]}`)},
		[]WorkspaceSecret{{Kind: SecretEnv, Name: "A"}, {Kind: SecretFile, Name: "/k", Mode: 0o400}}, seal)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateWorkspace(ctx, Workspace{OwnerID: "alice", Name: "web", Config: json.RawMessage(`{}`)}, nil, seal); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("same name: %v", err)
	}
	// A failing seal leaves no workspace behind.
	_, err = s.CreateWorkspace(ctx, Workspace{OwnerID: "bob", Name: "x", Config: json.RawMessage(`{}`)},
		[]WorkspaceSecret{{Kind: SecretEnv, Name: "A"}}, func(string, *WorkspaceSecret) error { return errors.New("no key") })
	if err == nil {
		t.Fatal("create with a failing seal succeeded")
	}
	if l, _ := s.ListWorkspaces(ctx, "bob"); len(l) != 0 {
		t.Fatalf("half-made workspace: %v", l)
	}
	secs, err := s.WorkspaceSecrets(ctx, w.ID)
	if err != nil || len(secs) != 2 || string(secs[0].Sealed) != "sealed:"+w.ID+":A" || secs[1].Mode != 0o400 {
		t.Fatalf("secrets: %+v %v", secs, err)
	}
	w2, err := s.UpdateWorkspace(ctx, w.ID, WorkspaceChange{Name: "web2", Config: json.RawMessage(`{"repos":[1]}`),
		Put: []WorkspaceSecret{{Kind: SecretEnv, Name: "A", Sealed: []byte("new")}}, Delete: []WorkspaceSecret{{Kind: SecretFile, Name: "/k"}}})
	if err != nil || w2.Name != "web2" || string(w2.Config) != `{"repos":[1]}` {
		t.Fatalf("update: %+v %v", w2, err)
	}
	if secs, _ = s.WorkspaceSecrets(ctx, w.ID); len(secs) != 1 || string(secs[0].Sealed) != "new" {
		t.Fatalf("secrets after update: %+v", secs)
	}
	if _, err := s.UpdateWorkspace(ctx, "nosuchwsxxxx", WorkspaceChange{Name: "z"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update missing: %v", err)
	}

	now := time.Now()
	if err := s.InsertSandbox(ctx, Sandbox{ID: "sbxwsrows001", OwnerID: "alice", WorkspaceID: w.ID, Image: "dev-base",
		Status: StatusStopped, Vcpus: 1, MemoryMB: 512, CreatedAt: now, UpdatedAt: now}, 0); err != nil {
		t.Fatal(err)
	}
	var inUse *InUseError
	if err := s.DeleteWorkspace(ctx, w.ID); !errors.As(err, &inUse) || len(inUse.SandboxIDs) != 1 {
		t.Fatalf("delete in use: %v", err)
	}

	// Prebuild state.
	if p, err := s.GetPrebuild(ctx, w.ID); err != nil || p.Status != PrebuildNone || p.Ready {
		t.Fatalf("no prebuild yet: %+v %v", p, err)
	}
	if err := s.BeginPrebuild(ctx, w.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.BeginPrebuild(ctx, w.ID); !errors.Is(err, ErrBusy) {
		t.Fatalf("second begin: %v", err)
	}
	built := time.Now().UTC()
	p, err := s.UpdatePrebuild(ctx, w.ID, func(p *Prebuild) {
		p.Status, p.Ready, p.Commits, p.BuiltAt, p.Stale = PrebuildReady, true, map[string]string{"web": "abc"}, &built, true
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.GetPrebuild(ctx, w.ID)
	if err != nil || !got.Ready || !got.Stale || got.Commits["web"] != "abc" || got.BuiltAt == nil || got.Status != PrebuildReady || !got.UpdatedAt.Equal(p.UpdatedAt) {
		t.Fatalf("prebuild: %+v %v", got, err)
	}
	if l, err := s.ListPrebuilds(ctx); err != nil || len(l) != 1 {
		t.Fatalf("list prebuilds: %v %v", l, err)
	}

	// Git sources.
	g, err := s.CreateGitSource(ctx, GitSource{OwnerID: "alice", Type: "generic", Name: "git", Host: "git.example.test", Username: "u"},
		func(id string) ([]byte, error) { return []byte("tok:" + id), nil })
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetGitSource(ctx, g.ID); err != nil || string(got.Token) != "tok:"+g.ID || got.Host != "git.example.test" {
		t.Fatalf("git source: %+v %v", got, err)
	}
	if err := s.DeleteGitSource(ctx, "bob", g.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("another owner's delete: %v", err)
	}
	if l, _ := s.ListGitSources(ctx, "alice"); len(l) != 1 {
		t.Fatalf("sources: %v", l)
	}
	if err := s.DeleteGitSource(ctx, "alice", g.ID); err != nil {
		t.Fatal(err)
	}

	if err := s.DeleteSandbox(ctx, "sbxwsrows001"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteWorkspace(ctx, w.ID); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.GetPrebuild(ctx, w.ID); p.Status != PrebuildNone {
		t.Fatalf("prebuild row outlived its workspace: %+v", p)
	}
}
