package backend

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/vmtest"
)

// migrationMemory is not a multiple of 256 KiB: QEMU 7.2 under TCG
// corrupts migrated guest memory now and then otherwise (DESIGN.md).
const migrationMemory = "262152K"

// TestLiveMigrationBetweenDaemonsLosesNoPings: a guest pinging the service
// address migrates from a QEMU on one veloced to a QEMU on another; every
// ping is answered. The source daemon logs every page it writes while QEMU
// migrates (VHOST_F_LOG_ALL with the LOG_SHMFD log), the destination
// resumes the rings where the source stopped them, and the service MAC is
// the same on both daemons, so the guest's ARP entry stays right.
func TestLiveMigrationBetweenDaemonsLosesNoPings(t *testing.T) {
	testutil.RequiresRoot(t)
	const pings = 400
	src, srcSocks := startDaemon(t, "src")
	dst, dstSocks := startDaemon(t, "dst")
	kernel, initramfs := vmtest.Image(t, vmtest.Guest{})
	guest := &guestinit.Config{
		Net: []guestinit.NetConfig{{Name: "eth0", Addr: "169.254.77.2/24"}},
		Run: []string{"/bin/ping", "-c", strconv.Itoa(pings), "-i", "0.05", "-W", "5", "169.254.77.1"},
	}
	uri, err := vmtest.IncomingURI()
	if err != nil {
		t.Fatal(err)
	}
	source := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, Memory: migrationMemory,
		NICs: []vmtest.NIC{{Socket: srcSocks[0]}}, Guest: guest})
	dest := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, Memory: migrationMemory,
		NICs: []vmtest.NIC{{Socket: dstSocks[0]}}, Guest: guest, Incoming: uri})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := source.WaitConsole(ctx, "seq=40 "); err != nil {
		t.Fatal(err)
	}
	st, err := source.Migrate(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("migration: %s in %d ms, downtime %d ms, %d MiB transferred, %d dirty syncs",
		st.Status, st.TotalTime, st.Downtime, st.RAM.Transferred>>20, st.RAM.DirtySyncs)

	r, err := dest.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("guest after migration: %v\n%s", err, r.Output)
	}
	summary := pingSummary.FindStringSubmatch(r.Output)
	if summary == nil {
		t.Fatalf("no ping summary on the destination console:\n%s", r.Output)
	}
	t.Logf("pings: %s transmitted, %s received", summary[1], summary[2])
	if summary[1] != strconv.Itoa(pings) || summary[2] != summary[1] {
		t.Errorf("lost pings across the migration: %s", summary[0])
	}
	sp, dp := src.Ports()[0], dst.Ports()[0]
	t.Logf("source port: echo %d, rx %d; destination port: echo %d, rx %d", sp.EchoReplies, sp.GuestRXPackets, dp.EchoReplies, dp.GuestRXPackets)
	if sp.EchoReplies < 40 || dp.EchoReplies == 0 || sp.EchoReplies+dp.EchoReplies < pings {
		t.Errorf("echo replies: source %d + destination %d, want both busy and %d in all", sp.EchoReplies, dp.EchoReplies, pings)
	}
	if !strings.Contains(string(source.Console()), "seq=0 ") {
		t.Errorf("source console lacks the first pings")
	}
}

