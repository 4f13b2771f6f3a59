// Package fcapi is a small hand-written client for the Firecracker API
// (v1.14.1) over its unix socket: the dozen calls Atelier's runtime makes.
// Method names are the spec's operationIds.
package fcapi

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
)

// APIError is a non-2xx answer from Firecracker.
type APIError struct {
	Method     string
	Path       string
	StatusCode int
	// FaultMessage is the spec's Error.fault_message (or the raw body when
	// the answer was not an Error document).
	FaultMessage string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("firecracker %s %s: status %d: %s", e.Method, e.Path, e.StatusCode, e.FaultMessage)
}

// Client talks to one Firecracker process.
type Client struct {
	sock string
	hc   *http.Client
}

// maxAnswer bounds what is read from Firecracker.
const maxAnswer = 1 << 20

// New returns a client for the API socket at sockPath.
func New(sockPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sockPath)
		},
		// One connection per call: a process that died and was replaced on
		// the same path must never be reached through a stale pooled one.
		DisableKeepAlives: true,
	}
	return &Client{sock: sockPath, hc: &http.Client{Transport: tr}}
}

// Socket is the API socket path.
func (c *Client) Socket() string { return c.sock }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("firecracker %s %s: encode body: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, body)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		apiErr := &APIError{Method: method, Path: path, StatusCode: resp.StatusCode}
		var e Error
		if json.Unmarshal(data, &e) == nil && e.FaultMessage != "" {
			apiErr.FaultMessage = e.FaultMessage
		} else {
			apiErr.FaultMessage = string(bytes.TrimSpace(data))
		}
		return apiErr
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// IsStatus reports whether err is an APIError with this status code.
func IsStatus(err error, code int) bool {
	var e *APIError
	return errors.As(err, &e) && e.StatusCode == code
}

// DescribeInstance is GET /.
func (c *Client) DescribeInstance(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// PutMachineConfiguration is PUT /machine-config.
func (c *Client) PutMachineConfiguration(ctx context.Context, m MachineConfiguration) error {
	return c.do(ctx, http.MethodPut, "/machine-config", m, nil)
}

// PutGuestBootSource is PUT /boot-source.
func (c *Client) PutGuestBootSource(ctx context.Context, b BootSource) error {
	return c.do(ctx, http.MethodPut, "/boot-source", b, nil)
}

// PutGuestDriveByID is PUT /drives/{drive_id}.
func (c *Client) PutGuestDriveByID(ctx context.Context, d Drive) error {
	return c.do(ctx, http.MethodPut, "/drives/"+url.PathEscape(d.DriveID), d, nil)
}

// PatchGuestDriveByID is PATCH /drives/{drive_id}.
func (c *Client) PatchGuestDriveByID(ctx context.Context, d PartialDrive) error {
	return c.do(ctx, http.MethodPatch, "/drives/"+url.PathEscape(d.DriveID), d, nil)
}

// PutGuestNetworkInterfaceByID is PUT /network-interfaces/{iface_id}.
func (c *Client) PutGuestNetworkInterfaceByID(ctx context.Context, n NetworkInterface) error {
	return c.do(ctx, http.MethodPut, "/network-interfaces/"+url.PathEscape(n.IfaceID), n, nil)
}

// PutGuestVsock is PUT /vsock.
func (c *Client) PutGuestVsock(ctx context.Context, v Vsock) error {
	return c.do(ctx, http.MethodPut, "/vsock", v, nil)
}

// PutLogger is PUT /logger.
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.do(ctx, http.MethodPut, "/logger", l, nil)
}

// CreateSyncAction is PUT /actions.
func (c *Client) CreateSyncAction(ctx context.Context, a InstanceActionInfo) error {
	return c.do(ctx, http.MethodPut, "/actions", a, nil)
}

// PatchVM is PATCH /vm (operationId patchVm).
func (c *Client) PatchVM(ctx context.Context, v Vm) error {
	return c.do(ctx, http.MethodPatch, "/vm", v, nil)
}

// CreateSnapshot is PUT /snapshot/create.
func (c *Client) CreateSnapshot(ctx context.Context, p SnapshotCreateParams) error {
	return c.do(ctx, http.MethodPut, "/snapshot/create", p, nil)
}

// LoadSnapshot is PUT /snapshot/load.
func (c *Client) LoadSnapshot(ctx context.Context, p SnapshotLoadParams) error {
	return c.do(ctx, http.MethodPut, "/snapshot/load", p, nil)
}

// GetExportVMConfig is GET /vm/config (operationId getExportVmConfig).
func (c *Client) GetExportVMConfig(ctx context.Context) (FullVmConfiguration, error) {
	var cfg FullVmConfiguration
	err := c.do(ctx, http.MethodGet, "/vm/config", nil, &cfg)
	return cfg, err
}
