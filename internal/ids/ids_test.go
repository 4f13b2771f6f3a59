package ids

import "testing"

func TestNewSandboxID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := NewSandboxID()
		if !ValidSandboxID(id) {
			t.Fatalf("generated invalid id %q", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		in      string
		sandbox bool
		label   bool
	}{
		{"abcdef012345", true, true},
		{"ABCDEF012345", false, false},
		{"abcdef01234", false, true},
		{"abcdef0123456", false, true},
		{"abc/ef012345", false, false},
		{"", false, false},
		{"web", false, true},
		{"-web", false, false},
		{"web-", false, false},
		{"my-app", false, true},
		{"a..b", false, false},
	}
	for _, tt := range tests {
		if got := ValidSandboxID(tt.in); got != tt.sandbox {
			t.Errorf("ValidSandboxID(%q) = %v, want %v", tt.in, got, tt.sandbox)
		}
		if got := ValidDNSLabel(tt.in); got != tt.label {
			t.Errorf("ValidDNSLabel(%q) = %v, want %v", tt.in, got, tt.label)
		}
	}
}
