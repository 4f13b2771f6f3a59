// Package agent is the wire contract of the guest agent (atelier-agent) and
// its host-side client. Both ends import these types: the guest server in
// package guest answers with them, the host decodes them.
//
// Transport: HTTP/1.1 + JSON over a unix socket or Firecracker's hybrid
// vsock, WebSocket for terminals and streaming exec. Errors are a JSON
// problem body {"code","detail","field"} with a meaningful status; they
// decode into *Error on the host.
package agent

import (
	"errors"
	"time"
)

// DefaultVsockPort is the guest port the agent listens on (the seed's 9998).
const DefaultVsockPort = 9998

// ProtocolVersion is bumped on incompatible wire changes so the host can
// refuse (or adapt to) an agent baked into an older image.
const ProtocolVersion = 1

// Limits shared by both ends, so the host can validate before sending.
const (
	DefaultExecTimeout   = 30 * time.Second
	MaxExecTimeout       = time.Hour
	DefaultMaxOutput     = 1 << 20
	MaxOutput            = 16 << 20
	DefaultLogReadLimit  = 64 << 10
	MaxLogReadLimit      = 1 << 20
	DefaultStopGrace     = 5 * time.Second
	TerminalReplayBytes  = 64 << 10
	DefaultTerminalCols  = 80
	DefaultTerminalRows  = 24
	MaxTerminalDimension = 1000
)

// Problem is the JSON error body of every non-2xx answer.
type Problem struct {
	Code   string `json:"code" doc:"The agent's error code: bad_request, forbidden, not_found, conflict, already_running, limit_reached, not_a_repository, nothing_to_commit, git_failed, start_failed, too_large, internal."`
	Detail string `json:"detail"`
	// Field names the offending request field for 400s.
	Field string `json:"field,omitempty" doc:"The request field at fault."`
}

// Error codes the agent uses; the host may branch on them.
const (
	CodeBadRequest     = "bad_request"
	CodeForbidden      = "forbidden"
	CodeNotFound       = "not_found"
	CodeConflict       = "conflict"
	CodeAlreadyRunning = "already_running"
	CodeLimitReached   = "limit_reached"
	CodeNotARepository = "not_a_repository"
	CodeNothingToDo    = "nothing_to_commit"
	CodeGitFailed      = "git_failed"
	CodeStartFailed    = "start_failed"
	CodeInternal       = "internal"
	CodeTooLarge       = "too_large"
)

// Health is GET /health.
type Health struct {
	Status        string  `json:"status" enum:"healthy"`
	Version       string  `json:"version" doc:"The agent's build, the same as the manager's when both come from one build."`
	Protocol      int     `json:"protocol" doc:"Wire protocol version, bumped on incompatible changes."`
	UptimeSeconds float64 `json:"uptimeSeconds"`
	SandboxID     string  `json:"sandboxId"`
}

// Usage is a total/used/free triple in bytes.
type Usage struct {
	Total uint64 `json:"total"`
	Used  uint64 `json:"used"`
	Free  uint64 `json:"free"`
}

// Metrics is GET /metrics.
type Metrics struct {
	// CPUPercent is the busy share of all CPUs since the previous /metrics
	// call (or over a short sample window on the first call), 0..100.
	CPUPercent float64   `json:"cpuPercent" doc:"Busy share of all CPUs since the previous call, 0 to 100."`
	Load1      float64   `json:"load1" doc:"One-minute load average."`
	Memory     Usage     `json:"memory" doc:"Bytes of memory."`
	Disk       Usage     `json:"disk" doc:"Bytes of the root filesystem."`
	Processes  int       `json:"processes"`
	Timestamp  time.Time `json:"timestamp"`
}

