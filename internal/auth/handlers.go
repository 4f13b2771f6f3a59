package auth

import (
	"encoding/json"
	"errors"
	"net/http"

	"atelier/internal/store"
)

// LogoutHandler ends the dashboard session: POST /auth/logout.
func (s *Service) LogoutHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		if c, err := r.Cookie(s.SessionCookieName()); err == nil && c.Value != "" {
			if claims, err := s.parseJWT(c.Value); err == nil {
				// A cross-site logout is refused like any other cross-site write.
				if !s.sameOrigin(r) {
					writeProblem(w, http.StatusForbidden, "forbidden", "request origin is not the dashboard")
					return
				}
				err := s.st.RevokeSession(r.Context(), claims.SessionID, s.now())
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					s.log.Error("logout: revoke session", "err", err)
					writeProblem(w, http.StatusInternalServerError, "internal", "could not revoke the session")
					return
				}
			}
		}
		http.SetCookie(w, s.clearSessionCookie())
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNoContent)
	})
}

type meResponse struct {
	ID        string `json:"id"`
	Login     string `json:"login"`
	Name      string `json:"name"`
	AvatarURL string `json:"avatarUrl"`
	Method    Method `json:"method"`
	Scope     Scope  `json:"scope"`
	Admin     bool   `json:"admin"`
}

// MeHandler reports the caller: GET /auth/me.
func (s *Service) MeHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		p, err := s.Authenticate(r)
		switch {
		case errors.Is(err, ErrUnauthenticated):
			writeProblem(w, http.StatusUnauthorized, "unauthenticated", "sign in to continue")
			return
		case errors.Is(err, ErrForbidden):
			writeProblem(w, http.StatusForbidden, "forbidden", "request origin is not the dashboard")
			return
		case errors.Is(err, ErrUnavailable):
			writeProblem(w, http.StatusServiceUnavailable, "unavailable", "cannot verify your access with GitHub right now")
			return
		case err != nil:
			s.log.Error("me: authenticate", "err", err)
			writeProblem(w, http.StatusInternalServerError, "internal", "could not check the session")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(meResponse{
			ID: p.User.ID, Login: p.User.Login, Name: p.User.Name, AvatarURL: p.User.AvatarURL, Method: p.Method,
			Scope: p.Scope, Admin: p.Admin,
		})
	})
}

type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Code   string `json:"code"`
	Detail string `json:"detail,omitempty"`
}

func writeProblem(w http.ResponseWriter, status int, code, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(problem{
		Type: "about:blank", Title: http.StatusText(status), Status: status, Code: code, Detail: detail,
	})
}
