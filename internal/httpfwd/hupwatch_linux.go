//go:build linux

package httpfwd

import (
	"errors"
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// hupWatcher watches the sockets of client connections whose exchange
// waits on its upstream (an SSE stream between events, most of a GET
// stream's life) for the client's next move, all in one goroutine: an
// epoll instance reports a socket that became readable or was shut down
// (EPOLLIN, EPOLLRDHUP). The portable watch is a goroutine per connection
// blocked in a one-byte read, whose stack (the runtime starts it at 4 KiB)
// was a quarter of what an open GET stream cost the relay. On an event
// the connection gets that goroutine after all, which reads at once: EOF
// means the client left, a byte is a pipelined request, kept — so both
// kinds of watch decide alike.
//
// The goroutine runs only while some socket is registered; it is owned by
// the ConnServer, which stops it (stop) once its connections are done.
type hupWatcher struct {
	mu      sync.Mutex
	epfd    int // -1 until first used
	wakefd  int // eventfd that wakes the goroutine to look at count
	entries map[int32]*connState
	next    int32
	running bool
	stopped bool
	done    chan struct{} // closed when the running goroutine returns
}

func newHupWatcher() *hupWatcher {
	return &hupWatcher{epfd: -1, wakefd: -1, entries: make(map[int32]*connState)}
}

// wakeID is the epoll data of the eventfd; connection ids are positive.
const wakeID = 0

// add registers cs's socket; it reports false (watch the portable way) if
// the watcher is stopped or the socket cannot be registered.
func (w *hupWatcher) add(cs *connState, rc syscall.RawConn) (int32, bool) {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return 0, false
	}
	if w.epfd < 0 {
		if err := w.open(); err != nil {
			w.mu.Unlock()
			return 0, false
		}
	}
	id := w.newID()
	w.entries[id] = cs
	if !w.running {
		w.running = true
		w.done = make(chan struct{})
		go w.run(w.epfd, w.wakefd, w.done)
	}
	epfd := w.epfd
	w.mu.Unlock()

	var cerr error
	err := rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: id}
		cerr = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err != nil || cerr != nil {
		w.forget(id)
		return 0, false
	}
	return id, true
}

// remove unregisters a socket add registered (a closed one the kernel
// removed already: Control then fails, which is fine).
func (w *hupWatcher) remove(id int32, rc syscall.RawConn) {
	_ = rc.Control(func(fd uintptr) {
		_ = unix.EpollCtl(w.epfdNow(), unix.EPOLL_CTL_DEL, int(fd), nil)
	})
	w.forget(id)
}

func (w *hupWatcher) epfdNow() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.epfd
}

// forget drops id and wakes the goroutine when nothing is left to watch,
// so that it ends.
func (w *hupWatcher) forget(id int32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.entries[id]; !ok {
		return
	}
	delete(w.entries, id)
	if len(w.entries) == 0 && w.running {
		w.wake()
	}
}

func (w *hupWatcher) newID() int32 {
	for {
		w.next++
		if w.next <= wakeID {
			w.next = wakeID + 1
		}
		if _, used := w.entries[w.next]; !used {
			return w.next
		}
	}
}

func (w *hupWatcher) open() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("httpfwd: epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return fmt.Errorf("httpfwd: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeID}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(wakefd)
		return fmt.Errorf("httpfwd: epoll_ctl: %w", err)
	}
	w.epfd, w.wakefd = epfd, wakefd
	return nil
}

// wake makes the goroutine look at the entries again; w.mu is held.
func (w *hupWatcher) wake() {
	one := [8]byte{1}
	_, _ = unix.Write(w.wakefd, one[:])
}

// run waits for events until nothing is registered (or the watcher
// stopped), handing each connection with one to its portable watch.
func (w *hupWatcher) run(epfd, wakefd int, done chan struct{}) {
	defer close(done)
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(epfd, events, -1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			// Not expected with a valid epfd; the connections registered
			// fall back to their own watch.
			w.mu.Lock()
			pending := w.drainLocked()
			w.running = false
			w.mu.Unlock()
			for id, cs := range pending {
				cs.hangUp(id)
			}
			return
		}
		var ready []*connState
		var ids []int32
		w.mu.Lock()
		for _, ev := range events[:max(n, 0)] {
			if ev.Fd == wakeID {
				var b [8]byte
				_, _ = unix.Read(wakefd, b[:])
				continue
			}
			if cs, ok := w.entries[ev.Fd]; ok {
				delete(w.entries, ev.Fd)
				ready = append(ready, cs)
				ids = append(ids, ev.Fd)
			}
		}
		last := len(w.entries) == 0 || w.stopped
		if last {
			w.running = false
		}
		w.mu.Unlock()
		for i, cs := range ready {
			cs.hangUp(ids[i])
		}
		if last {
			return
		}
	}
}

// drainLocked empties the entries, returning them.
func (w *hupWatcher) drainLocked() map[int32]*connState {
	pending := w.entries
	w.entries = make(map[int32]*connState)
	return pending
}

// stop ends the goroutine and closes the watcher's descriptors; the
// ConnServer calls it once its connections are done.
func (w *hupWatcher) stop() {
	w.mu.Lock()
	w.stopped = true
	done := w.done
	if w.running {
		w.wake()
	}
	w.mu.Unlock()
	if done != nil {
		<-done
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.epfd >= 0 {
		_ = unix.Close(w.epfd)
		_ = unix.Close(w.wakefd)
		w.epfd, w.wakefd = -1, -1
	}
}

// watching reports how many sockets are registered (for tests).
func (w *hupWatcher) watching() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.entries)
}
