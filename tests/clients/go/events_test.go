package clienttest

import (
	"io"
	"testing"
	"time"

	gatewayv1 "github.com/dr-gateway/dr-gateway/gen/go/digitalriver/gateway/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

const captureComplete = "order.charge.capture.complete"

// eventsUntilIdle returns the events a Subscribe sends before its first heartbeat
// (one second of silence: the backlog is delivered); the call is then cancelled.
func eventsUntilIdle(t *testing.T, request *gatewayv1.SubscribeRequest) []*gatewayv1.Event {
	t.Helper()
	request.HeartbeatInterval = durationpb.New(time.Second)
	stream, err := events.Subscribe(callContext(t, 20*time.Second), request)
	if err != nil {
		t.Fatal(err)
	}
	var received []*gatewayv1.Event
	for {
		message, err := stream.Recv()
		if err == io.EOF {
			t.Fatalf("the stream ended without a heartbeat after %d events", len(received))
		}
		if err != nil {
			t.Fatalf("stream failed after %d events: %v", len(received), err)
		}
		if message.GetHeartbeat() != nil {
			return received
		}
		received = append(received, message.GetEvent())
	}
}

func captureOneUnit(t *testing.T, order sandboxOrder, requestID string) {
	t.Helper()
	reply, err := charges.CaptureItems(callContext(t, 20*time.Second), &gatewayv1.CaptureItemsRequest{
		OrderId: order.ID, Items: []*gatewayv1.ChargeItem{{ItemId: order.Items[0].ID, Quantity: 1}},
		RequestId: requestID, Wait: true,
	})
	if err != nil || !reply.GetSettled() {
		t.Fatalf("capture: %v %v", reply, err)
	}
}

func capturesOf(orderID string) *gatewayv1.EventFilter {
	return &gatewayv1.EventFilter{Types: []string{captureComplete}, OrderIds: []string{orderID}}
}

func TestSubscribeFromTheOldestEventDeliversTypedChargesAndResumesAfterACursorExactlyOnce(t *testing.T) {
	// Arrange: an order of 2 units captured one after the other.
	order := sandbox.createOrder(t, 2, "26.89")
	captureOneUnit(t, order, "first-"+order.ID)
	captureOneUnit(t, order, "second-"+order.ID)
	seen := eventsUntilIdle(t, &gatewayv1.SubscribeRequest{
		Filter: capturesOf(order.ID),
		Start:  &gatewayv1.SubscribeRequest_Position{Position: gatewayv1.StartPosition_START_POSITION_OLDEST},
	})
	if len(seen) != 2 || seen[0].GetType() != captureComplete || seen[0].GetCharge().GetOrderId() != order.ID {
		t.Fatalf("first subscription saw %v", seen)
	}

	// Act: reconnect after the first event's cursor.
	resumed := eventsUntilIdle(t, &gatewayv1.SubscribeRequest{
		Filter: capturesOf(order.ID),
		Start:  &gatewayv1.SubscribeRequest_AfterCursor{AfterCursor: seen[0].GetCursor()},
	})

	// Assert: the second event, once; not the cursor's own event again.
	if len(resumed) != 1 || resumed[0].GetId() != seen[1].GetId() || resumed[0].GetCursor() != seen[1].GetCursor() {
		t.Fatalf("resumed with %v, want only %s", resumed, seen[1].GetId())
	}
}