// TestMigrationCancelledRetriedAndBack covers the traps other backends fell
// into: dirty logging must stop when a migration is cancelled and work
// again on the next try, and a migrated VM must migrate again (here back to
// the first daemon). Every ping is answered through all of it.
func TestMigrationCancelledRetriedAndBack(t *testing.T) {
	testutil.RequiresRoot(t)
	const pings = 600
	a, aSocks := startDaemon(t, "a")
	b, bSocks := startDaemon(t, "b")
	kernel, initramfs := vmtest.Image(t, vmtest.Guest{})
	guest := &guestinit.Config{
		Net: []guestinit.NetConfig{{Name: "eth0", Addr: "169.254.77.2/24"}},
		Run: []string{"/bin/ping", "-c", strconv.Itoa(pings), "-i", "0.05", "-W", "5", "169.254.77.1"},
	}
	boot := func(sock, incoming string) *vmtest.VM {
		return vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, Memory: migrationMemory,
			NICs: []vmtest.NIC{{Socket: sock}}, Guest: guest, Incoming: incoming})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	waitLogging := func(d *Daemon, want bool) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); d.Ports()[0].Logging != want; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("port dirty_logging stayed %v", !want)
			}
		}
	}

	vm := boot(aSocks[0], "")
	if _, err := vm.WaitConsole(ctx, "seq=20 "); err != nil {
		t.Fatal(err)
	}

	// 1. A slow migration, cancelled while it runs: logging on, then off.
	uri1, _ := vmtest.IncomingURI()
	doomed := boot(bSocks[0], uri1)
	if err := vm.QMP(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": 1 << 20}, nil); err != nil {
		t.Fatal(err)
	}
	if err := vm.QMP(ctx, "migrate", map[string]any{"uri": uri1}, nil); err != nil {
		t.Fatal(err)
	}
	waitLogging(a, true)
	if err := vm.QMP(ctx, "migrate_cancel", nil, nil); err != nil {
		t.Fatal(err)
	}
	if st, err := vm.WaitMigration(ctx); err == nil || st.Status != "cancelled" {
		t.Fatalf("cancelled migration ended %+v, %v", st, err)
	}
	waitLogging(a, false)
	doomed.Shutdown(ctx)
	t.Log("cancelled migration: logging was switched on, then off")

	// 2. The retry, at full speed, to daemon b.
	if err := vm.QMP(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
		t.Fatal(err)
	}
	uri2, _ := vmtest.IncomingURI()
	second := boot(bSocks[0], uri2)
	st, err := vm.Migrate(ctx, uri2)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a -> b: %d ms, downtime %d ms", st.TotalTime, st.Downtime)
	// As libvirt does, the source QEMU goes once its guest runs elsewhere;
	// this frees port a (one frontend per port) for the way back.
	vm.Shutdown(ctx)
	if _, err := second.WaitConsole(ctx, "bytes from"); err != nil {
		t.Fatal(err)
	}

	// 3. And back to daemon a.
	uri3, _ := vmtest.IncomingURI()
	third := boot(aSocks[0], uri3)
	if st, err = second.Migrate(ctx, uri3); err != nil {
		t.Fatal(err)
	}
	t.Logf("b -> a: %d ms, downtime %d ms", st.TotalTime, st.Downtime)
	second.Shutdown(ctx)

	r, err := third.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	summary := pingSummary.FindStringSubmatch(r.Output)
	if summary == nil || summary[1] != strconv.Itoa(pings) || summary[2] != summary[1] {
		t.Fatalf("pings after two migrations and a cancelled one: %v\n%s", summary, r.Output)
	}
	t.Logf("pings: %s; echo replies a %d, b %d", summary[0], a.Ports()[0].EchoReplies, b.Ports()[0].EchoReplies)
}

// pingRound matches the marker the guest prints before each ping round in
// TestGuestPingingEvery10msMigratesTwentyTimesLosesNoReply.
// The serial console ends lines with CR LF.
var pingRound = regexp.MustCompile(`pinground (\d+)\r?\n`)

// missingSeq matches the guest's report of a lost reply.
var missingSeq = regexp.MustCompile(`missing seq \d+ after: [^\r\n]*`)

// kernelReplies matches the guest's count of echo replies its kernel
// received during a round.
var kernelReplies = regexp.MustCompile(`^kernelreplies (\d+)`)

// pingRTT matches busybox ping's round-trip summary line.
var pingRTT = regexp.MustCompile(`round-trip min/avg/max = [0-9.]+/[0-9.]+/([0-9.]+) ms`)

