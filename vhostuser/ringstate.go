package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Kept ring state: packed rings that survive a backend restart with
// frontends that hand over no inflight region.
//
// A packed ring has no index in shared memory that says where the device
// stopped (a split ring has the used index, which QEMU reads back when
// the backend goes away). The frontend learns the device's position only
// from GET_VRING_BASE; when the backend dies first — SIGKILL, a crash, an
// upgrade's restart — QEMU's vhost-user-net resumes the next backend at
// the last base it was told, usually the first one, and the ring is dead:
// the device looks for descriptors the driver made available laps ago.
// Frontends that use inflight tracking (GET/SET_INFLIGHT_FD) hand the
// region, and the position in it, to the next backend; QEMU's virtio-net
// does not.
//
// So the device keeps such a ring's inflight region itself (for QEMU
// only: frontendKeepsRings), in a file of
// its own (NetOptions.RingState), mapped shared: the region the ring
// already writes as it goes (inflight.go's packed layout), in memory that
// outlives the process, on tmpfs (/run) where writing it costs what a
// memfd does. The next backend on the same port opens the file and, if
// the ring is the one that was running — the same frontend process
// (peer pid and start time), the same ring (index, size, addresses) —
// resumes from it and ignores the frontend's stale base, resubmitting
// the chains that were in flight. Anything else starts the ring afresh
// from the frontend's base: another frontend, a ring the frontend stopped
// cleanly (GET_VRING_BASE told it the position: the file is marked
// stopped), an unreadable or mismatched header, or a region that cannot
// be this ring's state (ErrBadInflight, logged).
//
// The file is the daemon's (mode 0600, in a directory only it writes);
// the frontend never sees it. What the ring writes there comes from
// guest-driven state and is validated again at resumption, as a region a
// frontend hands over is.
//
// Header, little endian, 64 bytes at the start of a 4096-byte page; the
// region follows at offset 4096:
//
//	magic [8]byte | version u32 | live u32 | pid u32 | index u32 |
//	start u64 | desc u64 | avail u64 | used u64 | size u32
//
// live is 1 while a ring runs on the region, 0 once it stopped cleanly;
// the rest names the ring and its frontend.
const (
	keptMagic   = "VLCRING\x00"
	keptVersion = 1
	keptHeader  = 4096
	keptLive    = 12 // the live word; the identity follows it
)

// peerIdent is a frontend process: its pid and its start time (clock
// ticks since boot, from /proc), so that a new process with a recycled pid
// is not the old one; keeps says it carries its rings on across a
// reconnection (frontendKeepsRings).
type peerIdent struct {
	pid   uint32
	start uint64
	keeps bool
}

// peerOf returns the process at the other end of conn; zero when unknown
// (not a unix socket, or the credentials cannot be read).
func peerOf(conn *net.UnixConn) peerIdent {
	if conn == nil {
		return peerIdent{}
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return peerIdent{}
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil || cred == nil || cred.Pid <= 0 {
		return peerIdent{}
	}
	pid := int(cred.Pid)
	return peerIdent{pid: uint32(pid), start: procStart(pid), keeps: frontendKeepsRings(pid)}
}

// frontendKeepsRings says whether the frontend process pid carries its
// packed rings on where they were when it reconnects to a new backend,
// so that kept state applies to them: QEMU does (the guest's driver
// never learns of the reconnection; only the device's position is lost).
// DPDK virtio-user resets its packed rings on a reconnection, and starts
// them over at their first descriptor: state kept for them would resume
// a ring that no longer exists, so frontends other than QEMU get none.
// A variable for the tests, whose frontends are the test process.
var frontendKeepsRings = func(pid int) bool {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return false
	}
	return strings.Contains(filepath.Base(exe), "qemu")
}

// procStart is field 22 of /proc/pid/stat (starttime), 0 when unreadable.
func procStart(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// the fields after it start past the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 { // state is field 3, starttime field 22
		return 0
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0
	}
	return v
}

// errNotKept: the frontend resets its rings on a reconnection; nothing is
// kept for it.
var errNotKept = errors.New("the frontend resets its rings when it reconnects")

// keptRing is one ring's kept region, mapped.
type keptRing struct {
	path    string
	mapping []byte // header page, then the region
	region  []byte
}

