// Package client is a small typed client for the manager API, used by the
// CLI. It speaks HTTP over TCP or over the manager's unix socket, and
// WebSockets for streaming exec and terminals.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"atelier/internal/sandbox"
)

// Client talks to one manager.
type Client struct {
	base    string
	display string // the URL as the user gave it, for messages
	token   string
	http    *http.Client
	// stream has no overall timeout: WebSockets and followed logs last as
	// long as the user wants.
	stream *http.Client
}

// New accepts http://host:port, https://host or unix:///path/to/atelier.sock.
func New(rawURL, token string) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("manager url %q: %w", rawURL, err)
	}
	c := &Client{token: token, display: rawURL}
	tr := http.DefaultTransport.(*http.Transport).Clone()
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
		tr.Proxy = nil
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
	default:
		return nil, fmt.Errorf("manager url %q: the scheme must be http, https or unix", rawURL)
	}
	c.http = &http.Client{Transport: tr, Timeout: 10 * time.Minute}
	c.stream = &http.Client{Transport: tr}
	return c, nil
}

// URL is the manager's address as given.
func (c *Client) URL() string { return c.display }

// Error is a problem document returned by the manager.
type Error struct {
	Status int    `json:"status"`
	Code   string `json:"code"`
	Title  string `json:"title"`
	Detail string `json:"detail"`
	// Errors name the fields at fault (location: body.memoryMb, query.path…).
	Errors []FieldError `json:"errors"`
}

// FieldError is one entry of a problem's errors.
type FieldError struct {
	Location string `json:"location"`
	Message  string `json:"message"`
	Value    any    `json:"value,omitempty"`
}

func (e *Error) Error() string {
	switch {
	case e.Detail != "":
		return e.Detail
	case e.Title != "":
		return fmt.Sprintf("%s (%d)", strings.ToLower(e.Title), e.Status)
	}
	return fmt.Sprintf("the manager answered %d %s", e.Status, e.Code)
}

// Field returns the first field error at one of the locations (body.name,
// query.path…), or nil.
func (e *Error) Field(locations ...string) *FieldError {
	for i := range e.Errors {
		for _, l := range locations {
			if e.Errors[i].Location == l {
				return &e.Errors[i]
			}
		}
	}
	return nil
}

// IsStatus reports whether err is a manager error with this status.
func IsStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

// UnreachableError is a manager that cannot be reached at all.
type UnreachableError struct {
	URL string
	Err error
}

func (e *UnreachableError) Error() string {
	var hint string
	if errors.Is(e.Err, syscall.ECONNREFUSED) || errors.Is(e.Err, os.ErrNotExist) || errors.Is(e.Err, syscall.ENOENT) {
		hint = ": is the manager running? (atelier serve, or make run)"
	}
	return fmt.Sprintf("cannot reach the manager at %s (%s)%s", e.URL, shortNetError(e.Err), hint)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// shortNetError keeps the cause of a dial error without Go's layers of
// "Get \"url\": dial tcp addr:".
func shortNetError(err error) string {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err.Error()
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return err.Error()
}

func (c *Client) unreachable(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return err
	}
	var oe *net.OpError
	if errors.As(err, &oe) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) {
		return &UnreachableError{URL: c.display, Err: err}
	}
	return err
}

func (c *Client) newRequest(ctx context.Context, method, path string, body io.Reader, contentType string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// Do sends in as JSON (nil: no body) and decodes the answer into out (nil:
// discarded). A problem answer is an *Error; no answer an *UnreachableError.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body, ct = bytes.NewReader(b), "application/json"
	}
	return c.DoRaw(ctx, method, path, body, ct, out)
}

// DoRaw is Do with a body of any type (file uploads).
func (c *Client) DoRaw(ctx context.Context, method, path string, body io.Reader, contentType string, out any) error {
	req, err := c.newRequest(ctx, method, path, body, contentType)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.unreachable(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode >= 400 {
		return problemOf(resp.StatusCode, b)
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
	}
	return nil
}

func problemOf(status int, b []byte) *Error {
	e := &Error{}
	if json.Unmarshal(b, e) != nil || e.Code == "" {
		e = &Error{Detail: strings.TrimSpace(string(b))}
	}
	e.Status = status
	return e
}

// Dial opens a WebSocket on path (exec streams, terminals).
func (c *Client) Dial(ctx context.Context, path string) (*websocket.Conn, error) {
	u := "ws" + strings.TrimPrefix(c.base, "http") + path
	hdr := http.Header{}
	if c.token != "" {
		hdr.Set("Authorization", "Bearer "+c.token)
	}
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.stream, HTTPHeader: hdr})
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			return nil, problemOf(resp.StatusCode, b)
		}
		return nil, c.unreachable(err)
	}
	conn.SetReadLimit(16 << 20)
	return conn, nil
}

