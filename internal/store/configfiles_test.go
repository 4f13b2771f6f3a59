package store

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// TestConfigFilesRows runs on both backends: a scope's set replaced whole,
// the global set (”) apart from a workspace's, a set for a missing
// workspace refused, a duplicate path refusing the whole replacement, the
// push hashes upserted and gone with their sandbox, a workspace's files
// gone with it.
func TestConfigFilesRows(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	if _, err := s.EnsureUser(ctx, User{ID: "alice", Login: "alice"}); err != nil {
		t.Fatal(err)
	}
	w, err := s.CreateWorkspace(ctx, Workspace{OwnerID: "alice", Name: "web", Config: json.RawMessage(`{}`)}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReplaceConfigFiles(ctx, "", []ConfigFile{{Path: "~/b", Content: "g", Mode: 0o644}, {Path: "/etc/a", Content: "e", Mode: 0o600}}); err != nil {
		t.Fatal(err)
	}
	if err := s.ReplaceConfigFiles(ctx, w.ID, []ConfigFile{{Path: "~/b", Content: "w", Mode: 0o640}}); err != nil {
		t.Fatal(err)
	}
	g, err := s.ConfigFiles(ctx, "")
	if err != nil || len(g) != 2 || g[0].Path != "/etc/a" || g[0].Mode != 0o600 || g[1].Content != "g" {
		t.Fatalf("global: %+v %v", g, err)
	}
	if l, _ := s.ConfigFiles(ctx, w.ID); len(l) != 1 || l[0].Content != "w" || l[0].Mode != 0o640 {
		t.Fatalf("workspace: %+v", l)
	}
	if err := s.ReplaceConfigFiles(ctx, "nosuchwsxxxx", nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing workspace: %v", err)
	}
	err = s.ReplaceConfigFiles(ctx, "", []ConfigFile{{Path: "~/x", Content: "1"}, {Path: "~/x", Content: "2"}})
	if !errors.Is(err, ErrDuplicate) {
		t.Fatalf("duplicate path: %v", err)
	}
	if g, _ := s.ConfigFiles(ctx, ""); len(g) != 2 {
		t.Fatalf("a refused replacement changed the set: %+v", g)
	}
	if err := s.ReplaceConfigFiles(ctx, "", nil); err != nil {
		t.Fatal(err)
	}
	if g, _ := s.ConfigFiles(ctx, ""); len(g) != 0 {
		t.Fatalf("emptied: %+v", g)
	}

	const id = "sbxcfgrows01"
	if err := s.InsertSandbox(ctx, Sandbox{ID: id, OwnerID: "alice", WorkspaceID: w.ID, Image: "dev-base",
		Status: StatusStopped, Vcpus: 1, MemoryMB: 512, CreatedAt: time.Now(), UpdatedAt: time.Now()}, 0); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"h1", "h2"} {
		if err := s.RecordConfigFilePush(ctx, id, "~/b", h); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := s.ConfigFilePushes(ctx, id); err != nil || len(p) != 1 || p["~/b"] != "h2" {
		t.Fatalf("pushes: %v %v", p, err)
	}
	if err := s.DeleteSandbox(ctx, id); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.ConfigFilePushes(ctx, id); len(p) != 0 {
		t.Fatalf("pushes outlived their sandbox: %v", p)
	}
	if err := s.DeleteWorkspace(ctx, w.ID); err != nil {
		t.Fatal(err)
	}
	if l, _ := s.ConfigFiles(ctx, w.ID); len(l) != 0 {
		t.Fatalf("files outlived their workspace: %+v", l)
	}
}
