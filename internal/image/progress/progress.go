// Package progress is the record an image build keeps while it runs:
// {stateDir}/images/<id>.building.json, rewritten atomically at each stage
// so the manager (another process) can show a build in progress without
// talking to it. The build removes the record when it succeeds; when it
// fails it leaves the record marked with the failed stage, which the
// manager reports once and removes (or which expires after FailedKeep). A
// record whose process is gone (a killed build) is stale: ignored and
// removed by List.
package progress

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Suffix names a build record beside the images: <id>.building.json.
const Suffix = ".building.json"

// FailedKeep is how long a failed build's record is kept when no manager
// collects it.
const FailedKeep = time.Hour

// maxRecord bounds what is read of a record.
const maxRecord = 64 << 10

// Record is one build's progress.
type Record struct {
	ID  string `json:"id"`
	PID int    `json:"pid"`
	// PIDStart is the process's start time in clock ticks since boot
	// (/proc/<pid>/stat field 22): a pid reused by another process after
	// the build was killed does not keep a stale record alive.
	PIDStart     string    `json:"pidStart,omitempty"`
	Started      time.Time `json:"started"`
	Stage        string    `json:"stage"`
	StageStarted time.Time `json:"stageStarted"`
	Done         []Stage   `json:"done"`
	// Failed is the stage that failed (empty while running); Error its
	// first line, for admins.
	Failed string    `json:"failed,omitempty"`
	Error  string    `json:"error,omitempty"`
	Ended  time.Time `json:"ended,omitzero"`
}

// Stage is a finished stage.
type Stage struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
	Cached  bool    `json:"cached"`
}

// New returns the record of a build of id by this process, starting now.
func New(id string) Record {
	now := time.Now().UTC()
	return Record{ID: id, PID: os.Getpid(), PIDStart: procStart(os.Getpid()), Started: now, StageStarted: now, Done: []Stage{}}
}

// Path is where the record of a build of id lives in dir.
func Path(dir, id string) string { return filepath.Join(dir, id+Suffix) }

// Write replaces the record atomically (temp file and rename), readable by
// root only: it names a host pid.
func Write(dir string, r Record) error {
	if r.ID == "" || strings.ContainsAny(r.ID, "/\x00") {
		return fmt.Errorf("write build record: invalid id %q", r.ID)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("write build record: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+r.ID+".building-*")
	if err != nil {
		return fmt.Errorf("write build record: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(append(b, '\n'))
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, Path(dir, r.ID))
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("write build record: %w", werr)
	}
	return nil
}

// Remove deletes the record of id; a missing one is fine.
func Remove(dir, id string) error {
	if err := os.Remove(Path(dir, id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove build record: %w", err)
	}
	return nil
}

// Read returns the record of id.
func Read(dir, id string) (Record, error) {
	return read(Path(dir, id))
}

func read(p string) (Record, error) {
	var r Record
	f, err := os.Open(p)
	if err != nil {
		return r, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxRecord))
	if err != nil {
		return r, fmt.Errorf("read build record %s: %w", filepath.Base(p), err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("read build record %s: %w", filepath.Base(p), err)
	}
	return r, nil
}

// List returns the records in dir, sorted by id: builds whose process is
// alive, and failed builds not yet expired. Stale records (the process is
// gone without marking a failure, or the failure expired) and unreadable
// ones are removed. A missing dir is no builds.
func List(dir string) ([]Record, error) {
	live, _, err := Scan(dir)
	return live, err
}

// Scan is List that also returns the records it removed because their
// build was killed (its process gone, no failure marked).
func Scan(dir string) (live, killed []Record, err error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list build records: %w", err)
	}
	var out []Record
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, Suffix) || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, name)
		r, err := read(p)
		if err != nil || r.ID+Suffix != name {
			// A record is only ever replaced by rename, so a bad one is
			// not half-written: it is garbage.
			os.Remove(p)
			continue
		}
		if r.Failed != "" {
			if time.Since(r.Ended) > FailedKeep {
				os.Remove(p)
				continue
			}
		} else if !Alive(r) {
			os.Remove(p)
			killed = append(killed, r)
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, killed, nil
}

// Alive reports whether the record's build process still runs.
func Alive(r Record) bool {
	if r.PID <= 0 {
		return false
	}
	st := procStart(r.PID)
	if st == "" {
		return false
	}
	return r.PIDStart == "" || r.PIDStart == st
}

// procStart is /proc/<pid>/stat's starttime, "" when there is no such
// process.
func procStart(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	// After "pid (comm)" comes field 3 (state); starttime is field 22.
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || f[0] == "Z" {
		return ""
	}
	return f[19]
}

// Tracker keeps one build's record up to date. Writing is best effort: a
// build does not fail because its progress could not be shown, it warns
// once. A nil Tracker does nothing.
type Tracker struct {
	dir    string
	r      Record
	warn   func(error)
	warned bool
}

// Start writes the record of a build of id starting now (dir is created
// root-only if missing).
func Start(dir, id string, warn func(error)) *Tracker {
	t := &Tracker{dir: dir, r: New(id), warn: warn}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.fail(err)
	}
	t.write()
	return t
}

func (t *Tracker) fail(err error) {
	if err != nil && !t.warned && t.warn != nil {
		t.warned = true
		t.warn(err)
	}
}

func (t *Tracker) write() { t.fail(Write(t.dir, t.r)) }

// Stage records that stage name started.
func (t *Tracker) Stage(name string) {
	if t == nil {
		return
	}
	t.r.Stage, t.r.StageStarted = name, time.Now().UTC()
	t.write()
}

// Done records a finished (or cached) stage.
func (t *Tracker) Done(name string, d time.Duration, cached bool) {
	if t == nil {
		return
	}
	t.r.Done = append(t.r.Done, Stage{Name: name, Seconds: d.Seconds(), Cached: cached})
	t.r.Stage = ""
	t.write()
}

// Finish ends the build: the record goes on success; on failure it stays,
// marked with the stage that was running and the error's first line.
func (t *Tracker) Finish(err error) {
	if t == nil {
		return
	}
	if err == nil {
		t.fail(Remove(t.dir, t.r.ID))
		return
	}
	t.r.Failed = t.r.Stage
	if t.r.Failed == "" {
		t.r.Failed = "prepare"
	}
	msg, _, _ := strings.Cut(err.Error(), "\n")
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	t.r.Error, t.r.Ended = msg, time.Now().UTC()
	t.write()
}
