// Package config loads and validates the relay and agent configuration files.
//
// Files are YAML, read through viper. Every key can be overridden from the
// environment: the key path upper-cased, dots replaced by underscores and
// prefixed with MCPTUN_ (relay.token_file → MCPTUN_RELAY_TOKEN_FILE). List
// keys (servers, agents, clients) take a YAML or JSON list from the
// environment. Secrets never sit inline in a file: they come from a file named
// by a *_file key or from the environment.
//
// Every problem is reported as an *Error naming the file, the key and the
// reason; Load returns all of them at once so an operator fixes a file in one
// pass.
package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// EnvPrefix prefixes every environment override.
const EnvPrefix = "MCPTUN"

// Error is one configuration problem.
type Error struct {
	File   string // the config file, or "" when there was none
	Key    string // dotted key path, e.g. "clients[0].allow[1]"
	Reason string
}

func (e *Error) Error() string {
	file := e.File
	if file == "" {
		file = "(environment)"
	}
	if e.Key == "" {
		return fmt.Sprintf("config %s: %s", file, e.Reason)
	}
	return fmt.Sprintf("config %s: %s: %s", file, e.Key, e.Reason)
}

// problems collects Errors for one file.
type problems struct {
	file     string
	errs     []error
	warnings []*Error // see warn
}

func (p *problems) add(key, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Key: key, Reason: fmt.Sprintf(format, args...)})
}

func (p *problems) err() error { return errors.Join(p.errs...) }

// load reads path (may be "" to use only the environment) into out, which
// must be a pointer to a struct with mapstructure tags.
func load(path string, out any, secretKeys ...string) error {
	v := viper.New()
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	// AutomaticEnv only consults keys viper already knows; bind every leaf
	// of the struct so an override works even when the file omits the key.
	for _, key := range leafKeys(reflect.TypeOf(out).Elem(), "") {
		if err := v.BindEnv(key); err != nil {
			return fmt.Errorf("config: bind %s: %w", key, err)
		}
	}
	if path != "" {
		v.SetConfigFile(path)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			var pe viper.ConfigParseError
			if errors.As(err, &pe) {
				return &Error{File: path, Reason: "invalid YAML: " + pe.Error()}
			}
			return &Error{File: path, Reason: err.Error()}
		}
	}
	for _, key := range secretKeys {
		if path != "" && v.InConfig(key) {
			return &Error{File: path, Key: key, Reason: fmt.Sprintf("secrets must not be written inline; use %s_file or the environment variable %s",
				key, envName(key))}
		}
	}
	err := v.UnmarshalExact(out, viper.DecodeHook(mapstructure.ComposeDecodeHookFunc(
		mapstructure.StringToTimeDurationHookFunc(),
		yamlStringHook,
	)))
	if err != nil {
		return &Error{File: path, Reason: cleanDecodeError(err)}
	}
	return nil
}

// yamlStringHook lets the environment carry lists and maps: a string where
// a slice or map is expected is parsed as YAML (JSON is valid YAML).
func yamlStringHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.String {
		return data, nil
	}
	if to.Kind() != reflect.Slice && to.Kind() != reflect.Map {
		return data, nil
	}
	s := data.(string)
	if to.Kind() == reflect.Slice && to.Elem().Kind() == reflect.String && !strings.HasPrefix(strings.TrimSpace(s), "[") {
		// A plain word list: "dc1/* */wiki".
		return strings.Fields(s), nil
	}
	var out any
	if err := yaml.Unmarshal([]byte(s), &out); err != nil {
		return nil, fmt.Errorf("parse %q as YAML: %w", s, err)
	}
	return out, nil
}

// leafKeys lists the dotted viper keys of the scalar, list and map fields of
// t (not descending into lists).
func leafKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("mapstructure"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		key := prefix + tag
		if f.Type.Kind() == reflect.Struct && f.Type.String() != "time.Duration" {
			keys = append(keys, leafKeys(f.Type, key+".")...)
			continue
		}
		keys = append(keys, key)
	}
	return keys
}

// cleanDecodeError turns mapstructure's multi-line report into one line.
func cleanDecodeError(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "decoding failed due to the following error(s):\n\n")
	s = strings.ReplaceAll(s, "\n", "; ")
	return s
}

// readSecret reads a secret from a file, trimming one trailing newline.
func readSecret(p *problems, key, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		p.add(key, "cannot read secret file: %v", err)
		return ""
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		p.add(key, "secret file %s is empty", path)
	}
	return s
}

// envName is the environment variable that overrides key.
func envName(key string) string {
	return EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}
