package control

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
)

// PathStreamQoS is the live QoS change of a stream (INSANE's /change/qos):
// POST Prefix+"streams/{id}/qos" with a StreamOptions body answers the
// StreamInfo of the stream once it moved to the datapath its new options
// map to. An unknown stream answers 404, a change the daemon cannot make
// 400.
const PathStreamQoS = Prefix + "streams/{id}/qos"

// QoSService is what a daemon implements, beside Service, to change a
// running stream's QoS options (velocectl streams set-qos).
type QoSService interface {
	// SetStreamQoS gives stream id the options opts; the stream is
	// drained on its old datapath, switched and resumed.
	SetStreamQoS(ctx context.Context, id uint32, opts StreamOptions) (StreamInfo, error)
}

func init() {
	extensions = append(extensions, func(mux *http.ServeMux, s Service) {
		q, ok := s.(QoSService)
		if !ok {
			return
		}
		mux.HandleFunc(PathStreamQoS, func(w http.ResponseWriter, r *http.Request) {
			id, err := strconv.ParseUint(r.PathValue("id"), 10, 32)
			if err != nil {
				WriteError(w, http.StatusBadRequest, fmt.Errorf("stream id %q: not a number: %w", r.PathValue("id"), ErrBadRequest))
				return
			}
			one := http.NewServeMux()
			Post(one, r.URL.Path, func(ctx context.Context, opts StreamOptions) (StreamInfo, error) {
				return q.SetStreamQoS(ctx, uint32(id), opts)
			})
			one.ServeHTTP(w, r)
		})
	})
}

// SetStreamQoS changes a running stream's QoS options (POST
// PathStreamQoS) and returns the stream as it is now.
func (c *Client) SetStreamQoS(ctx context.Context, id uint32, opts StreamOptions) (StreamInfo, error) {
	var out StreamInfo
	return out, c.do(ctx, http.MethodPost, Prefix+"streams/"+strconv.FormatUint(uint64(id), 10)+"/qos", opts, &out)
}
