package revert

import (
	"errors"
	"reflect"
	"testing"
)

func TestFailRunsInReverseAndJoinsErrors(t *testing.T) {
	var got []int
	boom := errors.New("boom")
	r := New()
	r.Add(func() error { got = append(got, 1); return nil })
	r.Add(func() error { got = append(got, 2); return boom })
	r.Add(func() error { got = append(got, 3); return nil })
	err := r.Fail()
	if !reflect.DeepEqual(got, []int{3, 2, 1}) {
		t.Fatalf("order = %v, want [3 2 1]", got)
	}
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if err := r.Fail(); err != nil || len(got) != 3 {
		t.Fatalf("second Fail ran again: %v %v", err, got)
	}
}

func TestSuccessDisarms(t *testing.T) {
	ran := false
	r := New()
	r.Add(func() error { ran = true; return nil })
	r.Success()
	if err := r.Fail(); err != nil || ran {
		t.Fatalf("undo ran after Success (err %v)", err)
	}
}
