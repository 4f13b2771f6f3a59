package store

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

// TestImages: the catalog's rows on either backend. A sync that finds an
// image again keeps its created time and source; an import replaces them.
func TestImages(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	im, err := s.PutImage(ctx, Image{ID: "dev-base", Driver: "file", SizeBytes: 4 << 30, UsedBytes: 1 << 30,
		CreatedAt: t0, Manifest: `{"schema":1}`, Source: ImageSourceDisk}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !im.CreatedAt.Equal(t0) || im.SizeBytes != 4<<30 || im.Manifest != `{"schema":1}` || im.Source != ImageSourceDisk {
		t.Fatalf("stored %+v", im)
	}
	// Found again by a sync, bigger: the created time and source stay.
	im, err = s.PutImage(ctx, Image{ID: "dev-base", Driver: "file", SizeBytes: 8 << 30, CreatedAt: t0.Add(time.Hour), Source: ImageSourceDisk,
		ManifestError: "no manifest"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !im.CreatedAt.Equal(t0) || im.SizeBytes != 8<<30 || im.Manifest != "" || im.ManifestError != "no manifest" {
		t.Fatalf("after a sync %+v", im)
	}
	// Imported anew: created and source are the import's.
	im, err = s.PutImage(ctx, Image{ID: "dev-base", Driver: "lvm", SizeBytes: 8 << 30, CreatedAt: t0.Add(2 * time.Hour), Source: ImageSourceImport}, false)
	if err != nil {
		t.Fatal(err)
	}
	if !im.CreatedAt.Equal(t0.Add(2*time.Hour)) || im.Source != ImageSourceImport || im.Driver != "lvm" {
		t.Fatalf("after an import %+v", im)
	}
	if _, err := s.PutImage(ctx, Image{ID: "alpha", Driver: "file"}, true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutImage(ctx, Image{ID: "bad", Driver: "zfs"}, true); err == nil {
		t.Error("a driver the schema does not know was stored")
	}
	list, err := s.ListImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != "alpha" || list[1].ID != "dev-base" {
		t.Fatalf("list %+v", list)
	}

	for _, sb := range []Sandbox{
		{ID: "bbbbbbbbbbbb", OwnerID: "u1", Image: "dev-base", Status: StatusRunning},
		{ID: "aaaaaaaaaaaa", OwnerID: "u2", Image: "dev-base", Status: StatusStopped},
		{ID: "cccccccccccc", OwnerID: "u2", Image: "alpha", Status: StatusError},
	} {
		if err := s.InsertSandbox(ctx, sb, 0); err != nil {
			t.Fatal(err)
		}
	}
	users, err := s.ImageUsers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(users["dev-base"], []string{"aaaaaaaaaaaa", "bbbbbbbbbbbb"}) || !slices.Equal(users["alpha"], []string{"cccccccccccc"}) {
		t.Fatalf("users %v", users)
	}

	for range 2 {
		if err := s.DeleteImage(ctx, "alpha"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.GetImage(ctx, "alpha"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get deleted image: %v", err)
	}
}

// TestPrebuildImages: a workspace's ready or building prebuild holds the
// image its config names, or the default one.
func TestPrebuildImages(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u, err := s.UpsertGitHubUser(ctx, User{GitHubID: 7, Login: "builder"})
	if err != nil {
		t.Fatal(err)
	}
	mk := func(name, cfg, status string, ready int) string {
		t.Helper()
		w, err := s.CreateWorkspace(ctx, Workspace{OwnerID: u.ID, Name: name, Config: []byte(cfg)}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.w.ExecContext(ctx, `DELETE FROM prebuilds WHERE workspace_id = ?`, w.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.w.ExecContext(ctx, `INSERT INTO prebuilds (workspace_id, status, ready, updated_at) VALUES (?, ?, ?, ?)`,
			w.ID, status, ready, fmtTime(time.Now())); err != nil {
			t.Fatal(err)
		}
		return w.ID
	}
	own := mk("own", `{"image":"custom"}`, "ready", 1)
	def := mk("default", `{}`, "building", 0)
	rebuilding := mk("rebuilding", `{"image":"custom"}`, "failed", 1)
	mk("none", `{"image":"custom"}`, "none", 0)
	mk("failed", `{"image":"custom"}`, "failed", 0)
	got, err := s.PrebuildImages(ctx, "dev-base")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{own, rebuilding}
	slices.Sort(want)
	if !slices.Equal(got["custom"], want) || !slices.Equal(got["dev-base"], []string{def}) || len(got) != 2 {
		t.Fatalf("prebuild images %v, want custom %v and dev-base [%s]", got, want, def)
	}
}
