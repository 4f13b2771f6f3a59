package sandbox

import "atelier/internal/store"

// transitions is the sandbox state machine. Every status change goes through
// store.Transition with a from-list taken from here, so an illegal move is a
// *store.ConflictError (HTTP 409) decided atomically by the store.
var transitions = map[store.Status][]store.Status{
	store.StatusCreating:   {store.StatusRunning, store.StatusError, store.StatusDestroying},
	store.StatusRunning:    {store.StatusStopping, store.StatusError, store.StatusDestroying},
	store.StatusStopping:   {store.StatusStopped, store.StatusError},
	store.StatusStopped:    {store.StatusStarting, store.StatusDestroying},
	store.StatusStarting:   {store.StatusRunning, store.StatusError, store.StatusDestroying},
	store.StatusError:      {store.StatusStarting, store.StatusDestroying},
	store.StatusDestroying: {store.StatusError}, // or the row is deleted
}

// CanTransition reports whether a sandbox may move from one status to another.
func CanTransition(from, to store.Status) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// sources lists every status that may move to to.
func sources(to store.Status) []store.Status {
	var out []store.Status
	for _, from := range store.AllStatuses {
		if CanTransition(from, to) {
			out = append(out, from)
		}
	}
	return out
}

// settled statuses are where a sandbox rests until someone acts on it.
func settled(s store.Status) bool {
	return s == store.StatusRunning || s == store.StatusStopped || s == store.StatusError
}