// ExecRequest is POST /exec and the first message of GET /exec/stream.
// Exactly one of Argv and Shell is set.
type ExecRequest struct {
	Argv []string `json:"argv,omitempty" doc:"The program and its arguments, run as is (no shell). Exactly one of argv and shell."`
	// Shell runs through /bin/sh -c (or a login shell when Login is set,
	// which sources /etc/profile.d like an interactive session).
	Shell string            `json:"shell,omitempty" doc:"A shell command line, run with /bin/sh -c."`
	Login bool              `json:"login,omitempty" doc:"Run shell as a login shell (sources the profile, as an interactive session does)."`
	Env   map[string]string `json:"env,omitempty" doc:"Variables added to the environment."`
	Cwd   string            `json:"cwd,omitempty" doc:"Working directory; default the user's home."`
	// User is a name or numeric uid; "" runs as the agent's own user.
	User      string `json:"user,omitempty" doc:"User name or uid to run as; default the agent's own user."`
	TimeoutMs int64  `json:"timeoutMs,omitempty" minimum:"0" maximum:"3600000" doc:"Kill the command's process group after this long; default 30000 (30 s), at most one hour."`
	// Stdin is fed to the command, then closed; empty means /dev/null.
	Stdin string `json:"stdin,omitempty" doc:"Fed to the command's standard input, which is then closed; default /dev/null."`
	// StdinStream (streaming form only) keeps stdin open for binary client
	// frames until a {"type":"closeStdin"} message.
	StdinStream bool `json:"stdinStream,omitempty" doc:"Streaming exec only: keep stdin open for the client's binary messages until {\"type\":\"closeStdin\"}."`
	// MaxOutputBytes caps each of stdout and stderr; the rest is read and
	// discarded so the command still finishes with its own exit code.
	MaxOutputBytes int64 `json:"maxOutputBytes,omitempty" minimum:"0" maximum:"16777216" doc:"Cap on each of stdout and stderr; default 1 MiB, at most 16 MiB. The rest is discarded (truncated: true)."`
	// Encoding of stdout/stderr in the answer: "" (UTF-8, invalid bytes
	// replaced) or "base64".
	Encoding string `json:"encoding,omitempty" enum:"utf8,base64" doc:"How stdout and stderr are returned: utf8 (invalid bytes replaced; the default) or base64."`
}

// ExecResult is the answer of POST /exec. A command that ran answers 200
// whatever its exit code; one that could not start is a 4xx/5xx *Error.
type ExecResult struct {
	// ExitCode is the command's exit status, or 128+signal when a signal
	// ended it (shell convention).
	ExitCode   int     `json:"exitCode" doc:"The exit status; 128+n when signal n ended the command."`
	Signal     string  `json:"signal,omitempty" doc:"The signal that ended the command, e.g. KILL."`
	Stdout     string  `json:"stdout"`
	Stderr     string  `json:"stderr"`
	Encoding   string  `json:"encoding,omitempty" enum:"utf8,base64" doc:"base64 when stdout and stderr are base64 encoded."`
	Truncated  bool    `json:"truncated" doc:"Output went past maxOutputBytes and was cut."`
	TimedOut   bool    `json:"timedOut" doc:"The command was killed at its timeout."`
	DurationMs float64 `json:"durationMs"`
}

// Streaming exec framing (GET /exec/stream, WebSocket):
//
//	client -> agent: first a text message with the ExecRequest JSON; then
//	  binary messages = stdin bytes (only with StdinStream), and text
//	  StreamControl messages {"type":"closeStdin"} or {"type":"kill",
//	  "signal":"TERM"} (signal defaults to KILL; it goes to the whole group).
//	agent -> client: binary messages whose first byte is StreamStdout or
//	  StreamStderr followed by output bytes; finally one text StreamEvent
//	  {"type":"exit",...} (or {"type":"error",...} when the command could
//	  not start), then a normal close.
const (
	StreamStdout byte = 1
	StreamStderr byte = 2
)

// Stream message types.
const (
	StreamCloseStdin = "closeStdin"
	StreamKill       = "kill"
	StreamExit       = "exit"
	StreamError      = "error"
)

// StreamControl is a client -> agent text message on a streaming exec.
type StreamControl struct {
	Type   string `json:"type" enum:"closeStdin,kill"`
	Signal string `json:"signal,omitempty" doc:"With kill: the signal sent to the command's process group (TERM, INT, HUP, KILL…); default KILL."`
}

// StreamEvent is an agent -> client text message on a streaming exec.
type StreamEvent struct {
	Type       string  `json:"type" enum:"exit,error" doc:"exit: the command ended; error: it could not start (code and detail say why)."`
	ExitCode   int     `json:"exitCode" doc:"The exit status; 128+n when signal n ended the command."`
	Signal     string  `json:"signal,omitempty"`
	TimedOut   bool    `json:"timedOut,omitempty"`
	DurationMs float64 `json:"durationMs,omitempty"`
	Code       string  `json:"code,omitempty"`
	Detail     string  `json:"detail,omitempty"`
}

