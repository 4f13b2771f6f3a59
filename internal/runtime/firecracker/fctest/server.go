package fctest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Instance states as GET / reports them.
const (
	StateNotStarted = "Not started"
	StateRunning    = "Running"
	StatePaused     = "Paused"
)

// AppName is InstanceInfo.app_name.
const AppName = "Firecracker"

// maxBody mirrors Firecracker's default API payload limit (--http-api-max-payload-size).
const maxBody = 51200

// Fault messages Firecracker uses for its state rules.
const (
	msgAfterStart   = "The requested operation is not supported after starting the microVM."
	msgBeforeStart  = "The requested operation is not supported before starting the microVM."
	msgLoadAfterCfg = "Loading a microVM snapshot not allowed after configuring boot-specific resources."
	msgIDMismatch   = "The id from the path does not match the id from the body!"
)

// preBoot are the operations Firecracker refuses once the guest started
// (or a snapshot was loaded); postBoot the ones it refuses before.
var (
	preBoot = map[string]bool{
		"putGuestBootSource":           true,
		"putCpuConfiguration":          true,
		"putGuestDriveByID":            true,
		"putGuestPmemByID":             true,
		"putLogger":                    true,
		"putMachineConfiguration":      true,
		"patchMachineConfiguration":    true,
		"putMetrics":                   true,
		"putMmdsConfig":                true,
		"putEntropyDevice":             true,
		"putSerialDevice":              true,
		"putMemoryHotplug":             true,
		"putGuestNetworkInterfaceByID": true,
		"loadSnapshot":                 true,
		"putGuestVsock":                true,
		"putBalloon":                   true,
	}
	postBoot = map[string]bool{
		"patchBalloon":                   true,
		"describeBalloonStats":           true,
		"patchBalloonStatsInterval":      true,
		"startBalloonHinting":            true,
		"describeBalloonHinting":         true,
		"stopBalloonHinting":             true,
		"patchGuestDriveByID":            true,
		"patchMemoryHotplug":             true,
		"patchGuestNetworkInterfaceByID": true,
		"createSnapshot":                 true,
		"patchVm":                        true,
	}
	// notBootSpecific are pre-boot resources that do not stop a later
	// snapshot load ("before configuring any resource other than the
	// Logger and Metrics").
	notBootSpecific = map[string]bool{"putLogger": true, "putMetrics": true}
)

// Request is one entry of the request log.
type Request struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
	Status int             `json:"status"`
	Fault  string          `json:"fault,omitempty"`
}

// OK reports whether the stand-in accepted the request.
func (r Request) OK() bool { return r.Status >= 200 && r.Status < 300 }

// Server serves the stand-in API on a unix socket.
type Server struct {
	// ID is the instance id GET / reports (firecracker --id). Set before Start.
	ID string
	// AllowUnknown accepts body properties the spec does not name. By
	// default they are rejected, as Firecracker does.
	AllowUnknown bool
	// Dir resolves relative paths in request bodies, like Firecracker's
	// working directory; empty means this process's working directory.
	Dir string
	// IgnoreCtrlAltDel models a guest that does not shut down on
	// SendCtrlAltDel.
	IgnoreCtrlAltDel bool
	// HostileVsockTarget, when set, models a Firecracker its guest has
	// taken over: PUT /vsock plants a symlink to this path where the
	// socket belongs (and binds its real socket beside it, so the request
	// succeeds).
	HostileVsockTarget string
	// OnRequest, when set, sees every logged request, in order.
	OnRequest func(Request)

	spec *Spec
	sock string

	mu     sync.Mutex
	reqs   []Request
	faults []fault
	vm     vmState

	ln       net.Listener
	srv      *http.Server
	wg       sync.WaitGroup
	shutdown chan struct{}
	shutOnce sync.Once
	hostPort uint32
}

type fault struct {
	method, path string
	status       int
	message      string
}

type vmState struct {
	state          string
	bootConfigured bool
	restored       bool
	bootSource     map[string]any
	machine        map[string]any
	drives         []map[string]any
	ifaces         []map[string]any
	vsock          map[string]any
	vsockLn        net.Listener
	logger         map[string]any
	metrics        map[string]any
	other          map[string]any
}

// NewServer returns a stand-in that will listen on sockPath.
func NewServer(spec *Spec, sockPath string) *Server {
	return &Server{
		ID:       "anonymous-instance",
		spec:     spec,
		sock:     sockPath,
		vm:       vmState{state: StateNotStarted, other: map[string]any{}},
		shutdown: make(chan struct{}),
		hostPort: 1 << 30,
	}
}

