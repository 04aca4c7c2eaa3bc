package benchmatrix

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/procs"
)

// A fake proc tree exercises readMachine's file plumbing.
func TestReadMachine(t *testing.T) {
	root := t.TempDir()
	write := func(rel, content string) {
		p := filepath.Join(root, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
	write("cpuinfo", "processor\t: 0\nmodel name\t: Test CPU @ 3GHz\n")
	write("sys/kernel/osrelease", "6.1.0-test\n")
	write("meminfo", "MemTotal:       1024 kB\n")
	write("loadavg", "0.50 0.40 0.30 1/100 4242\n")
	mach := readMachine(procs.FS{Root: root})
	assert.Equal(t, "Test CPU @ 3GHz", mach.CPUModel)
	assert.Equal(t, "Linux 6.1.0-test", mach.Kernel)
	assert.Equal(t, int64(1<<20), mach.MemTotal)
	assert.Equal(t, "0.50 0.40 0.30", mach.LoadAvg)
}

func TestCPUModel(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n", "AMD EPYC"},
		{"processor\t: 0\nCPU part\t: 0xd0c\nModel\t: Raspberry Pi 4\n", "0xd0c"},
		{"", "unknown"},
	} {
		assert.Equal(t, tc.want, cpuModel(tc.in))
	}
}
