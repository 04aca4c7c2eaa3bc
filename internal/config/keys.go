package config

import (
	"reflect"
	"strings"
	"time"
)

// Key is one configuration key, for mcptun relay --help and agent --help.
type Key struct {
	Path string // dotted, lists of objects as name[].field: servers[].command
	Type string // string, list, map, duration, number, bool
}

// RelayKeys lists every key of relay.yaml, from the Relay struct itself,
// so the help cannot drift from what the loader accepts.
func RelayKeys() []Key { return structKeys(reflect.TypeOf(Relay{}), "") }

// AgentKeys lists every key of agent.yaml.
func AgentKeys() []Key { return structKeys(reflect.TypeOf(Agent{}), "") }

func structKeys(t reflect.Type, prefix string) []Key {
	var keys []Key
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("mapstructure"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		key := prefix + tag
		ft := f.Type
		switch {
		case ft == reflect.TypeOf(time.Duration(0)):
			keys = append(keys, Key{key, "duration"})
		case ft.Kind() == reflect.Struct:
			keys = append(keys, structKeys(ft, key+".")...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			keys = append(keys, structKeys(ft.Elem(), key+"[].")...)
		case ft.Kind() == reflect.Slice:
			keys = append(keys, Key{key, "list"})
		case ft.Kind() == reflect.Map:
			keys = append(keys, Key{key, "map"})
		case ft.Kind() == reflect.Bool:
			keys = append(keys, Key{key, "bool"})
		case ft.Kind() == reflect.String:
			keys = append(keys, Key{key, "string"})
		default:
			keys = append(keys, Key{key, "number"})
		}
	}
	return keys
}