// Start binds the API socket and serves it in the background. Like
// Firecracker, it fails when the socket path already exists.
func (s *Server) Start() error {
	ln, err := listenUnix(s.sock)
	if err != nil {
		return fmt.Errorf("open the API socket: %w", err)
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	s.wg.Go(func() { _ = s.srv.Serve(ln) })
	return nil
}

// listenUnix binds a unix socket that, like Firecracker's, is not unlinked
// when closed: the files a dead process leaves are the driver's to clean.
func listenUnix(path string) (net.Listener, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	return ln, nil
}

// Shutdown closes the API listener gracefully, letting in-flight answers
// (the SendCtrlAltDel one) reach the client.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	if s.srv != nil {
		err = s.srv.Shutdown(ctx)
	}
	s.closeVsock()
	s.wg.Wait()
	return err
}

// Close stops serving at once. Socket files stay, as Firecracker leaves them.
func (s *Server) Close() error {
	var err error
	if s.srv != nil {
		err = s.srv.Close()
	}
	s.closeVsock()
	s.wg.Wait()
	return err
}

func (s *Server) closeVsock() {
	s.mu.Lock()
	ln := s.vm.vsockLn
	s.vm.vsockLn = nil
	s.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
}

// Done is closed once the guest has been asked to shut down and does.
func (s *Server) Done() <-chan struct{} { return s.shutdown }

// Requests returns a copy of the request log.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.reqs...)
}

// State is the instance state GET / would report.
func (s *Server) State() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vm.state
}

// FailNext makes the next request with this method and concrete path fail
// with status and message, after it passed validation, changing nothing.
func (s *Server) FailNext(method, path string, status int, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, fault{method: strings.ToUpper(method), path: path, status: status, message: message})
}

