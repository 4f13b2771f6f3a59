// Package store is Atelier's single source of truth: SQLite (modernc.org/sqlite,
// no cgo) in WAL mode, with versioned migrations embedded in the binary.
//
// Method surface (implemented in the other files of this package):
//
//	Open(ctx, dataDir) (*Store, error)          // creates dataDir, opens atelier.db, migrates
//	(*Store).Close() error
//	(*Store).Ping(ctx) error
//
//	UpsertGitHubUser(ctx, User) (User, error)   // keyed by GitHubID; assigns ID on first insert
//	EnsureUser(ctx, User) (User, error)         // insert-if-missing by ID (mock mode's local user)
//	GetUser(ctx, id) (User, error)
//
//	CreateSession(ctx, Session) error
//	GetSession(ctx, id) (Session, error)        // returns revoked/expired rows too; caller checks Valid(now)
//	RevokeSession(ctx, id, now) error
//	DeleteExpiredSessions(ctx, now) (int64, error)
//	RevokeUserSessions(ctx, userID, now) (int64, error)
//	UsersWithSessions(ctx, now) ([]User, error)
//	GetGitHubGrant(ctx, userID) (GitHubGrant, error) // sealed OAuth token + last org verification
//	PutGitHubGrant(ctx, userID, GitHubGrant) error
//	SetOrgVerified(ctx, userID, org, at) error
//
//	PutOAuthState(ctx, OAuthState, now, limit) error // ErrLimit when limit unexpired states are pending
//	CountOAuthStates(ctx) (int, error)
//	DeleteExpiredOAuthStates(ctx, now) (int64, error)
//	DeleteExpiredEdgeCodes(ctx, now) (int64, error)
//	DeleteDeadAPITokens(ctx, cutoff) (int64, error)
//	TakeOAuthState(ctx, state, now) (OAuthState, error) // one-time: deletes; ErrNotFound when missing or expired
//
//	CreateAPIToken(ctx, APIToken) error         // Hash is the SHA-256 of the secret; never the secret
//	ListAPITokens(ctx, userID) ([]APIToken, error)
//	RevokeAPIToken(ctx, userID, id, now) error  // ErrNotFound when not the user's token
//	LookupAPIToken(ctx, hash, now) (APIToken, error) // ErrNotFound when unknown, revoked or expired
//	TouchAPIToken(ctx, id, now) error
//
//	InsertSandbox(ctx, Sandbox, limit int) error // atomic: ErrLimit when count(ActiveStatuses) >= limit (limit<=0: none)
//	InsertSandboxWithin(ctx, Sandbox, Limits) error // the same, plus the owner's quotas (*QuotaError)
//	GetSandbox(ctx, id) (Sandbox, error)
//	ListSandboxes(ctx, SandboxFilter) ([]Sandbox, error) // ordered by CreatedAt, ID
//	CountSandboxes(ctx, statuses ...Status) (int, error)
//	Transition(ctx, id, from []Status, to Status, limit int, mutate func(*Sandbox)) (Sandbox, error)
//	    // compare-and-set on status; *ConflictError when status not in from; ErrLimit when
//	    // to is active, from is not, and the active count is already >= limit (limit<=0: none)
//	TransitionWithin(ctx, id, from, to, Limits, mutate) (Sandbox, error) // plus the owner's running quota
//	PruneOps(ctx, OpRetention) (int64, error)  // bounded journal: open steps are always kept
//	UpdateSandbox(ctx, id, mutate func(*Sandbox)) (Sandbox, error) // fields other than Status
//	DeleteSandbox(ctx, id) error                // ErrNotFound when absent
//
//	AppendOp(ctx, Op) (int64, error)            // journal: the intent is recorded before acting
//	SetOpState(ctx, opID, state, detail) error
//	ListOps(ctx, sandboxID) ([]Op, error)
//	OpenOps(ctx) ([]Op, error)                  // ops whose State is OpIntent (crash recovery)
//
//	AllocateLease(ctx, sandboxID, first, last netip.Addr, mac func(netip.Addr) string) (Lease, error)
//	    // lowest free address in [first,last]; idempotent per sandbox; ErrExhausted when full
//	GetLease(ctx, sandboxID) (Lease, error)
//	ReleaseLease(ctx, sandboxID) error          // already released is success
//	ListLeases(ctx) ([]Lease, error)
//
//	AppendEvent(ctx, Event) (Event, error)      // assigns ID (monotonic) and CreatedAt
//	EventsSince(ctx, afterID, limit) ([]Event, error)
//	OldestEventID(ctx) (int64, error)           // 0 when the table is empty
//	TrimEvents(ctx, keep int) error
//
//	GetSetting(ctx, key, dst any) (bool, error) // JSON-decodes into dst; false when unset
//	PutSetting(ctx, key, value any) error
//
//	ReplaceRoutes(ctx, sandboxID, name, kinds, routes) error // edge routes; ErrDuplicate when a host is held
//	DeleteRoutes(ctx, sandboxID) error
//	ListRoutes(ctx, sandboxID) ([]Route, error)  // "" lists every sandbox's
//	PutEdgeCode(ctx, EdgeCode) error
//	TakeEdgeCode(ctx, hash, now) (EdgeCode, error) // one-time: deletes; ErrNotFound when missing or expired
//
// Every method takes ctx first; every error is wrapped with a lowercase message.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

