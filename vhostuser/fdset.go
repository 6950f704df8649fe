package vhostuser

import "github.com/veloce-io/veloce/internal/fd"

// FD owns one file descriptor: memory region fds, the dirty log fd, the
// inflight fd and every descriptor a message brings arrive as *FD.
// Close is idempotent; Disown hands the number out; a nil *FD is "none".
// An FD dropped while open is closed by a runtime cleanup.
type FD = fd.FD

// OwnFD returns an owner for raw, which the caller hands over (to pass
// to Memory.AddRegion or NewDirtyLog a descriptor it made itself).
//
// Errors: raw is negative.
func OwnFD(raw int) (*FD, error) { return fd.New(raw) }

// FDSet holds the descriptors that came with one message, in the order
// they were sent. A handler takes the ones it keeps (Take, TakeAll);
// Close closes the rest, so a descriptor nobody claimed is never leaked
// and ownership shows in the types. The zero value is an empty set.
type FDSet struct {
	fds []*FD // nil entries were taken
}

// Len returns how many descriptors came with the message, taken or not.
func (s *FDSet) Len() int { return len(s.fds) }

// Take transfers descriptor i to the caller; nil if i is out of range or
// was taken already.
func (s *FDSet) Take(i int) *FD {
	if i < 0 || i >= len(s.fds) {
		return nil
	}
	f := s.fds[i]
	s.fds[i] = nil
	return f
}

// TakeAll transfers every descriptor not yet taken, in order (nil for
// the taken ones).
func (s *FDSet) TakeAll() []*FD {
	out := make([]*FD, len(s.fds))
	for i := range s.fds {
		out[i] = s.Take(i)
	}
	return out
}

// Close closes every descriptor not taken. It is idempotent.
func (s *FDSet) Close() {
	for i := range s.fds {
		s.Take(i).Close()
	}
}

func closeAll(fds []*FD) {
	for _, f := range fds {
		f.Close()
	}
}
