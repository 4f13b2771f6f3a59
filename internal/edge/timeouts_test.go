package edge

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"atelier/internal/config"
	"atelier/internal/edge/edgetest"
	"atelier/internal/store"
)

// shortTimeouts keep the tests quick; DefaultTimeouts are what runs.
var shortTimeouts = Timeouts{ReadHeader: 500 * time.Millisecond, ReadIdle: 500 * time.Millisecond, WriteIdle: 500 * time.Millisecond, Idle: time.Second}

// cutWithin is how soon after its timeout a stalled connection must be gone
// (Caddy's own defaults keep it a minute or more).
const cutWithin = 3 * time.Second

// closedWithin reads from c until the server closes it and reports how
// long that took, failing when it is still open after d.
func closedWithin(t *testing.T, c net.Conn, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(d))
	buf := make([]byte, 4096)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection still open after %v", d)
		}
		return time.Since(start)
	}
}

// timeoutGuest serves /upload (counts the body), /download (20 chunks, 100
// ms apart) and /ws (WebSocket echo).
func timeoutGuest(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			n, err := io.Copy(io.Discard, r.Body)
			if err != nil {
				return
			}
			fmt.Fprintf(w, "got %d", n)
		case "/download":
			for i := 0; i < 20; i++ {
				fmt.Fprintf(w, "chunk %02d\n", i)
				w.(http.Flusher).Flush()
				time.Sleep(100 * time.Millisecond)
			}
		case "/ws":
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			for {
				typ, msg, err := c.Read(r.Context())
				if err != nil {
					return
				}
				if err := c.Write(r.Context(), typ, append([]byte("echo:"), msg...)); err != nil {
					return
				}
			}
		default:
			io.WriteString(w, "ok")
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// TestSlowClientsAreCut: connections that stall before or inside a request
// (slowloris, a body that stops, a kept-alive connection left open) are
// closed soon after the edge's timeouts, on both ports, while transfers that
// keep moving (slow uploads and downloads) and idle WebSockets outlive them.
func TestSlowClientsAreCut(t *testing.T) {
	cert, key, _ := edgetest.WildcardCert(t, "atelier.test")
	h := newHarness(t, func(c *config.Config, o *Options) {
		c.Domain.TLS.CertPath, c.Domain.TLS.KeyPath = cert, key
		o.Timeouts = shortTimeouts
	})
	h.sandbox(sbA, "127.0.0.1")
	if _, err := h.e.ExposeDev(context.Background(), sbA, DevExposure{Name: "pub", Port: timeoutGuest(t), Public: true}); err != nil {
		t.Fatal(err)
	}
	host := "dev-pub-" + sbA + ".atelier.test"
	httpsAddr := "127.0.0.1:" + strconv.Itoa(h.cfg.Domain.HTTPSPort)
	httpAddr := "127.0.0.1:" + strconv.Itoa(h.cfg.Domain.HTTPPort)
	dial := func(addr string) net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dialTLS := func() net.Conn {
		t.Helper()
		c := tls.Client(dial(httpsAddr), &tls.Config{ServerName: host, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		if err := c.Handshake(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// trickle writes s one byte every 100 ms until the server closes.
	trickle := func(c net.Conn, s string) {
		go func() {
			for i := 0; ; i++ {
				if _, err := c.Write([]byte{s[i%len(s)]}); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}

	t.Run("silent connection, HTTPS", func(t *testing.T) {
		t.Logf("closed after %v", closedWithin(t, dial(httpsAddr), cutWithin))
	})
	t.Run("silent connection, HTTP", func(t *testing.T) {
		t.Logf("closed after %v", closedWithin(t, dial(httpAddr), cutWithin))
	})
	t.Run("headers trickled, HTTPS", func(t *testing.T) {
		c := dialTLS()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+host+"\r\n")
		trickle(c, "X-Slow: aaaaaaaa\r\n")
		t.Logf("closed after %v", closedWithin(t, c, cutWithin))
	})
	t.Run("headers trickled, HTTP", func(t *testing.T) {
		c := dial(httpAddr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+host+"\r\n")
		trickle(c, "X-Slow: aaaaaaaa\r\n")
		t.Logf("closed after %v", closedWithin(t, c, cutWithin))
	})
	t.Run("body stalls", func(t *testing.T) {
		c := dialTLS()
		io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 100000\r\n\r\nfirst bytes")
		t.Logf("closed after %v", closedWithin(t, c, cutWithin))
	})
	t.Run("idle keep-alive connection", func(t *testing.T) {
		c := dialTLS()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		if b := body(t, res); res.StatusCode != 200 || b != "ok" {
			t.Fatalf("%d %q", res.StatusCode, b)
		}
		t.Logf("closed after %v", closedWithin(t, c, cutWithin))
	})

	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", httpsAddr)
		},
	}}
	t.Cleanup(client.CloseIdleConnections)
	url := "https://" + host + ":" + strconv.Itoa(h.cfg.Domain.HTTPSPort)

	t.Run("slow steady upload", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			for i := 0; i < 20; i++ {
				pw.Write([]byte(strings.Repeat("u", 1024)))
				time.Sleep(100 * time.Millisecond)
			}
			pw.Close()
		}()
		res, err := client.Post(url+"/upload", "application/octet-stream", pr)
		if err != nil {
			t.Fatal(err)
		}
		if b := body(t, res); res.StatusCode != 200 || b != "got 20480" {
			t.Fatalf("%d %q", res.StatusCode, b)
		}
	})
	t.Run("slow steady download", func(t *testing.T) {
		start := time.Now()
		res, err := client.Get(url + "/download")
		if err != nil {
			t.Fatal(err)
		}
		if b := body(t, res); res.StatusCode != 200 || strings.Count(b, "chunk") != 20 {
			t.Fatalf("%d %q", res.StatusCode, b)
		}
		t.Logf("download took %v", time.Since(start))
	})
	t.Run("idle WebSocket", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, "wss://"+host+":"+strconv.Itoa(h.cfg.Domain.HTTPSPort)+"/ws", &websocket.DialOptions{HTTPClient: client})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		for i := 0; i < 2; i++ {
			// Silent for longer than every timeout, both ways.
			time.Sleep(2500 * time.Millisecond)
			if err := c.Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
				t.Fatalf("write after idle: %v", err)
			}
			if _, msg, err := c.Read(ctx); err != nil || string(msg) != "echo:ping" {
				t.Fatalf("read after idle: %q %v", msg, err)
			}
		}
		c.Close(websocket.StatusNormalClosure, "")
	})
}

// TestTimeoutsInCaddyConfig: the defaults reach both servers' config.
func TestTimeoutsInCaddyConfig(t *testing.T) {
	cert, key, _ := edgetest.WildcardCert(t, "atelier.test")
	cfg := testConfig(t)
	cfg.Domain.TLS.CertPath, cfg.Domain.TLS.KeyPath = cert, key
	st, err := store.Open(context.Background(), filepath.Join(cfg.Server.DataDir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	e, err := New(Options{Config: cfg, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.caddyConfig()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"read_header_timeout":` + strconv.FormatInt(int64(DefaultTimeouts.ReadHeader), 10),
		`"read_idle_timeout":` + strconv.FormatInt(int64(DefaultTimeouts.ReadIdle), 10),
		`"write_idle_timeout":` + strconv.FormatInt(int64(DefaultTimeouts.WriteIdle), 10),
		`"idle_timeout":` + strconv.FormatInt(int64(DefaultTimeouts.Idle), 10),
	} {
		if n := strings.Count(string(b), want); n != 2 {
			t.Errorf("%s appears %d times in the config, want once per server", want, n)
		}
	}
	if t.Failed() {
		t.Logf("config: %s", b)
	}
}
