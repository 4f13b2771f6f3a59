package catalog_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/image/catalog"
	"atelier/internal/image/progress"
	"atelier/internal/storage/file"
)

type published struct {
	typ  string
	data catalog.Build
	raw  string
}

// TestWatchBuilds: the watcher publishes image.build when a build starts
// and at each stage (not on every look), image.built when its record goes
// (with the new image already in the catalog), image.failed for a build
// that marked a failure (removing its record) and for one whose process
// died; the events carry no pid or host path.
func TestWatchBuilds(t *testing.T) {
	f := newFixture(t)
	dir := filepath.Join(f.state, file.ImagesDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	evs := make(chan published, 16)
	cat := catalog.New(catalog.Options{Store: f.st, Volumes: f.vols, BuildsDir: dir,
		Publish: func(_ context.Context, typ string, data any) error {
			raw, err := json.Marshal(data)
			if err != nil {
				return err
			}
			evs <- published{typ: typ, data: data.(catalog.Build), raw: string(raw)}
			return nil
		}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); cat.WatchBuilds(ctx, 20*time.Millisecond) }()
	t.Cleanup(func() { cancel(); <-done })
	var next func(want string) published
	next = func(want string) published {
		t.Helper()
		select {
		case ev := <-evs:
			if ev.typ == catalog.EventBuild && want != catalog.EventBuild && ev.data.Stage == "" {
				// A look between a stage's end and what follows it.
				return next(want)
			}
			if ev.typ != want {
				t.Fatalf("event %s %+v, want %s", ev.typ, ev.data, want)
			}
			if strings.Contains(ev.raw, f.state) || strings.Contains(ev.raw, "pid") {
				t.Fatalf("event %s carries a host detail: %s", ev.typ, ev.raw)
			}
			return ev
		case <-time.After(5 * time.Second):
			t.Fatalf("no %s event", want)
		}
		return published{}
	}
	quiet := func() {
		t.Helper()
		select {
		case ev := <-evs:
			t.Fatalf("unexpected event %s %+v", ev.typ, ev.data)
		case <-time.After(100 * time.Millisecond):
		}
	}

	tr := progress.Start(dir, "dev-base", nil)
	tr.Stage("dev-base/root")
	ev := next(catalog.EventBuild)
	if ev.data.ID != "dev-base" || ev.data.Stage != "dev-base/root" {
		t.Fatalf("build event %+v", ev.data)
	}
	quiet() // nothing changed: no event per look
	tr.Done("dev-base/root", 2*time.Second, false)
	tr.Stage("image")
	// The watcher may also catch the moment between the two writes.
	if ev = next(catalog.EventBuild); ev.data.Stage == "" {
		ev = next(catalog.EventBuild)
	}
	if ev.data.Stage != "image" || len(ev.data.Done) != 1 || ev.data.Done[0].Seconds != 2 {
		t.Fatalf("second build event %+v", ev.data)
	}
	builds, err := cat.Builds()
	if err != nil || len(builds) != 1 || builds[0].Stage != "image" || builds[0].ElapsedSeconds <= 0 {
		t.Fatalf("builds %+v, %v", builds, err)
	}
	makeImage(t, f.imagePath("dev-base"), "dev-base")
	tr.Done("image", time.Second, false)
	tr.Finish(nil)
	next(catalog.EventBuilt)
	// Built means listed: the page refetches on this event.
	list, err := cat.List(context.Background())
	if err != nil || len(list) != 1 || list[0].ID != "dev-base" {
		t.Fatalf("catalog after image.built: %+v, %v", list, err)
	}

	tr = progress.Start(dir, "dev-cloud", nil)
	next(catalog.EventBuild)
	tr.Stage("dev-cloud/setup")
	next(catalog.EventBuild)
	tr.Finish(errors.New("step \"npm\" failed: exit status 1 in " + f.state))
	ev = next(catalog.EventFailed)
	if ev.data.ID != "dev-cloud" || ev.data.Failed != "dev-cloud/setup" {
		t.Fatalf("failed event %+v", ev.data)
	}
	if _, err := os.Stat(progress.Path(dir, "dev-cloud")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a reported failure's record stays: %v", err)
	}

	// A build killed mid-stage: its pid is gone.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	r := progress.New("killed")
	r.Stage = "killed/root"
	if err := progress.Write(dir, r); err != nil {
		t.Fatal(err)
	}
	next(catalog.EventBuild)
	r.PID = cmd.Process.Pid
	if err := progress.Write(dir, r); err != nil {
		t.Fatal(err)
	}
	ev = next(catalog.EventFailed)
	if ev.data.ID != "killed" || ev.data.Failed != "killed/root" {
		t.Fatalf("killed build's event %+v", ev.data)
	}
	quiet()
	if builds, _ := cat.Builds(); len(builds) != 0 {
		t.Fatalf("builds left %+v", builds)
	}
}