// File types in FileInfo.Type.
const (
	FileTypeFile    = "file"
	FileTypeDir     = "dir"
	FileTypeSymlink = "symlink"
	FileTypeOther   = "other"
)

// FileInfo describes one path (GET /files/stat, list entries, writes).
type FileInfo struct {
	Path       string    `json:"path" doc:"The real path, symlinks of its directories resolved."`
	Name       string    `json:"name"`
	Type       string    `json:"type" enum:"file,dir,symlink,other"`
	Size       int64     `json:"size"`
	Mode       string    `json:"mode" doc:"Octal permission bits with setuid, setgid and sticky, e.g. 0644."`
	LinkTarget string    `json:"linkTarget,omitempty" doc:"A symlink's target, as stored."`
	ModTime    time.Time `json:"modTime"`
	UID        int       `json:"uid"`
	GID        int       `json:"gid"`
}

// Content encodings for file reads and batch writes.
const (
	EncodingUTF8   = "utf8"
	EncodingBase64 = "base64"
)

// FileContent is GET /files?path=&encoding=&offset=&limit=.
type FileContent struct {
	Path     string `json:"path"`
	Content  string `json:"content"`
	Encoding string `json:"encoding" enum:"utf8,base64"`
	// Size is the whole file's size; Truncated says Content stops early.
	Size      int64 `json:"size" doc:"The whole file's size."`
	Offset    int64 `json:"offset"`
	Truncated bool  `json:"truncated" doc:"The file goes on past this content: read on from offset + the content's length."`
}

// WriteFileOptions are the query parameters of PUT /files.
type WriteFileOptions struct {
	// Mode 0 keeps an existing file's mode, or 0644 for a new file.
	Mode uint32
	// Owner is "user", "uid", "user:group" or "uid:gid"; "" keeps the
	// existing owner (or the agent's user for a new file).
	Owner string
	// Parents creates missing parent directories (owned like the file).
	Parents bool
}

// ListResult is GET /files/list.
type ListResult struct {
	Path      string     `json:"path"`
	Entries   []FileInfo `json:"entries" doc:"Sorted by name."`
	Truncated bool       `json:"truncated" doc:"The directory has more than 10 000 entries; the rest are left out."`
}

// MkdirRequest is POST /files/mkdir.
type MkdirRequest struct {
	Path    string `json:"path"`
	Mode    string `json:"mode,omitempty" doc:"Octal permission bits; default 0755."`
	Owner   string `json:"owner,omitempty" doc:"user, uid, user:group or uid:gid; default the agent's user."`
	Parents bool   `json:"parents,omitempty" doc:"Create missing parents; an existing directory is then no error."`
}

// FileWrite is one entry of POST /files/write-batch: the config-file
// injection path (npmrc, credentials, profile snippets...).
type FileWrite struct {
	Path     string `json:"path"`
	Content  string `json:"content"`
	Encoding string `json:"encoding,omitempty" enum:"utf8,base64" doc:"How content is encoded; default utf8."`
	Mode     string `json:"mode,omitempty" doc:"Octal permission bits, e.g. 0600."`
	Owner    string `json:"owner,omitempty" doc:"user, uid, user:group or uid:gid."`
	Parents  bool   `json:"parents,omitempty" doc:"Create missing parent directories."`
}

// WriteBatchRequest is POST /files/write-batch.
type WriteBatchRequest struct {
	Files []FileWrite `json:"files"`
}

// DeleteBatchRequest is POST /files/delete-batch. Missing paths succeed
// (Existed=false) so removal is idempotent.
type DeleteBatchRequest struct {
	Paths     []string `json:"paths"`
	Recursive bool     `json:"recursive,omitempty"`
}

// FileResult is one per-path outcome of a batch, in request order.
type FileResult struct {
	Path    string   `json:"path"`
	OK      bool     `json:"ok"`
	Existed bool     `json:"existed,omitempty" doc:"Deletes: whether the path was there."`
	Error   *Problem `json:"error,omitempty" doc:"Why this path failed."`
}

