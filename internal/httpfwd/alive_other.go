//go:build !unix

package httpfwd

import "syscall"

// canPeek is false where a socket cannot be peeked at without blocking:
// idle connections are then probed with a past read deadline (which
// finds only what the runtime already knows) and by their age.
const canPeek = false

func peekIdle(syscall.RawConn) bool { return true }
