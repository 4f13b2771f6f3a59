package fctest

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

const specPath = "../testdata/firecracker-api-v1.14.1.yaml"

func loadSpec(t *testing.T) *Spec {
	t.Helper()
	s, err := LoadSpec(specPath)
	if err != nil {
		t.Fatalf("LoadSpec: %v", err)
	}
	return s
}

func TestLoadSpec(t *testing.T) {
	s := loadSpec(t)
	if s.Version != "1.14.1" {
		t.Errorf("version = %q, want 1.14.1", s.Version)
	}
	op := s.Paths["/drives/{drive_id}"]["PUT"]
	if op == nil || op.ID != "putGuestDriveByID" || !op.BodyRequired || op.Body == nil || op.Body.Ref != "#/definitions/Drive" {
		t.Fatalf("PUT /drives/{drive_id} = %+v", op)
	}
	if !slices.Equal(op.PathParams, []string{"drive_id"}) {
		t.Errorf("path params = %v", op.PathParams)
	}
	mc := s.Definitions["MachineConfiguration"]
	vc := mc.Properties["vcpu_count"]
	if vc.Type != "integer" || vc.Minimum == nil || *vc.Minimum != 1 || vc.Maximum == nil || *vc.Maximum != 32 {
		t.Errorf("vcpu_count = %+v", vc)
	}
	if !slices.Equal(mc.Required, []string{"mem_size_mib", "vcpu_count"}) {
		t.Errorf("MachineConfiguration.required = %v", mc.Required)
	}
	if ap := s.Definitions["MmdsContentsObject"].AdditionalProperties; ap == nil || !ap.Allowed {
		t.Errorf("MmdsContentsObject.additionalProperties = %+v, want true", ap)
	}
	if !slices.Contains(s.Definitions["Logger"].Properties["level"].Enum, any("Off")) {
		t.Errorf("Logger.level enum lost Off: %v", s.Definitions["Logger"].Properties["level"].Enum)
	}
}

