package benchrdma

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
)

// Output of perftest 4.5 (Debian 12) in the soft-RoCE guest.
const latOut = `---------------------------------------------------------------------------------------
                    Send Latency Test
 Dual-port       : OFF		Device         : rxe0
 Connection type : RC		Using SRQ      : OFF
---------------------------------------------------------------------------------------
 #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] 
 64      300          1532.11        9310.20      2100.56     	       2411.30      	880.12   		8100.00     		9310.20    
---------------------------------------------------------------------------------------
`

const bwOut = ` #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]
 4096       1000             2.21               2.17   		   0.000556
---------------------------------------------------------------------------------------
`

func TestParsePerftest(t *testing.T) {
	if v, err := ParseLat(latOut, 64); err != nil || v != 2100.56 {
		t.Errorf("ParseLat = %v, %v", v, err)
	}
	if _, err := ParseLat(latOut, 128); err == nil {
		t.Error("ParseLat found a size that is not there")
	}
	if v, err := ParseBW(bwOut, 4096); err != nil || v != 556 {
		t.Errorf("ParseBW = %v, %v", v, err)
	}
	if _, err := ParseBW("Couldn't connect to 10.77.0.2:18515", 64); err == nil {
		t.Error("ParseBW of an error")
	}
	inf := strings.Replace(bwOut, "0.000556", "inf", 1)
	if _, err := ParseBW(inf, 4096); err == nil {
		t.Error("ParseBW took inf")
	}
}

func TestGuestArgsAndRow(t *testing.T) {
	got := guestArgs([]string{"--sizes", "64,128", "-o", "json", "--count=50", "--memory", "2G", "-duration", "3s"})
	if want := []string{"--sizes", "64,128", "--count=50", "-duration", "3s"}; !slices.Equal(got, want) {
		t.Errorf("guestArgs = %q, want %q", got, want)
	}
	r := Row{Size: 64, RawRTT: 10, DatapathRTT: 12.5, AppRTT: 30, RawRate: 1000, DatapathRate: 900, AppRate: 500}
	r.derive()
	if r.DatapathOver != 2.5 || r.AppOver != 20 || r.DatapathRTTx != 1.25 || r.AppRTTx != 3 || r.DatapathRatex != 0.9 || r.AppRatex != 0.5 {
		t.Errorf("derived %+v", r)
	}
	skipped := Row{Size: 4096, RawRTT: 10, DatapathRTT: 20}
	if skipped.derive(); skipped.AppOver != 0 || skipped.AppRTTx != 0 || skipped.DatapathOver != 10 {
		t.Errorf("a row without app figures: %+v", skipped)
	}
	var b bytes.Buffer
	if err := WriteTable(&b, &Report{Rows: []Row{r}, Notes: []string{"n"}}); err != nil || !strings.Contains(b.String(), "12.50") || !strings.Contains(b.String(), "note: n") {
		t.Errorf("table %v:\n%s", err, b.String())
	}
}

func TestMainRefusesBadArguments(t *testing.T) {
	for _, args := range [][]string{{"--sizes", "32"}, {"--sizes", "8192"}, {"--count", "1"}, {"--duration", "1ms"}, {"-o", "xml"}, {"--cpus", "0"}, {"extra"}} {
		var out, errb bytes.Buffer
		if err := Main(context.Background(), args, &out, &errb); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
