// Package fctest is a stand-in for Firecracker's API, for tests of code that
// drives Firecracker on machines that cannot run it. Every request is checked
// against the official Swagger 2.0 spec (LoadSpec) and against Firecracker's
// documented state rules (Server); RunFake turns a test binary into a fake
// firecracker process serving that stand-in on its --api-sock.
package fctest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Spec is the part of a Swagger 2.0 document that request validation needs.
type Spec struct {
	// Version is info.version.
	Version string
	// Paths maps a path template ("/drives/{drive_id}") and an upper-case
	// method to its operation.
	Paths       map[string]map[string]*Operation
	Definitions map[string]*Schema
}

// Operation is one method on one path.
type Operation struct {
	ID          string
	Method      string
	Path        string
	Summary     string
	Description string
	// Body is the schema of the body parameter; nil when the operation takes none.
	Body         *Schema
	BodyRequired bool
	// PathParams are the names of the template's {params}, in order.
	PathParams []string
}

// Schema is a Swagger schema object, restricted to the keywords the
// Firecracker spec uses for validation.
type Schema struct {
	// Ref is "#/definitions/<Name>" when the schema is a reference.
	Ref        string
	Type       string
	Required   []string
	Properties map[string]*Schema
	// AdditionalProperties is nil when the spec does not state it.
	AdditionalProperties *Additional
	Enum                 []any
	Minimum              *float64
	Maximum              *float64
	Items                *Schema
}

// Additional is a stated additionalProperties: allowed or not and, when
// given as a schema, the schema every extra property must match.
type Additional struct {
	Allowed bool
	Schema  *Schema
}

type rawSpec struct {
	Swagger string `yaml:"swagger"`
	Info    struct {
		Version string `yaml:"version"`
	} `yaml:"info"`
	Paths       map[string]map[string]rawOperation `yaml:"paths"`
	Definitions map[string]*rawSchema              `yaml:"definitions"`
}

type rawOperation struct {
	OperationID string     `yaml:"operationId"`
	Summary     string     `yaml:"summary"`
	Description string     `yaml:"description"`
	Parameters  []rawParam `yaml:"parameters"`
}

type rawParam struct {
	Name     string     `yaml:"name"`
	In       string     `yaml:"in"`
	Required bool       `yaml:"required"`
	Schema   *rawSchema `yaml:"schema"`
}

type rawSchema struct {
	Ref                  string                `yaml:"$ref"`
	Type                 string                `yaml:"type"`
	Required             []string              `yaml:"required"`
	Properties           map[string]*rawSchema `yaml:"properties"`
	AdditionalProperties yaml.Node             `yaml:"additionalProperties"`
	Enum                 []any                 `yaml:"enum"`
	Minimum              *float64              `yaml:"minimum"`
	Maximum              *float64              `yaml:"maximum"`
	Items                *rawSchema            `yaml:"items"`
}

var methods = []string{"get", "put", "post", "patch", "delete", "head", "options"}

// LoadSpec reads a Swagger 2.0 YAML document.
func LoadSpec(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read spec: %w", err)
	}
	return ParseSpec(data)
}

// ParseSpec parses a Swagger 2.0 YAML document and checks that every
// reference resolves.
func ParseSpec(data []byte) (*Spec, error) {
	var raw rawSpec
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("parse spec: %w", err)
	}
	if raw.Swagger != "2.0" {
		return nil, fmt.Errorf("parse spec: swagger version %q, want 2.0", raw.Swagger)
	}
	s := &Spec{
		Version:     raw.Info.Version,
		Paths:       map[string]map[string]*Operation{},
		Definitions: map[string]*Schema{},
	}
	for name, rs := range raw.Definitions {
		sc, err := convertSchema(rs)
		if err != nil {
			return nil, fmt.Errorf("parse spec: definition %s: %w", name, err)
		}
		s.Definitions[name] = sc
	}
	for path, ops := range raw.Paths {
		if !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("parse spec: path %q does not start with /", path)
		}
		for m, ro := range ops {
			if !slices.Contains(methods, m) {
				return nil, fmt.Errorf("parse spec: %s: unknown method %q", path, m)
			}
			op := &Operation{
				ID:          ro.OperationID,
				Method:      strings.ToUpper(m),
				Path:        path,
				Summary:     ro.Summary,
				Description: ro.Description,
				PathParams:  templateParams(path),
			}
			for _, p := range ro.Parameters {
				if p.In != "body" {
					continue
				}
				sc, err := convertSchema(p.Schema)
				if err != nil {
					return nil, fmt.Errorf("parse spec: %s %s body: %w", op.Method, path, err)
				}
				op.Body, op.BodyRequired = sc, p.Required
			}
			if s.Paths[path] == nil {
				s.Paths[path] = map[string]*Operation{}
			}
			s.Paths[path][op.Method] = op
		}
	}
	if err := s.checkRefs(); err != nil {
		return nil, fmt.Errorf("parse spec: %w", err)
	}
	return s, nil
}

