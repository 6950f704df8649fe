package testpmd

import "testing"

// The block testpmd 22.11 prints on exit.
const exitOutput = `
Telling cores to stop...
Waiting for lcores to finish...

  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: 7              RX-dropped: 0             RX-total: 7
  TX-packets: 6              TX-dropped: 1             TX-total: 7
  ----------------------------------------------------------------------------

  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++
  RX-packets: 7              RX-dropped: 0             RX-total: 7
  TX-packets: 6              TX-dropped: 1             TX-total: 7
  ++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++

Done.
`

func TestParseStats(t *testing.T) {
	s, err := ParseStats([]byte(exitOutput))
	if err != nil {
		t.Fatal(err)
	}
	if *s != (Stats{RXPackets: 7, TXPackets: 6, TXDropped: 1}) {
		t.Fatalf("got %+v", s)
	}
	if _, err := ParseStats([]byte("EAL: error\n")); err == nil {
		t.Fatal("no error for output without statistics")
	}
}
