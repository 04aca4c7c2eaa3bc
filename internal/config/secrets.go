package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
)

// checkSecretMode checks the permissions of a file holding a secret (a
// token or a private key), as ssh does for its keys: a file others can
// write is refused (whoever can write it can replace the credential), one
// everybody can read is accepted with a warning. Group read is allowed, for
// a service group. The message names the file and the command that fixes
// it. A file that cannot be examined is left to the code that reads it,
// which names the problem.
//
// Windows has no such mode bits (os.Stat reports 0666 for every writable
// file), so nothing is checked there.
func checkSecretMode(p *problems, key, path string) {
	if path == "" || runtime.GOOS == "windows" {
		return
	}
	fi, err := os.Stat(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			p.add(key, "cannot check secret file: %v", err)
		}
		return
	}
	mode := fi.Mode().Perm()
	switch {
	case mode&0o022 != 0:
		p.add(key, "secret file %s is writable by %s (mode %04o): anyone who can write it can replace the credential; fix with: chmod 600 %s",
			path, whoMayWrite(mode), mode, path)
	case mode&0o004 != 0:
		p.warn(key, "secret file %s is readable by every user (mode %04o); fix with: chmod 600 %s", path, mode, path)
	}
}

// checkConfigMode refuses a configuration file that group or others may
// write, as ssh refuses such a config: whoever can write it decides which
// programs the agent runs, where it sends credentials, and whom the relay
// lets in. Reading is fine (it holds no secrets but what it names).
func checkConfigMode(p *problems, path string) {
	if path == "" || runtime.GOOS == "windows" {
		return
	}
	fi, err := os.Stat(path)
	if err != nil {
		return // load reports it
	}
	if mode := fi.Mode().Perm(); mode&0o022 != 0 {
		p.add("", "configuration file %s is writable by %s (mode %04o): anyone who can write it decides what this process runs and trusts; fix with: chmod go-w %s",
			path, whoMayWrite(mode), mode, path)
	}
}

func whoMayWrite(mode fs.FileMode) string {
	switch {
	case mode&0o022 == 0o022:
		return "group and others"
	case mode&0o002 != 0:
		return "others"
	default:
		return "group"
	}
}

// warn records a problem that does not stop the configuration from loading
// (see Relay.Warnings, Agent.Warnings).
func (p *problems) warn(key, format string, args ...any) {
	p.warnings = append(p.warnings, &Error{File: p.file, Key: key, Reason: fmt.Sprintf(format, args...)})
}
