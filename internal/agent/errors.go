package agent

import (
	"errors"
	"fmt"
	"net/http"
)

// Error is a non-2xx answer of the agent, decoded from its problem body.
type Error struct {
	Status int
	Code   string
	Detail string
	Field  string
}

func (e *Error) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("agent: %s: %s", e.Code, e.Detail)
	}
	return fmt.Sprintf("agent: %d %s: %s", e.Status, e.Code, e.Detail)
}

// IsCode reports whether err is (or wraps) an *Error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// IsNotFound reports whether err is (or wraps) an agent 404.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}
