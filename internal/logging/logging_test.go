package logging

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNew(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, "warn", "json")
	require.NoError(t, err)
	l.Info("hidden")
	l.Warn("shown", "k", 1)
	var m map[string]any
	require.NoError(t, json.Unmarshal(buf.Bytes(), &m))
	require.Equal(t, "shown", m["msg"])

	_, err = New(&buf, "loud", "text")
	require.ErrorContains(t, err, `"loud"`)
	_, err = New(&buf, "info", "xml")
	require.ErrorContains(t, err, `"xml"`)
}
