package fctest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The environment of a fake firecracker process.
const (
	// EnvFake set to "1" turns a test binary into a fake firecracker (see MainIfFake).
	EnvFake = "FCTEST_FAKE_FIRECRACKER"
	// EnvSpec is the path of the Swagger spec the fake validates against.
	EnvSpec = "FCTEST_SPEC"
	// EnvRecordDir, when set, receives <id>.jsonl: every request the fake
	// answered, one Record per line, written as it happens.
	EnvRecordDir = "FCTEST_RECORD_DIR"
	// EnvFail is "METHOD /path": that request fails once with status 400,
	// after validation, changing nothing.
	EnvFail = "FCTEST_FAIL"
	// EnvIgnoreCtrlAltDel set to "1" models a guest that ignores SendCtrlAltDel.
	EnvIgnoreCtrlAltDel = "FCTEST_IGNORE_CTRLALTDEL"
	// EnvSpecFD and EnvRecordFD replace EnvSpec and EnvRecordDir for a fake
	// started by the fake jailer: inside its chroot those paths do not
	// exist, so the jailer hands it open files instead.
	EnvSpecFD   = "FCTEST_SPEC_FD"
	EnvRecordFD = "FCTEST_RECORD_FD"
	// EnvHostileVsock set to "1" models a Firecracker taken over by its
	// guest: instead of binding the vsock socket it plants a symlink there
	// pointing at the path in the variable's place (EnvHostileTarget).
	EnvHostileVsock  = "FCTEST_HOSTILE_VSOCK"
	EnvHostileTarget = "FCTEST_HOSTILE_TARGET"
	// EnvConsoleFlood is a byte count: a guest that writes that much to its
	// serial console (Firecracker's stdout) as numbered lines, then
	// ConsoleFloodDone.
	EnvConsoleFlood = "FCTEST_CONSOLE_FLOOD"
)

// What a fake writes to its serial console (stdout): ConsoleHello once its
// API serves, ConsoleFloodDone after a flood.
const (
	ConsoleHello     = "fctest console: guest says hello"
	ConsoleFloodDone = "fctest console: flood done"
)

// maxLifetime bounds a fake that nobody stops: it runs in its own session,
// so a crashed test run would otherwise leave it behind for good.
const maxLifetime = 2 * time.Minute

// Record is one line of a fake's request log.
type Record struct {
	Request
	PID int `json:"pid"`
}

// MainIfFake runs the fake firecracker and exits when EnvFake is "1". Call
// it first thing in TestMain, before m.Run parses the test flags.
func MainIfFake() {
	if os.Getenv(EnvFake) != "1" {
		return
	}
	os.Exit(RunFake(os.Args[1:]))
}

var instanceIDRe = regexp.MustCompile(`^[a-zA-Z0-9-]{1,64}$`)

var logLevels = []string{"error", "warning", "info", "debug", "trace", "off"}

