// Package revert undoes the completed steps of a multi-step operation in
// reverse order, in the style of Incus's revert package:
//
//	r := revert.New()
//	defer r.Fail() // no-op after Success
//	a, err := makeA(); if err != nil { return err }
//	r.Add(func() error { return removeA(a) })
//	...
//	r.Success()
package revert

import "errors"

// Reverter collects undo funcs.
type Reverter struct {
	fns  []func() error
	done bool
}

// New returns an empty reverter.
func New() *Reverter { return &Reverter{} }

// Add registers the undo of a step that has completed.
func (r *Reverter) Add(f func() error) { r.fns = append(r.fns, f) }

// Fail runs every undo func, newest first, unless Success was called. Every
// undo runs even when an earlier one fails; the errors are joined. It runs at
// most once.
func (r *Reverter) Fail() error {
	if r.done {
		return nil
	}
	r.done = true
	var errs []error
	for i := len(r.fns) - 1; i >= 0; i-- {
		if err := r.fns[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Success disarms the reverter: the steps stay.
func (r *Reverter) Success() { r.done = true }
