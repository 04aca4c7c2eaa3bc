package benchmatrix

import (
	"bufio"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/mcptun/mcptun/internal/procs"
)

// Machine describes where the benchmark ran.
type Machine struct {
	CPUModel  string `json:"cpu_model"`
	Cores     int    `json:"cores"` // CPUs this process may use
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"` // toolchain that built the benchmark (and, via make, the binaries)
	OS        string `json:"os"`
	MemTotal  int64  `json:"mem_total_bytes,omitempty"`
	// LoadAvg is /proc/loadavg at the start: other work on the machine
	// shares the CPUs with the benchmark.
	LoadAvg string `json:"loadavg_at_start,omitempty"`
}

func readMachine(fs procFS) Machine {
	m := Machine{
		Cores:     runtime.NumCPU(),
		GoVersion: runtime.Version(),
		OS:        runtime.GOOS + "/" + runtime.GOARCH,
	}
	if b, err := os.ReadFile(filepath.Join(fs.Root, "cpuinfo")); err == nil {
		m.CPUModel = cpuModel(string(b))
	}
	if b, err := os.ReadFile(filepath.Join(fs.Root, "sys/kernel/osrelease")); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(filepath.Join(fs.Root, "meminfo")); err == nil {
		m.MemTotal, _ = procs.ParseKB(b, "MemTotal")
	}
	if b, err := os.ReadFile(filepath.Join(fs.Root, "loadavg")); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	return m
}

// cpuModel returns the first "model name" (x86) or "Model"/"CPU part"
// (arm) of /proc/cpuinfo.
func cpuModel(cpuinfo string) string {
	sc := bufio.NewScanner(strings.NewReader(cpuinfo))
	var fallback string
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "model name":
			return strings.TrimSpace(v)
		case "Model", "Hardware", "CPU part":
			if fallback == "" {
				fallback = strings.TrimSpace(v)
			}
		}
	}
	if fallback == "" {
		return "unknown"
	}
	return fallback
}
