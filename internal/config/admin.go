package config

import (
	"net"
	"strings"
)

// Admin is the admin listener of either role (admin: in relay.yaml and
// agent.yaml): health, readiness, metrics, the status API and page. It is
// off unless Listen is set.
type Admin struct {
	// Listen is the admin listener's host:port, e.g. 127.0.0.1:9090.
	Listen string `mapstructure:"listen"`
	// TokenFile holds the bearer token /metrics, /api/status and the
	// status page's data ask for. Required when Listen is not a loopback
	// address: the status tells who uses what.
	TokenFile string `mapstructure:"token_file"`
	// Token is read from TokenFile (or MCPTUN_ADMIN_TOKEN).
	Token string `mapstructure:"token"`
}

// validate checks admin.* and reads the token file.
func (a *Admin) validate(p *problems, path string) {
	if a.Listen == "" {
		if a.TokenFile != "" {
			p.add("admin.token_file", "set without admin.listen: there is no admin listener to protect")
		}
		return
	}
	checkHostPort(p, "admin.listen", a.Listen)
	switch {
	case a.Token != "" && a.TokenFile != "":
		p.add("admin.token_file", "set either token_file or %s, not both", envName("admin.token"))
	case a.TokenFile != "":
		a.TokenFile = resolve(path, a.TokenFile)
		checkSecretMode(p, "admin.token_file", a.TokenFile)
		a.Token = readSecret(p, "admin.token_file", a.TokenFile)
	case a.Token == "" && !loopbackListen(a.Listen):
		p.add("admin.token_file", "required: admin.listen %q is not a loopback address, and the admin listener tells who uses what; set admin.token_file (make one with: mcptun token new), or listen on 127.0.0.1", a.Listen)
	}
}

// loopbackListen reports whether addr (host:port) listens on loopback
// only: an empty host or 0.0.0.0 listens everywhere.
func loopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
