package xdp

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/internal/pkt"
)

// neighbours mirrors the kernel's IPv4 neighbour table of one interface.
// The kernel owns resolution: ARP is passed up to it by the XDP program,
// so it answers requests and learns replies as it always does; the plugin
// reads what it learned. A lookup that misses asks the kernel directly
// (netlink RTM_GETNEIGH, paced by the caller) and, when the kernel has no
// entry either, makes it resolve one: RTM_NEWNEIGH with NTF_USE, which
// starts ARP as if the kernel itself wanted to send there. A goroutine
// re-reads the whole table every refresh interval, so a neighbour that
// changes its MAC or goes away is followed within one interval. (A netlink
// subscription would follow at once, but its blocking receive cannot be
// interrupted, so Close could not wait for it.)
type neighbours struct {
	ifindex int
	h       *netlink.Handle // opened in the plugin's network namespace
	table   atomic.Pointer[map[[4]byte]pkt.MAC]
	mu      sync.Mutex // serialises writers of table (copy on write)
	learned func(ip netip.Addr)
	done    chan struct{}
	wg      sync.WaitGroup
}

func newNeighbours(h *netlink.Handle, ifindex int, learned func(netip.Addr)) *neighbours {
	n := &neighbours{ifindex: ifindex, h: h, learned: learned, done: make(chan struct{})}
	m := map[[4]byte]pkt.MAC{}
	n.table.Store(&m)
	return n
}

// follow reads the table now and then every interval until close.
func (n *neighbours) follow(interval time.Duration) {
	n.refresh()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-n.done:
				return
			case <-t.C:
				n.refresh()
			}
		}
	}()
}

// refresh replaces the mirror with the kernel's table.
func (n *neighbours) refresh() {
	list, err := n.h.NeighList(n.ifindex, unix.AF_INET)
	if err != nil {
		return
	}
	next := make(map[[4]byte]pkt.MAC, len(list))
	var fresh []netip.Addr
	for i := range list {
		if ip, mac, ok := entry(&list[i]); ok {
			next[ip.As4()] = mac
			if _, known := n.lookup(ip.As4()); !known {
				fresh = append(fresh, ip)
			}
		}
	}
	n.mu.Lock()
	n.table.Store(&next)
	n.mu.Unlock()
	for _, ip := range fresh {
		n.learned(ip)
	}
}

// entry returns a usable IPv4 entry's address and MAC.
func entry(e *netlink.Neigh) (netip.Addr, pkt.MAC, bool) {
	ip, ok := netip.AddrFromSlice(e.IP)
	if !ok || !ip.Unmap().Is4() {
		return netip.Addr{}, pkt.MAC{}, false
	}
	mac, ok := pkt.MACFrom(e.HardwareAddr)
	if !ok || mac.IsZero() || e.State&usable == 0 {
		return netip.Addr{}, pkt.MAC{}, false
	}
	return ip.Unmap(), mac, true
}

// usable are the states whose link-layer address can be sent to.
const usable = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT | netlink.NUD_NOARP

func (n *neighbours) set(ip [4]byte, mac pkt.MAC) {
	n.mu.Lock()
	defer n.mu.Unlock()
	cur := *n.table.Load()
	if old, ok := cur[ip]; ok && old == mac {
		return
	}
	next := make(map[[4]byte]pkt.MAC, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	next[ip] = mac
	n.table.Store(&next)
}

// lookup returns ip's MAC from the mirror. It does not allocate.
func (n *neighbours) lookup(ip [4]byte) (pkt.MAC, bool) {
	mac, ok := (*n.table.Load())[ip]
	return mac, ok
}

// query asks the kernel for ip's entry and records it; it reports whether
// the kernel has a usable one.
func (n *neighbours) query(ip netip.Addr) bool {
	list, err := n.h.NeighList(n.ifindex, unix.AF_INET)
	if err != nil {
		return false
	}
	for i := range list {
		if a, mac, ok := entry(&list[i]); ok && a == ip {
			n.set(a.As4(), mac)
			return true
		}
	}
	return false
}

// solicit makes the kernel resolve ip (NTF_USE: it sends ARP requests as
// for its own traffic; the reply is learned by the kernel, and so by the
// next query or refresh).
func (n *neighbours) solicit(ip netip.Addr) error {
	return n.h.NeighSet(&netlink.Neigh{LinkIndex: n.ifindex, Family: unix.AF_INET, IP: ip.AsSlice(), Flags: netlink.NTF_USE})
}

// len returns the number of entries.
func (n *neighbours) len() int { return len(*n.table.Load()) }

// close stops the refresher.
func (n *neighbours) close() {
	close(n.done)
	n.wg.Wait()
}
