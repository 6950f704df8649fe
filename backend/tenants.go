package backend

import (
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
)

// Tenants. Every session belongs to a tenant: a VM port's to the port's
// (PortOptions.Tenant, default the port's name), a host application's to
// the one its connection's peer credentials map to
// (DaemonOptions.AppTenants; default HostTenant for uid 0, "uid:N"
// otherwise). Channels are scoped to tenants: the runtime's channel table
// is keyed by (tenant id, channel id), so a source of tenant A on channel
// 7 and a sink of tenant B on channel 7 never meet. An operator shares
// channels with RuntimeOptions.SharedChannels (veloced --shared-channel):
// those ids form one namespace for every tenant.
//
// The key is resolved when a source or sink is created (under the
// runtime's lock) and kept in it, so Emit and delivery look up exactly
// what they looked up before: one table, one key. Nothing is added per
// message.
//
// Across hosts. A tenant's id is the 32-bit FNV-1a hash of its name, the
// same on every daemon, so it can ride in the wire header (see
// Runtime.deliverRemote). A daemon refuses a second tenant name that
// hashes to an id already in use (ErrTenantCollision, the application
// sees StatusDenied) instead of merging the two. Until the wire carries
// a tenant id, peers' messages belong to the operator tenant HostTenant:
// they reach shared channels and the host tenant's own, and only sources
// on those are sent to peers (and only their channels are listed in the
// channel directory). A VM tenant's private channels stay on its host.

// TenantID is a tenant's number: the hash of its name (TenantIDOf).
// SharedTenant is the namespace of the shared channels.
type TenantID uint32

// SharedTenant keys the shared channels; no tenant name maps to it.
const SharedTenant TenantID = 0

// HostTenant is the operator's tenant: host applications of uid 0 by
// default, and peers' messages.
const HostTenant = "host"

// ErrTenantCollision: a tenant name whose id another tenant already has.
var ErrTenantCollision = errors.New("tenant id collision")

// TenantIDOf returns the id of the tenant named name: FNV-1a, 32 bits
// (never SharedTenant: a name hashing to 0 takes 1).
func TenantIDOf(name string) TenantID {
	h := fnv.New32a()
	h.Write([]byte(name))
	if id := TenantID(h.Sum32()); id != SharedTenant {
		return id
	}
	return 1
}

// chanKey is a channel's key in the runtime's table.
type chanKey struct {
	tenant  TenantID
	channel uint32
}

// tenantLocked returns name's id, registering it; it fails if another
// name has that id.
//
// +checklocks:r.mu
func (r *Runtime) tenantLocked(name string) (TenantID, error) {
	if name == "" {
		return 0, errors.New("tenant: empty name")
	}
	id := TenantIDOf(name)
	if other, ok := r.tenants[id]; ok && other != name {
		return 0, fmt.Errorf("tenant %q: id %#x is tenant %q's: %w", name, uint32(id), other, ErrTenantCollision)
	}
	r.tenants[id] = name
	return id, nil
}

// keyLocked is the table key of tenant's channel ch.
//
// +checklocks:r.mu
func (r *Runtime) keyLocked(tenant TenantID, ch uint32) chanKey {
	if r.shared[ch] {
		return chanKey{SharedTenant, ch}
	}
	return chanKey{tenant, ch}
}

// remoteKey reports whether key's messages are exchanged with peers: the
// shared channels and the operator tenant's (see the comment above).
func (r *Runtime) remoteKey(key chanKey) bool {
	return key.tenant == SharedTenant || key.tenant == r.hostTenant
}

// deliverLocal hands a message from a peer, on channel, to the local
// sinks: the peer's wire header carries no tenant, so the message is the
// operator tenant's (or a shared channel's).
func (r *Runtime) deliverLocal(channel uint32, source, seq uint64, payload []byte) (delivered, dropped int) {
	return r.deliverRemoteBatch(nil, r.hostTenant, channel, source, seq, payload)
}

// deliverLocalBatch is deliverLocal as part of b, a received batch
// (Runtime.deliverBatch): the receiver flushes b at the batch's end.
func (r *Runtime) deliverLocalBatch(b *deliveryBatch, channel uint32, source, seq uint64, payload []byte) (delivered, dropped int) {
	return r.deliverRemoteBatch(b, r.hostTenant, channel, source, seq, payload)
}

// deliverRemote hands a message from a peer, on tenant's channel, to the
// local sinks: the entry point for a wire header that carries the
// sending tenant's id (TenantIDOf its name). A shared channel reaches
// every tenant's sinks on it. It takes no lock and does not allocate.
func (r *Runtime) deliverRemote(tenant TenantID, channel uint32, source, seq uint64, payload []byte) (delivered, dropped int) {
	return r.deliverRemoteBatch(nil, tenant, channel, source, seq, payload)
}

// deliverRemoteBatch is deliverRemote as part of b, the receiver's batch
// (Runtime.deliverBatch), nil for none.
func (r *Runtime) deliverRemoteBatch(b *deliveryBatch, tenant TenantID, channel uint32, source, seq uint64, payload []byte) (delivered, dropped int) {
	key := chanKey{tenant, channel}
	if len(r.shared) > 0 && r.shared[channel] { // fixed after NewRuntime: read without a lock
		key.tenant = SharedTenant
	}
	return r.deliverBatch(b, key, source, seq, payload)
}

// remoteChannels lists, sorted, the channels with local sinks that peers
// may send to (the channel directory).
func (r *Runtime) remoteChannels() []uint32 { return r.remoteChannelsExcept(nil) }

// remoteChannelsExcept is remoteChannels counting only the sinks whose
// session is not of a port in skip (one migrating in or out:
// fleetdir.go).
func (r *Runtime) remoteChannelsExcept(skip map[*Port]bool) []uint32 {
	var chans []uint32
	for k, sinks := range r.channels.All() {
		if len(sinks) == 0 || !r.remoteKey(k) {
			continue
		}
		if len(skip) > 0 && !slices.ContainsFunc(sinks, func(sk *Sink) bool { p, ok := sk.session.ep.(*Port); return !ok || !skip[p] }) {
			continue
		}
		chans = append(chans, k.channel)
	}
	slices.Sort(chans)
	return slices.Compact(chans)
}
