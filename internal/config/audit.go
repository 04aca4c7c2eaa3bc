package config

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Audit is agent.yaml's audit section: the audit trail (internal/audit).
// Off unless File is set.
type Audit struct {
	File string `mapstructure:"file"`
	// Arguments is "hash" (default: the SHA-256 of the arguments' canonical
	// JSON) or "full" (the arguments themselves).
	Arguments string `mapstructure:"arguments"`
	// MaxSize is the size at which the file is rotated: bytes, or a
	// number with KiB, MiB, GiB (or KB, MB, GB). Default "100MiB".
	MaxSize string `mapstructure:"max_size"`
	// MaxFiles is how many rotated files are kept. Default 10.
	MaxFiles int `mapstructure:"max_files"`
	// MaxSizeBytes is MaxSize parsed.
	MaxSizeBytes int64 `mapstructure:"-"`
}

// Audit defaults.
const (
	DefaultAuditMaxSize  = "100MiB"
	DefaultAuditMaxFiles = 10
)

func (a *Audit) validate(p *problems, path string) {
	if a.File == "" {
		if a.Arguments != "" || a.MaxSize != "" || a.MaxFiles != 0 {
			p.add("audit.file", "required when other audit keys are set: the file to write the audit trail to")
		}
		return
	}
	a.File = resolve(path, a.File)
	if fi, err := os.Stat(filepath.Dir(a.File)); err != nil {
		p.add("audit.file", "directory of %s: %v", a.File, err)
	} else if !fi.IsDir() {
		p.add("audit.file", "%s is not a directory", filepath.Dir(a.File))
	}
	if a.Arguments == "" {
		a.Arguments = "hash"
	}
	oneOf(p, "audit.arguments", a.Arguments, "hash", "full")
	if a.MaxSize == "" {
		a.MaxSize = DefaultAuditMaxSize
	}
	n, ok := parseSize(a.MaxSize)
	switch {
	case !ok:
		p.add("audit.max_size", "%q is not a size: want bytes, or a number with KiB, MiB or GiB (\"100MiB\")", a.MaxSize)
	case n < 4096:
		p.add("audit.max_size", "%q is too small: at least 4KiB", a.MaxSize)
	}
	a.MaxSizeBytes = n
	switch {
	case a.MaxFiles == 0:
		a.MaxFiles = DefaultAuditMaxFiles
	case a.MaxFiles < 0:
		p.add("audit.max_files", "must not be negative, not %d (0 or unset: %d)", a.MaxFiles, DefaultAuditMaxFiles)
	}
}

// parseSize reads "100MiB", "512KB", "1048576".
func parseSize(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000}, {"B", 1}} {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(num), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, false
	}
	return n * mult, true
}
