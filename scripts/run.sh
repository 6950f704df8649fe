#!/usr/bin/env bash
# 'make run', the main job: veloced serves a VM over vhost-user; the guest
# (stock Debian kernel) takes its address by DHCP from the daemon and an
# application in it streams messages with guestlib to an application on
# the host, which prints what it receives and the rate. velocectl shows the
# port and the streams while it runs.
# Usage: scripts/run.sh BIN_DIR IMAGE_DIR [MESSAGES]
set -euo pipefail
bin=$1 image=$2 count=${3:-50000}
work=$(mktemp -d /tmp/veloce-run.XXXXXX)
sock=$work/vm0.sock ctl=$work/control.sock app=$work/app.sock
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

echo "run: veloced --vhost-user $sock --app-socket $app --shared-channel 1"
"$bin/veloced" --vhost-user "$sock" --control "$ctl" --app-socket "$app" --shared-channel 1 2>"$work/veloced.log" &
pids+=($!)
for _ in $(seq 200); do [ -S "$ctl" ] && [ -S "$app" ] && break; sleep 0.05; done
[ -S "$ctl" ] || { cat "$work/veloced.log"; echo "run: veloced did not start" >&2; exit 1; }

echo "run: host application: veloce-perf sink on channel 1 (guestlib, host transport)"
"$bin/veloce-perf" sink --socket "$app" --channel 1 --count "$count" --show 3 --progress 2s --timeout 10m &
sink=$!
pids+=($sink)
sleep 1

echo "run: booting a guest (QEMU, TCG): DHCP from veloced, then veloce-perf source sends $count messages"
"$bin/veloce-vm" --image "$image" --vhost-user "$sock" --quiet -- \
	/bin/veloce-perf source --channel 1 --count "$count" --rate 5000 --text "hello from the VM" &
vm=$!
pids+=($vm)
sleep 8
echo "--- velocectl ports ---"
"$bin/velocectl" --control "$ctl" ports || true
echo "--- velocectl streams ---"
"$bin/velocectl" --control "$ctl" streams || true
status=0
wait "$vm" || status=$?
wait "$sink" || status=$?
exit $status
