package benchmatrix

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The lossy-link lab: a network namespace joined to the root namespace by
// a point-to-point link on a private /30 whose every packet is delayed and
// randomly dropped in each direction. The relay listens on the root side,
// the agent (and its HTTP upstream) run inside the namespace, so every
// tunnel packet crosses the impaired link and nothing else does.
//
// The impairment is the kernel's tc netem on a veth pair where the kernel
// has sch_netem. Where it has not (many VM and container kernels ship
// without it), a TUN device on each side and an emulator in this process
// do netem's job in user space: read a packet from one side, drop it with
// the loss probability or hand it to the other side after the delay. Both
// impair real packets below the transports, so TCP retransmits and QUIC
// recovers exactly as they would on a bad network.

const (
	labRootAddr = "10.231.0.1"
	labNSAddr   = "10.231.0.2"
	labPrefix   = "/30"
)

// LinkConfig is the impairment applied to each direction of the link.
type LinkConfig struct {
	Delay time.Duration // one way
	Loss  float64       // probability of dropping a packet, 0..1
	// Limit is the queue of delayed packets per direction; a packet
	// arriving at a full queue is dropped. netem's default of 1000 drops
	// far more than the loss asked for as soon as a sender bursts, so the
	// default here is 10000 (15 MB of 1500-byte packets).
	Limit int
	Seed  uint64 // seeds the user-space emulator's loss decisions
}

// ErrNotRoot means the lab cannot be built: namespaces need root.
var ErrNotRoot = errors.New("lossy lab: needs root (network namespaces, tc, TUN devices)")

// netLab is a built lab; Close removes everything it made.
type netLab struct {
	NS       string // network namespace name
	Emulator string // how the link is impaired, for the report
	// NetemError is why kernel netem was not used, if it was not.
	NetemError string

	rootDev string
	emu     *linkEmu
}

// run runs a command and names it and its output on failure.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// buildLab makes namespace ns and the impaired link to it. It fails
// rather than touch a namespace or address that already exists, but for
// the leftovers of a lab whose owner died (see removeStaleLabs).
func buildLab(ns string, cfg LinkConfig) (lab *netLab, err error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("lossy lab: %s not found (apt-get install -y iproute2): %w", tool, err)
		}
	}
	if _, err := removeStaleLabs(); err != nil {
		return nil, fmt.Errorf("lossy lab: %w", err)
	}
	if _, err := os.Stat("/run/netns/" + ns); err == nil {
		return nil, fmt.Errorf("lossy lab: network namespace %s already exists", ns)
	}
	if out, _ := exec.Command("ip", "-4", "addr", "show").CombinedOutput(); strings.Contains(string(out), " "+labRootAddr+"/") {
		return nil, fmt.Errorf("lossy lab: %s is already configured on this host; remove it or the lab that left it", labRootAddr)
	}
	if cfg.Limit <= 0 {
		cfg.Limit = 10000
	}
	if err := run("ip", "netns", "add", ns); err != nil {
		return nil, fmt.Errorf("lossy lab: %w", err)
	}
	lab = &netLab{NS: ns}
	defer func() {
		if err != nil {
			lab.Close()
			lab = nil
		}
	}()
	if err := run("ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
		return nil, fmt.Errorf("lossy lab: %w", err)
	}

	netemErr := lab.tryNetem(cfg)
	if netemErr == nil {
		lab.Emulator = fmt.Sprintf("kernel tc netem on a veth pair: delay %s, loss %g%% each way", cfg.Delay, cfg.Loss*100)
		return lab, nil
	}
	lab.NetemError = netemErr.Error()
	if err := lab.buildTUN(cfg); err != nil {
		return nil, fmt.Errorf("lossy lab: tc netem unavailable (%v) and the user-space emulator failed: %w", netemErr, err)
	}
	lab.Emulator = fmt.Sprintf("user-space emulator on TUN devices (tc netem unavailable on this kernel): delay %s, loss %g%% each way, queue %d packets",
		cfg.Delay, cfg.Loss*100, cfg.Limit)
	return lab, nil
}

// staleLabName matches the namespaces our labs are named with: the
// harness's (.ci/bench.sh: mcptunbench-PID) and the tests'
// (mcptunbenchtest-PID, mcptunbenchtest2-PID), PID being the owner's.
var staleLabName = regexp.MustCompile(`^mcptunbench(?:test2?)?-([0-9]+)$`)