// RunFake is the main of a fake firecracker: it takes Firecracker's
// command-line flags, writes its log like Firecracker, serves the stand-in
// on --api-sock, and exits after the guest accepted SendCtrlAltDel, on
// SIGTERM or SIGINT, or after a safety bound. It returns the exit code.
func RunFake(args []string) int {
	fs := flag.NewFlagSet("firecracker", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	apiSock := fs.String("api-sock", "/run/firecracker.socket", "path of the API socket")
	id := fs.String("id", "anonymous-instance", "microVM id")
	logPath := fs.String("log-path", "", "log file")
	level := fs.String("level", "Info", "log level")
	// What the jailer passes along.
	fs.Uint64("start-time-us", 0, "jailer start time")
	fs.Uint64("start-time-cpu-us", 0, "jailer start CPU time")
	fs.Uint64("parent-cpu-time-us", 0, "jailer CPU time")
	if err := fs.Parse(args); err != nil {
		return 1
	}
	logw := io.Writer(os.Stderr)
	if *logPath != "" {
		// Firecracker opens its log for writing without truncating or appending.
		f, err := os.OpenFile(*logPath, os.O_CREATE|os.O_WRONLY, 0o640)
		if err != nil {
			fmt.Fprintf(os.Stderr, "open log: %v\n", err)
			return 1
		}
		defer f.Close()
		logw = f
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(logw, "%s [%s:fc_api] %s\n", time.Now().UTC().Format(time.RFC3339Nano), *id, fmt.Sprintf(format, args...))
	}
	if !instanceIDRe.MatchString(*id) {
		logf("Invalid instance ID: %q", *id)
		return 1
	}
	if !containsFold(logLevels, *level) {
		logf("Invalid value for level: %q", *level)
		return 1
	}
	var spec *Spec
	var err error
	if fd := os.Getenv(EnvSpecFD); fd != "" {
		spec, err = specFromFD(fd)
	} else {
		spec, err = LoadSpec(os.Getenv(EnvSpec))
	}
	if err != nil {
		logf("fctest: %v", err)
		return 1
	}
	logf("Running Firecracker v%s", spec.Version)

	srv := NewServer(spec, *apiSock)
	srv.ID = *id
	srv.IgnoreCtrlAltDel = os.Getenv(EnvIgnoreCtrlAltDel) == "1"
	if os.Getenv(EnvHostileVsock) == "1" {
		srv.HostileVsockTarget = os.Getenv(EnvHostileTarget)
	}
	var rec *os.File
	if fd := os.Getenv(EnvRecordFD); fd != "" {
		rec = fileFromFD(fd, "record")
	} else if dir := os.Getenv(EnvRecordDir); dir != "" {
		if rec, err = os.OpenFile(filepath.Join(dir, *id+".jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			logf("fctest: open request record: %v", err)
			return 1
		}
	}
	if rec != nil {
		defer rec.Close()
		var mu sync.Mutex
		pid := os.Getpid()
		srv.OnRequest = func(r Request) {
			b, _ := json.Marshal(Record{Request: r, PID: pid})
			mu.Lock()
			defer mu.Unlock()
			_, _ = rec.Write(append(b, '\n'))
		}
	}
	if f := os.Getenv(EnvFail); f != "" {
		method, path, _ := strings.Cut(f, " ")
		srv.FailNext(method, path, 400, "fctest: injected failure")
	}
	if err := srv.Start(); err != nil {
		logf("Failed to open the API socket: %v", err)
		return 1
	}
	fmt.Fprintln(os.Stdout, ConsoleHello)
	if n, err := strconv.ParseInt(os.Getenv(EnvConsoleFlood), 10, 64); err == nil && n > 0 {
		go floodConsole(n)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	code := 0
	select {
	case <-srv.Done():
		logf("Vmm is stopping.")
	case s := <-sig:
		logf("Shutting down VM after intercepting signal %v", s)
	case <-time.After(maxLifetime):
		logf("fctest: lifetime bound reached, exiting")
		code = 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	return code
}

// floodConsole writes n bytes of numbered lines to stdout, as a guest
// flooding its serial console would, in large writes.
func floodConsole(n int64) {
	w := bufio.NewWriterSize(os.Stdout, 256<<10)
	for i := 0; n > 0; i++ {
		k, _ := fmt.Fprintf(w, "console flood %08d %s\n", i, strings.Repeat("z", 72))
		n -= int64(k)
	}
	fmt.Fprintln(w, ConsoleFloodDone)
	_ = w.Flush()
}

func fileFromFD(fd, name string) *os.File {
	n, err := strconv.Atoi(fd)
	if err != nil || n < 3 {
		return nil
	}
	return os.NewFile(uintptr(n), name)
}

func specFromFD(fd string) (*Spec, error) {
	f := fileFromFD(fd, "spec")
	if f == nil {
		return nil, fmt.Errorf("bad %s %q", EnvSpecFD, fd)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read spec: %w", err)
	}
	return ParseSpec(b)
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

// ReadRecords reads the request log a fake with this id wrote to dir. A
// missing log is an empty one.
func ReadRecords(dir, id string) ([]Record, error) {
	f, err := os.Open(filepath.Join(dir, id+".jsonl"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open request record: %w", err)
	}
	defer f.Close()
	var out []Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("parse request record: %w", err)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read request record: %w", err)
	}
	return out, nil
}
