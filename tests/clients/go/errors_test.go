package clienttest

import (
	"reflect"
	"testing"
	"time"

	gatewayv1 "github.com/dr-gateway/dr-gateway/gen/go/digitalriver/gateway/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const domain = "digitalriver.com"

// detailsOf is status.FromError(err).Details(), with the call's code checked.
func detailsOf(t *testing.T, err error, want codes.Code) []interface{} {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != want {
		t.Fatalf("error %v, want code %v", err, want)
	}
	details := st.Details()
	for _, d := range details {
		if e, isErr := d.(error); isErr {
			t.Fatalf("undecodable detail: %v", e)
		}
	}
	return details
}

func allUnits(order sandboxOrder) []*gatewayv1.CreateFulfillmentItem {
	return []*gatewayv1.CreateFulfillmentItem{{ItemId: order.Items[0].ID, Quantity: order.Items[0].Quantity}}
}

func TestFulfillingAFulfilledOrderIsFailedPreconditionWithErrorInfo(t *testing.T) {
	order := sandbox.createOrder(t, 1, "10.00")
	if _, err := fulfillments.CreateFulfillment(callContext(t, 10*time.Second), &gatewayv1.CreateFulfillmentRequest{
		OrderId: order.ID, Items: allUnits(order), RequestId: "first-" + order.ID,
	}); err != nil {
		t.Fatal(err)
	}

	_, err := fulfillments.CreateFulfillment(callContext(t, 10*time.Second), &gatewayv1.CreateFulfillmentRequest{
		OrderId: order.ID, Items: allUnits(order), RequestId: "second-" + order.ID,
	})

	var info *errdetails.ErrorInfo
	var precondition *errdetails.PreconditionFailure
	for _, d := range detailsOf(t, err, codes.FailedPrecondition) {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.PreconditionFailure:
			precondition = d
		}
	}
	if info.GetReason() != "ORDER_FULFILLED" || info.GetDomain() != domain || info.GetMetadata()["dr_code"] != "order_fulfilled" {
		t.Fatalf("ErrorInfo %v", info)
	}
	if v := precondition.GetViolations(); len(v) != 1 || v[0].GetType() != "order_fulfilled" {
		t.Fatalf("PreconditionFailure %v", precondition)
	}
	if got := ReadDetails(err); got.Reason != "ORDER_FULFILLED" || got.Metadata["http_status"] != "409" {
		t.Fatalf("ReadDetails %+v", got)
	}
}

func TestARequestWithoutItemsIsInvalidArgumentWithBadRequestNamingTheField(t *testing.T) {
	order := sandbox.createOrder(t, 1, "10.00")

	_, err := fulfillments.CreateFulfillment(callContext(t, 10*time.Second), &gatewayv1.CreateFulfillmentRequest{OrderId: order.ID})

	var fields []string
	for _, d := range detailsOf(t, err, codes.InvalidArgument) {
		if bad, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range bad.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	if !reflect.DeepEqual(fields, []string{"items"}) {
		t.Fatalf("BadRequest fields %v, want [items]", fields)
	}
	if got := ReadDetails(err); !reflect.DeepEqual(got.Fields, []string{"items"}) || got.Reason == "" {
		t.Fatalf("ReadDetails %+v", got)
	}
	if held := sandbox.fulfillmentsOf(t, order.ID); len(held) != 0 {
		t.Fatalf("DR holds %v after a refused request", held)
	}
}

func TestARateLimitedPostIsResourceExhaustedWithRetryInfo(t *testing.T) {
	order := sandbox.createOrder(t, 1, "10.00")
	fault := map[string]interface{}{"method": "POST", "path": "/fulfillments", "count": 1, "kind": "status", "status": 429, "retryAfter": 7}
	if err := sandbox.call("POST", "/sandbox/faults", fault, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sandbox.call("DELETE", "/sandbox/faults", nil, nil) })

	_, err := fulfillments.CreateFulfillment(callContext(t, 10*time.Second), &gatewayv1.CreateFulfillmentRequest{
		OrderId: order.ID, Items: allUnits(order), RequestId: "limited-" + order.ID,
	})

	var retry *errdetails.RetryInfo
	var quota *errdetails.QuotaFailure
	for _, d := range detailsOf(t, err, codes.ResourceExhausted) {
		switch d := d.(type) {
		case *errdetails.RetryInfo:
			retry = d
		case *errdetails.QuotaFailure:
			quota = d
		}
	}
	if retry.GetRetryDelay().GetSeconds() != 7 {
		t.Fatalf("RetryInfo %v, want 7 s", retry)
	}
	if len(quota.GetViolations()) == 0 {
		t.Fatalf("QuotaFailure %v", quota)
	}
	if got := ReadDetails(err); got.RetryAfter != 7*time.Second || got.Metadata["http_status"] != "429" {
		t.Fatalf("ReadDetails %+v", got)
	}
}

func TestGetChargeOfAnUnknownIdIsNotFoundWithResourceInfo(t *testing.T) {
	_, err := charges.GetCharge(callContext(t, 10*time.Second), &gatewayv1.GetChargeRequest{ChargeId: "chg_does_not_exist"})

	var resource *errdetails.ResourceInfo
	for _, d := range detailsOf(t, err, codes.NotFound) {
		if r, ok := d.(*errdetails.ResourceInfo); ok {
			resource = r
		}
	}
	if resource.GetResourceType() != "charge" || resource.GetResourceName() != "chg_does_not_exist" {
		t.Fatalf("ResourceInfo %v", resource)
	}
}
