// Package client is a small typed client for the manager API, used by the
// CLI. It speaks HTTP over TCP or over the manager's unix socket.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"atelier/internal/sandbox"
)

// Client talks to one manager.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// New accepts http://host:port, https://host or unix:///path/to/atelier.sock.
func New(rawURL, token string) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parse manager url %q: %w", rawURL, err)
	}
	c := &Client{token: token, http: &http.Client{Timeout: 10 * time.Minute}}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return nil, fmt.Errorf("manager url %q has no host", rawURL)
		}
		c.base = strings.TrimRight(u.Scheme+"://"+u.Host+u.Path, "/")
	case "unix":
		path := u.Path
		if path == "" {
			return nil, fmt.Errorf("manager url %q has no socket path", rawURL)
		}
		c.base = "http://atelier"
		c.http.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}
	default:
		return nil, fmt.Errorf("manager url %q: scheme must be http, https or unix", rawURL)
	}
	return c, nil
}

// Error is a problem document returned by the manager.
type Error struct {
	Status int    `json:"status"`
	Code   string `json:"code"`
	Detail string `json:"detail"`
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("manager answered %d %s", e.Status, e.Code)
	}
	return fmt.Sprintf("%s (%d %s)", e.Detail, e.Status, e.Code)
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode >= 400 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(b, e) != nil || e.Code == "" {
			e.Detail = strings.TrimSpace(string(b))
		}
		e.Status = resp.StatusCode
		return e
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode response: %w", err)
		}
	}
	return nil
}

// CreateRequest is the body of POST /api/sandboxes.
type CreateRequest struct {
	Image       string `json:"image,omitempty"`
	Vcpus       int    `json:"vcpus,omitempty"`
	MemoryMB    int    `json:"memoryMb,omitempty"`
	Name        string `json:"name,omitempty"`
	WorkspaceID string `json:"workspaceId,omitempty"`
}

func (c *Client) CreateSandbox(ctx context.Context, req CreateRequest, wait bool) (sandbox.View, error) {
	var v sandbox.View
	err := c.do(ctx, http.MethodPost, fmt.Sprintf("/api/sandboxes?wait=%t", wait), req, &v)
	return v, err
}

func (c *Client) ListSandboxes(ctx context.Context, status string) ([]sandbox.View, error) {
	var out struct {
		Sandboxes []sandbox.View `json:"sandboxes"`
	}
	path := "/api/sandboxes"
	if status != "" {
		path += "?status=" + url.QueryEscape(status)
	}
	err := c.do(ctx, http.MethodGet, path, nil, &out)
	return out.Sandboxes, err
}

func (c *Client) GetSandbox(ctx context.Context, id string) (sandbox.View, error) {
	var v sandbox.View
	err := c.do(ctx, http.MethodGet, "/api/sandboxes/"+url.PathEscape(id), nil, &v)
	return v, err
}

// Action runs stop, start or restart.
func (c *Client) Action(ctx context.Context, id, action string) (sandbox.View, error) {
	var v sandbox.View
	err := c.do(ctx, http.MethodPost, "/api/sandboxes/"+url.PathEscape(id)+"/"+action, nil, &v)
	return v, err
}

func (c *Client) DeleteSandbox(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/api/sandboxes/"+url.PathEscape(id), nil, nil)
}

// Exec runs a command in a sandbox through its agent; out receives the agent's result.
func (c *Client) Exec(ctx context.Context, id string, req any, out any) error {
	return c.do(ctx, http.MethodPost, "/api/sandboxes/"+url.PathEscape(id)+"/exec", req, out)
}

// Health is GET /health.
type Health struct {
	Status        string            `json:"status"`
	Mode          string            `json:"mode"`
	Version       string            `json:"version"`
	UptimeSeconds int64             `json:"uptimeSeconds"`
	Checks        map[string]string `json:"checks"`
}

func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.do(ctx, http.MethodGet, "/health", nil, &h)
	return h, err
}