// TestGuestPingingEvery10msMigratesTwentyTimesLosesNoReply is issue 10's
// device-level case: a stock guest pings the service address every 10 ms
// (busybox ping -i 0.01, in rounds of 500) while it migrates 20 times in
// a row between two daemons, A to B, B to A, and so on, every other
// migration throttled to 32 MiB/s so that dirty logging stays on for
// seconds. Every echo reply of every round reaches the guest's stack (its
// kernel's Icmp InEchoReps), and neither daemon drops a frame for the
// guest. The 50 ms test above cannot see a burst that finds the guest's
// RX ring short or a source that stalls while QEMU switches dirty logging
// on (vhostuser's RX backlog and in-place logging switch). busybox ping's
// own count is reported too: its socket buffer holds about 18 replies,
// and a host stall (two cores shared by several TCG guests) followed by a
// burst can overflow it, a loss inside the guest's socket layer that the
// kernel count shows apart; each sequence number ping missed is logged
// with the reply before it.
func TestGuestPingingEvery10msMigratesTwentyTimesLosesNoReply(t *testing.T) {
	testutil.RequiresRoot(t)
	const (
		migrations = 20
		perRound   = 500
	)
	a, aSocks := startDaemon(t, "a")
	b, bSocks := startDaemon(t, "b")
	kernel, initramfs := vmtest.Image(t, vmtest.Guest{})
	// Each round's replies go to a file in the guest's tmpfs; the console
	// gets the summary, and for a round that lost replies, each missing
	// sequence number with the reply before it (its time= shows a stall).
	// After each round the guest prints how many echo replies its kernel
	// took in meanwhile (Icmp InEchoReps, field 11 of /proc/net/snmp):
	// what the device delivered. busybox ping sets its socket's receive
	// buffer to 2*56+7168 bytes, about 18 replies: when the host stalls
	// the guest (two cores shared by several TCG guests) the burst that
	// follows can overflow it, and ping misses replies the guest did get.
	script := fmt.Sprintf(`k() { grep '^Icmp:' /proc/net/snmp | tail -n1 | cut -d' ' -f11; }; i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo "pinground $i"; b=$(k); /bin/ping -c %d -i 0.01 -W 5 169.254.77.1 >/tmp/r; tail -n 2 /tmp/r; echo "kernelreplies $(( $(k) - b ))"; grep -q ' %d packets received' /tmp/r || awk -F'seq=' '/seq=/{split($2,a," "); s[a[1]]=$0} END{for(k=0;k<%d;k++) if(!(k in s)) print "missing seq " k " after: " s[k-1]}' /tmp/r; done`, perRound, perRound, perRound)
	guest := &guestinit.Config{
		Net: []guestinit.NetConfig{{Name: "eth0", Addr: "169.254.77.2/24"}},
		Run: []string{"/bin/sh", "-c", script},
	}
	boot := func(sock, incoming string) *vmtest.VM {
		return vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, Memory: migrationMemory,
			NICs: []vmtest.NIC{{Socket: sock}}, Guest: guest, Incoming: incoming})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()

	vm := boot(aSocks[0], "")
	if _, err := vm.WaitConsole(ctx, "pinground 2\r"); err != nil {
		t.Fatal(err)
	}
	var consoles [][]byte
	var worst int64
	for i := range migrations {
		sock, to := bSocks[0], "b"
		if i%2 == 1 {
			sock, to = aSocks[0], "a"
		}
		uri, err := vmtest.IncomingURI()
		if err != nil {
			t.Fatal(err)
		}
		next := boot(sock, uri)
		// Every other migration is throttled, so that dirty logging stays
		// on for seconds with many dirty syncs, as in the slow runs that
		// lost replies (2.3-6 s).
		bw := int64(1) << 40
		if i%2 == 1 {
			bw = 32 << 20
		}
		if err := vm.QMP(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": bw}, nil); err != nil {
			t.Fatal(err)
		}
		st, err := vm.Migrate(ctx, uri)
		if err != nil {
			t.Fatalf("migration %d (to %s): %v", i+1, to, err)
		}
		worst = max(worst, st.Downtime)
		t.Logf("migration %2d to %s: %d ms, downtime %d ms, %d MiB", i+1, to, st.TotalTime, st.Downtime, st.RAM.Transferred>>20)
		// As libvirt does, the source QEMU goes once its guest runs
		// elsewhere, freeing its port (one frontend per port).
		vm.Shutdown(ctx)
		consoles = append(consoles, vm.Console())
		vm = next
	}
	// Let the round running at the last migration finish, and one more.
	// Each QEMU's console holds what the guest printed while it ran there.
	lastRound := func(consoles ...[]byte) int {
		n := 0
		for _, m := range pingRound.FindAllSubmatch(bytes.Join(consoles, []byte("\n")), -1) {
			v, _ := strconv.Atoi(string(m[1]))
			n = max(n, v)
		}
		return n
	}
	cur := lastRound(append(consoles, vm.Console())...)
	if _, err := vm.WaitConsole(ctx, fmt.Sprintf("pinground %d\r", cur+2)); err != nil {
		t.Fatal(err)
	}
	vm.Shutdown(ctx)
	consoles = append(consoles, vm.Console())

	all := bytes.Join(consoles, []byte("\n"))
	rounds := lastRound(consoles...)
	sums := pingSummary.FindAllSubmatch(all, -1)
	var maxRTT float64
	for _, m := range pingRTT.FindAllSubmatch(all, -1) {
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		maxRTT = max(maxRTT, v)
	}
	// Pair each round's summary with the guest kernel's count after it.
	sent, got, kernelGot, lossy, pingOnly := 0, 0, 0, 0, 0
	tx, rx := -1, -1
	for _, line := range strings.Split(strings.ReplaceAll(string(all), "\r", ""), "\n") {
		if m := pingSummary.FindStringSubmatch(line); m != nil {
			tx, _ = strconv.Atoi(m[1])
			rx, _ = strconv.Atoi(m[2])
			continue
		}
		m := kernelReplies.FindStringSubmatch(line)
		if m == nil || tx < 0 {
			continue
		}
		kr, _ := strconv.Atoi(m[1])
		sent, got, kernelGot = sent+tx, got+rx, kernelGot+kr
		switch {
		case tx != perRound || kr < tx:
			lossy++
			t.Errorf("a ping round lost replies before the guest's stack: %d sent, the guest kernel received %d (ping counted %d)", tx, kr, rx)
		case rx < tx:
			pingOnly += tx - rx
			t.Logf("busybox ping missed %d replies that the guest kernel received (its socket buffer overflowed after a stall)", tx-rx)
		}
		tx, rx = -1, -1
	}
	if n := len(sums) - 1; lossy == 0 && sent < n*perRound {
		t.Errorf("only %d of %d round summaries paired with the guest kernel's count", sent/perRound, n)
	}
	for i, c := range consoles {
		for _, m := range missingSeq.FindAll(c, 20) {
			t.Logf("console of QEMU %d (ran after migration %d): %s", i, i, m)
		}
	}
	ap, bp := a.Ports()[0], b.Ports()[0]
	t.Logf("%d migrations (worst downtime %d ms); %d rounds started, %d summaries: %d pings sent, %d replies reached the guest kernel, ping counted %d (%d missed in its socket); slowest reply %.1f ms",
		migrations, worst, rounds, len(sums), sent, kernelGot, got, pingOnly, maxRTT)
	t.Logf("daemon a: echo %d, rx %d, drops %d; daemon b: echo %d, rx %d, drops %d",
		ap.EchoReplies, ap.GuestRXPackets, ap.Drops, bp.EchoReplies, bp.GuestRXPackets, bp.Drops)
	// Every round but the one in progress at the shutdown printed its
	// summary; a missing one means a round never ended (a reply missing
	// for good makes busybox wait, then report the loss).
	if len(sums) < rounds-1 {
		t.Errorf("%d ping rounds started, only %d summaries", rounds, len(sums))
	}
	if lossy == 0 && len(sums) < rounds-1 {
		t.Logf("consoles:\n%s", all)
	}
	if ap.Drops+bp.Drops != 0 {
		t.Errorf("frames for the guest dropped: daemon a %d, daemon b %d", ap.Drops, bp.Drops)
	}
}
