#!/usr/bin/env bash
# The demo 'make run' shows until veloced exists: a Veloce guest boots
# against DPDK testpmd's vhost-user backend (net_vhost, icmpecho) and pings
# it. Usage: scripts/run-testpmd-demo.sh BIN_DIR IMAGE_DIR [PINGS]
set -euo pipefail
bin=$1 image=$2 count=${3:-10}
work=$(mktemp -d /tmp/veloce-run.XXXXXX)
sock=$work/vhost.sock
pmd_pid=
cleanup() {
	if [ -n "$pmd_pid" ] && kill -0 "$pmd_pid" 2>/dev/null; then
		kill -INT "$pmd_pid"; wait "$pmd_pid" || true
		echo "--- testpmd's view (its own statistics) ---"
		sed -n '/Accumulated forward statistics/,/+++++++++++++++++++/p' "$work/testpmd.log"
	fi
	rm -rf "$work"
}
trap cleanup EXIT

echo "run: starting dpdk-testpmd with a net_vhost backend on $sock"
dpdk-testpmd -l 0,1 --no-huge -m 512 --single-file-segments --no-pci --file-prefix "veloce-run-$$" \
	--vdev "net_vhost0,iface=$sock,queues=1" -- \
	--total-num-mbufs=32768 --forward-mode=icmpecho --stats-period 3600 >"$work/testpmd.log" 2>&1 &
pmd_pid=$!
for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { cat "$work/testpmd.log"; echo "run: testpmd did not create $sock" >&2; exit 1; }

echo "run: booting a guest (QEMU, TCG) that pings the backend $count times"
"$bin/veloce-vm" --image "$image" --vhost-user "$sock" --ip 169.254.77.2/24 -- \
	/bin/ping -c "$count" -i 0.2 169.254.77.1
