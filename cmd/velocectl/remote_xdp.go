package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/veloce-io/veloce/control"
)

// printXDP writes the AF_XDP datapaths' interface, socket mode (copy or
// zero-copy), program attach mode and counters (control.XDPStats), when
// the daemon has any.
func printXDP(tw io.Writer, info control.RemoteInfo) {
	var all []control.XDPStats
	var addrs []string
	for _, d := range info.Datapaths {
		if d.Name != control.DatapathXDP {
			continue
		}
		s, err := control.DecodeXDPStats(d)
		if err != nil {
			fmt.Fprintf(tw, "\nxdp %s: %v\n", d.Addr, err)
			continue
		}
		all, addrs = append(all, s), append(addrs, d.Addr)
	}
	if len(all) == 0 {
		return
	}
	fmt.Fprintln(tw, "\nXDP INTERFACE\tQUEUE\tADDRESS\tMODE\tATTACH\tBUSY POLL\tRX\tTX\tDROPPED\tKERNEL DROPPED")
	for i, s := range all {
		var dropped uint64
		for _, v := range s.Dropped {
			dropped += v
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%v\t%d\t%d\t%d\t%d\n", s.Interface, s.Queue, addrs[i], dash(s.Mode), dash(s.Attach), s.BusyPoll,
			s.RxPackets, s.TxPackets, dropped, s.KernelDropped)
	}
	for _, s := range all {
		var why []string
		for _, k := range slices.Sorted(maps.Keys(s.Dropped)) {
			why = append(why, fmt.Sprintf("%s %d", k, s.Dropped[k]))
		}
		fmt.Fprintf(tw, "\n%s: %d sent (%d bytes), %d received (%d bytes); dropped: %s; kernel: %d RX ring full, %d fill ring empty, %d RX invalid, %d TX invalid; "+
			"%d TX full, %d too long, %d unresolved; %d neighbours, %d solicits; %d sleeps, %d kicks\n",
			s.Interface, s.TxPackets, s.TxBytes, s.RxPackets, s.RxBytes, dash(strings.Join(why, ", ")), s.RxRingFull, s.FillRingEmpty, s.RxInvalid, s.TxInvalid,
			s.TxFull, s.TooLong, s.Unresolved, s.Neighbours, s.Solicits, s.Sleeps, s.Kicks)
	}
}
