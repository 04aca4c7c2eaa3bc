//go:build unix

package httpfwd

import "syscall"

const canPeek = true

// socketPeek peeks at an idle socket without blocking. One per
// connection, its method value made once: a probe allocates nothing.
type socketPeek struct {
	rc    syscall.RawConn
	fn    func(fd uintptr) bool
	alive bool
	one   [1]byte
}

func newSocketPeek(rc syscall.RawConn) *socketPeek {
	p := &socketPeek{rc: rc}
	p.fn = p.peek
	return p
}

func (p *socketPeek) peek(fd uintptr) bool {
	for {
		_, _, err := syscall.Recvfrom(int(fd), p.one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err == syscall.EINTR {
			continue
		}
		p.alive = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
		return true
	}
}

// idle reports the socket alive if there is nothing to read yet (EAGAIN);
// dead at its end (0 bytes), on bytes, or on an error such as a reset.
func (p *socketPeek) idle() bool {
	p.alive = false
	return p.rc.Read(p.fn) == nil && p.alive
}