// ServeHTTP implements the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	var res result
	switch {
	case err != nil:
		res = fail(http.StatusBadRequest, "read request body: %v", err)
	case len(body) > maxBody:
		res = fail(http.StatusBadRequest, "Request payload with size %d is larger than the limit of %d allowed by server.", len(body), maxBody)
	default:
		res = s.handle(r.Method, r.URL.Path, body)
	}
	entry := Request{Method: r.Method, Path: r.URL.Path, Status: res.status, Fault: res.fault}
	if len(bytes.TrimSpace(body)) > 0 {
		if json.Valid(body) {
			entry.Body = json.RawMessage(bytes.Clone(body))
		} else {
			entry.Body, _ = json.Marshal(string(body))
		}
	}
	s.mu.Lock()
	s.reqs = append(s.reqs, entry)
	s.mu.Unlock()
	if s.OnRequest != nil {
		s.OnRequest(entry)
	}
	switch {
	case res.fault != "":
		writeJSON(w, res.status, map[string]string{"fault_message": res.fault})
	case res.body != nil:
		writeJSON(w, res.status, res.body)
	default:
		w.WriteHeader(res.status)
	}
	if res.shutdown {
		s.shutOnce.Do(func() { close(s.shutdown) })
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"fault_message":"encode response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

type result struct {
	status   int
	fault    string
	body     any
	shutdown bool
}

func fail(status int, format string, args ...any) result {
	return result{status: status, fault: fmt.Sprintf(format, args...)}
}

func ok(body any) result {
	if body == nil {
		return result{status: http.StatusNoContent}
	}
	return result{status: http.StatusOK, body: body}
}

func (s *Server) handle(method, path string, body []byte) result {
	op, params, found := s.spec.Match(method, path)
	if !found {
		if s.spec.PathKnown(path) {
			return fail(http.StatusBadRequest, "Invalid request method %s for %s.", method, path)
		}
		return fail(http.StatusBadRequest, "Invalid request path %s.", path)
	}
	var doc map[string]any
	if op.Body != nil {
		if len(bytes.TrimSpace(body)) == 0 {
			if op.BodyRequired {
				return fail(http.StatusBadRequest, "Empty request body for %s %s.", method, path)
			}
		} else {
			v, err := DecodeJSON(body)
			if err != nil {
				return fail(http.StatusBadRequest, "%v", err)
			}
			if err := s.spec.Validate(op.Body, v, Options{DenyUnknown: !s.AllowUnknown}); err != nil {
				return fail(http.StatusBadRequest, "%v", err)
			}
			doc, _ = v.(map[string]any)
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if f.method == op.Method && f.path == path {
			s.faults = append(s.faults[:i], s.faults[i+1:]...)
			return fail(f.status, "%s", f.message)
		}
	}
	started := s.vm.state != StateNotStarted
	switch {
	case op.ID == "loadSnapshot":
		// Its own rule and message, below.
	case preBoot[op.ID] && started:
		return fail(http.StatusBadRequest, msgAfterStart)
	case postBoot[op.ID] && !started:
		return fail(http.StatusBadRequest, msgBeforeStart)
	}
	res := s.apply(op, params, doc)
	if res.status < 300 && preBoot[op.ID] && !notBootSpecific[op.ID] {
		s.vm.bootConfigured = true
	}
	return res
}

// apply runs one validated request against the VM state; s.mu is held.
func (s *Server) apply(op *Operation, params map[string]string, doc map[string]any) result {
	vm := &s.vm
	switch op.ID {
	case "describeInstance":
		return ok(map[string]any{"app_name": AppName, "id": s.ID, "state": vm.state, "vmm_version": s.spec.Version})
	case "getFirecrackerVersion":
		return ok(map[string]any{"firecracker_version": s.spec.Version})
	case "getMachineConfiguration":
		return ok(s.machineConfig())
	case "getExportVmConfig":
		return ok(s.fullConfig())
	case "createSyncAction":
		return s.action(str(doc, "action_type"))
	case "patchVm":
		switch want := str(doc, "state"); {
		case want == "Paused" && vm.state == StateRunning:
			vm.state = StatePaused
		case want == "Resumed" && vm.state == StatePaused:
			vm.state = StateRunning
		default:
			return fail(http.StatusBadRequest, "Cannot set the microVM to %s while it is %s.", want, vm.state)
		}
		return ok(nil)
	case "createSnapshot":
		return s.createSnapshot(doc)
	case "loadSnapshot":
		return s.loadSnapshot(doc)
	case "putGuestBootSource":
		for _, f := range []struct{ key, what string }{{"kernel_image_path", "kernel"}, {"initrd_path", "initrd"}} {
			if p, set := doc[f.key].(string); set {
				if err := canOpen(s.abs(p), os.O_RDONLY); err != nil {
					return fail(http.StatusBadRequest, "The %s file cannot be opened: %v", f.what, err)
				}
			}
		}
		vm.bootSource = doc
		return ok(nil)
	case "putMachineConfiguration", "patchMachineConfiguration":
		if doc == nil {
			return fail(http.StatusBadRequest, "Empty request body for %s %s.", op.Method, op.Path)
		}
		next := doc
		if op.ID == "patchMachineConfiguration" {
			next = s.machineConfig()
			for k, v := range doc {
				next[k] = v
			}
		}
		if msg := checkMachine(next); msg != "" {
			return fail(http.StatusBadRequest, "%s", msg)
		}
		vm.machine = next
		return ok(nil)
	case "putGuestDriveByID":
		return s.putDrive(params["drive_id"], doc)
	case "patchGuestDriveByID":
		return s.patchDrive(params["drive_id"], doc)
	case "putGuestNetworkInterfaceByID":
		return s.putIface(params["iface_id"], doc)
	case "patchGuestNetworkInterfaceByID":
		id := params["iface_id"]
		if str(doc, "iface_id") != id {
			return fail(http.StatusBadRequest, msgIDMismatch)
		}
		if indexByID(vm.ifaces, "iface_id", id) < 0 {
			return fail(http.StatusBadRequest, "Invalid interface ID - not found.")
		}
		return ok(nil)
	case "putGuestVsock":
		return s.putVsock(doc)
	case "putLogger":
		vm.logger = doc
		return ok(nil)
	case "putMetrics":
		vm.metrics = doc
		return ok(nil)
	case "putGuestPmemByID":
		if str(doc, "id") != params["id"] {
			return fail(http.StatusBadRequest, msgIDMismatch)
		}
		vm.other[op.ID+"/"+params["id"]] = doc
		return ok(nil)
	}
	if op.Method == http.MethodGet {
		return fail(http.StatusBadRequest, "The stand-in does not model %s %s.", op.Method, op.Path)
	}
	// Other configuration is validated and kept, with no further model.
	vm.other[op.ID] = doc
	return ok(nil)
}

func (s *Server) action(kind string) result {
	vm := &s.vm
	switch kind {
	case "InstanceStart":
		if vm.state != StateNotStarted {
			return fail(http.StatusBadRequest, msgAfterStart)
		}
		if vm.bootSource == nil {
			return fail(http.StatusBadRequest, "Cannot start microvm without kernel configuration.")
		}
		// Firecracker would fall back to 1 vCPU and 128 MiB; the stand-in
		// insists, so a caller that forgets its sizing is caught.
		if vm.machine == nil {
			return fail(http.StatusBadRequest, "Cannot start microvm without machine configuration.")
		}
		vm.state = StateRunning
		return ok(nil)
	case "SendCtrlAltDel":
		if vm.state == StateNotStarted {
			return fail(http.StatusBadRequest, msgBeforeStart)
		}
		// A paused guest cannot see the key press.
		down := vm.state == StateRunning && !s.IgnoreCtrlAltDel
		return result{status: http.StatusNoContent, shutdown: down}
	case "FlushMetrics":
		if vm.metrics == nil {
			return fail(http.StatusBadRequest, "The metrics system is not initialized.")
		}
		return ok(nil)
	}
	return fail(http.StatusBadRequest, "Unknown action %q.", kind)
}

func (s *Server) machineConfig() map[string]any {
	out := map[string]any{"vcpu_count": json.Number("1"), "mem_size_mib": json.Number("128"), "smt": false, "track_dirty_pages": false}
	for k, v := range s.vm.machine {
		out[k] = v
	}
	return out
}

// checkMachine applies the rules the spec states in prose; it returns
// Firecracker's fault message, or "".
func checkMachine(m map[string]any) string {
	vcpus, _ := num(m, "vcpu_count")
	mem, _ := num(m, "mem_size_mib")
	if mem == 0 {
		return "The memory size (MiB) is invalid."
	}
	if smt, _ := m["smt"].(bool); smt && vcpus > 1 && vcpus%2 == 1 {
		return "The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled."
	}
	if m["huge_pages"] == "2M" && mem%2 == 1 {
		return "The memory size (MiB) must be a multiple of the huge page size."
	}
	return ""
}

func (s *Server) putDrive(id string, doc map[string]any) result {
	vm := &s.vm
	if str(doc, "drive_id") != id {
		return fail(http.StatusBadRequest, msgIDMismatch)
	}
	if p, set := doc["path_on_host"].(string); set {
		flag := os.O_RDWR
		if ro, _ := doc["is_read_only"].(bool); ro {
			flag = os.O_RDONLY
		}
		if err := canOpen(s.abs(p), flag); err != nil {
			return fail(http.StatusBadRequest, "Unable to open the block device backing file: %v", err)
		}
	}
	if root, _ := doc["is_root_device"].(bool); root {
		for _, d := range vm.drives {
			if r, _ := d["is_root_device"].(bool); r && str(d, "drive_id") != id {
				return fail(http.StatusBadRequest, "A root block device already exists!")
			}
		}
	}
	if i := indexByID(vm.drives, "drive_id", id); i >= 0 {
		vm.drives[i] = doc
	} else {
		vm.drives = append(vm.drives, doc)
	}
	return ok(nil)
}

func (s *Server) patchDrive(id string, doc map[string]any) result {
	vm := &s.vm
	if str(doc, "drive_id") != id {
		return fail(http.StatusBadRequest, msgIDMismatch)
	}
	i := indexByID(vm.drives, "drive_id", id)
	if i < 0 {
		return fail(http.StatusBadRequest, "Invalid block device ID!")
	}
	if p, set := doc["path_on_host"].(string); set {
		if _, err := os.Stat(s.abs(p)); err != nil {
			return fail(http.StatusBadRequest, "Unable to patch the block device: %v", err)
		}
		vm.drives[i]["path_on_host"] = p
	}
	if rl, set := doc["rate_limiter"]; set {
		vm.drives[i]["rate_limiter"] = rl
	}
	return ok(nil)
}

func (s *Server) putIface(id string, doc map[string]any) result {
	vm := &s.vm
	if str(doc, "iface_id") != id {
		return fail(http.StatusBadRequest, msgIDMismatch)
	}
	for _, other := range vm.ifaces {
		if str(other, "iface_id") == id {
			continue
		}
		if str(other, "host_dev_name") == str(doc, "host_dev_name") {
			return fail(http.StatusBadRequest, "The host device name %s is already in use.", str(doc, "host_dev_name"))
		}
		if mac := str(doc, "guest_mac"); mac != "" && str(other, "guest_mac") == mac {
			return fail(http.StatusBadRequest, "The MAC address %s is already in use.", mac)
		}
	}
	if i := indexByID(vm.ifaces, "iface_id", id); i >= 0 {
		vm.ifaces[i] = doc
	} else {
		vm.ifaces = append(vm.ifaces, doc)
	}
	return ok(nil)
}

// putVsock binds the vsock UDS at once, as Firecracker does; a path that
// exists already makes it fail.
func (s *Server) putVsock(doc map[string]any) result {
	vm := &s.vm
	if vm.vsockLn != nil {
		_ = vm.vsockLn.Close()
		_ = os.Remove(s.abs(str(vm.vsock, "uds_path")))
		vm.vsockLn = nil
	}
	ln, err := s.bindVsock(str(doc, "uds_path"))
	if err != nil {
		return fail(http.StatusBadRequest, "Cannot create backend for vsock device: %v", err)
	}
	vm.vsock, vm.vsockLn = doc, ln
	return ok(nil)
}

// bindVsock listens on a hybrid-vsock UDS. There is no guest: a
// "CONNECT <port>" is acknowledged like Firecracker does ("OK <host port>"),
// then the stand-in writes its instance id and a newline and hangs up, so a
// test can tell which process answered.
func (s *Server) bindVsock(path string) (net.Listener, error) {
	if s.HostileVsockTarget != "" {
		if err := os.Symlink(s.HostileVsockTarget, s.abs(path)); err != nil {
			return nil, err
		}
		path += ".hidden"
	}
	ln, err := listenUnix(s.abs(path))
	if err != nil {
		return nil, err
	}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serveVsock(c)
		}
	})
	return ln, nil
}

