package config

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
)

// ChangedKeys lists the keys whose values differ between old and new, two
// pointers to the same config struct (*Relay, *Agent), as dotted key
// paths sorted: "http.listen", "log.level", "clients". A list or map is one
// key, compared whole; fields that are not keys (mapstructure "-":
// warnings, values derived from keys) are skipped. A reload uses it to
// tell which parts to apply and which changed keys need a restart.
func ChangedKeys(old, new any) []string {
	ov, nv := reflect.ValueOf(old), reflect.ValueOf(new)
	if ov.Type() != nv.Type() || ov.Kind() != reflect.Pointer || ov.Elem().Kind() != reflect.Struct {
		panic(fmt.Sprintf("config.ChangedKeys: want two pointers to one config struct, got %T and %T", old, new))
	}
	var out []string
	changedKeys(ov.Elem(), nv.Elem(), "", &out)
	slices.Sort(out)
	return out
}

func changedKeys(ov, nv reflect.Value, prefix string, out *[]string) {
	t := ov.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("mapstructure"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		key := prefix + tag
		if f.Type.Kind() == reflect.Struct && f.Type.String() != "time.Duration" {
			changedKeys(ov.Field(i), nv.Field(i), key+".", out)
			continue
		}
		if !reflect.DeepEqual(ov.Field(i).Interface(), nv.Field(i).Interface()) {
			*out = append(*out, key)
		}
	}
}

// KeyIn reports whether key is one of keys or under one of them ("http"
// covers "http.listen").
func KeyIn(key string, keys ...string) bool {
	for _, k := range keys {
		if key == k || strings.HasPrefix(key, k+".") {
			return true
		}
	}
	return false
}

// NamedChanges compares two lists of named entries (clients, agents,
// servers): the names added, removed, and present in both with another
// value. It names entries only, so it is safe to log whatever they hold.
func NamedChanges[T any](old, new []T, name func(T) string) (added, removed, changed []string) {
	find := func(list []T, n string) (T, bool) {
		for _, v := range list {
			if name(v) == n {
				return v, true
			}
		}
		var zero T
		return zero, false
	}
	for _, v := range new {
		prev, ok := find(old, name(v))
		switch {
		case !ok:
			added = append(added, name(v))
		case !reflect.DeepEqual(prev, v):
			changed = append(changed, name(v))
		}
	}
	for _, v := range old {
		if _, ok := find(new, name(v)); !ok {
			removed = append(removed, name(v))
		}
	}
	return added, removed, changed
}

// DescribeNamed sums up NamedChanges for a log line: "+ci -old ~bob", or
// "" when nothing changed.
func DescribeNamed(added, removed, changed []string) string {
	var parts []string
	for _, n := range added {
		parts = append(parts, "+"+n)
	}
	for _, n := range removed {
		parts = append(parts, "-"+n)
	}
	for _, n := range changed {
		parts = append(parts, "~"+n)
	}
	return strings.Join(parts, " ")
}
