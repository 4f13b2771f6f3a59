package sandbox_test

import (
	"testing"

	"atelier/internal/sandbox"
	"atelier/internal/store"
)

func TestCanTransition(t *testing.T) {
	const (
		cr = store.StatusCreating
		ru = store.StatusRunning
		sg = store.StatusStopping
		sd = store.StatusStopped
		st = store.StatusStarting
		er = store.StatusError
		de = store.StatusDestroying
	)
	allowed := map[[2]store.Status]bool{
		{cr, ru}: true, {cr, er}: true, {cr, de}: true,
		{ru, sg}: true, {ru, er}: true, {ru, de}: true,
		{sg, sd}: true, {sg, er}: true,
		{sd, st}: true, {sd, de}: true,
		{st, ru}: true, {st, er}: true, {st, de}: true,
		{er, st}: true, {er, de}: true,
		{de, er}: true,
	}
	n := 0
	for _, from := range store.AllStatuses {
		for _, to := range store.AllStatuses {
			n++
			t.Run(string(from)+"->"+string(to), func(t *testing.T) {
				want := allowed[[2]store.Status{from, to}]
				if got := sandbox.CanTransition(from, to); got != want {
					t.Errorf("CanTransition(%s, %s) = %v, want %v", from, to, got, want)
				}
			})
		}
	}
	if n != 49 {
		t.Fatalf("checked %d pairs, want 49", n)
	}
	if sandbox.CanTransition("bogus", store.StatusRunning) || sandbox.CanTransition(store.StatusRunning, "bogus") {
		t.Error("unknown statuses must not transition")
	}
}