// keptRingPath is where ring index of a device whose RingState is prefix
// keeps its region.
func keptRingPath(prefix string, index uint32) string {
	return prefix + ".ring" + strconv.Itoa(int(index))
}

// openKeptRing opens (creating it if need be) the kept region of a
// packed ring of size descriptors at addr, for frontend peer. When the
// file holds the state of this very ring, left running, the region is
// left as it is (the ring resumes from it); otherwise it is cleared (no
// state: the ring starts from the frontend's base and writes its first
// state there). Either way the header now names this ring, running.
func openKeptRing(prefix string, peer peerIdent, addr VringAddr, size uint16) (*keptRing, error) {
	if peer.pid == 0 {
		return nil, errors.New("the frontend's process is unknown")
	}
	if !peer.keeps {
		return nil, errNotKept
	}
	path := keptRingPath(prefix, addr.Index)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the mapping stays
	regionSize := InflightQueueSizePacked(size)
	total := int64(keptHeader + regionSize)
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if st.Size() != total {
		// Another ring's geometry, or a new file: nothing to resume.
		if err := f.Truncate(0); err != nil {
			return nil, err
		}
		if err := f.Truncate(total); err != nil {
			return nil, err
		}
	}
	m, err := mapShared(int(f.Fd()), 0, int(total), 0)
	if err != nil {
		return nil, err
	}
	k := &keptRing{path: path, mapping: m, region: m[keptHeader:]}
	want := keptHeaderFor(peer, addr, size)
	h := m[:64]
	resume := bytes.Equal(h[:keptLive], want[:keptLive]) &&
		binary.LittleEndian.Uint32(h[keptLive:]) == 1 &&
		bytes.Equal(h[keptLive+4:], want[keptLive+4:])
	if !resume {
		k.reset(want)
	}
	return k, nil
}

// restored says whether the ring resumed from state found in its
// inflight region.
func (r *PackedRing) restored() bool { return r.inflight != nil && r.inflight.restored }

// keptHeaderFor is the header naming a ring, running.
func keptHeaderFor(peer peerIdent, addr VringAddr, size uint16) [64]byte {
	var h [64]byte
	copy(h[:], keptMagic)
	le := binary.LittleEndian
	le.PutUint32(h[8:], keptVersion)
	le.PutUint32(h[keptLive:], 1)
	le.PutUint32(h[16:], peer.pid)
	le.PutUint32(h[20:], addr.Index)
	le.PutUint64(h[24:], peer.start)
	le.PutUint64(h[32:], addr.Desc)
	le.PutUint64(h[40:], addr.Avail)
	le.PutUint64(h[48:], addr.Used)
	le.PutUint32(h[56:], uint32(size))
	return h
}

// reset clears the region (no state) and writes header h, live.
func (k *keptRing) reset(h [64]byte) {
	binary.LittleEndian.PutUint32(k.mapping[keptLive:], 0)
	clear(k.region)
	copy(k.mapping[keptLive+4:64], h[keptLive+4:])
	copy(k.mapping[:keptLive], h[:keptLive])
	binary.LittleEndian.PutUint32(k.mapping[keptLive:], 1)
}

// stopped marks the ring stopped cleanly: the frontend was told its
// position (GET_VRING_BASE), so nothing is to be resumed from here.
func (k *keptRing) stopped() {
	binary.LittleEndian.PutUint32(k.mapping[keptLive:], 0)
}

// close unmaps the region; the file stays for the next backend.
func (k *keptRing) close() {
	unmap(k.mapping)
	k.mapping, k.region = nil, nil
}

// remove unmaps the region and deletes its file.
func (k *keptRing) remove() {
	k.close()
	os.Remove(k.path)
}

// RemoveRingState deletes the files in which the device keeps its rings'
// state (NetOptions.RingState), for a port no backend will serve again.
// Call it once the device serves no frontend.
func (d *NetDevice) RemoveRingState() {
	if d.opts.RingState == "" {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, k := range d.kept {
		if k != nil {
			k.close()
			d.kept[i] = nil
		}
	}
	for i := range 2 * d.opts.QueuePairs {
		os.Remove(keptRingPath(d.opts.RingState, uint32(i)))
	}
}