func (s *Server) serveVsock(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(io.LimitReader(c, 64)).ReadString('\n')
	if err != nil {
		return
	}
	port, found := strings.CutPrefix(strings.TrimSpace(line), "CONNECT ")
	if _, err := strconv.ParseUint(port, 10, 32); !found || err != nil {
		return
	}
	s.mu.Lock()
	s.hostPort++
	hp := s.hostPort
	s.mu.Unlock()
	_, _ = fmt.Fprintf(c, "OK %d\n%s\n", hp, s.ID)
}

// snapshotFile is what the stand-in writes as a snapshot: the device
// configuration Firecracker would serialise into its microVM state.
type snapshotFile struct {
	Format            string           `json:"format"`
	VMMVersion        string           `json:"vmm_version"`
	Machine           map[string]any   `json:"machine-config"`
	Drives            []map[string]any `json:"drives"`
	NetworkInterfaces []map[string]any `json:"network-interfaces"`
	Vsock             map[string]any   `json:"vsock,omitempty"`
}

const snapshotFormat = "fctest-snapshot/1"

func (s *Server) createSnapshot(doc map[string]any) result {
	vm := &s.vm
	if vm.state != StatePaused {
		return fail(http.StatusBadRequest, "Cannot create a snapshot: the microVM is not paused.")
	}
	if doc["snapshot_type"] == "Diff" {
		if dirty, _ := s.machineConfig()["track_dirty_pages"].(bool); !dirty {
			return fail(http.StatusBadRequest, "Diff snapshots are not allowed on uVMs with dirty page tracking disabled.")
		}
	}
	snap := snapshotFile{
		Format: snapshotFormat, VMMVersion: s.spec.Version, Machine: s.machineConfig(),
		Drives: vm.drives, NetworkInterfaces: vm.ifaces, Vsock: vm.vsock,
	}
	b, err := json.Marshal(snap)
	if err != nil {
		return fail(http.StatusInternalServerError, "encode snapshot: %v", err)
	}
	if err := os.WriteFile(s.abs(str(doc, "snapshot_path")), b, 0o600); err != nil {
		return fail(http.StatusBadRequest, "Cannot save the microVM state: %v", err)
	}
	mem := fmt.Sprintf("fctest guest memory, %v MiB\n", snap.Machine["mem_size_mib"])
	if err := os.WriteFile(s.abs(str(doc, "mem_file_path")), []byte(mem), 0o600); err != nil {
		return fail(http.StatusBadRequest, "Cannot write memory file: %v", err)
	}
	return ok(nil)
}

