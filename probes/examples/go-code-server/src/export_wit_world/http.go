package export_wit_world

import (
	"fmt"

	witTypes "go.bytecodealliance.org/pkg/wit/types"

	handler "wit_component/wasi_http_outgoing_handler"
	http "wit_component/wasi_http_types"
	streams "wit_component/wasi_io_streams"
)

// httpGet sends a plain-HTTP GET through wasi:http/outgoing-handler and
// returns the status and the whole body (capped at 1 MiB).
func httpGet(authority, pathWithQuery string) (uint16, []byte, error) {
	req := http.MakeOutgoingRequest(http.MakeFields())
	req.SetMethod(http.MakeMethodGet())
	req.SetScheme(witTypes.Some(http.MakeSchemeHttp()))
	req.SetAuthority(witTypes.Some(authority))
	req.SetPathWithQuery(witTypes.Some(pathWithQuery))

	fr := handler.Handle(req, witTypes.None[*http.RequestOptions]())
	if fr.IsErr() {
		return 0, nil, describe(fr.Err())
	}
	future := fr.Ok()
	defer future.Drop()

	var resp *http.IncomingResponse
	for {
		got := future.Get()
		if got.IsNone() {
			p := future.Subscribe()
			p.Block()
			p.Drop()
			continue
		}
		outer := got.Some()
		if outer.IsErr() {
			return 0, nil, fmt.Errorf("response already taken")
		}
		inner := outer.Ok()
		if inner.IsErr() {
			return 0, nil, describe(inner.Err())
		}
		resp = inner.Ok()
		break
	}
	defer resp.Drop()
	status := resp.Status()

	br := resp.Consume()
	if br.IsErr() {
		return status, nil, fmt.Errorf("body already consumed")
	}
	body := br.Ok()
	sr := body.Stream()
	if sr.IsErr() {
		body.Drop()
		return status, nil, fmt.Errorf("no body stream")
	}
	stream := sr.Ok()
	var data []byte
	for len(data) < 1<<20 {
		chunk := stream.BlockingRead(64 * 1024)
		if chunk.IsErr() {
			if chunk.Err().Tag() == streams.StreamError_Closed {
				break
			}
			stream.Drop()
			body.Drop()
			return status, data, fmt.Errorf("read failed")
		}
		data = append(data, chunk.Ok()...)
	}
	stream.Drop() // the stream must be dropped before its body
	body.Drop()
	return status, data, nil
}

// describe turns a wasi:http error code into an error a person can act on.
func describe(code http.ErrorCode) error {
	switch code.Tag() {
	case http.ErrorCode_ConnectionRefused:
		return fmt.Errorf("connection refused")
	case http.ErrorCode_InternalError:
		if message := code.InternalError(); message.IsSome() {
			return fmt.Errorf("%s", message.Some())
		}
	}
	return fmt.Errorf("wasi:http error-code %d", code.Tag())
}
