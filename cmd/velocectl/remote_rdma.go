package main

import (
	"fmt"
	"io"

	"github.com/veloce-io/veloce/control"
)

// printRDMA writes the RDMA datapaths' devices, queue pairs and counters
// (control.RDMAStats), when the daemon has any.
func printRDMA(tw io.Writer, info control.RemoteInfo) {
	var all []control.RDMAStats
	var addrs []string
	for _, d := range info.Datapaths {
		if d.Name != control.DatapathRDMA {
			continue
		}
		s, err := control.DecodeRDMAStats(d)
		if err != nil {
			fmt.Fprintf(tw, "\nrdma %s: %v\n", d.Addr, err)
			continue
		}
		all, addrs = append(all, s), append(addrs, d.Addr)
	}
	if len(all) == 0 {
		return
	}
	fmt.Fprintln(tw, "\nRDMA DEVICE\tNETDEV\tPORT\tADDRESS\tGID\tGID INDEX\tMTU\tPEERS\tCONNECTED")
	for i, s := range all {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%d\t%d\t%d\n", s.Device, dash(s.Netdev), s.DevicePort, addrs[i], dash(s.GID), s.GIDIndex, s.MTU, s.Peers, s.Connected)
	}
	fmt.Fprintln(tw, "\nRDMA DEVICE\tPEER\tSTATE\tQPN\tPSN\tPEER QPN\tPEER PSN")
	for _, s := range all {
		for _, q := range s.QueuePairs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Device, q.Peer, q.State, num(q.QPN), hex(q.PSN), num(q.PeerQPN), hex(q.PeerPSN))
		}
	}
	for _, s := range all {
		fmt.Fprintf(tw, "\n%s: %d sent, %d received; %d send queue full, %d send errors, %d receive errors, %d on unknown queue pairs; "+
			"%d connects, %d accepts, %d failed connects, %d queue pair failures; %d sleeps\n",
			s.Device, s.TxMessages, s.RxMessages, s.TxFull, s.TxErrors, s.RxErrors, s.RxUnknownQP, s.Connects, s.Accepts, s.ConnectFailed, s.QPFailures, s.Sleeps)
	}
}

func num(v uint32) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprint(v)
}

func hex(v uint32) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%#x", v)
}
