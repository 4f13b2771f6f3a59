package agent

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
	"strconv"
	"time"
)

// baseURL is a placeholder host: every connection goes through the Dialer.
const baseURL = "http://agent"

// maxErrorBody bounds how much of a non-2xx answer is read.
const maxErrorBody = 64 << 10

// maxAnswer bounds a JSON answer (exec output of two 16 MiB streams,
// escaped, fits).
const maxAnswer = 96 << 20

// Client talks to one sandbox's agent over one pooled transport.
type Client struct {
	tr   *http.Transport
	http *http.Client
	dial Dialer
}

// New returns a client whose connections come from d. Keep one per
// sandbox: idle connections are reused, which over hybrid vsock saves a
// CONNECT handshake per request.
func New(d Dialer) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d(ctx)
		},
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ExpectContinueTimeout: 0,
		ForceAttemptHTTP2:     false,
	}
	return &Client{tr: tr, http: &http.Client{Transport: tr}, dial: d}
}

// Close drops the idle pooled connections.
func (c *Client) Close() error {
	c.tr.CloseIdleConnections()
	return nil
}

// HTTPClient returns the client's pooled *http.Client (for proxies that
// need raw access to the agent, such as a later SSH bridge).
func (c *Client) HTTPClient() *http.Client { return c.http }

// do sends a request and decodes a 2xx JSON answer into out (when non-nil).
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	var ctype string
	switch v := in.(type) {
	case nil:
	case io.Reader:
		body, ctype = v, "application/octet-stream"
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		body, ctype = bytes.NewReader(b), "application/json"
	}
	u := baseURL + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("build %s %s: %w", method, path, err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("agent %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return decodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
		if err != nil {
			return fmt.Errorf("read %s %s: %w", method, path, err)
		}
		*raw = b
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s: %w", method, path, err)
	}
	return nil
}

func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var p Problem
	if err := json.Unmarshal(b, &p); err != nil || p.Code == "" {
		return &Error{Status: resp.StatusCode, Code: "http_" + strconv.Itoa(resp.StatusCode), Detail: string(bytes.TrimSpace(b))}
	}
	return &Error{Status: resp.StatusCode, Code: p.Code, Detail: p.Detail, Field: p.Field}
}

// Health is GET /health.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	return &h, c.do(ctx, http.MethodGet, "/health", nil, nil, &h)
}

// WaitReady polls /health every interval (default 10 ms) until the agent
// answers healthy or ctx is done; the error then carries the last failure.
func (c *Client) WaitReady(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = 10 * time.Millisecond
	}
	var last error
	for {
		// Bound each attempt so a dial held by the VMM cannot eat the
		// whole budget in one go.
		actx, cancel := context.WithTimeout(ctx, max(interval*50, time.Second))
		h, err := c.Health(actx)
		cancel()
		if err == nil && h.Status == "healthy" {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("agent status %q", h.Status)
		}
		last = err
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for agent: %w (last: %v)", ctx.Err(), last)
		case <-t.C:
		}
	}
}

// Metrics is GET /metrics.
func (c *Client) Metrics(ctx context.Context) (*Metrics, error) {
	var m Metrics
	return &m, c.do(ctx, http.MethodGet, "/metrics", nil, nil, &m)
}

// ImageUser is the default user of the guest's image (GET /image, its
// manifest's "user"); "" when the image has no manifest or the agent
// predates the route.
func (c *Client) ImageUser(ctx context.Context) (string, error) {
	var m struct {
		User string `json:"user"`
	}
	err := c.do(ctx, http.MethodGet, "/image", nil, nil, &m)
	var ae *Error
	if errors.As(err, &ae) && (ae.Status == http.StatusNotFound || ae.Status == http.StatusMethodNotAllowed) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return m.User, nil
}

