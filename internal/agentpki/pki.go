// Package agentpki is the mutual TLS between the manager and agents it
// reaches over a network (the kubernetes runtime's pod IPs), where there is
// no vsock or unix socket whose reachability already proves who is talking.
//
// The manager keeps a small CA. Each sandbox gets a server certificate whose
// only name is ServerName(id), issued at every boot and handed to that
// sandbox alone; the manager dials with a client certificate whose subject
// is ManagerCN. Each side pins the other's identity, not just the CA:
//   - the manager verifies the agent's certificate for ServerName(id) of the
//     sandbox it means to reach, so a pod answering on a reused or spoofed IP
//     with another sandbox's certificate is refused;
//   - the agent requires a client certificate for client auth with subject
//     ManagerCN, so a sandbox cannot present its own (server-only)
//     certificate to another sandbox's agent.
package agentpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// ManagerCN is the subject common name of the manager's client certificate.
const ManagerCN = "atelier-manager"

// File names inside a sandbox's credential directory (its Secret's keys).
const (
	CAFile   = "ca.crt"
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
)

// Lifetimes. An agent certificate is re-issued at every start of its
// sandbox; the manager's client certificate is made in memory and renewed
// a day before it expires.
var (
	AgentCertTTL   = 365 * 24 * time.Hour
	ManagerCertTTL = 30 * 24 * time.Hour
	caTTL          = 10 * 365 * 24 * time.Hour
)

// ServerName is the one DNS name in sandbox id's agent certificate.
func ServerName(id string) string { return id + ".agent.atelier.internal" }

// CA issues the agents' and the manager's certificates.
type CA struct {
	cert *x509.Certificate
	der  []byte
	key  crypto.Signer

	mu     sync.Mutex
	client *tls.Certificate
}

// LoadOrCreate reads the CA from dir (ca.crt, ca.key) or makes one there.
// dir is created 0700 and the key written 0600: whoever reads it can
// impersonate the manager to every agent.
func LoadOrCreate(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	certPEM, cerr := os.ReadFile(certPath)
	keyPEM, kerr := os.ReadFile(keyPath)
	if cerr == nil && kerr == nil {
		if fi, err := os.Stat(keyPath); err == nil && fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(keyPath, 0o600); err != nil {
				return nil, fmt.Errorf("tighten %s: %w", keyPath, err)
			}
		}
		return Parse(certPEM, keyPEM)
	}
	if !errors.Is(cerr, os.ErrNotExist) && cerr != nil {
		return nil, fmt.Errorf("read agent CA: %w", cerr)
	}
	if !errors.Is(kerr, os.ErrNotExist) && kerr != nil {
		return nil, fmt.Errorf("read agent CA key: %w", kerr)
	}
	if (cerr == nil) != (kerr == nil) {
		return nil, fmt.Errorf("agent CA in %s: one of ca.crt and ca.key is missing; restore it or remove both (every running sandbox then needs a restart)", dir)
	}
	certPEM, keyPEM, err := NewCAPEM()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent CA dir: %w", err)
	}
	if err := writeExcl(keyPath, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeExcl(certPath, certPEM, 0o644); err != nil {
		return nil, err
	}
	return Parse(certPEM, keyPEM)
}

