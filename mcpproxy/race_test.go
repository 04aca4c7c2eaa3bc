//go:build race

package mcpproxy

// raceEnabled: the race detector's shadow memory makes RSS figures meaningless.
const raceEnabled = true
