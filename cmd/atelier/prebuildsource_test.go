package main

import "testing"

func TestPrebuildSourceText(t *testing.T) {
	for _, tc := range []struct {
		pb   prebuildView
		want string
	}{
		{prebuildView{}, ""},
		{prebuildView{Ready: true}, ""},
		{prebuildView{Ready: true, Source: "build"}, ", built"},
		{prebuildView{Ready: true, Source: "promote", SourceSandboxID: "abcdefghijkl"}, ", saved from sandbox abcdefghijkl"},
		{prebuildView{Ready: true, Source: "promote"}, ", saved from a sandbox"},
		{prebuildView{Ready: false, Source: "build"}, ""},
	} {
		if got := tc.pb.sourceText(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.pb, got, tc.want)
		}
	}
}
