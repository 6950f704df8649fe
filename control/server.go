package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

// Service is what a daemon implements to serve the API; Handler routes
// each path to its method. An error wrapping ErrNotFound answers 404,
// ErrBadRequest 400, anything else 500, each with an ErrorBody.
type Service interface {
	// Ports lists the VM ports.
	Ports(ctx context.Context) ([]PortInfo, error)
	// Streams lists the streams.
	Streams(ctx context.Context) ([]StreamInfo, error)
	// Apps describes the host applications.
	Apps(ctx context.Context) (HostAppsInfo, error)
	// Remote describes the datapaths to other hosts and the peers.
	Remote(ctx context.Context) (RemoteInfo, error)
}

// Handler serves s's API: every path of this package, and a JSON 404 or
// 405 for anything else.
func Handler(s Service) http.Handler {
	mux := http.NewServeMux()
	get(mux, PathPorts, s.Ports)
	get(mux, PathStreams, s.Streams)
	get(mux, PathApps, s.Apps)
	get(mux, PathRemote, s.Remote)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusNotFound, fmt.Errorf("no endpoint %s (this daemon serves %s...)", r.URL.Path, Prefix))
	})
	return mux
}

// get routes path to f for GET (and HEAD); other methods get a 405.
func get[T any](mux *http.ServeMux, path string, f func(context.Context) (T, error)) {
	mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			WriteError(w, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: %w (GET)", r.Method, path, ErrMethodNotAllowed))
			return
		}
		v, err := f(r.Context())
		if err != nil {
			WriteError(w, statusOf(err), err)
			return
		}
		WriteJSON(w, http.StatusOK, v)
	})
}

// WriteJSON answers with status and v as the JSON body.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// WriteError answers with status and {"error": err}.
func WriteError(w http.ResponseWriter, status int, err error) {
	WriteJSON(w, status, ErrorBody{Error: err.Error()})
}