// BatchResult answers both batch routes (always 200 when the batch itself
// was well formed; per-file failures are in Results).
type BatchResult struct {
	Results []FileResult `json:"results"`
}

// Err joins the per-file failures, nil when every file succeeded.
func (b *BatchResult) Err() error {
	var errs []error
	for _, r := range b.Results {
		if !r.OK && r.Error != nil {
			errs = append(errs, &Error{Status: 0, Code: r.Error.Code, Detail: r.Path + ": " + r.Error.Detail, Field: r.Error.Field})
		}
	}
	return errors.Join(errs...)
}

// GitPathsRequest is POST /git/status and /git/diff.
type GitPathsRequest struct {
	Paths []string `json:"paths"`
}

// GitCommitInfo is a commit summary.
type GitCommitInfo struct {
	Hash    string `json:"hash"`
	Subject string `json:"subject"`
}

// GitRepoStatus is one repository of POST /git/status, in request order.
type GitRepoStatus struct {
	Path       string         `json:"path"`
	Branch     string         `json:"branch,omitempty"` // "" when detached
	Upstream   string         `json:"upstream,omitempty"`
	Dirty      bool           `json:"dirty"`
	Changed    int            `json:"changed"` // changed + untracked entries
	Ahead      int            `json:"ahead"`
	Behind     int            `json:"behind"`
	LastCommit *GitCommitInfo `json:"lastCommit,omitempty"`
	Error      *Problem       `json:"error,omitempty"`
}

// GitStatusResult is POST /git/status.
type GitStatusResult struct {
	Repos []GitRepoStatus `json:"repos"`
}

// GitFileDiff counts one file's changes against HEAD (staged and unstaged
// merged; untracked files count their lines as added).
type GitFileDiff struct {
	Path      string `json:"path"`
	Added     int    `json:"added"`
	Removed   int    `json:"removed"`
	Binary    bool   `json:"binary,omitempty"`
	Untracked bool   `json:"untracked,omitempty"`
}

// GitRepoDiff is one repository of POST /git/diff.
type GitRepoDiff struct {
	Path         string        `json:"path"`
	Files        []GitFileDiff `json:"files"`
	TotalAdded   int           `json:"totalAdded"`
	TotalRemoved int           `json:"totalRemoved"`
	Error        *Problem      `json:"error,omitempty"`
}

// GitDiffResult is POST /git/diff.
type GitDiffResult struct {
	Repos []GitRepoDiff `json:"repos"`
}

// GitCommitRequest is POST /git/commit: stages everything (git add -A)
// and commits.
type GitCommitRequest struct {
	Path        string `json:"path"`
	Message     string `json:"message"`
	AuthorName  string `json:"authorName,omitempty"`
	AuthorEmail string `json:"authorEmail,omitempty"`
}

// GitCommitResult is POST /git/commit.
type GitCommitResult struct {
	Path   string `json:"path"`
	Hash   string `json:"hash"`
	Branch string `json:"branch,omitempty"`
}

// GitPushRequest is POST /git/push.
type GitPushRequest struct {
	Path   string `json:"path"`
	Remote string `json:"remote,omitempty"` // default "origin"
	Branch string `json:"branch,omitempty"` // default the current branch
	// Env is added to git's environment for this push only and never
	// persisted: the hook for credentials (GIT_ASKPASS helper + token).
	Env       map[string]string `json:"env,omitempty"`
	TimeoutMs int64             `json:"timeoutMs,omitempty"`
}

// GitPushResult is POST /git/push.
type GitPushResult struct {
	Path   string `json:"path"`
	Remote string `json:"remote"`
	Branch string `json:"branch"`
	Output string `json:"output"`
}

// Restart policies of a supervised process.
const (
	RestartNo        = "no"
	RestartOnFailure = "on-failure"
	RestartAlways    = "always"
)

// Process states.
const (
	StateRunning  = "running"
	StateBackoff  = "backoff" // exited, waiting to be restarted
	StateStopping = "stopping"
	StateStopped  = "stopped" // stopped on request
	StateExited   = "exited"  // ended on its own, no restart due
	StateFailed   = "failed"  // restart budget exhausted or could not start
)

