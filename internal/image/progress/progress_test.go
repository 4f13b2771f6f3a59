package progress_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/image/progress"
)

// TestTrackerLifecycle: a build's record is written when it starts, names
// the running stage and the finished ones as it goes, is root-only, and is
// gone when the build succeeds.
func TestTrackerLifecycle(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "images")
	tr := progress.Start(dir, "dev-base", func(err error) { t.Errorf("warned: %v", err) })
	r, err := progress.Read(dir, "dev-base")
	if err != nil {
		t.Fatal(err)
	}
	if r.PID != os.Getpid() || r.PIDStart == "" || r.Started.IsZero() || r.Stage != "" || len(r.Done) != 0 {
		t.Fatalf("record at start: %+v", r)
	}
	st, err := os.Stat(progress.Path(dir, "dev-base"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("record mode %v, want 0600 (it names a host pid)", st.Mode().Perm())
	}
	tr.Done("dev-base/root", 0, true)
	tr.Stage("dev-base/setup")
	r, _ = progress.Read(dir, "dev-base")
	if r.Stage != "dev-base/setup" || len(r.Done) != 1 || r.Done[0].Name != "dev-base/root" || !r.Done[0].Cached {
		t.Fatalf("record in setup: %+v", r)
	}
	list, err := progress.List(dir)
	if err != nil || len(list) != 1 || list[0].Stage != "dev-base/setup" {
		t.Fatalf("list while building: %+v, %v", list, err)
	}
	tr.Done("dev-base/setup", 1500*time.Millisecond, false)
	r, _ = progress.Read(dir, "dev-base")
	if r.Stage != "" || len(r.Done) != 2 || r.Done[1].Seconds != 1.5 {
		t.Fatalf("record after setup: %+v", r)
	}
	tr.Finish(nil)
	if _, err := os.Stat(progress.Path(dir, "dev-base")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("record after success: %v, want gone", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("left in the dir: %v", ents)
	}
}

// TestTrackerFailure: a failed build leaves its record marked with the
// stage that failed and the error's first line only.
func TestTrackerFailure(t *testing.T) {
	dir := t.TempDir()
	tr := progress.Start(dir, "dev-cloud", nil)
	tr.Stage("dev-cloud/setup")
	tr.Finish(errors.New("step \"npm install\" failed: exit status 1\n--- output ---\nsecret-looking output"))
	list, err := progress.List(dir)
	if err != nil || len(list) != 1 {
		t.Fatalf("list after failure: %+v, %v", list, err)
	}
	r := list[0]
	if r.Failed != "dev-cloud/setup" || r.Ended.IsZero() || strings.Contains(r.Error, "output") || !strings.Contains(r.Error, "npm install") {
		t.Fatalf("failed record: %+v", r)
	}
}

// TestListDropsStaleRecords: a record whose process is gone (a killed
// build), or whose pid now belongs to another process, is not a build: List
// ignores and removes it, and Scan reports it as killed.
func TestListDropsStaleRecords(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := progress.New("dead")
	dead.PID = cmd.Process.Pid
	dead.Stage = "dead/root"
	reused := progress.New("reused")
	reused.PIDStart = "1" // this test's pid, but not the process that wrote it
	live := progress.New("live")
	for _, r := range []progress.Record{dead, reused, live} {
		if err := progress.Write(dir, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "junk"+progress.Suffix), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, killed, err := progress.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != "live" {
		t.Fatalf("live builds %+v, want only live", got)
	}
	if len(killed) != 2 {
		t.Fatalf("killed %+v, want dead and reused", killed)
	}
	for _, id := range []string{"dead", "reused", "junk"} {
		if _, err := os.Stat(progress.Path(dir, id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stale record %s not removed: %v", id, err)
		}
	}
	// An expired failure goes too.
	old := progress.New("old")
	old.Failed, old.Ended = "old/root", time.Now().Add(-2*progress.FailedKeep)
	if err := progress.Write(dir, old); err != nil {
		t.Fatal(err)
	}
	if got, _ := progress.List(dir); len(got) != 1 || got[0].ID != "live" {
		t.Fatalf("after an expired failure: %+v", got)
	}
	if err := progress.Write(dir, progress.Record{ID: "../x"}); err == nil {
		t.Error("wrote a record with a path in its id")
	}
}

// BenchmarkScan is the manager's once-a-second look at the images dir: a
// few images, their sidecars and one build running.
func BenchmarkScan(b *testing.B) {
	dir := b.TempDir()
	for _, n := range []string{"dev-base.ext4", "dev-base.json", "dev-base.ext4.build.json", "dev-cloud.ext4", "dev-cloud.json"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("{}"), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	r := progress.New("dev-cloud")
	r.Stage = "dev-cloud/setup"
	r.Done = []progress.Stage{{Name: "dev-base/root", Cached: true}, {Name: "dev-base/setup", Cached: true}, {Name: "dev-cloud/root", Seconds: 83}}
	if err := progress.Write(dir, r); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		live, _, err := progress.Scan(dir)
		if err != nil || len(live) != 1 {
			b.Fatalf("scan: %v %v", live, err)
		}
	}
}