func TestParseSpecRejectsBrokenDocuments(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"not swagger 2", "swagger: '3.0'\npaths: {}\n", "swagger version"},
		{"dangling ref", "swagger: '2.0'\npaths: {}\ndefinitions:\n  A:\n    properties:\n      b:\n        $ref: '#/definitions/Nope'\n", "unresolved reference"},
		{"bad yaml", "swagger: [\n", "parse spec"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSpec([]byte(tt.doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestMatch(t *testing.T) {
	s := loadSpec(t)
	tests := []struct {
		method, path string
		wantOp       string
		wantParams   map[string]string
	}{
		{"GET", "/", "describeInstance", map[string]string{}},
		{"PUT", "/drives/rootfs", "putGuestDriveByID", map[string]string{"drive_id": "rootfs"}},
		{"PATCH", "/drives/rootfs", "patchGuestDriveByID", map[string]string{"drive_id": "rootfs"}},
		{"PUT", "/network-interfaces/eth0", "putGuestNetworkInterfaceByID", map[string]string{"iface_id": "eth0"}},
		{"GET", "/balloon/statistics", "describeBalloonStats", map[string]string{}},
		{"PATCH", "/vm", "patchVm", map[string]string{}},
		{"GET", "/vm/config", "getExportVmConfig", map[string]string{}},
		{"PUT", "/drives/", "", nil},
		{"PUT", "/drives/a/b", "", nil},
		{"DELETE", "/", "", nil},
		{"PUT", "/vm", "", nil},
		{"GET", "/nope", "", nil},
	}
	for _, tt := range tests {
		op, params, ok := s.Match(tt.method, tt.path)
		if tt.wantOp == "" {
			if ok {
				t.Errorf("%s %s matched %s", tt.method, tt.path, op.ID)
			}
			continue
		}
		if !ok || op.ID != tt.wantOp {
			t.Errorf("%s %s: ok=%v op=%v, want %s", tt.method, tt.path, ok, op, tt.wantOp)
			continue
		}
		for k, v := range tt.wantParams {
			if params[k] != v {
				t.Errorf("%s %s: param %s = %q, want %q", tt.method, tt.path, k, params[k], v)
			}
		}
	}
	if !s.PathKnown("/vm") || s.PathKnown("/nope") {
		t.Error("PathKnown wrong")
	}
}

func TestValidateDefinitions(t *testing.T) {
	s := loadSpec(t)
	strict := Options{DenyUnknown: true}
	tests := []struct {
		name string
		def  string
		body string
		// wantFields nil means valid.
		wantFields []string
	}{
		{"machine config", "MachineConfiguration", `{"vcpu_count":2,"mem_size_mib":1024}`, nil},
		{"machine config optional", "MachineConfiguration", `{"vcpu_count":32,"mem_size_mib":4,"smt":false,"track_dirty_pages":true,"cpu_template":"None","huge_pages":"2M"}`, nil},
		{"boot source", "BootSource", `{"kernel_image_path":"/k","boot_args":"console=ttyS0"}`, nil},
		{"drive", "Drive", `{"drive_id":"rootfs","path_on_host":"/d","is_root_device":true,"is_read_only":false,"cache_type":"Writeback","io_engine":"Async","rate_limiter":{"bandwidth":{"size":1,"refill_time":0}}}`, nil},
		{"network interface", "NetworkInterface", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:0a"}`, nil},
		{"vsock", "Vsock", `{"guest_cid":3,"uds_path":"v.sock"}`, nil},
		{"action", "InstanceActionInfo", `{"action_type":"SendCtrlAltDel"}`, nil},
		{"vm", "Vm", `{"state":"Paused"}`, nil},
		{"snapshot load", "SnapshotLoadParams", `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}]}`, nil},
		{"logger level Off", "Logger", `{"level":"Off"}`, nil},
		{"mmds allows anything", "MmdsContentsObject", `{"latest":{"meta-data":{"x":[1,2]}}}`, nil},

		{"missing required", "MachineConfiguration", `{"mem_size_mib":1024}`, []string{"vcpu_count"}},
		{"string for integer", "MachineConfiguration", `{"vcpu_count":2,"mem_size_mib":"1024"}`, []string{"mem_size_mib"}},
		{"fraction for integer", "MachineConfiguration", `{"vcpu_count":2.0,"mem_size_mib":1024}`, []string{"vcpu_count"}},
		{"exponent for integer", "MachineConfiguration", `{"vcpu_count":2,"mem_size_mib":1e3}`, []string{"mem_size_mib"}},
		{"above maximum", "MachineConfiguration", `{"vcpu_count":33,"mem_size_mib":1024}`, []string{"vcpu_count"}},
		{"below minimum", "MachineConfiguration", `{"vcpu_count":0,"mem_size_mib":1024}`, []string{"vcpu_count"}},
		{"guest cid below 3", "Vsock", `{"guest_cid":2,"uds_path":"v"}`, []string{"guest_cid"}},
		{"enum", "InstanceActionInfo", `{"action_type":"Reboot"}`, []string{"action_type"}},
		{"enum by ref", "MachineConfiguration", `{"vcpu_count":1,"mem_size_mib":1,"cpu_template":"T3"}`, []string{"cpu_template"}},
		{"boolean as string", "Drive", `{"drive_id":"a","is_root_device":"true"}`, []string{"is_root_device"}},
		{"nested enum", "SnapshotLoadParams", `{"snapshot_path":"/s","mem_backend":{"backend_type":"Disk","backend_path":"/m"}}`, []string{"mem_backend.backend_type"}},
		{"array item", "SnapshotLoadParams", `{"snapshot_path":"/s","network_overrides":[{"iface_id":"eth0"}]}`, []string{"network_overrides[0].host_dev_name"}},
		{"array type", "SnapshotLoadParams", `{"snapshot_path":"/s","network_overrides":{"iface_id":"eth0"}}`, []string{"network_overrides"}},
		{"unknown property", "Drive", `{"drive_id":"a","is_root_device":true,"readonly":true}`, []string{"readonly"}},
		{"unknown nested property", "Drive", `{"drive_id":"a","is_root_device":true,"rate_limiter":{"bandwidth":{"size":1,"refill_time":1,"burst":2}}}`, []string{"rate_limiter.bandwidth.burst"}},
		{"negative bucket", "Drive", `{"drive_id":"a","is_root_device":true,"rate_limiter":{"ops":{"size":-1,"refill_time":1}}}`, []string{"rate_limiter.ops.size"}},
		{"null", "BootSource", `{"kernel_image_path":"/k","boot_args":null}`, []string{"boot_args"}},
		{"not an object", "Vm", `["Paused"]`, []string{""}},
		{"malformed", "Vm", `{"state":`, []string{""}},
		{"trailing data", "Vm", `{"state":"Paused"} {}`, []string{""}},
		{"several problems", "NetworkInterface", `{"iface_id":1,"guest_mac":"x","extra":0}`, []string{"host_dev_name", "extra", "iface_id"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.ValidateDefinition(tt.def, []byte(tt.body), strict)
			if tt.wantFields == nil {
				if err != nil {
					t.Fatalf("valid body rejected: %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("err = %v, want a ValidationError on %v", err, tt.wantFields)
			}
			if got := ve.Fields(); !slices.Equal(got, tt.wantFields) {
				t.Fatalf("fields = %q, want %q (%v)", got, tt.wantFields, err)
			}
		})
	}
}

func TestUnknownPropertiesFollowTheSpec(t *testing.T) {
	// The Firecracker spec never states additionalProperties: false, so
	// without DenyUnknown an unknown property passes...
	s := loadSpec(t)
	if err := s.ValidateDefinition("Vm", []byte(`{"state":"Paused","x":1}`), Options{}); err != nil {
		t.Fatalf("lenient validation rejected an unknown property: %v", err)
	}
	// ...while a schema that does state it is enforced in both modes, and
	// a schema-valued additionalProperties validates the extra values.
	doc := `swagger: "2.0"
paths: {}
definitions:
  Closed:
    type: object
    additionalProperties: false
    properties:
      a: {type: string}
  Counts:
    type: object
    additionalProperties:
      type: integer
      minimum: 0
`
	ps, err := ParseSpec([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		def, body string
		opts      Options
		want      []string
	}{
		{"Closed", `{"a":"x"}`, Options{}, nil},
		{"Closed", `{"a":"x","b":1}`, Options{}, []string{"b"}},
		{"Closed", `{"b":1}`, Options{DenyUnknown: true}, []string{"b"}},
		{"Counts", `{"x":1,"y":2}`, Options{DenyUnknown: true}, nil},
		{"Counts", `{"x":1,"y":-2,"z":"3"}`, Options{}, []string{"y", "z"}},
	}
	for _, tt := range tests {
		err := ps.ValidateDefinition(tt.def, []byte(tt.body), tt.opts)
		var ve *ValidationError
		switch {
		case tt.want == nil && err != nil:
			t.Errorf("%s %s: %v", tt.def, tt.body, err)
		case tt.want != nil && (!errors.As(err, &ve) || !slices.Equal(ve.Fields(), tt.want)):
			t.Errorf("%s %s: err = %v, want fields %v", tt.def, tt.body, err, tt.want)
		}
	}
}

// The boot-phase tables must agree with what the spec says in prose, and
// name only operations that exist.
func TestBootPhaseTablesMatchSpec(t *testing.T) {
	s := loadSpec(t)
	ids := map[string]*Operation{}
	for _, ops := range s.Paths {
		for _, op := range ops {
			ids[op.ID] = op
		}
	}
	for _, table := range []map[string]bool{preBoot, postBoot, notBootSpecific} {
		for id := range table {
			if ids[id] == nil {
				t.Errorf("table names unknown operation %q", id)
			}
		}
	}
	for id, op := range ids {
		text := op.Summary + " " + op.Description
		if strings.Contains(text, "Pre-boot only") && !preBoot[id] {
			t.Errorf("%s is documented pre-boot only but not in preBoot", id)
		}
		if strings.Contains(text, "Post-boot only") && !postBoot[id] {
			t.Errorf("%s is documented post-boot only but not in postBoot", id)
		}
		if preBoot[id] && postBoot[id] {
			t.Errorf("%s is in both tables", id)
		}
	}
}