func convertSchema(rs *rawSchema) (*Schema, error) {
	if rs == nil {
		return nil, nil
	}
	sc := &Schema{
		Ref:      rs.Ref,
		Type:     rs.Type,
		Required: rs.Required,
		Enum:     rs.Enum,
		Minimum:  rs.Minimum,
		Maximum:  rs.Maximum,
	}
	if len(rs.Properties) > 0 {
		sc.Properties = make(map[string]*Schema, len(rs.Properties))
		for name, p := range rs.Properties {
			ps, err := convertSchema(p)
			if err != nil {
				return nil, fmt.Errorf("property %s: %w", name, err)
			}
			sc.Properties[name] = ps
		}
	}
	items, err := convertSchema(rs.Items)
	if err != nil {
		return nil, fmt.Errorf("items: %w", err)
	}
	sc.Items = items
	switch n := rs.AdditionalProperties; n.Kind {
	case 0:
	case yaml.ScalarNode:
		var b bool
		if err := n.Decode(&b); err != nil {
			return nil, fmt.Errorf("additionalProperties: %w", err)
		}
		sc.AdditionalProperties = &Additional{Allowed: b}
	case yaml.MappingNode:
		var ra rawSchema
		if err := n.Decode(&ra); err != nil {
			return nil, fmt.Errorf("additionalProperties: %w", err)
		}
		as, err := convertSchema(&ra)
		if err != nil {
			return nil, fmt.Errorf("additionalProperties: %w", err)
		}
		sc.AdditionalProperties = &Additional{Allowed: true, Schema: as}
	default:
		return nil, fmt.Errorf("additionalProperties: unexpected YAML node kind %v", n.Kind)
	}
	return sc, nil
}

func templateParams(path string) []string {
	var out []string
	for seg := range strings.SplitSeq(path, "/") {
		if isParam(seg) {
			out = append(out, seg[1:len(seg)-1])
		}
	}
	return out
}

func isParam(seg string) bool {
	return len(seg) > 2 && seg[0] == '{' && seg[len(seg)-1] == '}'
}

func (s *Spec) checkRefs() error {
	var errs []error
	var walk func(where string, sc *Schema)
	walk = func(where string, sc *Schema) {
		if sc == nil {
			return
		}
		if sc.Ref != "" {
			if _, err := s.resolve(sc); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
			}
			return
		}
		for name, p := range sc.Properties {
			walk(where+"."+name, p)
		}
		walk(where+"[]", sc.Items)
		if sc.AdditionalProperties != nil {
			walk(where+".*", sc.AdditionalProperties.Schema)
		}
	}
	for name, sc := range s.Definitions {
		walk(name, sc)
	}
	for path, ops := range s.Paths {
		for m, op := range ops {
			walk(m+" "+path, op.Body)
		}
	}
	return errors.Join(errs...)
}

const defPrefix = "#/definitions/"

func (s *Spec) resolve(sc *Schema) (*Schema, error) {
	// A chain of references is followed, with a bound against cycles.
	for range 32 {
		if sc.Ref == "" {
			return sc, nil
		}
		name, ok := strings.CutPrefix(sc.Ref, defPrefix)
		if !ok {
			return nil, fmt.Errorf("unsupported reference %q", sc.Ref)
		}
		next, ok := s.Definitions[name]
		if !ok {
			return nil, fmt.Errorf("unresolved reference %q", sc.Ref)
		}
		sc = next
	}
	return nil, fmt.Errorf("reference cycle at %q", sc.Ref)
}

