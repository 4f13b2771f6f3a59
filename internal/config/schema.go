package config

import (
	"fmt"
	"reflect"
	"strings"
)

const schemaDraft = "https://json-schema.org/draft/2020-12/schema"

// Schema returns a JSON Schema (draft 2020-12) of the config file, generated
// from the types, the env table and the rules table so it cannot drift from
// what Load and Validate accept.
func Schema() ([]byte, error) {
	root, err := objectSchema(reflect.TypeFor[Config](), "", defaults())
	if err != nil {
		return nil, err
	}
	root["$schema"] = schemaDraft
	root["title"] = "Atelier configuration"
	root["description"] = fmt.Sprintf("Atelier's config file (%s, or the path in %s). "+
		"Environment variables override the file; the file overrides the defaults.", DefaultFile, EnvConfigFile)
	root["properties"].(map[string]any)["$schema"] = map[string]any{
		"type":        "string",
		"description": "URI of this schema, for editors; ignored by Atelier.",
	}
	return marshalIndent(root)
}

func objectSchema(t reflect.Type, prefix string, def *Config) (map[string]any, error) {
	props := map[string]any{}
	for i := range t.NumField() {
		f := t.Field(i)
		name := jsonName(f)
		if name == "" {
			continue
		}
		key := joinKey(prefix, name)
		var (
			s   map[string]any
			err error
		)
		if f.Type.Kind() == reflect.Struct {
			s, err = objectSchema(f.Type, key, def)
		} else {
			s, err = leafSchema(key, def)
		}
		if err != nil {
			return nil, err
		}
		props[name] = s
	}
	return map[string]any{
		"type":                 "object",
		"additionalProperties": false,
		"properties":           props,
	}, nil
}

func leafSchema(key string, def *Config) (map[string]any, error) {
	l, ok := leafByKey(key)
	if !ok {
		return nil, fmt.Errorf("schema: key %s has no field", key)
	}
	r := ruleFor(key)
	s := map[string]any{}
	switch l.typ.Kind() {
	case reflect.String:
		s["type"] = "string"
	case reflect.Int:
		s["type"] = "integer"
	case reflect.Bool:
		s["type"] = "boolean"
	case reflect.Slice:
		s["type"] = "array"
		s["items"] = map[string]any{"type": "string"}
	default:
		return nil, fmt.Errorf("schema: key %s has unsupported type %s", key, l.typ)
	}
	// A key whose empty value is refused (server.mode) has no default.
	if r.unset == "" {
		s["default"] = l.value(def).Interface()
	}
	if r.min != nil {
		s["minimum"] = *r.min
	}
	if r.max != nil {
		s["maximum"] = *r.max
	}
	if r.enum != nil {
		s["enum"] = r.enum
	}
	if r.format != "" {
		s["format"] = r.format
	}
	if r.minItems > 0 {
		s["minItems"] = r.minItems
	}
	if r.derived {
		s["readOnly"] = true
	}
	if key == "setup.storage.loopSizeGb" {
		s["anyOf"] = []any{map[string]any{"const": 0}, map[string]any{"minimum": 10}}
	}

	desc := r.desc
	if names := envNamesFor(key); len(names) > 0 {
		for _, e := range envTable {
			if e.Key == key {
				desc = e.Description
				break
			}
		}
		desc += " Environment: " + names[0]
		if len(names) > 1 {
			desc += " (older alias: " + strings.Join(names[1:], ", ") + ")"
		}
		desc += "."
	}
	s["description"] = desc
	return s, nil
}
