package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/veloce-io/veloce/control"
)

func init() { register(newStatsCmd) }

// portCounter is one of a port's counters as stats shows it.
type portCounter struct {
	key, head string // JSON field (PortInfo's) and column
	wide      bool   // only with -o wide
	get       func(p *control.PortInfo) uint64
}

var portCounters = []portCounter{
	{"guest_tx_packets", "TX PKTS", false, func(p *control.PortInfo) uint64 { return p.GuestTXPackets }},
	{"guest_tx_bytes", "TX BYTES", false, func(p *control.PortInfo) uint64 { return p.GuestTXBytes }},
	{"guest_rx_packets", "RX PKTS", false, func(p *control.PortInfo) uint64 { return p.GuestRXPackets }},
	{"guest_rx_bytes", "RX BYTES", false, func(p *control.PortInfo) uint64 { return p.GuestRXBytes }},
	{"drops", "DROPS", false, func(p *control.PortInfo) uint64 { return p.Drops }},
	{"errors", "ERRORS", false, func(p *control.PortInfo) uint64 { return p.Errors }},
	{"service_datagrams", "SERVICE DGRAMS", false, func(p *control.PortInfo) uint64 { return p.ServiceDatagrams }},
	{"link_drops", "LINK DROPS", false, func(p *control.PortInfo) uint64 { return p.LinkDrops }},
	{"malformed_datagrams", "MALFORMED", true, func(p *control.PortInfo) uint64 { return p.Malformed }},
	{"arp_replies", "ARP", true, func(p *control.PortInfo) uint64 { return p.ARPReplies }},
	{"echo_replies", "ECHO", true, func(p *control.PortInfo) uint64 { return p.EchoReplies }},
	{"dhcp_replies", "DHCP", true, func(p *control.PortInfo) uint64 { return p.DHCPReplies }},
}

// statsSample is what stats -o json prints: one object per sample.
type statsSample struct {
	// IntervalSeconds is 0 for totals since the daemon started; with
	// --watch, the seconds the rates were measured over.
	IntervalSeconds float64 `json:"interval_seconds"`
	// Ports has one object per port: "name" and its counters (totals, or
	// per-second rates).
	Ports []map[string]any `json:"ports"`
	// Datapaths has one object per datapath to other hosts: "name" and
	// "counters", its numeric statistics (nested ones as a.b).
	Datapaths []datapathCounters `json:"datapaths"`

	at time.Time
}

type datapathCounters struct {
	Name     string             `json:"name"`
	Counters map[string]float64 `json:"counters"`
}

func newStatsCmd(a *app) *cobra.Command {
	var watch time.Duration
	c := &cobra.Command{
		Use:     "stats [PORT...] [--watch DURATION]",
		Short:   "Show per-port and per-datapath counters; --watch re-prints them per second",
		GroupID: groupShow,
		Long: `Show the counters of every port (or of the PORTs given): the guest's TX and RX
packets and bytes, drops, errors, datagrams for the service, the link peer's
drops (and, with -o wide, malformed datagrams and ARP, echo and DHCP replies);
then the counters of each datapath to other hosts (udp, dpdk, ...).

--watch DURATION prints the totals, then every DURATION the change per second
over the last interval, until Ctrl-C.

-o json prints one object per sample: interval_seconds (0 for totals, else
the interval of the rates), ports (a list: name and the counters, named as in
velocectl ports -o json) and datapaths (a list: name and counters). With
--watch, one object per line (JSON Lines).`,
		Example: `  velocectl stats
  velocectl stats vm0 --watch 1s`,
		ValidArgsFunction: a.completePorts(true),
		RunE: func(c *cobra.Command, names []string) error {
			if c.Flags().Changed("watch") && watch < 100*time.Millisecond {
				return usageErrorf(c, "--watch %v: give at least 100ms, e.g. --watch 1s", watch)
			}
			prev, err := a.statsSample(names)
			if err != nil {
				return err
			}
			if err := a.printStats(prev, watch > 0); err != nil || watch == 0 {
				return err
			}
			tick := time.NewTicker(watch)
			defer tick.Stop()
			for {
				select {
				case <-a.ctx.Done():
					return nil // Ctrl-C ends --watch
				case <-tick.C:
				}
				cur, err := a.statsSample(names)
				if err != nil {
					if a.ctx.Err() != nil {
						return nil
					}
					return err
				}
				if a.output != "json" {
					fmt.Fprintln(a.stdout) // tables apart; JSON Lines stay one per line
				}
				if err := a.printStats(rates(prev, cur), true); err != nil {
					return err
				}
				prev = cur
			}
		},
	}
	c.Flags().DurationVar(&watch, "watch", 0, "re-print the counters' change per second every `DURATION` (e.g. 1s) until Ctrl-C")
	return c
}

