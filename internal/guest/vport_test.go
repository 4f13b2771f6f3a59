package guest

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A pty in raw mode stands in for the virtio-serial port: a character
// device the agent opens by path, one byte stream shared by every request.
func rawPTY(t *testing.T) (master *os.File, slave string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave = "/dev/pts/" + itoa(n)
	// Raw mode on the slave side: no echo, no line editing, no CR/LF games.
	// Held open for the test: with no slave open, the master reads EIO.
	s, err := os.OpenFile(slave, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	tio, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	tio.Oflag &^= unix.OPOST
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	tio.Cflag &^= unix.CSIZE | unix.PARENB
	tio.Cflag |= unix.CS8
	tio.Cc[unix.VMIN], tio.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(int(s.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	return m, slave
}

func itoa(n int) string {
	b := []byte{}
	for {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
		if n == 0 {
			return string(b)
		}
	}
}

// The HTTP server wakes its own pending background read with a deadline in
// the past after every request with a body; that wake-up must not read as
// a broken connection, or every later request on the stream is cancelled.
func TestPortListenerServesRequestAfterRequest(t *testing.T) {
	master, slave := rawPTY(t)
	srv := NewServer(Options{FileRoots: []string{t.TempDir()}, LogDir: t.TempDir(), ConfigPath: filepath.Join(t.TempDir(), "c.json")})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, newPortListener(slave)) }()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = srv.Shutdown(context.Background())
	})
	br := bufio.NewReader(master)
	body := `{"argv":["true"]}`
	for i := range 4 {
		_ = master.SetDeadline(time.Now().Add(10 * time.Second))
		req := "POST /exec HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: " + itoa(len(body)) + "\r\n\r\n" + body
		if i == 0 {
			req = "GET /health HTTP/1.1\r\nHost: agent\r\n\r\n"
		}
		if _, err := master.WriteString(req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		var b strings.Builder
		_, _ = bufio.NewReader(resp.Body).WriteTo(&b)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || (i > 0 && !strings.Contains(b.String(), `"exitCode":0`)) {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, b.String())
		}
	}
}

func TestFindVirtioPort(t *testing.T) {
	dir := t.TempDir()
	for name, port := range map[string]string{"vport0p1": "org.qemu.guest_agent.0", "vport1p1": "org.atelier.agent-test.0", "vport1p2": ""} {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "name"), []byte(port+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if dev, ok := findVirtioPort(dir, "org.atelier.agent-test.0"); !ok || dev != "/dev/vport1p1" {
		t.Errorf("found %q, %v", dev, ok)
	}
	// Only the exact name: a VMM's other ports (a guest agent's, an unnamed
	// console) are never served.
	for _, name := range []string{"org.atelier.agent-test", "", "org.qemu.guest_agent.0x"} {
		if dev, ok := findVirtioPort(dir, name); ok {
			t.Errorf("%q matched %s", name, dev)
		}
	}
	if _, ok := findVirtioPort(filepath.Join(dir, "none"), "org.atelier.agent-test.0"); ok {
		t.Error("a missing sysfs class matched")
	}
}
