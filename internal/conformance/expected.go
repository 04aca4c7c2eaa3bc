package conformance

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
)

// LoadExpectedFailures reads the server scenarios listed in an
// expected-failures file, in the suite's own --expected-failures format:
//
//	# comment
//	server:
//	  - scenario-name
//	client:
//	  - ignored
//
// Only this subset of YAML is accepted; anything else is an error naming the
// line, so that a typo cannot silently empty the list.
func LoadExpectedFailures(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("conformance: expected failures: %w", err)
	}
	list, err := ParseExpectedFailures(b)
	if err != nil {
		return nil, fmt.Errorf("conformance: expected failures %s: %w", path, err)
	}
	return list, nil
}

// ParseExpectedFailures parses the format LoadExpectedFailures reads.
func ParseExpectedFailures(b []byte) ([]string, error) {
	var out []string
	section := ""
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "":
		case !strings.HasPrefix(line, " ") && strings.HasSuffix(trimmed, ":"):
			section = strings.TrimSuffix(trimmed, ":")
			if section != "server" && section != "client" {
				return nil, fmt.Errorf("line %d: unknown section %q (want server: or client:)", n, section)
			}
		case strings.HasPrefix(trimmed, "- "):
			name := strings.TrimSpace(strings.TrimPrefix(trimmed, "- "))
			if section == "" {
				return nil, fmt.Errorf("line %d: entry %q outside a section", n, name)
			}
			if name == "" || strings.ContainsAny(name, " \t:\"'") {
				return nil, fmt.Errorf("line %d: malformed scenario name %q", n, name)
			}
			if section == "server" {
				if seen[name] {
					return nil, fmt.Errorf("line %d: %s listed twice", n, name)
				}
				seen[name] = true
				out = append(out, name)
			}
		default:
			return nil, fmt.Errorf("line %d: cannot parse %q", n, sc.Text())
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}
