package main

import (
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/mcptun/mcptun/internal/config"
)

// configHelp is the part of relay --help and agent --help that lists the
// configuration keys; it is generated from the config structs, so it
// cannot drift from what the loader accepts.
func configHelp(file string, keys []config.Key) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Configuration keys of %s (--config). Each can also come from the environment:\n", file)
	fmt.Fprintf(&b, "MCPTUN_ and the key in capitals with dots as underscores (MCPTUN_LOG_LEVEL=debug);\n")
	fmt.Fprintf(&b, "secrets only from *_file keys or the environment. A commented example of every key:\n")
	fmt.Fprintf(&b, "examples/%s in the source tree (https://github.com/mcptun/mcptun/tree/main/examples,\n", file)
	fmt.Fprintf(&b, "with kubernetes/, compose/ and systemd/ deployments), and the README's %s table.\n\n", file)
	width := 0
	for _, k := range keys {
		width = max(width, len(k.Path))
	}
	for _, k := range keys {
		fmt.Fprintf(&b, "  %-*s  %s\n", width, k.Path, k.Type)
	}
	return b.String()
}

// versionString is the version set at build time (make build: git
// describe), or else what the Go toolchain recorded: the module version
// for go install m@v, the commit for a build from a checkout.
func versionString() string {
	if version != "dev" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return version
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "-dirty"
			}
		}
	}
	if rev != "" {
		return fmt.Sprintf("dev-%.12s%s", rev, modified)
	}
	return version
}
