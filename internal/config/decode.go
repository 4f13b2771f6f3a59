package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
)

// FileError reports everything wrong with a config file's content: a syntax
// error, or every unknown key, duplicate key and type mismatch found.
type FileError struct {
	Path     string
	Problems []FileProblem
}

// FileProblem is one defect at a position in the file.
type FileProblem struct {
	// Key is the dotted key ("domain.tls.email", "network.dnsServers[1]"),
	// empty for syntax errors.
	Key string
	// Line and Column are 1-based; Column counts bytes.
	Line, Column int
	Message      string
}

func (e *FileError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "config file %s:%d:%d: ", e.Path, p.Line, p.Column)
		if p.Key != "" {
			fmt.Fprintf(&b, "%s: ", p.Key)
		}
		b.WriteString(p.Message)
	}
	return b.String()
}

// decodeFile merges a config file over c. Objects merge key by key; lists
// and scalars replace. The content is checked against the key tree first,
// because encoding/json neither names the path of an unknown key nor rejects
// keys in the wrong letter case.
func decodeFile(path string, data []byte, c *Config) error {
	fe := &FileError{Path: path}
	if len(bytes.TrimSpace(data)) == 0 {
		fe.Problems = append(fe.Problems, FileProblem{Line: 1, Column: 1,
			Message: "file is empty; write {} to use the defaults"})
		return fe
	}
	var raw json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		var se *json.SyntaxError
		if !errors.As(err, &se) {
			return fmt.Errorf("parse config file %s: %w", path, err)
		}
		line, col := lineCol(data, se.Offset-1)
		fe.Problems = append(fe.Problems, FileProblem{Line: line, Column: col,
			Message: "invalid JSON: " + se.Error()})
		return fe
	}

	w := &walker{data: data, dec: json.NewDecoder(bytes.NewReader(data)), err: fe}
	w.dec.UseNumber()
	if err := w.value(reflect.TypeFor[Config](), "", true); err != nil {
		return fmt.Errorf("parse config file %s: %w", path, err)
	}
	if len(fe.Problems) > 0 {
		return fe
	}
	if err := json.Unmarshal(data, c); err != nil {
		return fmt.Errorf("decode config file %s: %w", path, err)
	}
	return nil
}

// walker streams tokens of syntactically valid JSON against a Go type,
// recording problems with the dotted key and position of each.
type walker struct {
	data []byte
	dec  *json.Decoder
	err  *FileError
}

func (w *walker) problem(key string, off int64, format string, args ...any) {
	line, col := lineCol(w.data, off)
	w.err.Problems = append(w.err.Problems, FileProblem{Key: key, Line: line, Column: col,
		Message: fmt.Sprintf(format, args...)})
}

// start returns the offset of the next token: InputOffset points just past
// the previous one, before any separator.
func (w *walker) start() int64 {
	off := w.dec.InputOffset()
	for off < int64(len(w.data)) && strings.IndexByte(" \t\r\n,:", w.data[off]) >= 0 {
		off++
	}
	return off
}

func (w *walker) token() (json.Token, error) {
	tok, err := w.dec.Token()
	if errors.Is(err, io.EOF) {
		return nil, io.ErrUnexpectedEOF
	}
	return tok, err
}

// value consumes one JSON value that should decode into t. The returned error
// is only for malformed input, which the syntax check already excluded.
func (w *walker) value(t reflect.Type, key string, root bool) error {
	off := w.start()
	tok, err := w.token()
	if err != nil {
		return err
	}
	switch t.Kind() {
	case reflect.Struct:
		if tok != json.Delim('{') {
			if root {
				w.problem("", off, "the file must hold a JSON object, not %s", describe(tok))
			} else {
				w.problem(key, off, "expected an object, got %s", describe(tok))
			}
			return w.skip(tok)
		}
		return w.object(t, key, root)
	case reflect.Slice:
		if tok != json.Delim('[') {
			w.problem(key, off, "expected a list of strings, got %s", describe(tok))
			return w.skip(tok)
		}
		for i := 0; w.dec.More(); i++ {
			if err := w.value(t.Elem(), fmt.Sprintf("%s[%d]", key, i), false); err != nil {
				return err
			}
		}
		_, err := w.token() // ]
		return err
	case reflect.String:
		if _, ok := tok.(string); !ok {
			w.problem(key, off, "expected a string, got %s", describe(tok))
			return w.skip(tok)
		}
	case reflect.Bool:
		if _, ok := tok.(bool); !ok {
			w.problem(key, off, "expected true or false, got %s", describe(tok))
			return w.skip(tok)
		}
	case reflect.Int:
		n, ok := tok.(json.Number)
		if !ok {
			w.problem(key, off, "expected an integer, got %s", describe(tok))
			return w.skip(tok)
		}
		if _, err := strconv.ParseInt(string(n), 10, strconv.IntSize); err != nil {
			w.problem(key, off, "expected an integer, got %s", n)
		}
	default:
		return fmt.Errorf("config type %s at %q is not supported", t, key)
	}
	return nil
}

func (w *walker) object(t reflect.Type, key string, root bool) error {
	seen := map[string]bool{}
	for w.dec.More() {
		off := w.start()
		tok, err := w.token()
		if err != nil {
			return err
		}
		name, ok := tok.(string)
		if !ok {
			return fmt.Errorf("object key at offset %d is %s", off, describe(tok))
		}
		full := joinKey(key, name)
		if seen[name] {
			w.problem(full, off, "duplicate key")
		}
		seen[name] = true
		f, known := fieldByJSONName(t, name)
		switch {
		case known:
			if err := w.value(f.Type, full, false); err != nil {
				return err
			}
		case root && name == "$schema":
			// Editors use $schema to find the JSON Schema; it carries no setting.
			if err := w.value(reflect.TypeFor[string](), full, false); err != nil {
				return err
			}
		case retiredKeys[full] != "":
			w.problem(full, off, "retired: %s", retiredKeys[full])
			vtok, err := w.token()
			if err != nil {
				return err
			}
			if err := w.skip(vtok); err != nil {
				return err
			}
		default:
			w.problem(full, off, "unknown key %q", full)
			vtok, err := w.token()
			if err != nil {
				return err
			}
			if err := w.skip(vtok); err != nil {
				return err
			}
		}
	}
	_, err := w.token() // }
	return err
}

// skip consumes the rest of a value whose first token was tok, without
// recursion so that deep nesting under an unknown key cannot exhaust the stack.
func (w *walker) skip(tok json.Token) error {
	depth := 0
	for {
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				depth++
			default:
				depth--
			}
		}
		if depth == 0 {
			return nil
		}
		var err error
		if tok, err = w.token(); err != nil {
			return err
		}
	}
}

func describe(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '{' {
			return "an object"
		}
		return "a list"
	case string:
		return fmt.Sprintf("the string %q", truncate(v, 40))
	case json.Number:
		return "the number " + string(v)
	case bool:
		return fmt.Sprintf("%t", v)
	case nil:
		return "null"
	}
	return fmt.Sprintf("%v", tok)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// lineCol converts a byte offset into a 1-based line and column.
func lineCol(data []byte, off int64) (line, col int) {
	off = max(0, min(off, int64(len(data))))
	before := data[:off]
	line = 1 + bytes.Count(before, []byte{'\n'})
	col = int(off) - bytes.LastIndexByte(before, '\n')
	return line, col
}