// Exec runs a command to completion (POST /exec). A command that ran
// returns its result whatever the exit code; err is for commands that
// could not start and for transport failures.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (*ExecResult, error) {
	var r ExecResult
	if err := c.do(ctx, http.MethodPost, "/exec", nil, req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// ReadFile is GET /files. encoding is "" (auto: utf8 when valid, else
// base64), "utf8" or "base64"; limit 0 reads up to the agent's cap.
func (c *Client) ReadFile(ctx context.Context, path, encoding string, offset, limit int64) (*FileContent, error) {
	q := url.Values{"path": {path}}
	if encoding != "" {
		q.Set("encoding", encoding)
	}
	if offset > 0 {
		q.Set("offset", strconv.FormatInt(offset, 10))
	}
	if limit > 0 {
		q.Set("limit", strconv.FormatInt(limit, 10))
	}
	var fc FileContent
	if err := c.do(ctx, http.MethodGet, "/files", q, nil, &fc); err != nil {
		return nil, err
	}
	return &fc, nil
}

// ReadFileBytes reads a file and decodes its content.
func (c *Client) ReadFileBytes(ctx context.Context, path string) ([]byte, error) {
	fc, err := c.ReadFile(ctx, path, EncodingBase64, 0, 0)
	if err != nil {
		return nil, err
	}
	return fc.Bytes()
}

// Bytes decodes Content according to Encoding.
func (fc *FileContent) Bytes() ([]byte, error) {
	return DecodeContent(fc.Content, fc.Encoding)
}

// WriteFile atomically replaces path with data (PUT /files).
func (c *Client) WriteFile(ctx context.Context, path string, data io.Reader, opts WriteFileOptions) (*FileInfo, error) {
	q := url.Values{"path": {path}}
	if opts.Mode != 0 {
		q.Set("mode", fmt.Sprintf("%04o", opts.Mode))
	}
	if opts.Owner != "" {
		q.Set("owner", opts.Owner)
	}
	if opts.Parents {
		q.Set("parents", "true")
	}
	if data == nil {
		data = bytes.NewReader(nil)
	}
	var fi FileInfo
	if err := c.do(ctx, http.MethodPut, "/files", q, data, &fi); err != nil {
		return nil, err
	}
	return &fi, nil
}

// WriteFiles writes many files in one round trip (POST /files/write-batch).
// The error covers the request; per-file failures are in the result
// (BatchResult.Err joins them).
func (c *Client) WriteFiles(ctx context.Context, files []FileWrite) (*BatchResult, error) {
	var r BatchResult
	if err := c.do(ctx, http.MethodPost, "/files/write-batch", nil, WriteBatchRequest{Files: files}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// DeleteFiles removes many paths (POST /files/delete-batch); missing
// paths succeed.
func (c *Client) DeleteFiles(ctx context.Context, paths []string, recursive bool) (*BatchResult, error) {
	var r BatchResult
	if err := c.do(ctx, http.MethodPost, "/files/delete-batch", nil, DeleteBatchRequest{Paths: paths, Recursive: recursive}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// List is GET /files/list.
func (c *Client) List(ctx context.Context, path string) (*ListResult, error) {
	var r ListResult
	if err := c.do(ctx, http.MethodGet, "/files/list", url.Values{"path": {path}}, nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Stat is GET /files/stat (symlinks are described, not followed).
func (c *Client) Stat(ctx context.Context, path string) (*FileInfo, error) {
	var fi FileInfo
	if err := c.do(ctx, http.MethodGet, "/files/stat", url.Values{"path": {path}}, nil, &fi); err != nil {
		return nil, err
	}
	return &fi, nil
}

// Mkdir is POST /files/mkdir.
func (c *Client) Mkdir(ctx context.Context, req MkdirRequest) (*FileInfo, error) {
	var fi FileInfo
	if err := c.do(ctx, http.MethodPost, "/files/mkdir", nil, req, &fi); err != nil {
		return nil, err
	}
	return &fi, nil
}

// Remove is DELETE /files; a missing path is a 404 *Error.
func (c *Client) Remove(ctx context.Context, path string, recursive bool) error {
	q := url.Values{"path": {path}}
	if recursive {
		q.Set("recursive", "true")
	}
	return c.do(ctx, http.MethodDelete, "/files", q, nil, nil)
}

// GitStatus is POST /git/status.
func (c *Client) GitStatus(ctx context.Context, paths []string) (*GitStatusResult, error) {
	var r GitStatusResult
	if err := c.do(ctx, http.MethodPost, "/git/status", nil, GitPathsRequest{Paths: paths}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// GitDiff is POST /git/diff.
func (c *Client) GitDiff(ctx context.Context, paths []string) (*GitDiffResult, error) {
	var r GitDiffResult
	if err := c.do(ctx, http.MethodPost, "/git/diff", nil, GitPathsRequest{Paths: paths}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// GitCommit is POST /git/commit.
func (c *Client) GitCommit(ctx context.Context, req GitCommitRequest) (*GitCommitResult, error) {
	var r GitCommitResult
	if err := c.do(ctx, http.MethodPost, "/git/commit", nil, req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// GitPush is POST /git/push.
func (c *Client) GitPush(ctx context.Context, req GitPushRequest) (*GitPushResult, error) {
	var r GitPushResult
	if err := c.do(ctx, http.MethodPost, "/git/push", nil, req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

func (c *Client) startProc(ctx context.Context, kind, name string, spec ProcessSpec) (*ProcessStatus, error) {
	var st ProcessStatus
	if err := c.do(ctx, http.MethodPost, procPath(kind, name, "start"), nil, spec, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

func (c *Client) stopProc(ctx context.Context, kind, name string, grace time.Duration) (*ProcessStatus, error) {
	var st ProcessStatus
	if err := c.do(ctx, http.MethodPost, procPath(kind, name, "stop"), nil, StopRequest{GraceMs: grace.Milliseconds()}, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

func (c *Client) restartProc(ctx context.Context, kind, name string, spec *ProcessSpec) (*ProcessStatus, error) {
	var in any
	if spec != nil {
		in = *spec
	}
	var st ProcessStatus
	if err := c.do(ctx, http.MethodPost, procPath(kind, name, "restart"), nil, in, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

func (c *Client) listProcs(ctx context.Context, kind string) ([]ProcessStatus, error) {
	var l ProcessList
	if err := c.do(ctx, http.MethodGet, kindPrefix(kind), nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Processes, nil
}

func (c *Client) getProc(ctx context.Context, kind, name string) (*ProcessStatus, error) {
	var st ProcessStatus
	if err := c.do(ctx, http.MethodGet, kindPrefix(kind)+"/"+url.PathEscape(name), nil, nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

func (c *Client) procLogs(ctx context.Context, kind, name string, offset, limit int64) (*LogChunk, error) {
	q := url.Values{"offset": {strconv.FormatInt(offset, 10)}}
	if limit > 0 {
		q.Set("limit", strconv.FormatInt(limit, 10))
	}
	var lc LogChunk
	if err := c.do(ctx, http.MethodGet, procPath(kind, name, "logs"), q, nil, &lc); err != nil {
		return nil, err
	}
	return &lc, nil
}

func kindPrefix(kind string) string {
	if kind == KindDev {
		return "/dev"
	}
	return "/services"
}

func procPath(kind, name, action string) string {
	return kindPrefix(kind) + "/" + url.PathEscape(name) + "/" + action
}

// StartService starts (or, with the same spec, confirms) a service.
func (c *Client) StartService(ctx context.Context, name string, spec ProcessSpec) (*ProcessStatus, error) {
	return c.startProc(ctx, KindService, name, spec)
}

// StopService stops a service: SIGTERM to its group, SIGKILL after grace
// (0 = the spec's or the agent's default).
func (c *Client) StopService(ctx context.Context, name string, grace time.Duration) (*ProcessStatus, error) {
	return c.stopProc(ctx, KindService, name, grace)
}

// RestartService stops and starts a service, with a new spec when non-nil.
func (c *Client) RestartService(ctx context.Context, name string, spec *ProcessSpec) (*ProcessStatus, error) {
	return c.restartProc(ctx, KindService, name, spec)
}

// Services is GET /services.
func (c *Client) Services(ctx context.Context) ([]ProcessStatus, error) {
	return c.listProcs(ctx, KindService)
}

// Service is GET /services/{name}.
func (c *Client) Service(ctx context.Context, name string) (*ProcessStatus, error) {
	return c.getProc(ctx, KindService, name)
}

// ServiceLogs reads a service's log from a logical offset.
func (c *Client) ServiceLogs(ctx context.Context, name string, offset, limit int64) (*LogChunk, error) {
	return c.procLogs(ctx, KindService, name, offset, limit)
}

// ApplyServices sends the host's settings for the image's services and
// answers the service list (POST /services/apply).
func (c *Client) ApplyServices(ctx context.Context, req ServicesApply) ([]ProcessStatus, error) {
	var l ProcessList
	if err := c.do(ctx, http.MethodPost, "/services/apply", nil, req, &l); err != nil {
		return nil, err
	}
	return l.Processes, nil
}

// StartImageService starts a service the image manifest declares, with
// the manifest's spec (no body), and marks it wanted.
func (c *Client) StartImageService(ctx context.Context, name string) (*ProcessStatus, error) {
	var st ProcessStatus
	if err := c.do(ctx, http.MethodPost, procPath(KindService, name, "start"), nil, nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// StartDev starts a dev command.
func (c *Client) StartDev(ctx context.Context, name string, spec ProcessSpec) (*ProcessStatus, error) {
	return c.startProc(ctx, KindDev, name, spec)
}

// StopDev stops a dev command.
func (c *Client) StopDev(ctx context.Context, name string, grace time.Duration) (*ProcessStatus, error) {
	return c.stopProc(ctx, KindDev, name, grace)
}

// RestartDev restarts a dev command.
func (c *Client) RestartDev(ctx context.Context, name string, spec *ProcessSpec) (*ProcessStatus, error) {
	return c.restartProc(ctx, KindDev, name, spec)
}

// DevCommands is GET /dev.
func (c *Client) DevCommands(ctx context.Context) ([]ProcessStatus, error) {
	return c.listProcs(ctx, KindDev)
}

// DevCommand is GET /dev/{name}.
func (c *Client) DevCommand(ctx context.Context, name string) (*ProcessStatus, error) {
	return c.getProc(ctx, KindDev, name)
}

// DevLogs reads a dev command's log from a logical offset.
func (c *Client) DevLogs(ctx context.Context, name string, offset, limit int64) (*LogChunk, error) {
	return c.procLogs(ctx, KindDev, name, offset, limit)
}

// CreateTerminal is POST /terminals.
func (c *Client) CreateTerminal(ctx context.Context, req TerminalRequest) (*TerminalInfo, error) {
	var ti TerminalInfo
	if err := c.do(ctx, http.MethodPost, "/terminals", nil, req, &ti); err != nil {
		return nil, err
	}
	return &ti, nil
}

// Terminals is GET /terminals.
func (c *Client) Terminals(ctx context.Context) ([]TerminalInfo, error) {
	var l TerminalList
	if err := c.do(ctx, http.MethodGet, "/terminals", nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Terminals, nil
}

// DeleteTerminal is DELETE /terminals/{id}.
func (c *Client) DeleteTerminal(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/terminals/"+url.PathEscape(id), nil, nil, nil)
}

// ResizeTerminal is POST /terminals/{id}/resize.
func (c *Client) ResizeTerminal(ctx context.Context, id string, cols, rows int) (*TerminalInfo, error) {
	var ti TerminalInfo
	if err := c.do(ctx, http.MethodPost, "/terminals/"+url.PathEscape(id)+"/resize", nil, ResizeRequest{Cols: cols, Rows: rows}, &ti); err != nil {
		return nil, err
	}
	return &ti, nil
}

// PutConfig stores the sandbox config (POST /config).
func (c *Client) PutConfig(ctx context.Context, cfg any) (*ConfigAck, error) {
	var ack ConfigAck
	if err := c.do(ctx, http.MethodPost, "/config", nil, cfg, &ack); err != nil {
		return nil, err
	}
	return &ack, nil
}

// GetConfig returns the stored sandbox config verbatim; 404 *Error when
// none was stored.
func (c *Client) GetConfig(ctx context.Context) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, "/config", nil, nil, &raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// ConfigureNetwork is POST /network.
func (c *Client) ConfigureNetwork(ctx context.Context, cfg NetworkConfig) (*NetworkResult, error) {
	var r NetworkResult
	if err := c.do(ctx, http.MethodPost, "/network", nil, cfg, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Network returns the network config last given to ConfigureNetwork; 404
// *Error when none was.
func (c *Client) Network(ctx context.Context) (*NetworkConfig, error) {
	var n NetworkConfig
	if err := c.do(ctx, http.MethodGet, "/network", nil, nil, &n); err != nil {
		return nil, err
	}
	return &n, nil
}

// DecodeContent turns a (content, encoding) pair of the file API into bytes.
func DecodeContent(content, encoding string) ([]byte, error) {
	switch encoding {
	case "", EncodingUTF8:
		return []byte(content), nil
	case EncodingBase64:
		return base64Decode(content)
	}
	return nil, errors.New("unknown encoding " + strconv.Quote(encoding))
}
