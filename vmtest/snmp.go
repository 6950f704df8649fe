package vmtest

import (
	"strconv"
	"strings"
)

// UDPCounters reads the guest's UDP counters from a program's output
// that holds `grep Udp: /proc/net/snmp` (a header line of names, then
// one of values): InDatagrams, RcvbufErrors (datagrams the guest's
// kernel dropped for a full socket buffer), and so on. Nil when the
// output has none.
func UDPCounters(output string) map[string]uint64 {
	var names []string
	for _, line := range strings.Split(output, "\n") {
		f := strings.Fields(strings.TrimSpace(line))
		if len(f) < 2 || f[0] != "Udp:" {
			continue
		}
		if _, err := strconv.ParseUint(f[1], 10, 64); err != nil {
			names = f[1:]
			continue
		}
		if len(names) != len(f)-1 {
			continue
		}
		out := make(map[string]uint64, len(names))
		for i, v := range f[1:] {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return nil
			}
			out[names[i]] = n
		}
		return out
	}
	return nil
}