// removeStaleLabs deletes the namespaces of labs whose owner was killed
// before it could clean up (SIGKILL, a crashed test binary): a veth
// pair's root end keeps the lab's address while its namespace exists, so
// every later lab on the host would refuse to start. A namespace is stale
// only if its owner's PID is gone, no process runs inside it, and no live
// process names it on its command line (a benchmatrix still running its
// lossy section after its harness died). It returns the names removed.
func removeStaleLabs() ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list network namespaces: %w", err)
	}
	var removed []string
	for _, e := range entries {
		m := staleLabName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		ns := e.Name()
		if _, err := os.Stat("/proc/" + m[1]); err == nil {
			continue // the owner lives
		}
		if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err != nil || strings.TrimSpace(string(out)) != "" {
			continue // in use, or cannot tell
		}
		if namedByLiveProcess(ns) {
			continue
		}
		// The root end first: the kernel tears a deleted namespace (and
		// the pair with it) down asynchronously, while deleting one end of
		// a pair removes both at once, and with them the address.
		lab := &netLab{NS: ns}
		if root, _ := lab.devNames(); root != "" {
			if _, err := os.Stat("/sys/class/net/" + root); err == nil {
				if err := run("ip", "link", "del", root); err != nil {
					return removed, fmt.Errorf("remove stale lab: %w", err)
				}
			}
		}
		if err := run("ip", "netns", "del", ns); err != nil {
			return removed, fmt.Errorf("remove stale lab: %w", err)
		}
		removed = append(removed, ns)
	}
	return removed, nil
}

// namedByLiveProcess reports whether a live process has word as one of
// its arguments.
func namedByLiveProcess(word string) bool {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		b, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(b), "\x00") {
			if arg == word {
				return true
			}
		}
	}
	return false
}

// devNames derives interface names (at most 15 bytes) from the namespace.
func (l *netLab) devNames() (root, inside string) {
	id := fmt.Sprintf("%x", uint32(hashString(l.NS)))
	return "mtb" + id + "r", "mtb" + id + "n"
}

func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := range len(s) {
		h = (h ^ uint64(s[i])) * 1099511628211
	}
	return h
}

// tryNetem builds the link as a veth pair with netem on both ends.
func (l *netLab) tryNetem(cfg LinkConfig) error {
	root, inside := l.devNames()
	if err := run("ip", "link", "add", root, "type", "veth", "peer", "name", inside, "netns", l.NS); err != nil {
		return err
	}
	l.rootDev = root // deleting the namespace deletes the pair; this is for failures before
	netem := []string{"root", "netem", "delay", cfg.Delay.String(), "loss", fmt.Sprintf("%g%%", cfg.Loss*100), "limit", fmt.Sprint(cfg.Limit)}
	steps := [][]string{
		append([]string{"qdisc", "add", "dev", root}, netem...),
		append([]string{"-n", l.NS, "qdisc", "add", "dev", inside}, netem...),
	}
	for _, s := range steps {
		if err := run("tc", s...); err != nil {
			_ = run("ip", "link", "del", root)
			l.rootDev = ""
			return err
		}
	}
	return l.addresses(root, inside)
}

func (l *netLab) addresses(root, inside string) error {
	for _, s := range [][]string{
		{"addr", "add", labRootAddr + labPrefix, "dev", root},
		{"link", "set", root, "up"},
		{"-n", l.NS, "addr", "add", labNSAddr + labPrefix, "dev", inside},
		{"-n", l.NS, "link", "set", inside, "up"},
	} {
		if err := run("ip", s...); err != nil {
			return err
		}
	}
	return nil
}

// buildTUN builds the link as two TUN devices joined by the emulator.
// The devices exist only while this process holds their descriptors, so
// they vanish with it whatever way it ends.
func (l *netLab) buildTUN(cfg LinkConfig) error {
	root, inside := l.devNames()
	a, err := openTUN(root)
	if err != nil {
		return err
	}
	b, err := openTUNInNetns(l.NS, inside)
	if err != nil {
		a.Close()
		return err
	}
	l.emu = startLink(a, b, cfg)
	return l.addresses(root, inside)
}

// Close stops the emulator and removes the namespace (and with it the
// devices inside). Safe to call more than once.
func (l *netLab) Close() error {
	if l == nil {
		return nil
	}
	if l.emu != nil {
		l.emu.Close()
		l.emu = nil
	}
	var err error
	if l.NS != "" {
		if _, serr := os.Stat("/run/netns/" + l.NS); serr == nil {
			err = run("ip", "netns", "del", l.NS)
		}
	}
	if l.rootDev != "" {
		// Normally gone with the namespace's end of the pair.
		if _, serr := os.Stat("/sys/class/net/" + l.rootDev); serr == nil {
			_ = run("ip", "link", "del", l.rootDev)
		}
		l.rootDev = ""
	}
	return err
}

