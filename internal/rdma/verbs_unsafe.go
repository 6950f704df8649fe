//go:build rdma && cgo

package rdma

/*
#cgo pkg-config: libibverbs
#cgo noescape vl_poll_cq
#cgo nocallback vl_poll_cq
#cgo noescape vl_post_send
#cgo nocallback vl_post_send
#cgo noescape vl_post_recv
#cgo nocallback vl_post_recv
#cgo noescape vl_query_gid
#cgo noescape vl_qp_rtr
#include <infiniband/verbs.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

// These mirror the Go types WC and WorkRequest (sizes checked on the Go
// side).
struct vl_wc { uint64_t wr_id; uint32_t status, opcode, byte_len, qp_num, vendor_err, pad; };
struct vl_wr { uint64_t wr_id, addr; uint32_t len, lkey, flags, pad; };

// A CQ with the ibv_wc array its polls read into.
struct vl_cq { struct ibv_cq *cq; struct ibv_wc *wcs; int cap; };

// Work-request chains live in C memory, one set per queue, reused by
// every post; n entries at most.
struct vl_wrs { struct ibv_send_wr *swr; struct ibv_recv_wr *rwr; struct ibv_sge *sge; int cap; };

static struct vl_wrs *vl_wrs_new(int cap) {
	struct vl_wrs *w = calloc(1, sizeof *w);
	if (!w) return NULL;
	w->swr = calloc(cap, sizeof *w->swr);
	w->rwr = calloc(cap, sizeof *w->rwr);
	w->sge = calloc(cap, sizeof *w->sge);
	w->cap = cap;
	if (!w->swr || !w->rwr || !w->sge) { free(w->swr); free(w->rwr); free(w->sge); free(w); return NULL; }
	return w;
}

static void vl_wrs_free(struct vl_wrs *w) {
	if (!w) return;
	free(w->swr); free(w->rwr); free(w->sge); free(w);
}

static struct vl_cq *vl_cq_new(struct ibv_context *ctx, int cqe, struct ibv_comp_channel *ch, int cap) {
	struct vl_cq *c = calloc(1, sizeof *c);
	if (!c) { errno = ENOMEM; return NULL; }
	c->wcs = calloc(cap, sizeof *c->wcs);
	if (!c->wcs) { free(c); errno = ENOMEM; return NULL; }
	c->cap = cap;
	c->cq = ibv_create_cq(ctx, cqe, NULL, ch, 0);
	if (!c->cq) { int e = errno; free(c->wcs); free(c); errno = e; return NULL; }
	return c;
}

static int vl_cq_free(struct vl_cq *c) {
	int rc = ibv_destroy_cq(c->cq);
	free(c->wcs); free(c);
	return rc;
}

// Polls up to n completions into out; returns how many, or -1.
static int vl_poll_cq(struct vl_cq *c, struct vl_wc *out, int n) {
	if (n > c->cap) n = c->cap;
	int k = ibv_poll_cq(c->cq, n, c->wcs);
	for (int i = 0; i < k; i++) {
		struct ibv_wc *w = &c->wcs[i];
		out[i].wr_id = w->wr_id;
		out[i].status = w->status;
		out[i].opcode = w->opcode;
		out[i].byte_len = w->byte_len;
		out[i].qp_num = w->qp_num;
		out[i].vendor_err = w->vendor_err;
	}
	return k;
}

static int vl_req_notify(struct vl_cq *c) { return ibv_req_notify_cq(c->cq, 0); }

// Reads and acknowledges up to 64 pending events of a (non-blocking)
// channel; returns how many, or -errno.
static int vl_get_events(struct ibv_comp_channel *ch) {
	int n = 0;
	for (; n < 64; n++) {
		struct ibv_cq *cq; void *cqctx;
		if (ibv_get_cq_event(ch, &cq, &cqctx)) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) break;
			return n > 0 ? n : -errno;
		}
		ibv_ack_cq_events(cq, 1);
	}
	return n;
}

static int vl_nonblock(int fd) {
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return errno;
	return 0;
}

// Builds a chain of n sends in w and posts it; *posted says how many
// the provider took. Returns 0 or an errno.
static int vl_post_send(struct ibv_qp *qp, struct vl_wrs *w, struct vl_wr *r, int n, int *posted) {
	if (n > w->cap) n = w->cap;
	*posted = 0;
	if (n <= 0) return 0;
	for (int i = 0; i < n; i++) {
		w->sge[i] = (struct ibv_sge){ .addr = r[i].addr, .length = r[i].len, .lkey = r[i].lkey };
		w->swr[i] = (struct ibv_send_wr){ .wr_id = r[i].wr_id, .next = i + 1 < n ? &w->swr[i + 1] : NULL,
			.sg_list = &w->sge[i], .num_sge = 1, .opcode = IBV_WR_SEND, .send_flags = r[i].flags };
	}
	struct ibv_send_wr *bad = NULL;
	int rc = ibv_post_send(qp, w->swr, &bad);
	*posted = rc && bad ? (int)(bad - w->swr) : (rc ? 0 : n);
	return rc;
}

// Likewise for receives, to an SRQ when srq is set, else to qp.
static int vl_post_recv(struct ibv_qp *qp, struct ibv_srq *srq, struct vl_wrs *w, struct vl_wr *r, int n, int *posted) {
	if (n > w->cap) n = w->cap;
	*posted = 0;
	if (n <= 0) return 0;
	for (int i = 0; i < n; i++) {
		w->sge[i] = (struct ibv_sge){ .addr = r[i].addr, .length = r[i].len, .lkey = r[i].lkey };
		w->rwr[i] = (struct ibv_recv_wr){ .wr_id = r[i].wr_id, .next = i + 1 < n ? &w->rwr[i + 1] : NULL,
			.sg_list = &w->sge[i], .num_sge = 1 };
	}
	struct ibv_recv_wr *bad = NULL;
	int rc = srq ? ibv_post_srq_recv(srq, w->rwr, &bad) : ibv_post_recv(qp, w->rwr, &bad);
	*posted = rc && bad ? (int)(bad - w->rwr) : (rc ? 0 : n);
	return rc;
}

static int vl_query_port(struct ibv_context *ctx, uint8_t port, uint32_t *state, uint32_t *max_mtu, uint32_t *active_mtu, int *gid_len, uint8_t *ll) {
	struct ibv_port_attr a;
	memset(&a, 0, sizeof a);
	int rc = ibv_query_port(ctx, port, &a);
	if (rc) return rc;
	*state = a.state; *max_mtu = a.max_mtu; *active_mtu = a.active_mtu; *gid_len = a.gid_tbl_len; *ll = a.link_layer;
	return 0;
}

static int vl_query_gid(struct ibv_context *ctx, uint8_t port, int index, uint8_t *out) {
	union ibv_gid g;
	if (ibv_query_gid(ctx, port, index, &g)) return errno ? errno : EINVAL;
	memcpy(out, g.raw, 16);
	return 0;
}

static struct ibv_mr *vl_reg_mr(struct ibv_pd *pd, void *addr, size_t len, int access) {
	return ibv_reg_mr(pd, addr, len, access);
}

static struct ibv_srq *vl_create_srq(struct ibv_pd *pd, int max_wr) {
	struct ibv_srq_init_attr a;
	memset(&a, 0, sizeof a);
	a.attr.max_wr = max_wr;
	a.attr.max_sge = 1;
	return ibv_create_srq(pd, &a);
}

static struct ibv_qp *vl_create_rc_qp(struct ibv_pd *pd, struct ibv_cq *scq, struct ibv_cq *rcq, struct ibv_srq *srq, int max_send, int max_recv, int max_inline) {
	struct ibv_qp_init_attr a;
	memset(&a, 0, sizeof a);
	a.send_cq = scq; a.recv_cq = rcq; a.srq = srq;
	a.cap.max_send_wr = max_send;
	a.cap.max_recv_wr = srq ? 0 : max_recv;
	a.cap.max_send_sge = 1;
	a.cap.max_recv_sge = srq ? 0 : 1;
	a.cap.max_inline_data = max_inline;
	a.qp_type = IBV_QPT_RC;
	a.sq_sig_all = 0;
	return ibv_create_qp(pd, &a);
}

static int vl_qp_init(struct ibv_qp *qp, uint8_t port, int access) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_INIT; a.pkey_index = 0; a.port_num = port; a.qp_access_flags = access;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
}

static int vl_qp_rtr(struct ibv_qp *qp, uint8_t port, uint32_t dqpn, uint32_t rq_psn, int mtu, uint8_t *dgid, int sgid, uint8_t rnr, uint8_t hops) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_RTR;
	a.path_mtu = mtu;
	a.dest_qp_num = dqpn;
	a.rq_psn = rq_psn;
	a.max_dest_rd_atomic = 1;
	a.min_rnr_timer = rnr;
	a.ah_attr.is_global = 1;
	memcpy(a.ah_attr.grh.dgid.raw, dgid, 16);
	a.ah_attr.grh.sgid_index = sgid;
	a.ah_attr.grh.hop_limit = hops;
	a.ah_attr.port_num = port;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
		IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
}

static int vl_qp_rts(struct ibv_qp *qp, uint32_t sq_psn, uint8_t timeout, uint8_t retry, uint8_t rnr_retry) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_RTS; a.sq_psn = sq_psn; a.timeout = timeout; a.retry_cnt = retry; a.rnr_retry = rnr_retry; a.max_rd_atomic = 1;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC);
}

static int vl_qp_err(struct ibv_qp *qp) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_ERR;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE);
}

static int vl_qp_state(struct ibv_qp *qp, uint32_t *state) {
	struct ibv_qp_attr a;
	struct ibv_qp_init_attr ia;
	int rc = ibv_query_qp(qp, &a, IBV_QP_STATE, &ia);
	if (!rc) *state = a.qp_state;
	return rc;
}

static struct ibv_context *vl_open(const char *name, int *err) {
	int n = 0;
	struct ibv_device **l = ibv_get_device_list(&n);
	if (!l) { *err = errno ? errno : ENOSYS; return NULL; }
	struct ibv_context *c = NULL;
	*err = ENODEV;
	for (int i = 0; i < n; i++) {
		if (strcmp(ibv_get_device_name(l[i]), name) == 0) {
			c = ibv_open_device(l[i]);
			*err = c ? 0 : (errno ? errno : EIO);
			break;
		}
	}
	ibv_free_device_list(l);
	return c;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"
)

// The Go mirrors must match the C structs, and the constants the C enums.
var (
	_ [unsafe.Sizeof(WC{}) - C.sizeof_struct_vl_wc]byte
	_ [C.sizeof_struct_vl_wc - unsafe.Sizeof(WC{})]byte
	_ [unsafe.Sizeof(WorkRequest{}) - C.sizeof_struct_vl_wr]byte
	_ [C.sizeof_struct_vl_wr - unsafe.Sizeof(WorkRequest{})]byte
)

func init() {
	if WCRetryExcErr != C.IBV_WC_RETRY_EXC_ERR || WCFlushErr != C.IBV_WC_WR_FLUSH_ERR || WCRecv != C.IBV_WC_RECV ||
		SendSignaled != C.IBV_SEND_SIGNALED || SendInline != C.IBV_SEND_INLINE || QPError != C.IBV_QPS_ERR ||
		PortActive != C.IBV_PORT_ACTIVE || MTU4096 != C.IBV_MTU_4096 || AccessLocalWrite != C.IBV_ACCESS_LOCAL_WRITE {
		panic("rdma: Go constants do not match <infiniband/verbs.h>")
	}
}

// Available reports whether this build has the verbs binding. Whether the
// machine has a device is DeviceNames' business.
func Available() bool { return true }

func errnoErr(op string, rc C.int) error {
	if rc == 0 {
		return nil
	}
	if rc < 0 {
		rc = -rc
	}
	return &Error{Op: op, Errno: syscall.Errno(rc)}
}

func callErr(op string, err error) error {
	var e syscall.Errno
	if errors.As(err, &e) {
		return &Error{Op: op, Errno: e}
	}
	return &Error{Op: op, Errno: syscall.EIO}
}

// Context is an open RDMA device (struct ibv_context). Its methods may be
// called from any goroutine; Close it after everything made from it.
type Context struct {
	c    *C.struct_ibv_context
	name string
}

// Open opens the RDMA device called name (e.g. rxe0). It returns an error
// wrapping ErrNoDevice when there is none, or an *Error.
func Open(name string) (*Context, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var e C.int
	c := C.vl_open(cs, &e)
	if c == nil {
		if e == C.ENODEV {
			return nil, fmt.Errorf("rdma: open %s: %w", name, ErrNoDevice)
		}
		return nil, errnoErr("open "+name, e)
	}
	return &Context{c: c, name: name}, nil
}

// Name returns the device's name.
func (c *Context) Name() string { return c.name }

// Close closes the device.
func (c *Context) Close() error {
	if c.c == nil {
		return nil
	}
	rc := C.ibv_close_device(c.c)
	c.c = nil
	return errnoErr("close "+c.name, rc)
}

// QueryPort returns port's attributes (ports count from 1).
func (c *Context) QueryPort(port uint8) (PortAttr, error) {
	var st, maxm, act C.uint32_t
	var gl C.int
	var ll C.uint8_t
	if rc := C.vl_query_port(c.c, C.uint8_t(port), &st, &maxm, &act, &gl, &ll); rc != 0 {
		return PortAttr{}, errnoErr(fmt.Sprintf("query port %s/%d", c.name, port), rc)
	}
	return PortAttr{State: PortState(st), MaxMTU: MTU(maxm), ActiveMTU: MTU(act), GIDTableLen: int(gl), LinkLayer: uint8(ll)}, nil
}

// QueryGID returns entry index of port's GID table.
func (c *Context) QueryGID(port uint8, index int) (GID, error) {
	var g GID
	if rc := C.vl_query_gid(c.c, C.uint8_t(port), C.int(index), (*C.uint8_t)(unsafe.Pointer(&g[0]))); rc != 0 {
		return g, errnoErr(fmt.Sprintf("query gid %s/%d[%d]", c.name, port, index), rc)
	}
	return g, nil
}

// RoCEv2GID finds ip's RoCE v2 entry in port's GID table (ibv_query_gid
// over the table, the entry's type from sysfs) and returns its index and
// GID, or an error wrapping ErrNoGID.
func (c *Context) RoCEv2GID(port uint8, ip netip.Addr) (int, GID, error) {
	pa, err := c.QueryPort(port)
	if err != nil {
		return 0, GID{}, err
	}
	want := GIDForAddr(ip)
	for i := 0; i < pa.GIDTableLen; i++ {
		g, err := c.QueryGID(port, i)
		if err != nil || g != want {
			continue
		}
		if t, err := GIDType(c.name, port, i); err == nil && t == "RoCE v2" {
			return i, g, nil
		}
	}
	return 0, GID{}, fmt.Errorf("rdma: %s port %d, %v: %w", c.name, port, ip, ErrNoGID)
}

// PD is a protection domain (struct ibv_pd).
type PD struct {
	pd  *C.struct_ibv_pd
	ctx *Context
}

// AllocPD allocates a protection domain.
func (c *Context) AllocPD() (*PD, error) {
	pd, err := C.ibv_alloc_pd(c.c)
	if pd == nil {
		return nil, callErr("alloc pd on "+c.name, err)
	}
	return &PD{pd: pd, ctx: c}, nil
}

// Close deallocates the domain (after its regions and queues).
func (pd *PD) Close() error {
	if pd.pd == nil {
		return nil
	}
	rc := C.ibv_dealloc_pd(pd.pd)
	pd.pd = nil
	return errnoErr("dealloc pd", rc)
}

// MR is a registered memory region (struct ibv_mr) over a Memory.
type MR struct {
	mr  *C.struct_ibv_mr
	mem *Memory
}

// RegisterMemory registers all of m with the device. m must outlive the
// region: close the region first.
func (pd *PD) RegisterMemory(m *Memory, access Access) (*MR, error) {
	b := m.Bytes()
	if len(b) == 0 {
		return nil, fmt.Errorf("rdma: register memory: %w", ErrClosed)
	}
	// b is mmap'd, not Go heap: the device may keep its address.
	mr, err := C.vl_reg_mr(pd.pd, unsafe.Pointer(unsafe.SliceData(b)), C.size_t(len(b)), C.int(access))
	if mr == nil {
		return nil, callErr(fmt.Sprintf("register %d bytes", len(b)), err)
	}
	return &MR{mr: mr, mem: m}, nil
}

// LKey is the region's local key (for work requests' scatter/gather).
func (mr *MR) LKey() uint32 { return uint32(mr.mr.lkey) }

// RKey is the region's remote key.
func (mr *MR) RKey() uint32 { return uint32(mr.mr.rkey) }

// Addr is the region's first byte's address: a work request's Addr is
// Addr plus an offset into the region's Memory.
func (mr *MR) Addr() uint64 { return uint64(uintptr(mr.mr.addr)) }

// Close deregisters the region.
func (mr *MR) Close() error {
	if mr.mr == nil {
		return nil
	}
	rc := C.ibv_dereg_mr(mr.mr)
	mr.mr = nil
	return errnoErr("deregister memory", rc)
}

// CompChannel is a completion channel (struct ibv_comp_channel): its file
// descriptor, non-blocking, becomes readable when a CQ armed with
// ReqNotify gets a completion. Sleep on it with poll(2); then GetEvents,
// ReqNotify again, and poll the CQ.
type CompChannel struct {
	ch *C.struct_ibv_comp_channel
}

// NewCompChannel creates a completion channel.
func (c *Context) NewCompChannel() (*CompChannel, error) {
	ch, err := C.ibv_create_comp_channel(c.c)
	if ch == nil {
		return nil, callErr("create completion channel", err)
	}
	if rc := C.vl_nonblock(ch.fd); rc != 0 {
		C.ibv_destroy_comp_channel(ch)
		return nil, errnoErr("completion channel O_NONBLOCK", rc)
	}
	return &CompChannel{ch: ch}, nil
}

// Fd returns the channel's file descriptor (owned by the channel).
func (ch *CompChannel) Fd() int { return int(ch.ch.fd) }

// GetEvents reads and acknowledges the pending events (0 when there are
// none; it never blocks).
func (ch *CompChannel) GetEvents() (int, error) {
	n := C.vl_get_events(ch.ch)
	if n < 0 {
		return 0, errnoErr("get cq event", n)
	}
	return int(n), nil
}

// Close destroys the channel, after every CQ using it.
func (ch *CompChannel) Close() error {
	if ch.ch == nil {
		return nil
	}
	rc := C.ibv_destroy_comp_channel(ch.ch)
	ch.ch = nil
	return errnoErr("destroy completion channel", rc)
}

// pollCap bounds the completions one Poll returns.
const pollCap = 256

// CQ is a completion queue (struct ibv_cq). Poll is safe to call from one
// goroutine at a time per CQ.
type CQ struct {
	c *C.struct_vl_cq
}

// NewCQ creates a CQ of at least cqe entries, reporting to ch when not
// nil.
func (c *Context) NewCQ(cqe int, ch *CompChannel) (*CQ, error) {
	var cch *C.struct_ibv_comp_channel
	if ch != nil {
		cch = ch.ch
	}
	cq, err := C.vl_cq_new(c.c, C.int(cqe), cch, pollCap)
	if cq == nil {
		return nil, callErr(fmt.Sprintf("create cq of %d", cqe), err)
	}
	return &CQ{c: cq}, nil
}

// Poll moves up to len(wcs) (at most 256) completions into wcs and returns
// how many: one cgo call, no allocation.
func (cq *CQ) Poll(wcs []WC) (int, error) {
	if len(wcs) == 0 {
		return 0, nil
	}
	n := C.vl_poll_cq(cq.c, (*C.struct_vl_wc)(unsafe.Pointer(unsafe.SliceData(wcs))), C.int(len(wcs)))
	if n < 0 {
		return 0, errPollCQ
	}
	return int(n), nil
}

var errPollCQ = &Error{Op: "poll cq", Errno: syscall.EIO}

// ReqNotify arms the CQ: the next completion raises an event on its
// channel.
func (cq *CQ) ReqNotify() error { return errnoErr("req notify cq", C.vl_req_notify(cq.c)) }

// Close destroys the CQ, after the QPs using it.
func (cq *CQ) Close() error {
	if cq.c == nil {
		return nil
	}
	rc := C.vl_cq_free(cq.c)
	cq.c = nil
	return errnoErr("destroy cq", rc)
}

// SRQ is a shared receive queue (struct ibv_srq): receive buffers that
// every QP made with it consumes. PostRecv is safe from one goroutine at
// a time.
type SRQ struct {
	srq *C.struct_ibv_srq
	w   *C.struct_vl_wrs
}

// NewSRQ creates an SRQ holding up to maxWR receives.
func (pd *PD) NewSRQ(maxWR int) (*SRQ, error) {
	w := C.vl_wrs_new(C.int(maxWR))
	if w == nil {
		return nil, &Error{Op: "srq work requests", Errno: syscall.ENOMEM}
	}
	s, err := C.vl_create_srq(pd.pd, C.int(maxWR))
	if s == nil {
		C.vl_wrs_free(w)
		return nil, callErr(fmt.Sprintf("create srq of %d", maxWR), err)
	}
	return &SRQ{srq: s, w: w}, nil
}

// PostRecv posts wrs as one chain (one cgo call) and returns how many the
// device took.
func (s *SRQ) PostRecv(wrs []WorkRequest) (int, error) {
	return postRecv(nil, s.srq, s.w, wrs)
}

func postRecv(qp *C.struct_ibv_qp, srq *C.struct_ibv_srq, w *C.struct_vl_wrs, wrs []WorkRequest) (int, error) {
	if len(wrs) == 0 {
		return 0, nil
	}
	var posted C.int
	rc := C.vl_post_recv(qp, srq, w, (*C.struct_vl_wr)(unsafe.Pointer(unsafe.SliceData(wrs))), C.int(len(wrs)), &posted)
	if rc != 0 {
		return int(posted), errnoErr("post recv", rc)
	}
	return int(posted), nil
}

// Close destroys the SRQ, after the QPs using it.
func (s *SRQ) Close() error {
	if s.srq == nil {
		return nil
	}
	rc := C.ibv_destroy_srq(s.srq)
	C.vl_wrs_free(s.w)
	s.srq, s.w = nil, nil
	return errnoErr("destroy srq", rc)
}

// QP is a reliable-connected queue pair (struct ibv_qp). State changes
// may come from any goroutine; posts to its send queue from one at a time.
type QP struct {
	qp *C.struct_ibv_qp
	w  *C.struct_vl_wrs
}

// NewRCQP creates an RC queue pair in state RESET.
func (pd *PD) NewRCQP(o QPOptions) (*QP, error) {
	if o.SendCQ == nil || o.RecvCQ == nil {
		return nil, errors.New("rdma: create qp: SendCQ and RecvCQ are required")
	}
	if o.MaxSendWR <= 0 {
		o.MaxSendWR = 256
	}
	if o.MaxRecvWR <= 0 {
		o.MaxRecvWR = 256
	}
	var srq *C.struct_ibv_srq
	if o.SRQ != nil {
		srq = o.SRQ.srq
	}
	w := C.vl_wrs_new(C.int(max(o.MaxSendWR, o.MaxRecvWR)))
	if w == nil {
		return nil, &Error{Op: "qp work requests", Errno: syscall.ENOMEM}
	}
	qp, err := C.vl_create_rc_qp(pd.pd, o.SendCQ.c.cq, o.RecvCQ.c.cq, srq, C.int(o.MaxSendWR), C.int(o.MaxRecvWR), C.int(o.MaxInline))
	if qp == nil {
		C.vl_wrs_free(w)
		return nil, callErr("create rc qp", err)
	}
	return &QP{qp: qp, w: w}, nil
}

// Num is the QP number the peer sends to.
func (qp *QP) Num() uint32 { return uint32(qp.qp.qp_num) }

// State queries the QP's state.
func (qp *QP) State() (QPState, error) {
	var s C.uint32_t
	if rc := C.vl_qp_state(qp.qp, &s); rc != 0 {
		return 0, errnoErr("query qp", rc)
	}
	return QPState(s), nil
}

// ToInit moves the QP from RESET to INIT on port with the given remote
// access.
func (qp *QP) ToInit(port uint8, access Access) error {
	return errnoErr("qp to INIT", C.vl_qp_init(qp.qp, C.uint8_t(port), C.int(access)))
}

// ToRTR moves the QP from INIT to RTR, connected to the peer in a.
func (qp *QP) ToRTR(a RTRAttr) error {
	if a.MinRNRTimer == 0 {
		a.MinRNRTimer = 12
	}
	if a.HopLimit == 0 {
		a.HopLimit = 64
	}
	if a.MTU == 0 {
		a.MTU = MTU1024
	}
	return errnoErr("qp to RTR", C.vl_qp_rtr(qp.qp, C.uint8_t(a.Port), C.uint32_t(a.DestQPN), C.uint32_t(a.RQPSN&0xffffff), C.int(a.MTU),
		(*C.uint8_t)(unsafe.Pointer(&a.DestGID[0])), C.int(a.SGIDIndex), C.uint8_t(a.MinRNRTimer), C.uint8_t(a.HopLimit)))
}

// ToRTS moves the QP from RTR to RTS.
func (qp *QP) ToRTS(a RTSAttr) error {
	if a.Timeout == 0 {
		a.Timeout = 14
	}
	if a.RetryCount == 0 {
		a.RetryCount = 7
	}
	if a.RNRRetry == 0 {
		a.RNRRetry = 7
	}
	return errnoErr("qp to RTS", C.vl_qp_rts(qp.qp, C.uint32_t(a.SQPSN&0xffffff), C.uint8_t(a.Timeout), C.uint8_t(a.RetryCount), C.uint8_t(a.RNRRetry)))
}

// ToError moves the QP to ERR: outstanding work requests complete with
// WCFlushErr.
func (qp *QP) ToError() error { return errnoErr("qp to ERR", C.vl_qp_err(qp.qp)) }

// PostSend posts wrs as one chain of sends (one cgo call) and returns how
// many the QP took (fewer with an error, e.g. ENOMEM when its send queue
// is full).
func (qp *QP) PostSend(wrs []WorkRequest) (int, error) {
	if len(wrs) == 0 {
		return 0, nil
	}
	var posted C.int
	rc := C.vl_post_send(qp.qp, qp.w, (*C.struct_vl_wr)(unsafe.Pointer(unsafe.SliceData(wrs))), C.int(len(wrs)), &posted)
	if rc != 0 {
		return int(posted), errnoErr("post send", rc)
	}
	return int(posted), nil
}

// PostRecv posts receives to a QP made without an SRQ.
func (qp *QP) PostRecv(wrs []WorkRequest) (int, error) { return postRecv(qp.qp, nil, qp.w, wrs) }

// Close destroys the QP.
func (qp *QP) Close() error {
	if qp.qp == nil {
		return nil
	}
	rc := C.ibv_destroy_qp(qp.qp)
	C.vl_wrs_free(qp.w)
	qp.qp, qp.w = nil, nil
	return errnoErr("destroy qp", rc)
}
