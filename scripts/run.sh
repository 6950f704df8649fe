#!/usr/bin/env bash
# 'make run': veloced serves a VM over vhost-user; the guest (stock Debian
# kernel, busybox udhcpc) gets its address from the daemon by DHCP and pings
# the service address; velocectl shows the port while it runs and after.
# Usage: scripts/run.sh BIN_DIR IMAGE_DIR [PINGS]
set -euo pipefail
bin=$1 image=$2 count=${3:-20}
work=$(mktemp -d /tmp/veloce-run.XXXXXX)
sock=$work/vm0.sock ctl=$work/control.sock
daemon=
cleanup() {
	[ -n "$daemon" ] && kill -TERM "$daemon" 2>/dev/null && wait "$daemon" || true
	rm -rf "$work"
}
trap cleanup EXIT

echo "run: veloced --vhost-user $sock --control $ctl"
"$bin/veloced" --vhost-user "$sock" --control "$ctl" 2>"$work/veloced.log" &
daemon=$!
for _ in $(seq 200); do [ -S "$ctl" ] && break; sleep 0.05; done
[ -S "$ctl" ] || { cat "$work/veloced.log"; echo "run: veloced did not start" >&2; exit 1; }

echo "run: booting a guest (QEMU, TCG): udhcpc, then $count pings to the service address"
"$bin/veloce-vm" --image "$image" --vhost-user "$sock" --ip none -- /bin/sh -c \
	"udhcpc -i eth0 -n -q -f -t 10 2>&1 && ip -4 addr show eth0 && ping -c $count -i 0.2 169.254.77.1" &
vm=$!
sleep 8
echo "--- velocectl ports (while the guest runs) ---"
"$bin/velocectl" --control "$ctl" ports || true
status=0
wait "$vm" || status=$?
echo "--- velocectl ports -o json (after) ---"
"$bin/velocectl" --control "$ctl" ports -o json
exit $status