// LinkStats counts what the emulator did to one direction.
type LinkStats struct {
	Packets  int64 `json:"packets"`
	Bytes    int64 `json:"bytes"`
	Largest  int64 `json:"largest_packet"`
	Dropped  int64 `json:"dropped"`  // by the loss probability
	Overflow int64 `json:"overflow"` // by a full queue
}

func (l *netLab) Stats() (toNS, fromNS LinkStats, ok bool) {
	if l == nil || l.emu == nil {
		return LinkStats{}, LinkStats{}, false
	}
	return l.emu.stats[0].snapshot(), l.emu.stats[1].snapshot(), true
}

// openTUN creates TUN device name (IFF_TUN|IFF_NO_PI) in the calling
// thread's network namespace and returns its descriptor, non-blocking so
// that Close interrupts a Read.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tun %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tun %s: TUNSETIFF: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tun:"+name), nil
}

// openTUNInNetns creates a TUN device inside namespace ns.
func openTUNInNetns(ns, name string) (*os.File, error) {
	var f *os.File
	err := inNetns(ns, func() error {
		var err error
		f, err = openTUN(name)
		return err
	})
	if err != nil && f != nil {
		f.Close()
		f = nil
	}
	return f, err
}

// inNetns runs fn on a locked OS thread that has entered namespace ns.
// Descriptors fn creates (sockets, devices) stay in ns when used from any
// thread later. If the thread cannot get back to its namespace it stays
// locked and is destroyed with its goroutine, so no other goroutine ever
// runs in ns.
func inNetns(ns string, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		unlock := true
		defer func() {
			if unlock {
				runtime.UnlockOSThread()
			}
		}()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			ch <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		err = fn()
		if rerr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); rerr != nil {
			unlock = false
			err = errors.Join(err, fmt.Errorf("setns back: %w", rerr))
		}
		ch <- err
	}()
	return <-ch
}

// linkEmu moves packets between two TUN devices, impaired as LinkConfig
// says, one goroutine pair per direction.
type linkEmu struct {
	a, b  *os.File
	wg    sync.WaitGroup
	done  chan struct{}
	stats [2]dirStats // a→b, b→a
}

type dirStats struct{ packets, bytes, largest, dropped, overflow atomic.Int64 }

func (d *dirStats) snapshot() LinkStats {
	return LinkStats{Packets: d.packets.Load(), Bytes: d.bytes.Load(), Largest: d.largest.Load(),
		Dropped: d.dropped.Load(), Overflow: d.overflow.Load()}
}

type delayed struct {
	due  time.Time
	data []byte
}

func startLink(a, b *os.File, cfg LinkConfig) *linkEmu {
	l := &linkEmu{a: a, b: b, done: make(chan struct{})}
	l.wg.Go(func() { l.pump(a, b, cfg, rand.New(rand.NewPCG(cfg.Seed, 1)), &l.stats[0]) })
	l.wg.Go(func() { l.pump(b, a, cfg, rand.New(rand.NewPCG(cfg.Seed, 2)), &l.stats[1]) })
	return l
}

// pump reads packets from src until it is closed and delivers the
// survivors to dst after the delay, in order.
func (l *linkEmu) pump(src, dst *os.File, cfg LinkConfig, rng *rand.Rand, st *dirStats) {
	q := make(chan delayed, cfg.Limit)
	var wg sync.WaitGroup
	wg.Go(func() {
		for p := range q {
			if d := time.Until(p.due); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-l.done:
					t.Stop()
					continue // drain without delivering
				}
			}
			_, _ = dst.Write(p.data)
		}
	})
	buf := make([]byte, 65536)
	for {
		n, err := src.Read(buf)
		if err != nil {
			break
		}
		st.packets.Add(1)
		st.bytes.Add(int64(n))
		if int64(n) > st.largest.Load() {
			st.largest.Store(int64(n)) // one writer per direction
		}
		if rng.Float64() < cfg.Loss {
			st.dropped.Add(1)
			continue
		}
		p := delayed{due: time.Now().Add(cfg.Delay), data: append([]byte(nil), buf[:n]...)}
		select {
		case q <- p:
		default:
			st.overflow.Add(1)
		}
	}
	close(q)
	wg.Wait()
}

// Close stops both directions and closes the devices.
func (l *linkEmu) Close() {
	close(l.done)
	l.a.Close()
	l.b.Close()
	l.wg.Wait()
}
