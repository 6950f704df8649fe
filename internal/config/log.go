package config

import (
	"fmt"
	"io"
	"log/slog"
)

// Log formats NewLogger takes (--log-format).
const (
	LogText = "text" // slog's text handler: key=value pairs
	LogJSON = "json" // slog's JSON handler: one object a line
)

// NewLogger returns a logger writing to w at level ("debug", "info",
// "warn", "error", or slog's forms such as "warn+2") in format (LogText
// or LogJSON). Its errors name the flag: "--log-level: ..." or
// "--log-format: ...".
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case LogText:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case LogJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q: want %s or %s", format, LogText, LogJSON)
}