// statsSample fetches the counters of the ports called names (all when
// none) and of the datapaths.
func (a *app) statsSample(names []string) (statsSample, error) {
	ports, err := a.ports(names)
	if err != nil {
		return statsSample{}, err
	}
	remote, err := a.client().Remote(a.ctx)
	if err != nil {
		return statsSample{}, err
	}
	s := statsSample{at: time.Now(), Ports: []map[string]any{}, Datapaths: []datapathCounters{}}
	for i := range ports {
		m := map[string]any{"name": ports[i].Name}
		for _, pc := range portCounters {
			m[pc.key] = float64(pc.get(&ports[i]))
		}
		s.Ports = append(s.Ports, m)
	}
	for _, d := range remote.Datapaths {
		dc := datapathCounters{Name: d.Name, Counters: map[string]float64{}}
		for _, c := range flatten(d.Stats) {
			if c.numeric {
				dc.Counters[c.name] = c.num
			}
		}
		s.Datapaths = append(s.Datapaths, dc)
	}
	return s, nil
}

// rates returns cur's change per second since prev. A counter that went
// down (a port deleted and added again) counts from zero; a port or
// datapath new in cur likewise.
func rates(prev, cur statsSample) statsSample {
	secs := cur.at.Sub(prev.at).Seconds()
	if secs <= 0 {
		secs = 1e-9
	}
	delta := func(before, now float64) float64 {
		if now < before {
			before = 0
		}
		return (now - before) / secs
	}
	out := statsSample{IntervalSeconds: secs, at: cur.at, Ports: []map[string]any{}, Datapaths: []datapathCounters{}}
	for _, p := range cur.Ports {
		var old map[string]any
		for _, q := range prev.Ports {
			if q["name"] == p["name"] {
				old = q
			}
		}
		m := map[string]any{"name": p["name"]}
		for _, pc := range portCounters {
			before, _ := old[pc.key].(float64)
			m[pc.key] = delta(before, p[pc.key].(float64))
		}
		out.Ports = append(out.Ports, m)
	}
	for _, d := range cur.Datapaths {
		var old map[string]float64
		for _, e := range prev.Datapaths {
			if e.Name == d.Name {
				old = e.Counters
			}
		}
		dc := datapathCounters{Name: d.Name, Counters: map[string]float64{}}
		for k, v := range d.Counters {
			dc.Counters[k] = delta(old[k], v)
		}
		out.Datapaths = append(out.Datapaths, dc)
	}
	return out
}

// printStats prints a sample: JSON (one line when compact), or the
// ports' and datapaths' tables.
func (a *app) printStats(s statsSample, compact bool) error {
	if a.output == "json" {
		if compact {
			return json.NewEncoder(a.stdout).Encode(s)
		}
		return writeJSON(a.stdout, s)
	}
	wide := a.output == "wide"
	num := func(v float64) string {
		if s.IntervalSeconds == 0 {
			return strconv.FormatFloat(v, 'f', 0, 64)
		}
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	if s.IntervalSeconds == 0 {
		fmt.Fprintln(a.stdout, "totals since veloced started:")
	} else {
		fmt.Fprintf(a.stdout, "per second over the last %.1fs:\n", s.IntervalSeconds)
	}
	fmt.Fprint(tw, "PORT\t")
	for _, pc := range portCounters {
		if wide || !pc.wide {
			fmt.Fprintf(tw, "%s\t", pc.head)
		}
	}
	fmt.Fprintln(tw)
	for _, p := range s.Ports {
		fmt.Fprintf(tw, "%s\t", p["name"])
		for _, pc := range portCounters {
			if wide || !pc.wide {
				fmt.Fprintf(tw, "%s\t", num(p[pc.key].(float64)))
			}
		}
		fmt.Fprintln(tw)
	}
	if len(s.Datapaths) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "DATAPATH\tCOUNTER\tVALUE\t")
		for _, d := range s.Datapaths {
			for _, k := range slices.Sorted(maps.Keys(d.Counters)) {
				fmt.Fprintf(tw, "%s\t%s\t%s\t\n", d.Name, k, num(d.Counters[k]))
			}
		}
	}
	return tw.Flush()
}

// counter is one leaf of a datapath's statistics.
type counter struct {
	name, value string
	num         float64
	numeric     bool
}

// flatten lists the leaves of v (a datapath's stats, decoded from JSON),
// nested objects' names joined with dots, sorted by name.
func flatten(v any) []counter {
	var out []counter
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for _, k := range slices.Sorted(maps.Keys(x)) {
				name := k
				if prefix != "" {
					name = prefix + "." + k
				}
				walk(name, x[k])
			}
		case float64:
			out = append(out, counter{name: prefix, value: strconv.FormatFloat(x, 'f', -1, 64), num: x, numeric: true})
		case nil:
		default:
			out = append(out, counter{name: prefix, value: fmt.Sprint(x)})
		}
	}
	walk("", v)
	return out
}
