package agentkey

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
)

func TestPublicRoundTrip(t *testing.T) {
	k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	pub := k.Public().(ed25519.PublicKey)
	s := FormatPublic(pub)
	if !strings.HasPrefix(s, Prefix) || len(s) != len(Prefix)+44 {
		t.Fatalf("FormatPublic = %q", s)
	}
	b64 := s[len(Prefix):]
	url := strings.NewReplacer("+", "-", "/", "_").Replace(strings.TrimRight(b64, "="))
	for _, in := range []string{s, " " + s + "\n", Prefix + strings.TrimRight(b64, "="), Prefix + url, Prefix + hex.EncodeToString(pub)} {
		got, err := ParsePublic(in)
		if err != nil || !bytes.Equal(got, pub) {
			t.Errorf("ParsePublic(%q) = %x, %v", in, got, err)
		}
	}
}

func TestParsePublicErrors(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", "does not start with"},
		{"AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl", "does not start with"},
		{"ssh-ed25519 AAAA", "does not start with"},
		{Prefix + "AAAA", "3 bytes"},
		{Prefix + "!!!!", "neither base64 nor hex"},
		{Prefix + strings.Repeat("zz", 32), "neither base64 nor hex"},
		{Prefix + strings.Repeat("A", 200), "bytes, want 32"},
	} {
		_, err := ParsePublic(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParsePublic(%q) error %v, want one mentioning %q", tt.in, err, tt.want)
		}
	}
}

func TestPrivateRoundTrip(t *testing.T) {
	k, _ := Generate()
	b, err := MarshalPrivate(k)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParsePrivate(b)
	if err != nil || !k.Equal(got) {
		t.Fatalf("ParsePrivate = %v, %v", got, err)
	}
}

func TestParsePrivateErrors(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	ecPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER})
	sec1, _ := x509.MarshalECPrivateKey(ec)
	for _, tt := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "no PEM block"},
		{"garbage", []byte("hello"), "no PEM block"},
		{"sec1", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), `"EC PRIVATE KEY"`},
		{"not der", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2}}), "not a PKCS#8"},
		{"ecdsa", ecPEM, "not an Ed25519 key"},
	} {
		_, err := ParsePrivate(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one mentioning %q", tt.name, err, tt.want)
		}
	}
	if _, err := ParsePrivate(ecPEM); !errors.Is(err, ErrNotEd25519) {
		t.Errorf("ecdsa key: %v does not wrap ErrNotEd25519", err)
	}
}

// FuzzParsePublic: whatever relay.yaml holds, ParsePublic returns a
// 32-byte key or an error, and a key it returns formats back to one it
// reads the same.
func FuzzParsePublic(f *testing.F) {
	k, _ := Generate()
	f.Add(FormatPublic(k.Public().(ed25519.PublicKey)))
	f.Add(Prefix + strings.Repeat("ab", 32))
	f.Add(Prefix + "====")
	f.Add("ed25519")
	f.Fuzz(func(t *testing.T, s string) {
		pub, err := ParsePublic(s)
		if err != nil {
			if len(err.Error()) > 1024 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
			return
		}
		if len(pub) != 32 {
			t.Fatalf("key of %d bytes", len(pub))
		}
		again, err := ParsePublic(FormatPublic(pub))
		if err != nil || !bytes.Equal(again, pub) {
			t.Fatalf("round trip: %x, %v", again, err)
		}
	})
}
