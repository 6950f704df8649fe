// Package kubevirt is Veloce's KubeVirt network binding plugin: a sidecar
// in each virt-launcher pod that implements KubeVirt's hook API (package
// hookapi: Info, and Callbacks v1alpha2 and v1alpha3) over gRPC on a unix
// socket in /var/run/kubevirt-hooks.
//
// When virt-launcher defines the domain it calls OnDefineDomain with the
// libvirt domain XML and the VirtualMachineInstance (JSON). For every VMI
// interface whose binding is the plugin's (Options.Binding, default
// "veloce") the plugin puts an <interface type='vhostuser'> into the
// domain — replacing the one KubeVirt made for that interface (alias
// "ua-NAME"), or adding it — and makes guest memory shared memfd
// (<memoryBacking><source type='memfd'/><access mode='shared'/>), which
// vhost-user needs.
//
// # Sockets
//
// QEMU listens (libvirt mode='server') and veloced connects
// (veloced --vhost-user-client, or velocectl add-port --client), so
// veloced can restart without the VM losing its NIC for good. Each
// interface's socket is
//
//	SocketDir/NAMESPACE_VMI_IFACE.sock
//
// which is unique on a node at any time (a namespace and VMI name pair is
// unique in the cluster; KubeVirt never runs two pods of one VMI on one
// node except during a migration, which same-node migration forbids).
// Names with other characters than [a-z0-9.-], or a path longer than a
// unix socket allows, become a hash of the three names instead
// (SocketName).
//
// With Options.Control the plugin also registers the port with veloced
// itself (add-port, client mode, at OnDefineDomain; del-port at
// Shutdown), translating SocketDir into HostSocketDir, the same directory
// as veloced sees it. Without it the operator (or another controller)
// does so.
//
// # What the operator must configure
//
// KubeVirt offers no field to mount a host directory into virt-launcher's
// compute container, where QEMU runs. The directory veloced's client
// ports use must be mounted there at SocketDir by something else: a
// device plugin or DRA driver whose allocation adds the mount (as
// KubeVirt's own vhost-user binding plugin does with DRA), or a mutating
// admission webhook that adds a hostPath volume to virt-launcher pods.
// See examples/kubevirt/README.md.
package kubevirt
