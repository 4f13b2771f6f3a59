package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"atelier/internal/runtime/kubernetes"
)

// Environment of a kubernetes-runtime manager subprocess: its config file
// and the address of the test's forwarder into the bed's network namespace
// (the subprocess cannot enter it the way the test process does).
const (
	envKubeManager = "ATELIER_TEST_KUBE_MANAGER"
	envKubeForward = "ATELIER_TEST_KUBE_FORWARD"
)

func init() {
	if path := os.Getenv(envKubeManager); path != "" {
		os.Exit(runKubeTestManager(path, os.Getenv(envKubeForward)))
	}
}

// runKubeTestManager serves until killed, killing itself with SIGKILL at
// the crash point envCrash names.
func runKubeTestManager(path, forward string) int {
	cfg, err := loadTestManager(path, true)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	opts := Options{
		Log: slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Kubernetes: func(o *kubernetes.Options) {
			o.Dial = forwardDialer(forward)
			o.PodTimeout = 2 * time.Minute
			o.Poll = 20 * time.Millisecond
		},
	}
	// A replica of a failover test: a short lease, frequent passes.
	if s := os.Getenv(envReplicaTTL); s != "" {
		if opts.LeaderTTL, err = time.ParseDuration(s); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		opts.ReconcileEvery = kubeReconcileEvery
	}
	return serveTestManager(cfg, opts)
}

// forwardDialer dials through the test's forwarder: it sends the address on
// a line and reads one byte, '1' once the forwarder's dial succeeded.
func forwardDialer(forward string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", forward)
		if err != nil {
			return nil, err
		}
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		b := make([]byte, 1)
		if _, err := io.WriteString(c, addr+"\n"); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := io.ReadFull(c, b); err != nil || b[0] != '1' {
			c.Close()
			return nil, fmt.Errorf("dial %s through the forwarder: refused", addr)
		}
		c.SetDeadline(time.Time{})
		return c, nil
	}
}

// forwarder serves forwardDialer's requests from the test process, which
// dials inside the bed's namespace.
func (e *kubeEnv) forwarder(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				c.SetReadDeadline(time.Time{})
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				up, err := e.c.DialContext(ctx, "tcp", strings.TrimSpace(line))
				cancel()
				if err != nil {
					return
				}
				defer up.Close()
				if _, err := c.Write([]byte{'1'}); err != nil {
					return
				}
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	return l.Addr().String()
}

// spawn starts a manager subprocess that dies at crash, and returns once it
// serves.
func (e *kubeEnv) spawn(t *testing.T, forward, crash string) *manager {
	t.Helper()
	b, err := e.f.cfg.JSON()
	if err != nil {
		t.Fatal(err)
	}
	path := e.f.dir + "/config.json"
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envKubeManager+"="+path, envKubeForward+"="+forward, envCrash+"="+crash)
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &manager{cmd: cmd, done: make(chan error, 1), logs: logs}
	go func() { m.done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); err := <-m.done; m.done <- err })
	for i := 0; i < 3000; i++ {
		select {
		case err := <-m.done:
			m.done <- err
			t.Fatalf("manager exited at start: %v\n%s", err, logs.String())
		default:
		}
		if code, _ := e.f.tryCall("GET", "/health/ready"); code == 200 {
			return m
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("manager not ready:\n%s", logs.String())
	return nil
}
