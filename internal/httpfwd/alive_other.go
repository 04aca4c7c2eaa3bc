//go:build !unix

package httpfwd

import "syscall"

// canPeek is false where a socket cannot be peeked at without blocking:
// idle connections are then probed with a past read deadline (which
// finds only what the runtime already knows) and by their age.
const canPeek = false

type socketPeek struct{}

func newSocketPeek(syscall.RawConn) *socketPeek { return nil }

func (p *socketPeek) idle() bool { return true }