// Match finds the operation for a method and a concrete path, with the
// values of its path parameters. Literal segments win over parameters.
func (s *Spec) Match(method, path string) (*Operation, map[string]string, bool) {
	segs := strings.Split(path, "/")
	templates := make([]string, 0, len(s.Paths))
	for t := range s.Paths {
		templates = append(templates, t)
	}
	// Fewer parameters first, so "/balloon/statistics" beats a template
	// like "/balloon/{x}" if the spec ever had both.
	sort.Slice(templates, func(i, j int) bool {
		pi, pj := strings.Count(templates[i], "{"), strings.Count(templates[j], "{")
		if pi != pj {
			return pi < pj
		}
		return templates[i] < templates[j]
	})
	for _, t := range templates {
		params, ok := matchTemplate(t, segs)
		if !ok {
			continue
		}
		op, ok := s.Paths[t][strings.ToUpper(method)]
		if !ok {
			return nil, nil, false
		}
		return op, params, true
	}
	return nil, nil, false
}

// PathKnown reports whether any operation is declared for path.
func (s *Spec) PathKnown(path string) bool {
	segs := strings.Split(path, "/")
	for t := range s.Paths {
		if _, ok := matchTemplate(t, segs); ok {
			return true
		}
	}
	return false
}

func matchTemplate(t string, segs []string) (map[string]string, bool) {
	tsegs := strings.Split(t, "/")
	if len(tsegs) != len(segs) {
		return nil, false
	}
	params := map[string]string{}
	for i, ts := range tsegs {
		if isParam(ts) {
			if segs[i] == "" {
				return nil, false
			}
			params[ts[1:len(ts)-1]] = segs[i]
			continue
		}
		if ts != segs[i] {
			return nil, false
		}
	}
	return params, true
}

// FieldError is one way a JSON document fails its schema.
type FieldError struct {
	// Field is the JSON path of the offending value ("drives[0].drive_id");
	// empty for the document itself.
	Field  string
	Reason string
}

func (e FieldError) String() string {
	if e.Field == "" {
		return e.Reason
	}
	return e.Field + ": " + e.Reason
}

// ValidationError lists every problem found in one document.
type ValidationError struct {
	Problems []FieldError
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.String()
	}
	return "invalid body: " + strings.Join(parts, "; ")
}

// Fields returns the paths of the offending values.
func (e *ValidationError) Fields() []string {
	out := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		out[i] = p.Field
	}
	return out
}

// Options tune validation.
type Options struct {
	// DenyUnknown rejects object properties a schema does not name, unless
	// the schema explicitly allows additional properties. The spec itself
	// never says additionalProperties: false, but Firecracker deserializes
	// every request body with serde's deny_unknown_fields, so this is how
	// the real API behaves.
	DenyUnknown bool
}

// ValidateJSON decodes data and validates it against sc.
func (s *Spec) ValidateJSON(sc *Schema, data []byte, opts Options) error {
	v, err := DecodeJSON(data)
	if err != nil {
		return &ValidationError{Problems: []FieldError{{Reason: err.Error()}}}
	}
	return s.Validate(sc, v, opts)
}

// ValidateDefinition validates data against the named definition.
func (s *Spec) ValidateDefinition(name string, data []byte, opts Options) error {
	sc, ok := s.Definitions[name]
	if !ok {
		return fmt.Errorf("no definition %q", name)
	}
	return s.ValidateJSON(sc, data, opts)
}

// DecodeJSON decodes one JSON document, keeping numbers as json.Number so
// that integers can be told from fractions.
func DecodeJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("malformed JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("malformed JSON: trailing data after the document")
	}
	return v, nil
}

// Validate checks a value decoded by DecodeJSON against sc.
func (s *Spec) Validate(sc *Schema, v any, opts Options) error {
	var probs []FieldError
	s.validate(sc, v, "", opts, &probs)
	if len(probs) == 0 {
		return nil
	}
	return &ValidationError{Problems: probs}
}

