package api

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

const dssKey = "ssh-dss AAAAB3NzaC1kc3MAAACBAM+kNVHcgiSvc3lhyxKBghbfEi659FH9QawwCehoWaTIxILK2oO6iv8aiE8WkNKg4yyTp9/eu5c6QXpj9bN46JxI1GtrcRMFIMUPRuJcRHM6MeKdas1PylyVKR0LZKuQ5Q4+Tpd0kC0S8/8nwO/kxcIOxDuTgG/qW5ggZKr6SOg3AAAAFQCHSYutpwYYFRk8ErwVwEyr3YBQwQAAAIEAniypKXk6/JuA0Rb+CSJMcRmpkqFouXemvq1SjHEQaOmQYdYpv/FcaFtlpr3usKptaBrrXSmc5p4dQlOdycbwY1LobmcHGD99qn3TYPdbkbgCb+Tw9CjB3UcxYTwMiBKAcxo9YpYFxx9tNB0CsSXdbY5LuYjoglYsYY5EBXomcYgAAACBAMafUJCwJGAyZvhYjSXyUUUwiAKmB1xlLuj7pyWmW131TwLT+HCyETG7DhZr2BkcaymCzlB6mlsHC7p0aU04DJD8itAolr14E6fYVEcgrXKVPWJJ0YAPlYfucBADw3XRH8C+7g9/HoAz+5RKkDzJEwa4aT9+km/gYAvjzsvzeUqb"

func authorizedLine(t *testing.T, pub any, comment string) string {
	t.Helper()
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
	if comment != "" {
		line += " " + comment
	}
	return line
}

func TestParsePublicKey(t *testing.T) {
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	ec256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ed := authorizedLine(t, edPub, "me@laptop")

	signer, _ := ssh.NewSignerFromKey(edPriv)
	edKey, _ := ssh.NewPublicKey(edPub)
	cert := &ssh.Certificate{Key: edKey, CertType: ssh.UserCert, ValidPrincipals: []string{"me"}, ValidBefore: ssh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, signer); err != nil {
		t.Fatal(err)
	}
	certLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(cert)))

	for _, tc := range []struct {
		name, line, wantType, wantErr string
	}{
		{"ed25519 with comment", ed, ssh.KeyAlgoED25519, ""},
		{"ed25519 with newline", ed + "\n", ssh.KeyAlgoED25519, ""},
		{"ecdsa p256", authorizedLine(t, &ec256.PublicKey, ""), ssh.KeyAlgoECDSA256, ""},
		{"ecdsa p384", authorizedLine(t, &ec384.PublicKey, "x"), ssh.KeyAlgoECDSA384, ""},
		{"rsa 2048", authorizedLine(t, &rsa2048.PublicKey, "old"), ssh.KeyAlgoRSA, ""},
		{"rsa 1024", authorizedLine(t, &rsa1024.PublicKey, ""), "", "1024 bits"},
		{"dsa", dssKey, "", "ssh-dss is not accepted"},
		{"certificate", certLine, "", "is not accepted"},
		{"options", `command="/bin/false" ` + ed, "", "options are not supported"},
		{"two lines", ed + "\n" + ed, "", "single authorized_keys line"},
		{"private key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----", "", "private key"},
		{"garbage", "ssh-ed25519 not-base64!!", "", "not an OpenSSH public key"},
		{"blank", "   ", "", "is empty"},
		{"too long", "ssh-ed25519 " + strings.Repeat("A", maxPublicKeyLen), "", "longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := parsePublicKey(tc.line)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if k.Type() != tc.wantType {
				t.Errorf("type %s, want %s", k.Type(), tc.wantType)
			}
		})
	}
}
