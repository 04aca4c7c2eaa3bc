package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestFrameRoundTrip(t *testing.T) {
	var b bytes.Buffer
	h := hello{Type: typeHello, Version: 1, Agent: "lab", Token: "t", Servers: []OfferedServer{{Name: "git", Kind: KindStdio}}}
	if err := writeFrame(&b, h); err != nil {
		t.Fatal(err)
	}
	if err := writeFrame(&b, answer{Type: typeWelcome, Version: 1}); err != nil {
		t.Fatal(err)
	}
	body, err := readFrame(&b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeHello(body)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Errorf("hello %+v, want %+v", got, h)
	}
	body, err = readFrame(&b)
	if err != nil {
		t.Fatal(err)
	}
	if a, err := decodeAnswer(body); err != nil || a.Type != typeWelcome {
		t.Errorf("answer %+v, %v", a, err)
	}
	if _, err := readFrame(&b); err != io.EOF {
		t.Errorf("read at end: %v, want io.EOF", err)
	}
}

func TestReadFrameErrors(t *testing.T) {
	hdr := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	tests := []struct {
		name     string
		in       []byte
		badFrame bool
		want     string
	}{
		{"empty frame", hdr(0), true, "empty frame"},
		{"too large", hdr(MaxFrameSize + 1), true, "exceeds"},
		{"huge", hdr(1 << 31), true, "exceeds"},
		{"short header", []byte{0, 0}, false, "unexpected EOF"},
		{"short body", append(hdr(10), "abc"...), false, "unexpected EOF"},
		{"header only", hdr(5), false, "unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readFrame(bytes.NewReader(tt.in))
			if err == nil {
				t.Fatal("readFrame succeeded")
			}
			if errors.Is(err, errBadFrame) != tt.badFrame || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v (bad frame %v), want %q (bad frame %v)", err, errors.Is(err, errBadFrame), tt.want, tt.badFrame)
			}
		})
	}
	if _, err := readFrame(bytes.NewReader(append(hdr(MaxFrameSize), make([]byte, MaxFrameSize)...))); err != nil {
		t.Errorf("frame of exactly MaxFrameSize: %v", err)
	}
	if err := writeFrame(io.Discard, strings.Repeat("x", MaxFrameSize)); err == nil {
		t.Error("writeFrame accepted an oversized frame")
	}
}

func TestDecodeHello(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		name, in, code, want string
	}{
		{"ok", `{"type":"hello","version":1,"agent":"lab","token":"t","servers":[{"name":"a","kind":"http"}],"extra":true}`, "", ""},
		{"version before all else", `{"type":"hello","version":7,"agent":"!!"}`, CodeUnsupportedVersion, "version 1, agent sent 7"},
		{"no version", `{"type":"hello","agent":"lab","token":"t"}`, CodeUnsupportedVersion, "sent 0"},
		{"string version", `{"type":"hello","version":"1"}`, CodeBadHello, "integer version"},
		{"array", `[]`, CodeBadHello, "JSON object"},
		{"type", `{"type":"hi","version":1}`, CodeBadHello, `type "hi"`},
		{"name too long", `{"type":"hello","version":1,"agent":"` + long + `","token":"t"}`, CodeBadHello, "invalid agent name"},
		{"token type", `{"type":"hello","version":1,"agent":"lab","token":5}`, CodeBadHello, "malformed hello"},
		{"long token", `{"type":"hello","version":1,"agent":"lab","token":"` + strings.Repeat("t", maxTokenLen+1) + `"}`, CodeBadHello, "token longer"},
		{"server name", `{"type":"hello","version":1,"agent":"lab","token":"t","servers":[{"name":"","kind":"http"}]}`, CodeBadHello, "servers[0]"},
		{"instance and conn", `{"type":"hello","version":1,"agent":"lab","token":"t","instance":"5f0c","conn":3}`, "", ""},
		{"long instance", `{"type":"hello","version":1,"agent":"lab","token":"t","instance":"` + strings.Repeat("i", maxInstanceLen+1) + `"}`, CodeBadHello, "instance id longer"},
		{"negative conn", `{"type":"hello","version":1,"agent":"lab","token":"t","conn":-1}`, CodeBadHello, "conn -1 out of range"},
		{"huge conn", `{"type":"hello","version":1,"agent":"lab","token":"t","conn":99999}`, CodeBadHello, "conn 99999 out of range"},
		{"conn not a number", `{"type":"hello","version":1,"agent":"lab","token":"t","conn":"1"}`, CodeBadHello, "malformed hello"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeHello([]byte(tt.in))
			if tt.code == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var ref *RefusedError
			if !errors.As(err, &ref) || ref.Code != tt.code || !strings.Contains(ref.Message, tt.want) {
				t.Errorf("error %v, want code %s mentioning %q", err, tt.code, tt.want)
			}
		})
	}
}

func TestHelloLogValueHidesToken(t *testing.T) {
	var b bytes.Buffer
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "hello", hello{Agent: "lab", Token: "s3cret"})
	if strings.Contains(b.String(), "s3cret") || !strings.Contains(b.String(), "lab") {
		t.Errorf("log line %q", b.String())
	}
}

