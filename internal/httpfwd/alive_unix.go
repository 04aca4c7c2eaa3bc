//go:build unix

package httpfwd

import "syscall"

const canPeek = true

// peekIdle peeks at an idle socket without blocking: alive if there is
// nothing to read yet (EAGAIN); dead at its end (0 bytes), on bytes, or on
// an error such as a reset.
func peekIdle(rc syscall.RawConn) bool {
	alive := false
	var one [1]byte
	err := rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err == syscall.EINTR {
				continue
			}
			alive = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
			return true
		}
	})
	return err == nil && alive
}
