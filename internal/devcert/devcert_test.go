package devcert

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"
)

func TestGenerate(t *testing.T) {
	tests := []struct {
		name    string
		hosts   []string
		verify  string // host name that must verify
		wantErr bool
	}{
		{name: "defaults ip", verify: "127.0.0.1"},
		{name: "defaults dns", verify: "localhost"},
		{name: "custom", hosts: []string{"relay.test", "10.0.0.1"}, verify: "relay.test"},
		{name: "empty host", hosts: []string{""}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, keyPEM, err := Generate(tt.hosts...)
			if tt.wantErr {
				if err == nil {
					t.Fatal("Generate succeeded, want error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
				t.Fatalf("key pair does not load: %v", err)
			}
			block, _ := pem.Decode(certPEM)
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if d := cert.NotAfter.Sub(cert.NotBefore); d != Validity {
				t.Errorf("validity %v, want %v", d, Validity)
			}
			// The certificate is its own CA: a pool holding it verifies it.
			pool := x509.NewCertPool()
			pool.AddCert(cert)
			if _, err := cert.Verify(x509.VerifyOptions{DNSName: tt.verify, Roots: pool, CurrentTime: time.Now()}); err != nil {
				t.Errorf("verify for %q: %v", tt.verify, err)
			}
			if _, err := cert.Verify(x509.VerifyOptions{DNSName: "other.example", Roots: pool}); err == nil {
				t.Error("certificate verified for a host it does not name")
			}
		})
	}
}

func TestCertificatePin(t *testing.T) {
	c1, pin1, err := Certificate()
	if err != nil {
		t.Fatal(err)
	}
	_, pin2, err := Certificate()
	if err != nil {
		t.Fatal(err)
	}
	if len(pin1) != 64 || pin1 == pin2 {
		t.Fatalf("pins %q and %q: want two distinct 64-hex-digit values", pin1, pin2)
	}
	if c1.Leaf == nil || c1.PrivateKey == nil {
		t.Fatal("certificate lacks leaf or key")
	}
}
