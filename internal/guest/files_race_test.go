package guest

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"atelier/internal/agent"
)

// TestFilesSymlinkSwapRace is the hostile guest's attack on the file API:
// a process inside the sandbox swaps a directory under the root for a
// symlink to a directory outside it (atomically, with RENAME_EXCHANGE) as
// fast as it can, while reads, writes, listings, stats, mkdirs and deletes
// of paths through that directory go through the API. A check-then-reopen
// implementation lets a share of them land outside the root; resolving
// beneath the root's file descriptor lets none. Every operation may fail
// (the path is a symlink to outside half of the time); none may reach the
// outside directory.
func TestFilesSymlinkSwapRace(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 5*time.Minute)
	iterations := 3500
	if testing.Short() {
		iterations = 700
	}

	const inside, secret = "inside", "SECRET-FROM-OUTSIDE"
	outside := filepath.Join(a.dir, "outside")
	d := filepath.Join(a.root, "d")
	for _, dir := range []string{outside, d} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, s string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(d, "f"), inside)
	write(filepath.Join(d, "v"), inside)
	write(filepath.Join(outside, "f"), secret)
	write(filepath.Join(outside, "v"), secret)
	write(filepath.Join(outside, "outside-only"), secret)
	link := filepath.Join(a.root, "link")
	mustSymlink(t, outside, link)

	// The racer: d and link trade places again and again.
	stop := make(chan struct{})
	var swaps atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := unix.Renameat2(unix.AT_FDCWD, d, unix.AT_FDCWD, link, unix.RENAME_EXCHANGE); err != nil {
				t.Errorf("swap: %v", err)
				return
			}
			swaps.Add(1)
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
		// Leave d as the directory for the cleanup.
		if fi, err := os.Lstat(d); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			_ = unix.Renameat2(unix.AT_FDCWD, d, unix.AT_FDCWD, link, unix.RENAME_EXCHANGE)
		}
	}()

	type tally struct{ ok, escaped int }
	ops := []struct {
		name string
		do   func(i int) (ok, escaped bool)
	}{
		{"read", func(int) (bool, bool) {
			fc, err := a.c.ReadFile(ctx, filepath.Join(d, "f"), "", 0, 0)
			return err == nil, err == nil && fc.Content == secret
		}},
		{"stat", func(int) (bool, bool) {
			fi, err := a.c.Stat(ctx, filepath.Join(d, "f"))
			return err == nil, err == nil && fi.Size == int64(len(secret))
		}},
		{"list", func(int) (bool, bool) {
			l, err := a.c.List(ctx, d)
			if err != nil {
				return false, false
			}
			for _, e := range l.Entries {
				if e.Name == "outside-only" {
					return true, true
				}
			}
			return true, false
		}},
		{"write", func(i int) (bool, bool) {
			name := "w-" + strconv.Itoa(i)
			_, err := a.c.WriteFile(ctx, filepath.Join(d, name), strings.NewReader("x"), agent.WriteFileOptions{})
			_, serr := os.Lstat(filepath.Join(outside, name))
			return err == nil, serr == nil
		}},
		{"write-batch", func(i int) (bool, bool) {
			name := "b-" + strconv.Itoa(i)
			res, err := a.c.WriteFiles(ctx, []agent.FileWrite{{Path: filepath.Join(d, name), Content: "x"}})
			_, serr := os.Lstat(filepath.Join(outside, name))
			return err == nil && res.Err() == nil, serr == nil
		}},
		{"mkdir", func(i int) (bool, bool) {
			name := "m-" + strconv.Itoa(i)
			_, err := a.c.Mkdir(ctx, agent.MkdirRequest{Path: filepath.Join(d, name)})
			_, serr := os.Lstat(filepath.Join(outside, name))
			return err == nil, serr == nil
		}},
		{"delete", func(int) (bool, bool) {
			err := a.c.Remove(ctx, filepath.Join(d, "v"), false)
			escaped := false
			if _, serr := os.Lstat(filepath.Join(outside, "v")); serr != nil {
				escaped = true
				write(filepath.Join(outside, "v"), secret)
			}
			// Put the inside victim back wherever the directory is now.
			for _, dir := range []string{d, link} {
				if real, err := filepath.EvalSymlinks(dir); err == nil && real != outside {
					_ = os.WriteFile(filepath.Join(real, "v"), []byte(inside), 0o644)
				}
			}
			return err == nil, escaped
		}},
	}
	tallies := make([]tally, len(ops))
	start := time.Now()
	for i := 0; i < iterations; i++ {
		k := i % len(ops)
		ok, esc := ops[k].do(i)
		if ok {
			tallies[k].ok++
		}
		if esc {
			tallies[k].escaped++
		}
	}
	var total int
	var summary []string
	for k, op := range ops {
		total += tallies[k].escaped
		summary = append(summary, op.name+" "+strconv.Itoa(tallies[k].escaped)+"/"+strconv.Itoa(iterations/len(ops))+" escaped, "+strconv.Itoa(tallies[k].ok)+" ok")
	}
	t.Logf("%d operations in %s against %d swaps: %s", iterations, time.Since(start).Round(time.Millisecond), swaps.Load(), strings.Join(summary, "; "))
	if swaps.Load() < int64(iterations) {
		t.Logf("only %d swaps: the race was weak", swaps.Load())
	}
	if total > 0 {
		t.Errorf("%d of %d operations reached outside the file root", total, iterations)
	}
	if b, err := os.ReadFile(filepath.Join(outside, "f")); err != nil || string(b) != secret {
		t.Errorf("outside file changed: %q %v", b, err)
	}
}
