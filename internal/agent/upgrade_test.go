package agent_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/agent"
)

// upgradeServer answers one scripted reply per connection on a unix socket
// and, after a 101, echoes what it reads.
func upgradeServer(t *testing.T, reply string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "u.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				if reply == "" {
					io.Copy(io.Discard, br) // hold the request unanswered
					return
				}
				if req.Header.Get("Upgrade") != "ssh" || req.Header.Get("Connection") != "Upgrade" || req.URL.Path != "/ssh" {
					io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
					return
				}
				io.WriteString(c, reply)
				if strings.HasPrefix(reply, "HTTP/1.1 101") {
					io.Copy(c, br)
				}
			}()
		}
	}()
	return sock
}

func TestDialUpgrade(t *testing.T) {
	const switched = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ssh\r\n\r\n"
	t.Run("switched", func(t *testing.T) {
		c := agent.New(agent.UnixDialer(upgradeServer(t, switched+"early")))
		conn, err := c.DialUpgrade(context.Background(), "/ssh", "ssh")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// Bytes sent right behind the 101 are not lost to the handshake's buffer.
		buf := make([]byte, 5)
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "early" {
			t.Fatalf("read-ahead bytes %q: %v", buf, err)
		}
		io.WriteString(conn, "ping")
		if _, err := io.ReadFull(conn, buf[:4]); err != nil || string(buf[:4]) != "ping" {
			t.Fatalf("echo %q: %v", buf[:4], err)
		}
	})
	t.Run("refused with a problem", func(t *testing.T) {
		body := `{"code":"bad_request","detail":"GET /ssh needs Connection: Upgrade"}`
		reply := "HTTP/1.1 426 Upgrade Required\r\nContent-Type: application/json\r\nContent-Length: " +
			strconv.Itoa(len(body)) + "\r\n\r\n" + body
		c := agent.New(agent.UnixDialer(upgradeServer(t, reply)))
		_, err := c.DialUpgrade(context.Background(), "/ssh", "ssh")
		var ae *agent.Error
		if !errors.As(err, &ae) || ae.Status != 426 || ae.Code != "bad_request" {
			t.Fatalf("err = %v, want an *agent.Error 426", err)
		}
	})
	t.Run("wrong protocol", func(t *testing.T) {
		c := agent.New(agent.UnixDialer(upgradeServer(t, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")))
		if _, err := c.DialUpgrade(context.Background(), "/ssh", "ssh"); err == nil || !strings.Contains(err.Error(), "websocket") {
			t.Fatalf("err = %v, want a protocol mismatch", err)
		}
	})
	t.Run("no answer until the context ends", func(t *testing.T) {
		c := agent.New(agent.UnixDialer(upgradeServer(t, "")))
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.DialUpgrade(ctx, "/ssh", "ssh")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want DeadlineExceeded", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Error("the handshake outlived its context")
		}
	})
}