var (
	ErrNotFound  = errors.New("not found")
	ErrLimit     = errors.New("sandbox limit reached")
	ErrQuota     = errors.New("quota exceeded")
	ErrExhausted = errors.New("subnet exhausted")
	ErrDuplicate = errors.New("already exists")
)

// ConflictError reports a refused state transition; errors.Is(err, ErrConflict) holds.
type ConflictError struct {
	ID      string
	Current Status
	To      Status
}

var ErrConflict = errors.New("conflict")

func (e *ConflictError) Error() string {
	return fmt.Sprintf("sandbox %s is %s: cannot move to %s", e.ID, e.Current, e.To)
}

func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// The quotas, named by their config keys.
const (
	QuotaRunning   = "quotas.runningPerUser"
	QuotaSandboxes = "quotas.sandboxesPerUser"
	QuotaDisk      = "quotas.diskGbPerUser"
)

// Quotas bound what one owner may hold; a zero field is unlimited.
type Quotas struct {
	// Running bounds the owner's sandboxes in ActiveStatuses.
	Running int
	// Sandboxes bounds the owner's sandboxes in any status: a stopped one
	// keeps its disk and its address.
	Sandboxes int
	// DiskBytes bounds the sum of the owner's sandboxes' DiskBytes.
	DiskBytes int64
}

// Limits are checked in the same immediate transaction as the write they
// guard, so concurrent creates and starts can never exceed them.
type Limits struct {
	// Host bounds the active sandboxes of every owner (server.maxSandboxes).
	Host int
	Quotas
}

// QuotaError reports a refused write that would take the owner past a
// quota; errors.Is(err, ErrQuota) holds.
type QuotaError struct {
	Quota string // QuotaRunning, QuotaSandboxes or QuotaDisk
	// Limit, Used and Requested count sandboxes, or bytes for QuotaDisk.
	Limit, Used, Requested int64
}

func (e *QuotaError) Error() string {
	if e.Quota == QuotaDisk {
		return fmt.Sprintf("quota %s exceeded: %s of %s in use, and this sandbox's disk needs %s more",
			e.Quota, gib(e.Used), gib(e.Limit), gib(e.Requested))
	}
	what := "sandboxes"
	if e.Quota == QuotaRunning {
		what = "running sandboxes"
	}
	return fmt.Sprintf("quota %s exceeded: %d of %d %s in use", e.Quota, e.Used, e.Limit, what)
}

func (e *QuotaError) Is(target error) bool { return target == ErrQuota }

func gib(b int64) string {
	if b%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", b>>30)
	}
	return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
}

// Status is a sandbox's lifecycle state.
type Status string

