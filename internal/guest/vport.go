package guest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The agent's second channel: a virtio-serial port with a given name.
//
// It exists for the QEMU boot test, which has no vhost-vsock. Nothing can
// turn it on but the VMM: the agent serves on the port only if the kernel
// shows a virtio-serial port of exactly that name, and a guest cannot
// create virtio hardware; Firecracker has no virtio-serial device at all,
// and no configuration of Atelier's adds one. Its host end is whatever the
// VMM connects the port to (in the test, a unix socket in the test's
// temporary directory).

const (
	// vportWait bounds the wait for the port: virtio-serial ports appear
	// shortly after the device, possibly after the agent started.
	vportWait = 10 * time.Second
	vportPoll = 50 * time.Millisecond
	// vportIdle is the pause before reopening a port whose host end was
	// not connected (reads then return EOF at once).
	vportIdle = 50 * time.Millisecond
)

const sysVirtioPorts = "/sys/class/virtio-ports"

// findVirtioPort returns the device of the virtio-serial port named name.
func findVirtioPort(sysDir, name string) (string, bool) {
	if name == "" {
		return "", false
	}
	ents, err := os.ReadDir(sysDir)
	if err != nil {
		return "", false
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sysDir, e.Name(), "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			return "/dev/" + e.Name(), true
		}
	}
	return "", false
}

// serveVirtioPort serves the agent API on the named port once it shows
// up, until ctx is done. Without such a port (the normal case) it gives up
// quietly after vportWait.
func serveVirtioPort(ctx context.Context, srv *Server, name string, log *slog.Logger) {
	deadline := time.Now().Add(vportWait)
	var dev string
	for {
		var ok bool
		if dev, ok = findVirtioPort(sysVirtioPorts, name); ok {
			break
		}
		if time.Now().After(deadline) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(vportPoll):
		}
	}
	log.Info("agent listening", "virtio_serial_port", name, "device", dev)
	if err := srv.Serve(ctx, newPortListener(dev)); err != nil {
		log.Error("serve on virtio-serial port", "device", dev, "err", err)
	}
}

// portListener turns a serial port into a listener of one connection at a
// time: the port is one byte stream, so its next "connection" is the port
// reopened after the previous one closed.
type portListener struct {
	path   string
	free   chan struct{} // holds a token while no connection is open
	closed chan struct{}
	once   sync.Once
}

func newPortListener(path string) *portListener {
	l := &portListener{path: path, free: make(chan struct{}, 1), closed: make(chan struct{})}
	l.free <- struct{}{}
	return l
}

func (l *portListener) Accept() (net.Conn, error) {
	for {
		select {
		case <-l.closed:
			return nil, net.ErrClosed
		case <-l.free:
		}
		f, err := os.OpenFile(l.path, os.O_RDWR, 0)
		if err != nil {
			l.free <- struct{}{}
			select {
			case <-l.closed:
				return nil, net.ErrClosed
			case <-time.After(time.Second):
			}
			continue
		}
		return &portConn{File: f, l: l}, nil
	}
}

func (l *portListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *portListener) Addr() net.Addr { return portAddr(l.path) }

// portConn is one open of the port.
type portConn struct {
	*os.File
	l    *portListener
	read atomic.Int64
	once sync.Once
}

func (c *portConn) Read(p []byte) (int, error) {
	n, err := c.File.Read(p)
	c.read.Add(int64(n))
	return n, netError(err)
}

func (c *portConn) Write(p []byte) (int, error) {
	n, err := c.File.Write(p)
	return n, netError(err)
}

// netError makes a deadline error look like a network connection's: the
// HTTP server tells its own wake-up of a pending read (a deadline in the
// past) from a broken connection by net.Error's Timeout, which os.File's
// *PathError does not provide.
func netError(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return portTimeout{err}
	}
	return err
}

type portTimeout struct{ error }

func (portTimeout) Timeout() bool   { return true }
func (portTimeout) Temporary() bool { return true }

var _ net.Error = portTimeout{}

func (c *portConn) Close() error {
	err := c.File.Close()
	c.once.Do(func() {
		go func() {
			// A port whose host end is not connected reads EOF at once:
			// pause before the next open rather than spin.
			if c.read.Load() == 0 {
				time.Sleep(vportIdle)
			}
			c.l.free <- struct{}{}
		}()
	})
	return err
}

func (c *portConn) LocalAddr() net.Addr  { return portAddr(c.l.path) }
func (c *portConn) RemoteAddr() net.Addr { return portAddr("host") }

// SetDeadline and friends fall back to no deadline when the port cannot
// be polled.
func (c *portConn) SetDeadline(t time.Time) error {
	if err := c.File.SetDeadline(t); err != nil && !errors.Is(err, os.ErrNoDeadline) {
		return err
	}
	return nil
}

func (c *portConn) SetReadDeadline(t time.Time) error {
	if err := c.File.SetReadDeadline(t); err != nil && !errors.Is(err, os.ErrNoDeadline) {
		return err
	}
	return nil
}

func (c *portConn) SetWriteDeadline(t time.Time) error {
	if err := c.File.SetWriteDeadline(t); err != nil && !errors.Is(err, os.ErrNoDeadline) {
		return err
	}
	return nil
}

type portAddr string

func (a portAddr) Network() string { return "virtio-serial" }
func (a portAddr) String() string  { return string(a) }
