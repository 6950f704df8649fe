package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

func init() { register(newVersionCmd) }

// versionInfo is what velocectl version -o json prints.
type versionInfo struct {
	// Version is the module version velocectl was built at, or "devel".
	Version string `json:"version"`
	// Revision is the VCS revision it was built from, when known, with
	// "+dirty" for a modified tree.
	Revision string `json:"revision,omitempty"`
	// Go is the Go version that built it.
	Go string `json:"go"`
}

func buildVersion() versionInfo {
	v := versionInfo{Version: "devel", Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v.Version = bi.Main.Version
	}
	if bi.GoVersion != "" {
		v.Go = bi.GoVersion
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if v.Revision != "" && dirty {
		v.Revision += "+dirty"
	}
	return v
}

// versionString is the line velocectl --version prints after the name.
func versionString() string {
	v := buildVersion()
	s := v.Version
	if v.Revision != "" {
		s += " " + v.Revision
	}
	return s + " " + v.Go
}

func newVersionCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print velocectl's version, VCS revision and Go version",
		Long: `Print velocectl's version (the module version it was built at, or devel),
the VCS revision when the build recorded it, and the Go version.

-o json prints one object: version, revision, go.`,
		Args: argsRange(0, 0, ""),
		RunE: func(*cobra.Command, []string) error {
			return a.print(buildVersion(), func(tw io.Writer, _ bool) {
				fmt.Fprintln(tw, "velocectl", versionString())
			})
		},
	}
}
