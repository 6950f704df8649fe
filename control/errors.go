package control

import (
	"errors"
	"fmt"
	"net/http"
)

// Errors a Client returns, for errors.Is.
var (
	// ErrUnreachable: the daemon's control socket does not answer
	// (*UnreachableError).
	ErrUnreachable = errors.New("veloced control API not reachable")
	// ErrNotFound: no such path or object (HTTP 404).
	ErrNotFound = errors.New("not found")
	// ErrBadRequest: the daemon refused the request (HTTP 400).
	ErrBadRequest = errors.New("bad request")
	// ErrMethodNotAllowed: the path exists, not for that method (HTTP 405).
	ErrMethodNotAllowed = errors.New("method not allowed")
)

// UnreachableError is a Client's failure to reach the daemon at all.
type UnreachableError struct {
	// Socket is the control socket the client dialled.
	Socket string
	// Err is the dial (or transport) error.
	Err error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("%v: %v: is veloced running? (control socket %s)", ErrUnreachable, e.Err, e.Socket)
}

// Unwrap returns the dial error.
func (e *UnreachableError) Unwrap() error { return e.Err }

// Is matches ErrUnreachable.
func (e *UnreachableError) Is(target error) bool { return target == ErrUnreachable }

// APIError is a response from the daemon that is not 2xx.
type APIError struct {
	// Method and Path are the request's.
	Method, Path string
	// Status is the HTTP status code.
	Status int
	// Message is the body's "error", or the status text when the body
	// was not an ErrorBody.
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("veloced control API: %s %s: %d %s", e.Method, e.Path, e.Status, e.Message)
}

// Is matches the sentinel of the status: ErrNotFound, ErrBadRequest,
// ErrMethodNotAllowed.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Status == http.StatusNotFound
	case ErrBadRequest:
		return e.Status == http.StatusBadRequest
	case ErrMethodNotAllowed:
		return e.Status == http.StatusMethodNotAllowed
	}
	return false
}

// statusOf maps a Service error to its HTTP status.
func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrMethodNotAllowed):
		return http.StatusMethodNotAllowed
	}
	return http.StatusInternalServerError
}
