package edge

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
)

// DialFunc connects to a guest address.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// DialInNetns returns a DialFunc whose sockets are created inside the network
// namespace ns: the guests' bridge lives there when the manager does not run
// in it (tests put it in a namespace of their own). A socket keeps the
// namespace it was created in, so only the dial runs on a thread moved into
// ns; the connection is then used from any goroutine.
func DialInNetns(ns netns.NsHandle) DialFunc {
	d := &net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			orig, err := netns.Get()
			if err != nil {
				runtime.UnlockOSThread()
				ch <- result{nil, fmt.Errorf("dial %s: current netns: %w", addr, err)}
				return
			}
			defer orig.Close()
			if err := netns.Set(ns); err != nil {
				runtime.UnlockOSThread()
				ch <- result{nil, fmt.Errorf("dial %s: enter netns: %w", addr, err)}
				return
			}
			c, err := d.DialContext(ctx, network, addr)
			// A thread that cannot go back stays locked: it exits with this
			// goroutine instead of running others in the wrong namespace.
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}
