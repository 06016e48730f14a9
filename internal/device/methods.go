package device

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

// MethodHandler answers a direct method. The result is sent as JSON (a []byte or json.RawMessage is sent
// as is) with status 200; a *MethodError chooses another status; any other error answers 500.
type MethodHandler func(ctx context.Context, payload []byte) (any, error)

// MethodError lets a method handler choose the response status.
type MethodError struct {
	Status  int
	Message string
}

// Error formats the status and message for logs; the caller receives them separately in the response.
func (e *MethodError) Error() string { return fmt.Sprintf("%d: %s", e.Status, e.Message) }

// callMethod runs a method handler on the device's queue and publishes its answer.
func (d *Device) callMethod(name, rid string, payload []byte) {
	d.mu.Lock()
	h := d.methods[name]
	c := d.client
	d.mu.Unlock()
	if c == nil {
		return
	}
	status, body := 200, []byte(nil)
	if h == nil {
		status, body = 404, errorBody(fmt.Sprintf("unknown method %q", name))
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.MethodTimeout)
		res, err := h(ctx, payload)
		cancel()
		var me *MethodError
		switch {
		case errors.As(err, &me):
			status, body = me.Status, errorBody(me.Message)
		case err != nil:
			status, body = 500, errorBody(err.Error())
		default:
			body, err = encode(res)
			if err != nil {
				status, body = 500, errorBody("encode result: "+err.Error())
			}
		}
	}
	topic := protocol.MethodResponseTopic(d.cfg.ID, status, rid)
	if err := waitToken(c.Publish(topic, 1, false, body), d.cfg.RequestTimeout); err != nil {
		d.log.Debug("publishing method response failed", "method", name, "err", err)
	}
	d.afterReply(name)
}

func errorBody(msg string) []byte { return protocol.ErrorPayload(msg) }

func encode(v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return []byte("{}"), nil
	case []byte:
		return x, nil
	case json.RawMessage:
		return x, nil
	default:
		return json.Marshal(v)
	}
}