// Process kinds.
const (
	KindService = "service"
	KindDev     = "dev"
)

// ProcessSpec is the body of POST /services/{name}/start and
// /dev/{name}/start (and optionally /restart). Exactly one of Argv and
// Shell is set.
type ProcessSpec struct {
	Argv  []string          `json:"argv,omitempty"`
	Shell string            `json:"shell,omitempty"`
	Login bool              `json:"login,omitempty"`
	Env   map[string]string `json:"env,omitempty"`
	Cwd   string            `json:"cwd,omitempty"`
	User  string            `json:"user,omitempty"`
	// Port the process serves; reported in status (dev commands are routed
	// as dev-{name}-{id} to it) and exported as PORT when env has none.
	Port    int    `json:"port,omitempty" minimum:"0" maximum:"65535" doc:"The port it serves: reported in its status, exported as PORT when env has none, and the default port of its hosts when exposed."`
	Restart string `json:"restart,omitempty" enum:"no,on-failure,always" doc:"Restart policy; default no."`
	// MaxRestarts bounds automatic restarts since the last start request;
	// 0 means unlimited (restarts still back off).
	MaxRestarts int   `json:"maxRestarts,omitempty" minimum:"0" doc:"Bound on automatic restarts since the last start request; 0: unlimited (with back-off)."`
	StopGraceMs int64 `json:"stopGraceMs,omitempty" minimum:"0" doc:"SIGTERM to SIGKILL grace when stopped; default 5000."`
}

// ProcessStatus is the state of one supervised process.
type ProcessStatus struct {
	Name        string     `json:"name"`
	Kind        string     `json:"kind" enum:"service,dev"`
	State       string     `json:"state" enum:"running,backoff,stopping,stopped,exited,failed" doc:"backoff: exited, waiting to be restarted; stopped: on request; exited: ended on its own with no restart due; failed: the restart budget ran out or it could not start."`
	Running     bool       `json:"running"`
	PID         int        `json:"pid,omitempty"`
	Port        int        `json:"port,omitempty"`
	Argv        []string   `json:"argv,omitempty"`
	Shell       string     `json:"shell,omitempty"`
	Cwd         string     `json:"cwd,omitempty"`
	User        string     `json:"user,omitempty"`
	Restart     string     `json:"restart" enum:"no,on-failure,always"`
	MaxRestarts int        `json:"maxRestarts"`
	Restarts    int        `json:"restarts" doc:"Automatic restarts since the last start request."`
	StartedAt   *time.Time `json:"startedAt,omitempty"`
	ExitedAt    *time.Time `json:"exitedAt,omitempty"`
	ExitCode    *int       `json:"exitCode,omitempty"`
	Signal      string     `json:"signal,omitempty"`
	LastError   string     `json:"lastError,omitempty"`
	LogFile     string     `json:"logFile"`
	// Role is the tool host the service backs (vscode, opencode, browser);
	// only services the image manifest declares have one.
	Role string `json:"role,omitempty"`
	// Image: the image manifest declares the service; it cannot be given
	// another spec, only started and stopped.
	Image bool `json:"image,omitempty"`
	// Wanted is the desired state, kept on disk in the guest: the agent
	// starts wanted services at every start (agent restart, sandbox start).
	Wanted bool `json:"wanted"`
	// Ready: the service's health check passes (an HTTP GET below 500 on
	// the manifest's path, else a TCP connect to its port; a service with
	// neither is ready while it runs).
	Ready bool `json:"ready"`
	// RSSBytes is the resident memory of the service's whole process
	// group while it runs (services only).
	RSSBytes int64 `json:"rssBytes,omitempty"`
}

// ProcessList is GET /services and GET /dev.
type ProcessList struct {
	Processes []ProcessStatus `json:"processes"`
}

// ServicesApply is POST /services/apply: the host's settings for the
// image's services. The agent keeps them on disk, restarts the services
// whose effective spec changed, starts the wanted ones that are not
// running, and answers the service list.
type ServicesApply struct {
	// Ports by role (vscode, opencode, browser): the host's advanced.vm.*
	// ports, which override the manifest's defaults. 0 or absent keeps the
	// port known so far.
	Ports map[string]int `json:"ports,omitempty"`
}

