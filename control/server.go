package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	for _, ext := range extensions {
		ext(mux, s)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusNotFound, fmt.Errorf("no endpoint %s (this daemon serves %s...)", r.URL.Path, Prefix))
	})
	return mux
}

// extensions add the endpoints of optional services (administration,
// migration, ...), each from its own file: an extension's init appends a
// function that type-asserts the Service for its interface and, when the
// daemon implements it, routes its paths (with Get and Post). A daemon
// that implements none still serves the read-only API.
var extensions []func(mux *http.ServeMux, s Service)

// Post routes path to f for POST: the request body is decoded into a Req
// (an empty body is the zero Req; a body that does not decode answers
// 400), and f's result is the JSON answer. Other methods get a 405.
func Post[Req, Resp any](mux *http.ServeMux, path string, f func(context.Context, Req) (Resp, error)) {
	mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			WriteError(w, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: %w (POST)", r.Method, path, ErrMethodNotAllowed))
			return
		}
		var req Req
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
			WriteError(w, http.StatusBadRequest, fmt.Errorf("%s: request body: %v: %w", path, err, ErrBadRequest))
			return
		}
		v, err := f(r.Context(), req)
		if err != nil {
			WriteError(w, statusOf(err), err)
			return
		}
		WriteJSON(w, http.StatusOK, v)
	})
}

// maxBody bounds a request body (a migration snapshot travels elsewhere).
const maxBody = 1 << 20

// Get routes path to f for GET (and HEAD), as the read-only endpoints are.
func Get[T any](mux *http.ServeMux, path string, f func(context.Context) (T, error)) {
	get(mux, path, f)
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
