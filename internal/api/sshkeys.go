package api

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"golang.org/x/crypto/ssh"

	"atelier/internal/store"
)

// minRSABits is the smallest RSA modulus accepted for SSH keys.
const minRSABits = 2048

// maxPublicKeyLen bounds an authorized_keys line (an RSA 16384-bit key is
// about 2.8 KB).
const maxPublicKeyLen = 8192

// sshKeyTypes are the accepted key types: Ed25519, ECDSA on the NIST curves,
// their FIDO security-key variants, and RSA of at least minRSABits. DSA and
// certificates are refused.
var sshKeyTypes = map[string]bool{
	ssh.KeyAlgoED25519:    true,
	ssh.KeyAlgoECDSA256:   true,
	ssh.KeyAlgoECDSA384:   true,
	ssh.KeyAlgoECDSA521:   true,
	ssh.KeyAlgoSKED25519:  true,
	ssh.KeyAlgoSKECDSA256: true,
	ssh.KeyAlgoRSA:        true,
}

type sshKeyView struct {
	ID          string     `json:"id"`
	Name        string     `json:"name"`
	Fingerprint string     `json:"fingerprint" doc:"SHA256:<unpadded base64>, as ssh-keygen -l prints it."`
	Type        string     `json:"type" doc:"Key type, e.g. ssh-ed25519."`
	CreatedAt   time.Time  `json:"createdAt"`
	ExpiresAt   *time.Time `json:"expiresAt" doc:"After this instant the key no longer opens SSH sessions; null: never."`
}

func newSSHKeyView(k store.SSHKey) sshKeyView {
	return sshKeyView{ID: k.ID, Name: k.Name, Fingerprint: k.Fingerprint, Type: k.Type, CreatedAt: k.CreatedAt, ExpiresAt: k.ExpiresAt}
}

type createSSHKeyInput struct {
	Body struct {
		_         struct{}   `json:"-" additionalProperties:"false"`
		Name      string     `json:"name" minLength:"1" maxLength:"100" doc:"What the key is, e.g. the laptop it lives on."`
		PublicKey string     `json:"publicKey" minLength:"1" maxLength:"8192" doc:"One authorized_keys line: type, base64 key and an optional comment (the contents of ~/.ssh/id_ed25519.pub)."`
		ExpiresAt *time.Time `json:"expiresAt,omitempty" doc:"Optional RFC 3339 instant in the future after which the key stops working."`
	}
}

// fieldProblem is a 400 naming the body field at fault.
func fieldProblem(field, msg string) *Problem {
	return newProblem(http.StatusBadRequest, "invalid_input", "validation failed: "+field+": "+msg,
		&huma.ErrorDetail{Location: "body." + field, Message: msg})
}

// parsePublicKey accepts exactly one authorized_keys line of an accepted
// type, without options (a stored "command=" or "from=" would mean nothing
// to the proxy and mislead whoever reads it).
func parsePublicKey(line string) (ssh.PublicKey, error) {
	line = strings.TrimSpace(line)
	if line == "" {
		return nil, errors.New("is empty")
	}
	if len(line) > maxPublicKeyLen {
		return nil, fmt.Errorf("is longer than %d bytes", maxPublicKeyLen)
	}
	if strings.HasPrefix(line, "-----BEGIN") {
		return nil, errors.New("looks like a private key: paste the public key (the .pub file) instead, and keep the private key secret")
	}
	if strings.ContainsAny(line, "\r\n") {
		return nil, errors.New("must be a single authorized_keys line")
	}
	key, _, options, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return nil, errors.New("is not an OpenSSH public key (expected \"ssh-ed25519 AAAA... comment\")")
	}
	if len(options) > 0 || len(strings.TrimSpace(string(rest))) > 0 {
		return nil, errors.New("must be a bare key: authorized_keys options are not supported")
	}
	if !sshKeyTypes[key.Type()] {
		return nil, fmt.Errorf("key type %s is not accepted; use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa of at least %d bits", key.Type(), minRSABits)
	}
	if key.Type() == ssh.KeyAlgoRSA {
		ck, ok := key.(ssh.CryptoPublicKey)
		if !ok {
			return nil, errors.New("unreadable RSA key")
		}
		rk, ok := ck.CryptoPublicKey().(*rsa.PublicKey)
		if !ok || rk.N.BitLen() < minRSABits {
			bits := 0
			if ok {
				bits = rk.N.BitLen()
			}
			return nil, fmt.Errorf("RSA key has %d bits; at least %d are required", bits, minRSABits)
		}
	}
	return key, nil
}

