// Package configfile edits the JSON config file in place, for `atelier
// config set` and `atelier init`: one key at a time, the value parsed by the
// key's type, every other key kept as it was and in its order, the result
// checked by the same loader and validation the manager uses, and written
// atomically with the file's mode (0600 for a new file: it holds secrets).
package configfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"

	"atelier/internal/config"
)

// ParseValue converts a command-line value to the key's JSON value: a
// string as is, an integer, true/false, and for lists a JSON array or
// comma-separated items (empty: the empty list).
func ParseValue(key, raw string) (any, error) {
	kind, ok := config.KeyKind(key)
	if !ok {
		return nil, fmt.Errorf("unknown key %q (atelier config schema lists them)", key)
	}
	if config.KeyDerived(key) {
		return nil, fmt.Errorf("%s is derived from other keys and cannot be set", key)
	}
	switch kind {
	case reflect.String:
		return raw, nil
	case reflect.Int:
		n, err := strconv.Atoi(strings.TrimSpace(raw))
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not an integer", key, raw)
		}
		return n, nil
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(raw))
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not true or false", key, raw)
		}
		return b, nil
	case reflect.Slice:
		if t := strings.TrimSpace(raw); strings.HasPrefix(t, "[") {
			var list []string
			if err := json.Unmarshal([]byte(t), &list); err != nil {
				return nil, fmt.Errorf("%s: %q is not a JSON list of strings", key, raw)
			}
			return list, nil
		}
		list := []string{}
		for item := range strings.SplitSeq(raw, ",") {
			if item = strings.TrimSpace(item); item != "" {
				list = append(list, item)
			}
		}
		return list, nil
	}
	return nil, fmt.Errorf("%s has an unsupported type", key)
}

// Set returns the file's JSON with key (dotted) set to v. Missing objects
// on the way are created; data may be empty (a new file).
func Set(data []byte, key string, v any) ([]byte, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		data = []byte("{}")
	}
	val, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	out, err := setPath(data, strings.Split(key, "."), val)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := json.Indent(&b, out, "", "  "); err != nil {
		return nil, err
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

type member struct {
	key string
	val json.RawMessage
}

// setPath replaces path in the object obj, keeping the other members and
// their order.
func setPath(obj []byte, path []string, val json.RawMessage) ([]byte, error) {
	members, err := decodeObject(obj)
	if err != nil {
		return nil, err
	}
	i := -1
	for j, m := range members {
		if m.key == path[0] {
			i = j
		}
	}
	if len(path) == 1 {
		if i >= 0 {
			members[i].val = val
		} else {
			members = append(members, member{path[0], val})
		}
		return encodeObject(members)
	}
	child := json.RawMessage("{}")
	if i >= 0 {
		child = members[i].val
	}
	nv, err := setPath(child, path[1:], val)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path[0], err)
	}
	if i >= 0 {
		members[i].val = nv
	} else {
		members = append(members, member{path[0], nv})
	}
	return encodeObject(members)
}

func decodeObject(data []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if tok != json.Delim('{') {
		return nil, errors.New("expected a JSON object")
	}
	var out []member
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("invalid JSON: %w", err)
		}
		k, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("invalid JSON: %w", err)
		}
		out = append(out, member{k, raw})
	}
	return out, nil
}

func encodeObject(ms []member) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range ms {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(m.val)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// Change is one key to set.
type Change struct {
	Key   string
	Value any
}

// Apply sets every change in the file at path, checks the result with the
// config loader and Validate (the environment applied, as the manager would
// see it), and writes it atomically only when it is valid and differs. It
// returns whether the file changed. A missing file is created 0600.
func Apply(path string, env []string, changes ...Change) (bool, error) {
	old, err := os.ReadFile(path)
	mode := os.FileMode(0o600)
	switch {
	case err == nil:
		if fi, err := os.Stat(path); err == nil {
			mode = fi.Mode().Perm()
		}
	case errors.Is(err, fs.ErrNotExist):
		old = nil
	default:
		return false, fmt.Errorf("read config file: %w", err)
	}
	data := old
	for _, c := range changes {
		if data, err = Set(data, c.Key, c.Value); err != nil {
			return false, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	if old != nil && bytes.Equal(normalize(old), normalize(data)) {
		return false, nil
	}
	if err := Check(path, data, env); err != nil {
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, fmt.Errorf("write config file: %w", err)
	}
	if err := WriteAtomic(path, data, mode); err != nil {
		return false, fmt.Errorf("write config file: %w", err)
	}
	return true, nil
}

// Check loads data as the config file at path would be loaded and
// validates it.
func Check(path string, data []byte, env []string) error {
	dir, err := os.MkdirTemp("", "atelier-config-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, filepath.Base(path))
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	cfg, err := config.Load(config.Options{File: tmp, Env: env})
	if err != nil {
		return err
	}
	return cfg.Validate()
}

func normalize(b []byte) []byte {
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return b
	}
	return out.Bytes()
}

// WriteAtomic writes data to a temp file beside path and renames it over
// path, so a reader sees the old file or the new one, never half of one.
func WriteAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// RestartNeeded reports whether the running manager must restart to apply
// key: everything it reads at start, which is every key but those only the
// CLI reads (storage setup's and update's).
func RestartNeeded(key string) bool {
	return !strings.HasPrefix(key, "setup.") && key != "advanced.server.releaseUrl"
}
