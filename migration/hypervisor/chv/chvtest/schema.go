package chvtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"
)

// field is one property of a schema object in the OpenAPI spec.
type field struct {
	kind     string   // "string", "boolean", "integer", "array"
	min, max *float64 // integer bounds
	enum     []string // string enum
	items    *schema  // array of objects
	minLen   int      // string minLength
}

type schema struct {
	required []string
	fields   map[string]field
}

func bound(v float64) *float64 { return &v }

// The request bodies of vm.receive-migration and vm.send-migration, from
// components/schemas in cloud-hypervisor.yaml.
var (
	zoneUpdateSchema = &schema{ // VmMemoryZoneUpdateData
		required: []string{"id", "host_numa_node"},
		fields: map[string]field{
			"id":             {kind: "string", minLen: 1},
			"host_numa_node": {kind: "integer", min: bound(0), max: bound(math.MaxUint32)},
		},
	}
	receiveMigrationSchema = &schema{ // ReceiveMigrationData
		required: []string{"receiver_url"},
		fields: map[string]field{
			"receiver_url": {kind: "string"},
			"tls_dir":      {kind: "string"},
			"zone_updates": {kind: "array", items: zoneUpdateSchema},
		},
	}
	sendMigrationSchema = &schema{ // SendMigrationData
		required: []string{"destination_url"},
		fields: map[string]field{
			"destination_url":  {kind: "string"},
			"local":            {kind: "boolean"},
			"preserve_source":  {kind: "boolean"},
			"downtime_ms":      {kind: "integer", min: bound(1)},
			"timeout_s":        {kind: "integer", min: bound(1)},
			"timeout_strategy": {kind: "string", enum: []string{"Cancel", "Ignore"}},
			"connections":      {kind: "integer", min: bound(1), max: bound(128)},
			"tls_dir":          {kind: "string"},
			"memory_mode":      {kind: "string", enum: []string{"MemFDs", "Precopy", "Postcopy"}},
		},
	}
)

// validate decodes body as a JSON object into out and checks it against sc.
func validate(body []byte, sc *schema, out *map[string]any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	var v any
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the JSON object")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("not a JSON object")
	}
	if err := sc.check("", m); err != nil {
		return err
	}
	*out = m
	return nil
}

func (sc *schema) check(at string, m map[string]any) error {
	for _, r := range sc.required {
		if _, ok := m[r]; !ok {
			return fmt.Errorf("missing required field %s%s", at, r)
		}
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		f, ok := sc.fields[k]
		if !ok {
			return fmt.Errorf("unknown field %s%s", at, k)
		}
		if err := f.check(at+k, m[k]); err != nil {
			return err
		}
	}
	return nil
}

func (f field) check(name string, v any) error {
	switch f.kind {
	case "string":
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("field %s: want a string, got %T", name, v)
		}
		if len(s) < f.minLen {
			return fmt.Errorf("field %s: shorter than %d", name, f.minLen)
		}
		if f.enum != nil {
			for _, e := range f.enum {
				if s == e {
					return nil
				}
			}
			return fmt.Errorf("field %s: %q is not one of %v", name, s, f.enum)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("field %s: want a boolean, got %T", name, v)
		}
	case "integer":
		n, ok := v.(float64)
		if !ok || n != math.Trunc(n) {
			return fmt.Errorf("field %s: want an integer, got %v", name, v)
		}
		if (f.min != nil && n < *f.min) || (f.max != nil && n > *f.max) {
			return fmt.Errorf("field %s: %v out of range", name, n)
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("field %s: want an array, got %T", name, v)
		}
		for i, e := range a {
			m, ok := e.(map[string]any)
			if !ok {
				return fmt.Errorf("field %s[%d]: want an object", name, i)
			}
			if err := f.items.check(fmt.Sprintf("%s[%d].", name, i), m); err != nil {
				return err
			}
		}
	}
	return nil
}
