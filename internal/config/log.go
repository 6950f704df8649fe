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
func NewLogger(w io.Writer, level, format string) (*slog.Logger, *slog.LevelVar, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, nil, fmt.Errorf("--log-level: %q: want debug, info, warn or error", level)
	}
	lv := new(slog.LevelVar) // the level can change at run time (velocectl log-level)
	lv.Set(l)
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case LogText:
		return slog.New(slog.NewTextHandler(w, opts)), lv, nil
	case LogJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), lv, nil
	}
	return nil, nil, fmt.Errorf("--log-format: %q: want %s or %s", format, LogText, LogJSON)
}
