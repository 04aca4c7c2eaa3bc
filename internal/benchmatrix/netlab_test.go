package benchmatrix

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The lab impairs real packets: a TCP round trip takes at least twice the
// one-way delay, about the asked share of UDP datagrams is lost, and Close
// leaves no namespace or device behind.
func TestNetLab(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ns := fmt.Sprintf("mcptunbenchtest-%d", os.Getpid())
	const delay = 5 * time.Millisecond
	lab, err := buildLab(ns, LinkConfig{Delay: delay, Loss: 0.2, Seed: 7})
	if err != nil && strings.Contains(err.Error(), "already configured") {
		t.Skipf("a lab is in use on this host: %v", err)
	}
	require.NoError(t, err)
	closed := false
	defer func() {
		if !closed {
			lab.Close()
		}
	}()
	t.Logf("link: %s", lab.Emulator)

	var tln net.Listener
	var uconn net.PacketConn
	require.NoError(t, inNetns(ns, func() error {
		var err error
		if tln, err = net.Listen("tcp", labNSAddr+":0"); err != nil {
			return err
		}
		uconn, err = net.ListenPacket("udp", labNSAddr+":0")
		return err
	}))
	defer tln.Close()
	defer uconn.Close()

	// TCP: an echo server inside, round trips from outside. TCP recovers
	// the lost packets; each round trip costs at least 2×delay.
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := tln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	})
	c, err := net.DialTimeout("tcp", tln.Addr().String(), 10*time.Second)
	require.NoError(t, err)
	buf := make([]byte, 1)
	minRTT := time.Hour
	for range 10 {
		t0 := time.Now()
		_, err := c.Write([]byte{'x'})
		require.NoError(t, err)
		require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Second)))
		_, err = io.ReadFull(c, buf)
		require.NoError(t, err)
		minRTT = min(minRTT, time.Since(t0))
	}
	c.Close()
	wg.Wait()
	assert.GreaterOrEqual(t, minRTT, 2*delay, "round trip through the lab")
	assert.Less(t, minRTT, 2*delay+50*time.Millisecond)

	// UDP: 2000 datagrams one way, about 20% lost. The reader runs
	// throughout so that socket buffer drops do not look like loss.
	out, err := net.Dial("udp", uconn.LocalAddr().String())
	require.NoError(t, err)
	defer out.Close()
	const sent = 2000
	received := make(chan int, 1)
	go func() {
		n := 0
		rb := make([]byte, 64)
		for {
			_ = uconn.SetReadDeadline(time.Now().Add(time.Second))
			if _, _, err := uconn.ReadFrom(rb); err != nil {
				break
			}
			n++
		}
		received <- n
	}()
	for i := range sent {
		_, err := fmt.Fprintf(out, "%d", i)
		require.NoError(t, err)
		if i%50 == 49 {
			time.Sleep(time.Millisecond) // pace the sender below the queues' limits
		}
	}
	got := <-received
	lost := float64(sent-got) / sent
	assert.InDelta(t, 0.2, lost, 0.05, "received %d of %d", got, sent)
	if to, _, ok := lab.Stats(); ok {
		assert.GreaterOrEqual(t, to.Packets, int64(sent))
		assert.Zero(t, to.Overflow)
	}

	root, _ := lab.devNames()
	require.NoError(t, lab.Close())
	closed = true
	_, err = os.Stat("/run/netns/" + ns)
	assert.True(t, os.IsNotExist(err), "namespace removed")
	_, err = os.Stat("/sys/class/net/" + root)
	assert.True(t, os.IsNotExist(err), "root-side device removed")
	require.NoError(t, lab.Close(), "Close twice")
}

func TestBuildLabRefusesExistingNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ns := fmt.Sprintf("mcptunbenchtest2-%d", os.Getpid())
	require.NoError(t, run("ip", "netns", "add", ns))
	defer func() { _ = run("ip", "netns", "del", ns) }()
	_, err := buildLab(ns, LinkConfig{Delay: time.Millisecond})
	assert.ErrorContains(t, err, "already exists")
}

// A lab whose owner was killed (here: a namespace named for a process that
// has exited, with a veth pair whose root end holds the lab's address, as a
// netem lab leaves it) does not stop the next lab: buildLab removes it.
// A namespace of a live owner is left alone.
func TestBuildLabRemovesStaleLab(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	stale := fmt.Sprintf("mcptunbenchtest-%d", dead.Process.Pid)
	live := fmt.Sprintf("mcptunbenchtest2-%d", os.Getpid())
	require.NoError(t, run("ip", "netns", "add", stale))
	defer func() {
		if _, err := os.Stat("/run/netns/" + stale); err == nil {
			_ = run("ip", "netns", "del", stale)
		}
	}()
	require.NoError(t, run("ip", "netns", "add", live))
	defer func() { _ = run("ip", "netns", "del", live) }()
	crashed := &netLab{NS: stale}
	root, inside := crashed.devNames()
	require.NoError(t, run("ip", "link", "add", root, "type", "veth", "peer", "name", inside, "netns", stale))
	require.NoError(t, run("ip", "addr", "add", labRootAddr+labPrefix, "dev", root))

	ns := fmt.Sprintf("mcptunbenchtest-%d", os.Getpid())
	lab, err := buildLab(ns, LinkConfig{Delay: time.Millisecond})
	require.NoError(t, err, "a crashed lab's leftovers must not stop the next one")
	require.NoError(t, lab.Close())
	_, err = os.Stat("/run/netns/" + stale)
	assert.True(t, os.IsNotExist(err), "the stale namespace is removed")
	_, err = os.Stat("/sys/class/net/" + root)
	assert.True(t, os.IsNotExist(err), "the stale root-side device is gone with it")
	_, err = os.Stat("/run/netns/" + live)
	assert.NoError(t, err, "a live owner's namespace is left alone")
}