func (s *Spec) validate(sc *Schema, v any, field string, opts Options, probs *[]FieldError) {
	if sc == nil {
		return
	}
	add := func(format string, args ...any) {
		*probs = append(*probs, FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	sc, err := s.resolve(sc)
	if err != nil {
		add("%v", err)
		return
	}
	if v == nil {
		// Swagger 2.0 has no nullable: null matches no typed schema.
		if sc.Type != "" {
			add("null is not a valid %s", sc.Type)
		}
		return
	}
	if !s.checkType(sc, v, add) {
		return
	}
	if len(sc.Enum) > 0 && !inEnum(sc.Enum, v) {
		add("value %s is not one of %s", show(v), showEnum(sc.Enum))
	}
	if n, ok := v.(json.Number); ok {
		f, err := n.Float64()
		if err == nil {
			if sc.Minimum != nil && f < *sc.Minimum {
				add("%s is below the minimum %s", n, fmtNum(*sc.Minimum))
			}
			if sc.Maximum != nil && f > *sc.Maximum {
				add("%s is above the maximum %s", n, fmtNum(*sc.Maximum))
			}
		}
	}
	switch x := v.(type) {
	case map[string]any:
		for _, req := range sc.Required {
			if _, ok := x[req]; !ok {
				*probs = append(*probs, FieldError{Field: join(field, req), Reason: "required property is missing"})
			}
		}
		names := make([]string, 0, len(x))
		for k := range x {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			if ps, ok := sc.Properties[k]; ok {
				s.validate(ps, x[k], join(field, k), opts, probs)
				continue
			}
			ap := sc.AdditionalProperties
			switch {
			case ap != nil && !ap.Allowed:
				*probs = append(*probs, FieldError{Field: join(field, k), Reason: "unknown property (additionalProperties is false)"})
			case ap != nil && ap.Schema != nil:
				s.validate(ap.Schema, x[k], join(field, k), opts, probs)
			case ap == nil && opts.DenyUnknown:
				*probs = append(*probs, FieldError{Field: join(field, k), Reason: "unknown property"})
			}
		}
	case []any:
		for i, item := range x {
			s.validate(sc.Items, item, fmt.Sprintf("%s[%d]", field, i), opts, probs)
		}
	}
}

// checkType reports whether v has the schema's type, recording a problem
// when it does not. A schema without a type accepts anything.
func (s *Spec) checkType(sc *Schema, v any, add func(string, ...any)) bool {
	ok := true
	switch sc.Type {
	case "":
	case "object":
		_, ok = v.(map[string]any)
	case "array":
		_, ok = v.([]any)
	case "string":
		_, ok = v.(string)
	case "boolean":
		_, ok = v.(bool)
	case "number":
		_, ok = v.(json.Number)
	case "integer":
		n, isNum := v.(json.Number)
		ok = isNum && isInteger(n)
	default:
		add("schema has unsupported type %q", sc.Type)
		return false
	}
	if !ok {
		add("%s is not a valid %s", show(v), sc.Type)
	}
	return ok
}

// isInteger accepts integer literals only: Firecracker's serde parser
// rejects 1.0 or 1e3 for an integer field.
func isInteger(n json.Number) bool {
	if strings.ContainsAny(string(n), ".eE") {
		return false
	}
	if _, err := strconv.ParseInt(string(n), 10, 64); err == nil {
		return true
	}
	_, err := strconv.ParseUint(string(n), 10, 64)
	return err == nil
}

func inEnum(enum []any, v any) bool {
	for _, e := range enum {
		switch ev := e.(type) {
		case string:
			if sv, ok := v.(string); ok && sv == ev {
				return true
			}
		case bool:
			if bv, ok := v.(bool); ok && bv == ev {
				return true
			}
		case int:
			if n, ok := v.(json.Number); ok && string(n) == strconv.Itoa(ev) {
				return true
			}
		case float64:
			if n, ok := v.(json.Number); ok {
				if f, err := n.Float64(); err == nil && f == ev {
					return true
				}
			}
		}
	}
	return false
}

func join(field, name string) string {
	if field == "" {
		return name
	}
	return field + "." + name
}

func show(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	if len(b) > 60 {
		return string(b[:57]) + "..."
	}
	return string(b)
}

func showEnum(enum []any) string {
	parts := make([]string, len(enum))
	for i, e := range enum {
		parts[i] = fmt.Sprint(e)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func fmtNum(f float64) string {
	if f == math.Trunc(f) {
		return strconv.FormatFloat(f, 'f', 0, 64)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}