// loadSnapshot restores the devices recorded by createSnapshot: drives are
// reopened and the vsock UDS is bound again at the recorded path, resolved
// against this process's working directory, exactly as Firecracker does.
func (s *Server) loadSnapshot(doc map[string]any) result {
	vm := &s.vm
	if vm.state != StateNotStarted || vm.bootConfigured {
		return fail(http.StatusBadRequest, msgLoadAfterCfg)
	}
	// Whatever happens next, this process is no longer fresh.
	vm.bootConfigured = true
	memPath, hasPath := doc["mem_file_path"].(string)
	backend, hasBackend := doc["mem_backend"].(map[string]any)
	if hasPath == hasBackend {
		return fail(http.StatusBadRequest, "Exactly one of mem_backend or mem_file_path must be given.")
	}
	if hasBackend {
		if str(backend, "backend_type") != "File" {
			return fail(http.StatusBadRequest, "The stand-in serves only File memory backends.")
		}
		memPath = str(backend, "backend_path")
	}
	data, err := os.ReadFile(s.abs(str(doc, "snapshot_path")))
	if err != nil {
		return fail(http.StatusBadRequest, "Cannot open the snapshot file: %v", err)
	}
	var snap snapshotFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&snap); err != nil || snap.Format != snapshotFormat {
		return fail(http.StatusBadRequest, "Cannot deserialize the microVM state: not a stand-in snapshot.")
	}
	if _, err := os.Stat(s.abs(memPath)); err != nil {
		return fail(http.StatusBadRequest, "Cannot open the memory file: %v", err)
	}
	if overrides, set := doc["network_overrides"].([]any); set {
		for _, o := range overrides {
			ov, _ := o.(map[string]any)
			i := indexByID(snap.NetworkInterfaces, "iface_id", str(ov, "iface_id"))
			if i < 0 {
				return fail(http.StatusBadRequest, "Invalid network override: no interface %q in the snapshot.", str(ov, "iface_id"))
			}
			snap.NetworkInterfaces[i]["host_dev_name"] = str(ov, "host_dev_name")
		}
	}
	for _, d := range snap.Drives {
		if p, set := d["path_on_host"].(string); set {
			if _, err := os.Stat(s.abs(p)); err != nil {
				return fail(http.StatusBadRequest, "Cannot restore block device %s: %v", str(d, "drive_id"), err)
			}
		}
	}
	if snap.Vsock != nil {
		ln, err := s.bindVsock(str(snap.Vsock, "uds_path"))
		if err != nil {
			return fail(http.StatusBadRequest, "Cannot restore the vsock device: %v", err)
		}
		vm.vsockLn = ln
	}
	vm.machine, vm.drives, vm.ifaces, vm.vsock = snap.Machine, snap.Drives, snap.NetworkInterfaces, snap.Vsock
	vm.restored = true
	vm.state = StatePaused
	if resume, _ := doc["resume_vm"].(bool); resume {
		vm.state = StateRunning
	}
	return ok(nil)
}