const (
	StatusCreating   Status = "creating"
	StatusRunning    Status = "running"
	StatusStopping   Status = "stopping"
	StatusStopped    Status = "stopped"
	StatusStarting   Status = "starting"
	StatusError      Status = "error"
	StatusDestroying Status = "destroying"
)

// AllStatuses lists every status, in lifecycle order.
var AllStatuses = []Status{StatusCreating, StatusRunning, StatusStopping, StatusStopped, StatusStarting, StatusError, StatusDestroying}

// ActiveStatuses hold host CPU and memory and count against server.maxSandboxes.
var ActiveStatuses = []Status{StatusCreating, StatusStarting, StatusRunning, StatusStopping}

// IsActive reports whether s counts against the sandbox limit.
func (s Status) IsActive() bool {
	for _, a := range ActiveStatuses {
		if s == a {
			return true
		}
	}
	return false
}

type User struct {
	ID        string    `json:"id"`
	GitHubID  int64     `json:"githubId,omitempty"`
	Login     string    `json:"login"`
	Name      string    `json:"name,omitempty"`
	AvatarURL string    `json:"avatarUrl,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	UpdatedAt time.Time `json:"updatedAt"`
}

type Session struct {
	ID        string
	UserID    string
	CreatedAt time.Time
	ExpiresAt time.Time
	RevokedAt *time.Time
}

// Valid reports whether the session may authenticate a request at now.
func (s Session) Valid(now time.Time) bool {
	return s.RevokedAt == nil && now.Before(s.ExpiresAt)
}

type OAuthState struct {
	State     string
	Verifier  string
	ReturnTo  string
	ExpiresAt time.Time
}

type APIToken struct {
	ID         string     `json:"id"`
	UserID     string     `json:"userId"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"` // first characters of the secret, shown in listings
	Hash       []byte     `json:"-"`
	CreatedAt  time.Time  `json:"createdAt"`
	LastUsedAt *time.Time `json:"lastUsedAt,omitempty"`
	ExpiresAt  *time.Time `json:"expiresAt,omitempty"`
	RevokedAt  *time.Time `json:"revokedAt,omitempty"`
	// Scope is read, full or admin (see auth.Scope); "" is stored as full.
	Scope string `json:"scope"`
}

type Sandbox struct {
	ID          string
	Name        string
	OwnerID     string
	WorkspaceID string
	Image       string
	Status      Status
	Vcpus       int
	MemoryMB    int
	IP          string
	MAC         string
	Error       string
	// DiskBytes is the virtual size of the root volume, counted against
	// the owner's disk quota.
	DiskBytes int64
	// VolumeDriver holds the root volume: "lvm", "file", or "" when unknown.
	VolumeDriver string
	// Timings holds per-phase durations in milliseconds of the last create or start.
	Timings   map[string]float64
	CreatedAt time.Time
	UpdatedAt time.Time
}

type SandboxFilter struct {
	OwnerID string // empty: every owner
	Status  Status // empty: every status
	Name    string // empty: any name
	// NoTimings leaves Sandbox.Timings nil, for listings that do not show them.
	NoTimings bool
}

// Op states in the journal.
const (
	OpIntent = "intent" // recorded, acting now or interrupted by a crash
	OpDone   = "done"
	OpUndone = "undone" // rolled back after a later step failed
	OpFailed = "failed"
)

// Op is one journaled step of a multi-resource operation.
type Op struct {
	ID        int64
	SandboxID string
	Op        string // create, start, stop, destroy
	Step      string // lease, volume, link, boot, agent, routes, ssh, ...
	State     string
	Detail    string
	CreatedAt time.Time
	UpdatedAt time.Time
}

type Lease struct {
	IP        string
	SandboxID string
	MAC       string
	CreatedAt time.Time
}

type Event struct {
	ID        int64           `json:"id"`
	Type      string          `json:"type"`
	SandboxID string          `json:"sandboxId,omitempty"`
	Data      json.RawMessage `json:"data"`
	CreatedAt time.Time       `json:"createdAt"`
}