func (s *Server) registerSSHKeys() {
	tags := []string{"ssh keys"}
	huma.Register(s.api, huma.Operation{
		OperationID: "list-ssh-keys", Method: http.MethodGet, Path: "/api/ssh-keys", Tags: tags,
		Summary: "List your SSH public keys", Security: securityAuthed,
		Errors: []int{http.StatusUnauthorized},
	}, func(ctx context.Context, _ *struct{}) (*struct {
		Body struct {
			Keys []sshKeyView `json:"keys"`
		}
	}, error) {
		list, err := s.d.Store.ListSSHKeys(ctx, principal(ctx).User.ID)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		out := &struct {
			Body struct {
				Keys []sshKeyView `json:"keys"`
			}
		}{}
		out.Body.Keys = make([]sshKeyView, 0, len(list))
		for _, k := range list {
			out.Body.Keys = append(out.Body.Keys, newSSHKeyView(k))
		}
		return out, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "create-ssh-key", Method: http.MethodPost, Path: "/api/ssh-keys", Tags: tags,
		Summary: "Register an SSH public key", Security: securityAuthed, DefaultStatus: http.StatusCreated,
		Description: "The key opens `ssh <sandbox-id>@<ssh host> -p <port>` for your own sandboxes, until it is deleted " +
			"or expires; both take effect on the next connection.",
		Errors: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusConflict},
	}, func(ctx context.Context, in *createSSHKeyInput) (*struct{ Body sshKeyView }, error) {
		name := strings.TrimSpace(in.Body.Name)
		if name == "" {
			return nil, fieldProblem("name", "must not be blank")
		}
		key, err := parsePublicKey(in.Body.PublicKey)
		if err != nil {
			return nil, fieldProblem("publicKey", err.Error())
		}
		if in.Body.ExpiresAt != nil && !in.Body.ExpiresAt.After(time.Now()) {
			return nil, fieldProblem("expiresAt", "must be in the future")
		}
		fp := ssh.FingerprintSHA256(key)
		k, err := s.d.Store.CreateSSHKey(ctx, store.SSHKey{
			UserID: principal(ctx).User.ID, Name: name, Fingerprint: fp, Type: key.Type(),
			PublicKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))), ExpiresAt: in.Body.ExpiresAt,
		})
		if errors.Is(err, store.ErrDuplicate) {
			return nil, newProblem(http.StatusConflict, "conflict", "you already registered this key ("+fp+")")
		}
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		s.d.Log.InfoContext(ctx, "ssh key registered", "user_id", k.UserID, "key_id", k.ID, "fingerprint", fp)
		return &struct{ Body sshKeyView }{newSSHKeyView(k)}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "delete-ssh-key", Method: http.MethodDelete, Path: "/api/ssh-keys/{id}", Tags: tags,
		Summary: "Delete one of your SSH keys", Security: securityAuthed, DefaultStatus: http.StatusNoContent,
		Description: "New SSH connections with the key are refused at once; open sessions keep running.",
		Errors:      []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound},
	}, func(ctx context.Context, in *struct {
		ID string `path:"id" maxLength:"64" pattern:"^[A-Za-z0-9_-]+$"`
	}) (*struct{}, error) {
		uid := principal(ctx).User.ID
		if err := s.d.Store.DeleteSSHKey(ctx, uid, in.ID); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil, newProblem(http.StatusNotFound, "not_found", "ssh key not found")
			}
			return nil, toProblem(ctx, s.d.Log, err)
		}
		s.d.Log.InfoContext(ctx, "ssh key deleted", "user_id", uid, "key_id", in.ID)
		return nil, nil
	})
}
