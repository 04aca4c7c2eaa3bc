//go:build !linux

package httpfwd

import "syscall"

// hupWatcher is Linux's (see hupwatch_linux.go); elsewhere every watch is
// a goroutine.
type hupWatcher struct{}

func newHupWatcher() *hupWatcher { return &hupWatcher{} }

func (w *hupWatcher) add(*connState, syscall.RawConn) (int32, bool) { return 0, false }
func (w *hupWatcher) remove(int32, syscall.RawConn)                 {}
func (w *hupWatcher) stop()                                         {}

// watching reports -1: no socket is ever registered.
func (w *hupWatcher) watching() int { return -1 }
