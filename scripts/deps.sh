#!/usr/bin/env bash
# Installs what Veloce needs on Debian 12, idempotently: nothing is
# downloaded when everything is present and apt's lists are fresh.
set -euo pipefail

packages=(
	qemu-system-x86 qemu-utils          # guests (TCG is enough)
	dpdk dpdk-dev libdpdk-dev pkg-config # DPDK 22.11: libraries, testpmd, pkg-config libdpdk
	rdma-core libibverbs-dev            # RDMA verbs (soft-RoCE inside guests)
	ibverbs-providers perftest          # the rxe provider for guests; ib_send_lat/bw, veloce-bench rdma's reference
	busybox-static                      # guest userland: sh, ping, udhcpc, ip
	ovmf systemd-boot-efi               # disk-image guests: UEFI firmware (stand-in for Cloud Hypervisor's), systemd-bootx64.efi
	mtools dosfstools                   # tests check the disk image's FAT with mtype and fsck.fat
	libvirt-daemon-system libvirt-clients # libvirt 9.0 (libvirtd, virtlogd, virsh; QEMU driver) for integration/libvirt
	iproute2 ethtool gcc make           # namespaces, veths and their offloads; cgo; this Makefile
	ca-certificates
	systemd                             # systemd-analyze: make lint verifies dist/veloced.service
	etcd-server                         # /usr/bin/etcd: the fleet directory tests (internal/fleet, cmd/veloced) start a real one
)

missing=()
for p in "${packages[@]}"; do
	case "$p" in \#*) continue ;; esac
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done

# The guest kernel is fetched with apt-get download, which needs current
# package lists: refresh them when absent or older than a day.
lists_stale=1
if compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
	newest=$(stat -c %Y /var/lib/apt/lists/*_Packages* | sort -n | tail -1)
	[ $(( $(date +%s) - newest )) -lt 86400 ] && lists_stale=0
fi

if [ ${#missing[@]} -eq 0 ] && [ $lists_stale -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null; then SUDO=sudo; else
		echo "deps: need root to install: ${missing[*]}" >&2
		exit 1
	fi
else
	SUDO=
fi
echo "deps: apt-get update"
$SUDO apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
