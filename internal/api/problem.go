package api

import (
	"context"
	"errors"
	"log/slog"
	"mime"
	"net/http"
	"strings"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/auth"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// Problem is an RFC 9457 problem document with a stable machine-readable code,
// so clients branch on Code rather than on the wording of Detail.
type Problem struct {
	Type   string              `json:"type,omitempty" doc:"A URI reference for the problem type."`
	Title  string              `json:"title,omitempty" doc:"Short summary of the problem type."`
	Status int                 `json:"status,omitempty" doc:"HTTP status code."`
	Code   string              `json:"code" doc:"Stable machine-readable error code." enum:"invalid_input,unauthenticated,forbidden,misdirected,not_found,method_not_allowed,conflict,port_in_use,already_running,limit_reached,not_a_repository,nothing_to_commit,git_failed,start_failed,sandbox_limit,quota_exceeded,rate_limited,subnet_exhausted,body_too_large,unsupported_media_type,not_acceptable,unavailable,agent_error,internal"`
	Detail string              `json:"detail,omitempty" doc:"What went wrong in this occurrence."`
	Errors []*huma.ErrorDetail `json:"errors,omitempty" doc:"Individual problems, each naming the field it is about."`
	Quota  *QuotaDetail        `json:"quota,omitempty" doc:"With code quota_exceeded: the quota that refused the request."`
}

// QuotaDetail names an exceeded per-user quota and the numbers behind it.
type QuotaDetail struct {
	Name      string  `json:"name" enum:"quotas.runningPerUser,quotas.sandboxesPerUser,quotas.diskGbPerUser,domain.maxDevHostsPerSandbox,domain.maxDevHostsPerUser" doc:"The quota's config key."`
	Limit     float64 `json:"limit" doc:"The quota, in unit."`
	Used      float64 `json:"used" doc:"What the user holds now, in unit."`
	Requested float64 `json:"requested" doc:"What the request needed, in unit."`
	Unit      string  `json:"unit" enum:"sandboxes,GiB,hosts"`
}

func (p *Problem) Error() string  { return p.Detail }
func (p *Problem) GetStatus() int { return p.Status }

// ContentType makes huma send problems as application/problem+json.
func (p *Problem) ContentType(ct string) string {
	if ct == "application/json" {
		return "application/problem+json"
	}
	return ct
}

var codeByStatus = map[int]string{
	http.StatusBadRequest:            "invalid_input",
	http.StatusUnauthorized:          "unauthenticated",
	http.StatusForbidden:             "forbidden",
	http.StatusMisdirectedRequest:    "misdirected",
	http.StatusNotFound:              "not_found",
	http.StatusMethodNotAllowed:      "method_not_allowed",
	http.StatusNotAcceptable:         "not_acceptable",
	http.StatusConflict:              "conflict",
	http.StatusRequestEntityTooLarge: "body_too_large",
	http.StatusUnsupportedMediaType:  "unsupported_media_type",
	http.StatusTooManyRequests:       "sandbox_limit",
	http.StatusServiceUnavailable:    "unavailable",
}

func newProblem(status int, code, detail string, errs ...error) *Problem {
	if code == "" {
		code = codeByStatus[status]
		if code == "" {
			code = "internal"
		}
	}
	p := &Problem{Type: "about:blank", Title: http.StatusText(status), Status: status, Code: code, Detail: detail}
	for _, e := range errs {
		if e == nil {
			continue
		}
		var d huma.ErrorDetailer
		if errors.As(e, &d) {
			p.Errors = append(p.Errors, d.ErrorDetail())
		} else {
			p.Errors = append(p.Errors, &huma.ErrorDetail{Message: e.Error()})
		}
	}
	return p
}

func init() {
	// huma reports schema violations as 422; our contract is 400 naming the field,
	// with the field's location folded into the detail so a CLI user sees it.
	huma.NewError = func(status int, msg string, errs ...error) huma.StatusError {
		if status == http.StatusUnprocessableEntity {
			status = http.StatusBadRequest
		}
		if status == http.StatusUnsupportedMediaType {
			return unsupportedMediaType()
		}
		p := newProblem(status, "", msg, errs...)
		if status == http.StatusBadRequest && len(p.Errors) > 0 {
			parts := make([]string, 0, len(p.Errors))
			for _, d := range p.Errors {
				loc := strings.TrimPrefix(d.Location, "body.")
				if loc != "" {
					parts = append(parts, loc+": "+d.Message)
				} else {
					parts = append(parts, d.Message)
				}
			}
			p.Detail = msg + ": " + strings.Join(parts, "; ")
		}
		return p
	}
	huma.NewErrorWithContext = func(_ huma.Context, status int, msg string, errs ...error) huma.StatusError {
		return huma.NewError(status, msg, errs...)
	}
}

// jsonBodyHint says how to send a JSON body, for the 415 answer.
const jsonBodyHint = "send the body as JSON, with Content-Type: application/json or none " +
	"(curl: --json '{...}', or -H 'Content-Type: application/json' -d '{...}'; plain -d sends a form)"

func unsupportedMediaType() *Problem {
	return newProblem(http.StatusUnsupportedMediaType, "unsupported_media_type", jsonBodyHint,
		&huma.ErrorDetail{Location: "header.Content-Type", Message: "must be application/json"})
}

// isJSONContentType accepts what the API reads as JSON: no content type
// (most API clients and curl without -d send none), application/json and
// any +json type.
func isJSONContentType(ct string) bool {
	if ct == "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// toProblem maps domain errors to HTTP problems. Unknown errors become a 500
// whose detail is generic: internals are logged, never sent.
func toProblem(ctx context.Context, log *slog.Logger, err error) error {
	var (
		fe       *sandbox.FieldError
		afe      *auth.FieldError
		conflict *store.ConflictError
		quota    *store.QuotaError
		p        *Problem
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &p):
		return p
	case errors.As(err, &fe):
		return newProblem(http.StatusBadRequest, "invalid_input", "validation failed: "+fe.Field+": "+fe.Message,
			&huma.ErrorDetail{Location: "body." + fe.Field, Message: fe.Message})
	case errors.As(err, &afe):
		return newProblem(http.StatusBadRequest, "invalid_input", "validation failed: "+afe.Field+": "+afe.Message,
			&huma.ErrorDetail{Location: "body." + afe.Field, Message: afe.Message})
	case errors.As(err, &conflict):
		return newProblem(http.StatusConflict, "conflict", conflictDetail(conflict))
	case errors.Is(err, store.ErrNotFound):
		return newProblem(http.StatusNotFound, "not_found", "sandbox not found")
	case errors.As(err, &quota):
		p := newProblem(http.StatusTooManyRequests, "quota_exceeded", quota.Error())
		p.Quota = &QuotaDetail{Name: quota.Quota, Unit: "sandboxes",
			Limit: float64(quota.Limit), Used: float64(quota.Used), Requested: float64(quota.Requested)}
		if quota.Quota == store.QuotaDisk {
			p.Quota.Unit = "GiB"
			p.Quota.Limit, p.Quota.Used, p.Quota.Requested = gib(quota.Limit), gib(quota.Used), gib(quota.Requested)
		}
		return p
	case errors.Is(err, store.ErrLimit):
		return newProblem(http.StatusTooManyRequests, "sandbox_limit", err.Error())
	case errors.Is(err, sandbox.ErrUnavailable):
		return newProblem(http.StatusServiceUnavailable, "unavailable", err.Error())
	case errors.Is(err, store.ErrExhausted):
		return newProblem(http.StatusServiceUnavailable, "subnet_exhausted", err.Error())
	case errors.Is(err, store.ErrDuplicate):
		// The wrapped text names rows and tables; the caller needs only the fact.
		log.InfoContext(ctx, "duplicate refused", "err", err)
		return newProblem(http.StatusConflict, "conflict", "already exists")
	case errors.Is(err, auth.ErrUnauthenticated):
		return newProblem(http.StatusUnauthorized, "unauthenticated", "authentication required")
	case errors.Is(err, auth.ErrForbidden):
		return newProblem(http.StatusForbidden, "forbidden", err.Error())
	case errors.Is(err, auth.ErrUnavailable):
		log.WarnContext(ctx, "access not verifiable", "err", err)
		return newProblem(http.StatusServiceUnavailable, "unavailable", "cannot verify your access with GitHub right now; try again shortly")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return newProblem(http.StatusServiceUnavailable, "unavailable", "request cancelled or timed out")
	default:
		log.ErrorContext(ctx, "request failed", "err", err)
		return newProblem(http.StatusInternalServerError, "internal", "internal error")
	}
}

// conflictDetail says why a sandbox's state refused an operation, in the
// words of the operation the caller asked for, and what to do about it.
func conflictDetail(e *store.ConflictError) string {
	id, cur := e.ID, string(e.Current)
	switch e.To {
	case store.StatusRunning:
		hint := ""
		switch e.Current {
		case store.StatusStopped:
			hint = "; start it first (atelier sandbox start " + id + ")"
		case store.StatusCreating, store.StatusStarting:
			hint = "; wait until it runs"
		case store.StatusError:
			hint = "; it failed (atelier sandbox get " + id + " says why): start it again or remove it"
		}
		return "sandbox " + id + " is " + cur + ", not running" + hint
	case store.StatusStopping:
		if e.Current == store.StatusStopped {
			return "sandbox " + id + " is already stopped"
		}
		return "cannot stop sandbox " + id + ": it is " + cur + "; only a running sandbox can be stopped"
	case store.StatusStarting:
		if e.Current == store.StatusRunning {
			return "sandbox " + id + " is already running"
		}
		return "cannot start sandbox " + id + ": it is " + cur + "; only a stopped or failed sandbox can be started"
	case store.StatusDestroying:
		return "cannot remove sandbox " + id + ": it is " + cur + "; wait until it settles"
	}
	return "sandbox " + id + " is " + cur + "; it cannot be " + string(e.To) + " now"
}

func gib(b int64) float64 { return float64(b) / (1 << 30) }
