package agent

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Host-only routes of the on-demand git credential path (see
// internal/guest/gitcred.go). They are not part of the agent routes the
// API documents: the manager's agent proxy never forwards them.
const (
	GitCredentialRequestsPath = "/git/credential/requests"
	GitCredentialAnswersPath  = "/git/credential/answers"
	GitCredentialHelperPath   = "/git/credential/helper"
)

// GitCredentialRequest is a guest git's question: a credential for
// protocol://host. ID is the agent's, for the answer.
type GitCredentialRequest struct {
	ID       string `json:"id,omitempty"`
	Protocol string `json:"protocol"`
	Host     string `json:"host"`
}

// GitCredentialRequests is what one long poll returns (possibly none).
type GitCredentialRequests struct {
	Requests []GitCredentialRequest `json:"requests"`
}

// GitCredentialAnswer answers request ID: a username and password, or an
// Error saying why none is given.
type GitCredentialAnswer struct {
	ID       string `json:"id,omitempty"`
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	Error    string `json:"error,omitempty"`
}

// GitCredentialAnswers is the body of POST /git/credential/answers.
type GitCredentialAnswers struct {
	Answers []GitCredentialAnswer `json:"answers"`
}

// GitCredentialHelper is the credential.helper value that runs the agent
// binary as git's helper.
type GitCredentialHelper struct {
	Helper string `json:"helper"`
}

// GitCredentialRequests waits up to wait for the guest's pending
// credential requests (an empty list when none came).
func (c *Client) GitCredentialRequests(ctx context.Context, wait time.Duration) ([]GitCredentialRequest, error) {
	var out GitCredentialRequests
	q := url.Values{"waitMs": {strconv.FormatInt(wait.Milliseconds(), 10)}}
	if err := c.do(ctx, http.MethodGet, GitCredentialRequestsPath, q, nil, &out); err != nil {
		return nil, err
	}
	return out.Requests, nil
}

// GitCredentialAnswer delivers answers to pending requests.
func (c *Client) GitCredentialAnswer(ctx context.Context, answers []GitCredentialAnswer) error {
	return c.do(ctx, http.MethodPost, GitCredentialAnswersPath, nil, GitCredentialAnswers{Answers: answers}, nil)
}

// GitCredentialHelper returns the credential.helper value for the guest's git.
func (c *Client) GitCredentialHelper(ctx context.Context) (string, error) {
	var out GitCredentialHelper
	if err := c.do(ctx, http.MethodGet, GitCredentialHelperPath, nil, nil, &out); err != nil {
		return "", err
	}
	return out.Helper, nil
}