func writeExcl(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// NewCAPEM makes a fresh CA certificate and key (`atelier init
// --kubernetes` puts them in a Secret every replica mounts).
func NewCAPEM() (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("agent CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "atelier agent CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("agent CA certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("agent CA key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// Parse builds a CA from PEM.
func Parse(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, errors.New("agent CA: ca.crt holds no PEM certificate")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("agent CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("agent CA: ca.crt is not a CA certificate")
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, errors.New("agent CA: ca.key holds no PEM key")
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("agent CA key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("agent CA key: not a signing key")
	}
	return &CA{cert: cert, der: cb.Bytes, key: signer}, nil
}

// CertPEM is the CA certificate, which agents trust for client certificates.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.der})
}

// Pool is a pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}

func (ca *CA) issue(tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial()
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// IssueAgent makes sandbox id's agent certificate: server auth only, one
// DNS name, ServerName(id).
func (ca *CA) IssueAgent(id string) (certPEM, keyPEM []byte, err error) {
	return ca.IssueAgentAt(id, time.Now())
}

// IssueAgentAt is IssueAgent on the clock of a caller that keeps its own
// (the runtime's renewal, which tests run a year ahead).
func (ca *CA) IssueAgentAt(id string, now time.Time) (certPEM, keyPEM []byte, err error) {
	c, k, err := ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: ServerName(id)},
		DNSNames:    []string{ServerName(id)},
		NotBefore:   now.Add(-5 * time.Minute),
		NotAfter:    now.Add(AgentCertTTL),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("issue agent certificate of %s: %w", id, err)
	}
	return c, k, nil
}

// clientCert is the manager's client certificate, made on first use and
// again within a day of its expiry; it never touches the disk.
func (ca *CA) clientCert() (*tls.Certificate, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if ca.client != nil && time.Until(ca.client.Leaf.NotAfter) > 24*time.Hour {
		return ca.client, nil
	}
	now := time.Now()
	c, k, err := ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: ManagerCN},
		NotBefore:   now.Add(-5 * time.Minute),
		NotAfter:    now.Add(ManagerCertTTL),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("issue manager client certificate: %w", err)
	}
	cert, err := tls.X509KeyPair(c, k)
	if err != nil {
		return nil, err
	}
	ca.client = &cert
	return ca.client, nil
}

// ClientConfig is the manager's TLS config for dialing sandbox id's agent:
// its client certificate, and the agent's verified against the CA for
// ServerName(id) only.
func (ca *CA) ClientConfig(id string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    ca.Pool(),
		ServerName: ServerName(id),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return ca.clientCert()
		},
	}
}

// ServerConfig is the agent's TLS config over the credential directory dir
// (ca.crt, tls.crt, tls.key, as the sandbox's Secret is mounted). The
// certificate is re-read when its file changes, so a Secret the manager
// updates takes effect without a restart; the client must present a
// certificate from the CA for client auth whose subject is ManagerCN.
func ServerConfig(dir string) (*tls.Config, error) {
	caPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("agent TLS: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("agent TLS: %s holds no certificate", filepath.Join(dir, CAFile))
	}
	kp := &keyPair{dir: dir}
	if _, err := kp.get(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		ClientAuth:     tls.RequireAndVerifyClientCert,
		ClientCAs:      pool,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return kp.get() },
		VerifyPeerCertificate: func(_ [][]byte, chains [][]*x509.Certificate) error {
			// The standard verification has run (CA, client auth usage,
			// validity); the subject pins the manager.
			if len(chains) == 0 || len(chains[0]) == 0 || chains[0][0].Subject.CommonName != ManagerCN {
				return errors.New("agent TLS: client certificate is not the manager's")
			}
			return nil
		},
	}, nil
}

// keyPair caches the agent's certificate, reloading it when a file's
// modification time changes (a Secret update swaps the mounted files).
type keyPair struct {
	dir    string
	mu     sync.Mutex
	cert   *tls.Certificate
	certMT time.Time
	keyMT  time.Time
}

func (k *keyPair) get() (*tls.Certificate, error) {
	cp, kp := filepath.Join(k.dir, CertFile), filepath.Join(k.dir, KeyFile)
	ci, err := os.Stat(cp)
	if err != nil {
		return nil, fmt.Errorf("agent TLS: %w", err)
	}
	ki, err := os.Stat(kp)
	if err != nil {
		return nil, fmt.Errorf("agent TLS: %w", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cert != nil && ci.ModTime().Equal(k.certMT) && ki.ModTime().Equal(k.keyMT) {
		return k.cert, nil
	}
	c, err := tls.LoadX509KeyPair(cp, kp)
	if err != nil {
		if k.cert != nil {
			// Mid-swap: keep serving the one we have.
			return k.cert, nil
		}
		return nil, fmt.Errorf("agent TLS: %w", err)
	}
	k.cert, k.certMT, k.keyMT = &c, ci.ModTime(), ki.ModTime()
	return k.cert, nil
}
