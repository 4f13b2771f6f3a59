package logkeeper

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// envManager turns the test binary into a stand-in manager: it starts a
// keeper for the path in the variable and a writer feeding it, records the
// writer's pid beside the log, and exits (or is killed) leaving both.
const envManager = "LOGKEEPER_TEST_MANAGER"

func TestMain(m *testing.M) {
	MainIfKeeper()
	if p := os.Getenv(envManager); p != "" {
		os.Exit(fakeManager(p))
	}
	os.Exit(m.Run())
}

func fakeManager(path string) int {
	k, err := New(Options{MaxBytes: 4096, Keep: 2})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	w, err := k.Start(context.Background(), path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The "sandbox": a shell printing numbered lines until killed.
	cmd := exec.Command("/bin/sh", "-c", `i=0; while :; do echo "line $i ----------------------------------------------------------------------------------------------------"; i=$((i+1)); sleep 0.005; done`)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	w.Close()
	if err := os.WriteFile(path+".writer", []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		return 1
	}
	fmt.Println("ready")
	// Wait to be killed, as a crashing manager would be.
	time.Sleep(time.Minute)
	return 0
}

func newKeepers(t *testing.T, max int64, keep int) *Keepers {
	t.Helper()
	k, err := New(Options{MaxBytes: max, Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// diskUse sums the sizes of every file of path's log and checks each
// against the limit.
func diskUse(t *testing.T, path string, max int64) (total int64, files []string) {
	t.Helper()
	ms, _ := filepath.Glob(path + "*")
	for _, m := range ms {
		if strings.HasSuffix(m, ".keeper") || strings.HasSuffix(m, ".writer") {
			continue
		}
		st, err := os.Stat(m)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > max {
			t.Errorf("%s holds %d bytes, more than the limit %d", filepath.Base(m), st.Size(), max)
		}
		total += st.Size()
		files = append(files, filepath.Base(m))
	}
	return total, files
}

// lines reads the log's files oldest first as one sequence of lines.
func lines(t *testing.T, k *Keepers, path string) []string {
	t.Helper()
	var out []string
	fs := k.Files(path)
	for i := len(fs) - 1; i >= 0; i-- {
		b, err := os.ReadFile(fs[i])
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(make([]byte, 0, 1<<20), 1<<24)
		for sc.Scan() {
			out = append(out, sc.Text())
		}
	}
	return out
}

// TestFloodIsBounded writes 16 MiB of numbered lines through a real keeper
// process: at most max×(keep+1) stay on disk, no file exceeds max, the
// newest lines are kept in order and the write finishes quickly.
func TestFloodIsBounded(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "abcdefabcdef.log")
	const max, keep = 1 << 20, 3
	k := newKeepers(t, max, keep)
	w, err := k.Start(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if !k.Running(path) {
		t.Fatal("keeper not running after Start")
	}
	const total = 16 << 20
	var buf bytes.Buffer
	n := 0
	for buf.Len() < total {
		fmt.Fprintf(&buf, "flood line %08d %s\n", n, strings.Repeat("x", 80))
		n++
	}
	start := time.Now()
	if _, err := w.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := k.Stop(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	el := time.Since(start)
	t.Logf("absorbed %d MiB in %v (%.0f MiB/s)", buf.Len()>>20, el, float64(buf.Len())/(1<<20)/el.Seconds())
	if k.Running(path) {
		t.Fatal("keeper still running after its writer closed")
	}
	use, files := diskUse(t, path, max)
	if use > max*(keep+1) {
		t.Errorf("log uses %d bytes on disk over %v, more than %d×%d", use, files, max, keep+1)
	}
	if len(files) != keep+1 {
		t.Errorf("files %v, want the live one and %d rotations", files, keep)
	}
	got := lines(t, k, path)
	if len(got) == 0 || got[len(got)-1] != fmt.Sprintf("flood line %08d %s", n-1, strings.Repeat("x", 80)) {
		t.Fatalf("newest line missing; last kept: %q", got[len(got)-1])
	}
	// Whole lines, contiguous: rotation cuts at line ends.
	first, _ := strconv.Atoi(strings.Fields(got[0])[2])
	for i, l := range got {
		if want := fmt.Sprintf("flood line %08d %s", first+i, strings.Repeat("x", 80)); l != want {
			t.Fatalf("line %d is %q, want %q", i, l, want)
		}
	}
	if _, err := os.Stat(PIDFile(path)); !os.IsNotExist(err) {
		t.Errorf("keeper left its pid file: %v", err)
	}
}

// TestRotatorLongLine: a line longer than the limit is split, never lets
// a file exceed it; keep 0 only empties the live file.
func TestRotatorLongLine(t *testing.T) {
	for _, keep := range []int{0, 2} {
		dir := t.TempDir()
		r := &Rotator{Path: filepath.Join(dir, "x.log"), MaxBytes: 1000, Keep: keep}
		r.Write([]byte("short\n"))
		r.Write(bytes.Repeat([]byte("y"), 2500))
		r.Write([]byte("\nend\n"))
		r.Close()
		var total int64
		ms, _ := filepath.Glob(filepath.Join(dir, "*"))
		for _, m := range ms {
			st, _ := os.Stat(m)
			if st.Size() > 1000 {
				t.Errorf("keep %d: %s has %d bytes", keep, m, st.Size())
			}
			total += st.Size()
		}
		if len(ms) > keep+1 {
			t.Errorf("keep %d: files %v", keep, ms)
		}
		b, _ := os.ReadFile(r.Path)
		if !bytes.HasSuffix(b, []byte("\nend\n")) {
			t.Errorf("keep %d: live file ends %q", keep, b[max(0, len(b)-10):])
		}
		if r.Dropped != 0 {
			t.Errorf("dropped %d", r.Dropped)
		}
	}
}

// TestKeeperOutlivesManager: a manager that dies (SIGKILL) leaves its
// sandbox's keeper writing; a new manager's Keepers finds it by its pid
// file, and it ends by itself once the sandbox does; Remove clears the log.
func TestKeeperOutlivesManager(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "abcdefabcdef.log")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envManager+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		_ = cmd.Process.Kill()
		t.Fatalf("fake manager: %q", line)
	}
	b, _ := os.ReadFile(path + ".writer")
	writer, _ := strconv.Atoi(string(b))
	t.Cleanup(func() {
		if writer > 0 {
			_ = syscall.Kill(-writer, syscall.SIGKILL)
		}
	})
	// The manager crashes.
	_ = cmd.Process.Kill()
	_ = cmd.Wait()

	k := newKeepers(t, 4096, 2) // the restarted manager's
	if !k.Running(path) {
		t.Fatal("keeper died with the manager")
	}
	// Still writing after the manager is gone, and rotating.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(path + ".1"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no rotation after the manager died")
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := lines(t, k, path)
	for {
		after := lines(t, k, path)
		if len(before) > 0 && len(after) > 0 && after[len(after)-1] != before[len(before)-1] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("log not growing after the manager died: %d then %d lines", len(before), len(after))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The sandbox stops: the keeper ends on its own.
	_ = syscall.Kill(-writer, syscall.SIGKILL)
	writer = 0
	start := time.Now()
	if err := k.Stop(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > stopWait/2 {
		t.Errorf("keeper took %v to end after its writer; it should end at EOF", time.Since(start))
	}
	if use, files := diskUse(t, path, 4096); use > 4096*3 {
		t.Errorf("log uses %d bytes (%v)", use, files)
	}
	if err := k.Remove(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(path + ".writer")
	if ms, _ := filepath.Glob(filepath.Join(dir, "*")); len(ms) != 0 {
		t.Errorf("left after Remove: %v", ms)
	}
}

// TestStopKillsStuckKeeper: a keeper whose writer never ends is killed by
// Stop after its wait, so a destroy cannot hang on it.
func TestStopKillsStuckKeeper(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "abcdefabcdef.log")
	k := newKeepers(t, 4096, 1)
	w, err := k.Start(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := k.Stop(ctx, path); err != nil {
		t.Fatal(err)
	}
	if k.Running(path) {
		t.Fatal("keeper alive after Stop")
	}
	// A new Start over a dead keeper works and writes.
	w2, err := k.Start(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(w2, "second run")
	w2.Close()
	if err := k.Stop(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.Contains(b, []byte("second run\n")) {
		t.Fatalf("log %q", b)
	}
}

// TestFIFOInput: an extra input (a FIFO opened read-write, as Firecracker's
// log is) is copied too, including what was written just before the main
// pipe ended.
func TestFIFOInput(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "abcdefabcdef.log")
	fifo := filepath.Join(dir, "fc.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	rf, err := os.OpenFile(fifo, os.O_RDWR|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	k := newKeepers(t, 1<<20, 1)
	w, err := k.Start(context.Background(), path, rf)
	rf.Close()
	if err != nil {
		t.Fatal(err)
	}
	fw, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(w, "console line")
	fmt.Fprintln(fw, "vmm log line")
	fw.Close()
	w.Close()
	if err := k.Stop(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	for _, want := range []string{"console line\n", "vmm log line\n"} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("log %q lacks %q", b, want)
		}
	}
}

// TestUnfinishedLineIsWrittenWhenQuiet: a prompt without a line end is held
// back only while more may follow, not until the sandbox stops.
func TestUnfinishedLineIsWrittenWhenQuiet(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "abcdefabcdef.log")
	k := newKeepers(t, 1<<20, 1)
	w, err := k.Start(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		w.Close()
		_ = k.Stop(context.Background(), path)
	}()
	fmt.Fprint(w, "booted\nlogin: ")
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if string(b) == "booted\nlogin: " {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("log %q, want the prompt written while the keeper runs", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !k.Running(path) {
		t.Fatal("keeper ended")
	}
}
