package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"strconv"
	"strings"
)

// Options selects the layers Load reads.
type Options struct {
	// File is the config file; empty means ATELIER_CONFIG, then DefaultFile.
	File string
	// Env holds KEY=VALUE pairs; nil means os.Environ(). A later duplicate wins.
	Env []string
	// SkipFile loads defaults and env only.
	SkipFile bool
}

// defaultPath is DefaultFile; tests point it at a temp dir.
var defaultPath = DefaultFile

// Load builds the effective configuration: defaults, then the config file
// (objects merge key by key, lists and scalars replace), then ATELIER_*
// environment variables, then derived fields. It does not validate, so that
// `config show` can print a broken configuration; callers run Validate.
func Load(opts Options) (*Config, error) {
	environ := opts.Env
	if environ == nil {
		environ = os.Environ()
	}
	env := envMap(environ)

	c := defaults()
	if !opts.SkipFile {
		path, source := opts.File, "named by the caller"
		if path == "" {
			path, source = env[EnvConfigFile], "named by "+EnvConfigFile
		}
		if path == "" {
			path, source = defaultPath, ""
		}
		data, err := os.ReadFile(path)
		switch {
		case err == nil:
			if err := decodeFile(path, data, c); err != nil {
				return nil, err
			}
		case errors.Is(err, fs.ErrNotExist) && source == "":
			// No file at the default location: defaults and env suffice.
		case source != "":
			return nil, fmt.Errorf("read config file (%s): %w", source, err)
		default:
			return nil, fmt.Errorf("read config file: %w", err)
		}
	}
	if err := applyEnv(c, env); err != nil {
		return nil, err
	}
	c.derive()
	return c, nil
}

func envMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// EnvError reports environment values that cannot be converted to their
// key's type.
type EnvError struct {
	Problems []Problem
}

func (e *EnvError) Error() string { return joinProblems(e.Problems) }

func applyEnv(c *Config, env map[string]string) error {
	var problems []Problem
	done := map[string]bool{}
	for _, ev := range envTable {
		val := env[ev.Name]
		// Empty means unset, so `ATELIER_X= cmd` cannot blank a default.
		if val == "" || done[ev.Key] {
			continue
		}
		done[ev.Key] = true
		l, ok := leafByKey(ev.Key)
		if !ok {
			return fmt.Errorf("env %s: key %s does not exist", ev.Name, ev.Key)
		}
		f := l.value(c)
		switch f.Kind() {
		case reflect.String:
			f.SetString(val)
		case reflect.Int:
			n, err := strconv.ParseInt(strings.TrimSpace(val), 10, strconv.IntSize)
			if err != nil {
				problems = append(problems, Problem{Key: ev.Key, Env: ev.Name,
					Message: fmt.Sprintf("value %q is not an integer", truncate(val, 40))})
				continue
			}
			f.SetInt(n)
		case reflect.Bool:
			b, err := strconv.ParseBool(strings.TrimSpace(val))
			if err != nil {
				problems = append(problems, Problem{Key: ev.Key, Env: ev.Name,
					Message: fmt.Sprintf("value %q is not a boolean (true or false)", truncate(val, 40))})
				continue
			}
			f.SetBool(b)
		case reflect.Slice:
			f.Set(reflect.ValueOf(splitList(val)))
		default:
			return fmt.Errorf("env %s: key %s has unsupported type %s", ev.Name, ev.Key, f.Type())
		}
	}
	for name, key := range retiredEnv {
		if env[name] != "" {
			problems = append(problems, Problem{Key: key, Env: name,
				Message: "retired: " + retiredKeys[key] + "; unset " + name})
		}
	}
	if len(problems) > 0 {
		return &EnvError{Problems: problems}
	}
	return nil
}

// splitList parses a comma-separated env list, ignoring blanks around and
// between items.
func splitList(s string) []string {
	out := []string{}
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