func TestRefusedErrorText(t *testing.T) {
	tests := []struct {
		err  RefusedError
		want string
	}{
		{RefusedError{Code: CodeBadCredential, Message: "m"}, "tunnel: relay refused: bad credential: m"},
		{RefusedError{Code: CodeUnsupportedVersion}, "tunnel: relay refused: unsupported protocol version"},
		{RefusedError{Code: "new_code", Message: "m"}, `tunnel: relay refused: code "new_code": m`},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("%+v: %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestTruncate(t *testing.T) {
	if got := truncate("héllo", 2); got != "h…" {
		t.Errorf("truncate split a rune: %q", got)
	}
	if got := truncate("abc", 3); got != "abc" {
		t.Errorf("truncate(abc, 3) = %q", got)
	}
}

func TestBackoffDelay(t *testing.T) {
	const lo, hi = 500 * time.Millisecond, 30 * time.Second
	tests := []struct {
		n    int
		u    float64
		want time.Duration
	}{
		{0, 0, lo},
		{0, 0.5, 750 * time.Millisecond},       // range [0.5 s, 1 s)
		{1, 0.5, 1250 * time.Millisecond},      // range [0.5 s, 2 s)
		{2, 0.999, 3996500 * time.Microsecond}, // range [0.5 s, 4 s)
		{5, 0.5, 15250 * time.Millisecond},     // ceiling 32 s is capped at 30 s
		{5, 0, lo},
		{6, 0.999, 29970500 * time.Microsecond},
		{100, 0.5, 15250 * time.Millisecond}, // no overflow at large n
		{1000, 1, hi},
		{3, -1, lo},
	}
	for _, tt := range tests {
		got := backoffDelay(tt.n, lo, hi, tt.u)
		if got != tt.want {
			t.Errorf("backoffDelay(%d, u=%v) = %v, want %v", tt.n, tt.u, got, tt.want)
		}
		if got < lo || got > hi {
			t.Errorf("backoffDelay(%d, u=%v) = %v outside [%v, %v]", tt.n, tt.u, got, lo, hi)
		}
	}
	if got := backoffDelay(3, time.Second, time.Second, 0.5); got != time.Second {
		t.Errorf("equal bounds: %v", got)
	}
}

// FuzzReadFrame feeds arbitrary bytes to the relay's hello path: it must
// never panic, never allocate past the limit, and a hello it accepts must
// survive re-encoding unchanged.
func FuzzReadFrame(f *testing.F) {
	var b bytes.Buffer
	writeFrame(&b, hello{Type: typeHello, Version: 1, Agent: "lab", Token: "t", Servers: []OfferedServer{{Name: "git", Kind: KindStdio}}})
	f.Add(b.Bytes())
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte(`{"type":"hello"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		body, err := readFrame(bytes.NewReader(data))
		if err != nil {
			return
		}
		if len(body) == 0 || len(body) > MaxFrameSize {
			t.Fatalf("frame body of %d bytes", len(body))
		}
		checkHello(t, body)
		decodeAnswer(body)
	})
}

// FuzzDecodeHello targets the JSON layer directly.
func FuzzDecodeHello(f *testing.F) {
	f.Add([]byte(`{"type":"hello","version":1,"agent":"lab","token":"t","servers":[{"name":"a","kind":"http"}]}`))
	f.Add([]byte(`{"type":"hello","version":1,"agent":"lab","token":"t","servers":null}`))
	f.Add([]byte(`{"type":"hello","version":2}`))
	f.Add([]byte(`{"type":"hello","version":1,"agent":"lab","auth":"ed25519","public_key":"` + strings.Repeat("A", 43) + `=","signature":"` + strings.Repeat("A", 86) + `==","servers":[]}`))
	f.Add([]byte(`{"type":"hello","version":1,"agent":"lab","auth":"certificate","servers":[]}`))
	f.Add([]byte(`{"type":"hello","version":1,"agent":"lab","auth":"certificate","public_key":"","servers":[]}`))
	f.Add([]byte(`{"type":"hello","version":1,"agent":"lab","auth":"token","token":"t","signature":null}`))
	f.Add([]byte(`{"type":"hello","version":1,"agent":"lab","token":"t","instance":"5f0c","conn":1}`))
	f.Add([]byte(`{"type":"refused","code":"bad_hello","message":"\u00e9"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		checkHello(t, body)
		if a, err := decodeAnswer(body); err == nil && a.Type == "" {
			t.Fatal("answer without a type accepted")
		}
	})
}

func checkHello(t *testing.T, body []byte) {
	h, err := decodeHello(body)
	if err != nil {
		var ref *RefusedError
		if !errors.As(err, &ref) || ref.Code == "" || ref.Message == "" {
			t.Fatalf("decodeHello error %v is not a complete refusal", err)
		}
		if len(ref.Message) > 1024 {
			t.Fatalf("refusal message of %d bytes", len(ref.Message))
		}
		return
	}
	if !ValidName(h.Agent) || h.validateCredential() != nil || h.Version != ProtocolVersion {
		t.Fatalf("accepted invalid hello %+v", h)
	}
	var b bytes.Buffer
	if err := writeFrame(&b, h); err != nil {
		// Re-encoding can only grow the body by escaping; a 64 KiB body
		// may then not fit.
		return
	}
	again, err := readFrame(&b)
	if err != nil {
		t.Fatal(err)
	}
	h2, err := decodeHello(again)
	if err != nil {
		t.Fatalf("re-encoded hello refused: %v", err)
	}
	if !reflect.DeepEqual(h, h2) {
		t.Fatalf("hello changed on re-encoding: %+v vs %+v", h, h2)
	}
}
