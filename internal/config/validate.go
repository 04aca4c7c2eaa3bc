package config

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// namePattern restricts agent, server and client names to what is safe in a
// URL path segment, a log field and a metric label.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func checkName(p *problems, key, name string) {
	if !namePattern.MatchString(name) {
		p.add(key, "invalid name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
}

// checkNamed checks one entry's name: valid, and not already in seen.
func checkNamed(p *problems, key, kind, name string, seen map[string]bool) {
	checkName(p, key, name)
	if seen[name] {
		p.add(key, "duplicate %s name %q", kind, name)
	}
	seen[name] = true
}

func checkHostPort(p *problems, key, addr string) {
	if addr == "" {
		p.add(key, "required (host:port)")
		return
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		p.add(key, "invalid address %q: %v", addr, err)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		p.add(key, "invalid port %q", port)
	}
}

// DecodeSHA256Hex parses a hex SHA-256 digest.
func DecodeSHA256Hex(s string) ([32]byte, bool) {
	var out [32]byte
	if len(s) != 64 {
		return out, false
	}
	if _, err := hex.Decode(out[:], []byte(strings.ToLower(s))); err != nil {
		return out, false
	}
	return out, true
}

func checkSHA256(p *problems, key, s string) {
	if _, ok := DecodeSHA256Hex(s); !ok {
		p.add(key, "must be the 64 hex characters of a SHA-256 digest (make one with: mcptun token new)")
	}
}

func checkURL(p *problems, key, raw string) {
	u, err := url.Parse(raw)
	if err != nil {
		p.add(key, "invalid URL: %v", err)
		return
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		p.add(key, "URL scheme must be http or https, not %q", u.Scheme)
	}
	if u.Host == "" {
		p.add(key, "URL %q has no host", raw)
	}
	if u.User != nil {
		p.add(key, "URL must not carry credentials; use headers")
	}
}

// resolve makes a relative path relative to the config file's directory, so
// a config works whatever the process's working directory is.
func resolve(configPath, p string) string {
	if p == "" || filepath.IsAbs(p) || configPath == "" {
		return p
	}
	return filepath.Join(filepath.Dir(configPath), p)
}

func oneOf(p *problems, key, val string, allowed ...string) {
	for _, a := range allowed {
		if val == a {
			return
		}
	}
	p.add(key, "must be one of %s, not %q", strings.Join(allowed, ", "), val)
}

// checkOrigins validates a list of browser origins ("*" or scheme://host[:port]).
func checkOrigins(p *problems, key string, origins []string) {
	for i, o := range origins {
		if o != "*" && !strings.Contains(o, "://") {
			p.add(fmt.Sprintf("%s[%d]", key, i), "origin %q must look like https://host[:port]", o)
		}
	}
}
