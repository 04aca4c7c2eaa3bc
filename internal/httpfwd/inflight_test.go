package httpfwd

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestInflight(t *testing.T) {
	f := NewInflight()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.Wait(ctx); err != nil {
		t.Fatalf("Wait with nothing in progress: %v", err)
	}
	for range 2 {
		if !f.Enter() {
			t.Fatal("Enter refused before Drain")
		}
	}
	f.Drain()
	if !f.Draining() {
		t.Error("Draining() = false after Drain")
	}
	if f.Enter() {
		t.Error("Enter admitted after Drain")
	}
	if n := f.Count(); n != 2 {
		t.Fatalf("Count() = %d, want 2 (a refused Enter counts nothing)", n)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancelShort()
	if err := f.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with two in progress: %v, want DeadlineExceeded", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- f.Wait(ctx) }()
	f.Leave()
	f.Leave()
	if err := <-waited; err != nil {
		t.Fatalf("Wait after the last Leave: %v", err)
	}
	if n := f.Count(); n != 0 {
		t.Fatalf("Count() = %d, want 0", n)
	}
}