func (s *Server) fullConfig() map[string]any {
	vm := &s.vm
	out := map[string]any{"machine-config": s.machineConfig()}
	if vm.restored {
		// As documented for GET /vm/config after a restore.
		mc := out["machine-config"].(map[string]any)
		delete(mc, "smt")
		delete(mc, "cpu_template")
	} else if vm.bootSource != nil {
		out["boot-source"] = vm.bootSource
	}
	out["drives"] = orEmpty(vm.drives)
	out["network-interfaces"] = orEmpty(vm.ifaces)
	if vm.vsock != nil {
		out["vsock"] = vm.vsock
	}
	if vm.logger != nil {
		out["logger"] = vm.logger
	}
	if vm.metrics != nil {
		out["metrics"] = vm.metrics
	}
	return out
}

func orEmpty(l []map[string]any) []map[string]any {
	if l == nil {
		return []map[string]any{}
	}
	return l
}

// canOpen opens path as Firecracker would, so that permissions count:
// a jailed Firecracker runs as its own uid.
func canOpen(path string, flag int) error {
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

func (s *Server) abs(p string) string {
	if p == "" || filepath.IsAbs(p) || s.Dir == "" {
		return p
	}
	return filepath.Join(s.Dir, p)
}

func str(m map[string]any, k string) string {
	v, _ := m[k].(string)
	return v
}

func num(m map[string]any, k string) (int64, bool) {
	n, isNum := m[k].(json.Number)
	if !isNum {
		return 0, false
	}
	i, err := n.Int64()
	return i, err == nil
}

func indexByID(l []map[string]any, key, id string) int {
	for i, m := range l {
		if str(m, key) == id {
			return i
		}
	}
	return -1
}
