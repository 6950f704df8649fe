package main

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/veloce-io/veloce/internal/sockfile"
)

// inUseHint turns a socket another process serves (sockfile.ErrInUse)
// into an error that says who and which flag picks another path: two
// daemons on one host collide on the default sockets
// (/run/veloce/app.sock, /run/veloce/control.sock) unless each is given
// its own. flags maps socket paths to the flag that set them. Other
// errors are returned as they are.
func inUseHint(err error, flags map[string]string) error {
	var pe *fs.PathError
	if !errors.Is(err, sockfile.ErrInUse) || !errors.As(err, &pe) {
		return err
	}
	pid := ""
	var iu *sockfile.InUseError
	if errors.As(err, &iu) && iu.PID > 0 {
		pid = fmt.Sprintf(" (pid %d)", iu.PID)
	}
	flag := flags[pe.Path]
	if flag == "" {
		flag = "another path"
	}
	return fmt.Errorf("another veloced is serving %s%s? use %s: %w", pe.Path, pid, flag, err)
}
