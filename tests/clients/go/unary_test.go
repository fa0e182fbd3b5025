package clienttest

import (
	"context"
	"fmt"
	"testing"
	"time"

	gatewayv1 "github.com/dr-gateway/dr-gateway/gen/go/digitalriver/gateway/v1"
	"google.golang.org/protobuf/proto"
)

func callContext(t *testing.T, timeout time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

func TestGetOrderByTheCallersOwnOrderIdReturnsItsItems(t *testing.T) {
	order := sandbox.createOrder(t, 2, "26.89")

	reply, err := fulfillments.GetOrder(callContext(t, 10*time.Second),
		&gatewayv1.GetOrderRequest{Key: &gatewayv1.GetOrderRequest_UpstreamId{UpstreamId: order.UpstreamID}})

	if err != nil {
		t.Fatal(err)
	}
	if reply.GetOrder().GetId() != order.ID {
		t.Fatalf("order %q, want %q", reply.GetOrder().GetId(), order.ID)
	}
	items := reply.GetOrder().GetItems()
	if len(items) != 1 || items[0].GetProductName() != "Widget" || items[0].GetOpenQuantity() != 2 {
		t.Fatalf("items %v", items)
	}
}

func TestCaptureItemsWithWaitIsSettledWithTheExactAmount(t *testing.T) {
	order := sandbox.createOrder(t, 2, "26.89")

	reply, err := charges.CaptureItems(callContext(t, 20*time.Second), &gatewayv1.CaptureItemsRequest{
		OrderId:   order.ID,
		Items:     []*gatewayv1.ChargeItem{{ItemId: order.Items[0].ID, Quantity: 1}},
		RequestId: "ship-" + order.ID,
		Wait:      true,
	})

	if err != nil {
		t.Fatal(err)
	}
	if !reply.GetSettled() || len(reply.GetOutcomes()) != 1 {
		t.Fatalf("not settled: %v", reply)
	}
	want := &gatewayv1.Money{CurrencyCode: "USD", Units: 13, Nanos: 450000000}
	if got := reply.GetOutcomes()[0].GetOperation().GetAmount(); !proto.Equal(got, want) {
		t.Fatalf("amount %v, want %v", got, want)
	}
}

func TestTheSameRequestIdTwiceCreatesOneFulfillment(t *testing.T) {
	order := sandbox.createOrder(t, 2, "20.00")
	request := &gatewayv1.CreateFulfillmentRequest{
		OrderId:   order.ID,
		Items:     []*gatewayv1.CreateFulfillmentItem{{ItemId: order.Items[0].ID, Quantity: 1}},
		RequestId: fmt.Sprintf("shipment-%s", order.ID),
	}

	first, err := fulfillments.CreateFulfillment(callContext(t, 10*time.Second), request)
	if err != nil {
		t.Fatal(err)
	}
	retry, err := fulfillments.CreateFulfillment(callContext(t, 10*time.Second), request)
	if err != nil {
		t.Fatal(err)
	}

	if retry.GetFulfillment().GetId() != first.GetFulfillment().GetId() {
		t.Fatalf("retry made %q, first %q", retry.GetFulfillment().GetId(), first.GetFulfillment().GetId())
	}
	if held := sandbox.fulfillmentsOf(t, order.ID); len(held) != 1 || held[0] != first.GetFulfillment().GetId() {
		t.Fatalf("DR holds %v, want only %q", held, first.GetFulfillment().GetId())
	}
}