// StopRequest is the optional body of .../stop.
type StopRequest struct {
	GraceMs int64 `json:"graceMs,omitempty" minimum:"0" doc:"SIGTERM to SIGKILL grace; default the process's stopGraceMs."`
}

// LogChunk is GET .../logs?offset=&limit=. Offsets are logical and only
// grow, across restarts and log rotation; when Offset > the requested
// offset, the bytes in between were rotated away.
type LogChunk struct {
	Name       string `json:"name"`
	Content    string `json:"content"`
	Offset     int64  `json:"offset" doc:"Where content starts; past the offset asked for when bytes in between were rotated away."`
	NextOffset int64  `json:"nextOffset" doc:"The offset to ask for next."`
	Size       int64  `json:"size" doc:"The log's logical end."`
}

// TerminalRequest is POST /terminals.
type TerminalRequest struct {
	// Cmd defaults to the user's login shell.
	Cmd   []string          `json:"cmd,omitempty" doc:"Program and arguments; default the user's login shell."`
	Cwd   string            `json:"cwd,omitempty"`
	Env   map[string]string `json:"env,omitempty" doc:"Added to the environment (TERM is xterm-256color unless set)."`
	Cols  int               `json:"cols,omitempty" minimum:"0" maximum:"1000" doc:"Width; default 80."`
	Rows  int               `json:"rows,omitempty" minimum:"0" maximum:"1000" doc:"Height; default 24."`
	User  string            `json:"user,omitempty"`
	Title string            `json:"title,omitempty"`
}

// TerminalInfo describes a PTY session.
type TerminalInfo struct {
	ID           string    `json:"id"`
	Title        string    `json:"title"`
	Cmd          []string  `json:"cmd"`
	User         string    `json:"user,omitempty"`
	PID          int       `json:"pid"`
	Cols         int       `json:"cols"`
	Rows         int       `json:"rows"`
	Viewers      int       `json:"viewers" doc:"WebSockets attached now."`
	CreatedAt    time.Time `json:"createdAt"`
	LastActivity time.Time `json:"lastActivity"`
}

// TerminalList is GET /terminals.
type TerminalList struct {
	Terminals []TerminalInfo `json:"terminals"`
}

// ResizeRequest is POST /terminals/{id}/resize and the "resize" control
// message on an attached terminal.
type ResizeRequest struct {
	Cols int `json:"cols" minimum:"1" maximum:"1000"`
	Rows int `json:"rows" minimum:"1" maximum:"1000"`
}

// Terminal attach framing (GET /terminals/{id}/attach, WebSocket): binary
// messages carry raw bytes both ways (agent -> viewer: first the replay
// buffer, then live output; viewer -> agent: keyboard input). Text
// messages are TerminalControl JSON: {"type":"resize","cols","rows"} from
// the viewer, {"type":"exit","exitCode"} from the agent before it closes.
// Keeping control out of the byte stream means no input can be mistaken
// for a resize.
type TerminalControl struct {
	Type     string `json:"type" enum:"resize,exit" doc:"resize: from the viewer, with cols and rows; exit: from the agent, with exitCode, before it closes."`
	Cols     int    `json:"cols,omitempty"`
	Rows     int    `json:"rows,omitempty"`
	ExitCode *int   `json:"exitCode,omitempty"`
}

// Terminal control message types.
const (
	TerminalResize = "resize"
	TerminalExit   = "exit"
)

// NetworkConfig is POST /network.
type NetworkConfig struct {
	IP        string   `json:"ip"`
	PrefixLen int      `json:"prefixLen"`
	Gateway   string   `json:"gateway,omitempty"`
	DNS       []string `json:"dns,omitempty"`
	Hostname  string   `json:"hostname,omitempty"`
	// MAC selects the interface; "" picks the first non-loopback one.
	MAC string `json:"mac,omitempty"`
}

// NetworkResult is the answer of POST /network.
type NetworkResult struct {
	// Applied is false when the agent does not manage networking (the
	// container runtime configures it from outside); values are recorded.
	Applied bool          `json:"applied"`
	Device  string        `json:"device,omitempty"`
	Config  NetworkConfig `json:"config"`
}

// ConfigAck answers POST /config.
type ConfigAck struct {
	Path string `json:"path"`
	Size int    `json:"size"`
}