func sandboxPath(id string, rest ...string) string {
	return "/api/sandboxes/" + url.PathEscape(id) + strings.Join(rest, "")
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
	err := c.Do(ctx, http.MethodPost, fmt.Sprintf("/api/sandboxes?wait=%t", wait), req, &v)
	return v, err
}

// ListSandboxes lists the caller's sandboxes (an admin's: everyone's),
// optionally only those in one status or with one name.
func (c *Client) ListSandboxes(ctx context.Context, status, name string) ([]sandbox.View, error) {
	var out struct {
		Sandboxes []sandbox.View `json:"sandboxes"`
	}
	q := url.Values{}
	if status != "" {
		q.Set("status", status)
	}
	if name != "" {
		q.Set("name", name)
	}
	path := "/api/sandboxes"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	err := c.Do(ctx, http.MethodGet, path, nil, &out)
	return out.Sandboxes, err
}

func (c *Client) GetSandbox(ctx context.Context, id string) (sandbox.View, error) {
	var v sandbox.View
	err := c.Do(ctx, http.MethodGet, sandboxPath(id), nil, &v)
	return v, err
}

// Action runs stop, start or restart.
func (c *Client) Action(ctx context.Context, id, action string) (sandbox.View, error) {
	var v sandbox.View
	err := c.Do(ctx, http.MethodPost, sandboxPath(id, "/", action), nil, &v)
	return v, err
}

func (c *Client) DeleteSandbox(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, sandboxPath(id), nil, nil)
}

// Exec runs a command in a sandbox through its agent; out receives the agent's result.
func (c *Client) Exec(ctx context.Context, id string, req any, out any) error {
	return c.Do(ctx, http.MethodPost, sandboxPath(id, "/exec"), req, out)
}

// Agent calls one of a sandbox's agent routes (rest starts with "/").
func (c *Client) Agent(ctx context.Context, method, id, rest string, in, out any) error {
	return c.Do(ctx, method, sandboxPath(id, rest), in, out)
}

// AgentRaw is Agent with a raw body (PUT .../files).
func (c *Client) AgentRaw(ctx context.Context, method, id, rest string, body io.Reader, out any) error {
	return c.DoRaw(ctx, method, sandboxPath(id, rest), body, "application/octet-stream", out)
}

// DialAgent opens one of a sandbox's agent WebSockets.
func (c *Client) DialAgent(ctx context.Context, id, rest string) (*websocket.Conn, error) {
	return c.Dial(ctx, sandboxPath(id, rest))
}

// Route is one host of a sandbox at the edge.
type Route struct {
	Host   string `json:"host"`
	URL    string `json:"url"`
	Kind   string `json:"kind"`
	Name   string `json:"name,omitempty"`
	Alias  string `json:"alias,omitempty"`
	Port   int    `json:"port"`
	Public bool   `json:"public"`
}

func (c *Client) Routes(ctx context.Context, id string) ([]Route, error) {
	var out struct {
		Routes []Route `json:"routes"`
	}
	err := c.Do(ctx, http.MethodGet, sandboxPath(id, "/routes"), nil, &out)
	return out.Routes, err
}

// ExposeAlias is one extra host of an exposed dev command.
type ExposeAlias struct {
	Alias string `json:"alias"`
	Port  int    `json:"port"`
}

// ExposeRequest is the body of POST .../dev/{name}/expose.
type ExposeRequest struct {
	Port    int           `json:"port,omitempty"`
	Aliases []ExposeAlias `json:"aliases,omitempty"`
	Default bool          `json:"default,omitempty"`
	Public  bool          `json:"public,omitempty"`
}

func (c *Client) Expose(ctx context.Context, id, name string, req ExposeRequest) ([]Route, error) {
	var out struct {
		Routes []Route `json:"routes"`
	}
	err := c.Do(ctx, http.MethodPost, sandboxPath(id, "/dev/", url.PathEscape(name), "/expose"), req, &out)
	return out.Routes, err
}

func (c *Client) Unexpose(ctx context.Context, id, name string) error {
	return c.Do(ctx, http.MethodDelete, sandboxPath(id, "/dev/", url.PathEscape(name), "/expose"), nil, nil)
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
	err := c.Do(ctx, http.MethodGet, "/health", nil, &h)
	return h, err
}
