package clienttest;

import com.digitalriver.gateway.v1.CaptureItemsRequest;
import com.digitalriver.gateway.v1.ChargeItem;
import com.digitalriver.gateway.v1.ChargeServiceGrpc;
import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.util.concurrent.TimeUnit;

/**
 * The README's Java snippet, compiled by scripts/check-java-client.sh against the code
 * protoc and grpc-java generate from proto/ (java_package com.digitalriver.gateway.v1,
 * java_multiple_files) and googleapis' com.google.rpc classes.
 */
public final class ErrorDetails {
  private ErrorDetails() {}

  /** Captures one unit and says what went wrong, from the error's google.rpc details. */
  public static String capture(String target, String orderId, String itemId) throws InvalidProtocolBufferException {
    ManagedChannel channel = ManagedChannelBuilder.forTarget(target).usePlaintext().build();
    ChargeServiceGrpc.ChargeServiceBlockingStub charges = ChargeServiceGrpc.newBlockingStub(channel);
    CaptureItemsRequest request = CaptureItemsRequest.newBuilder()
        .setOrderId(orderId)
        .addItems(ChargeItem.newBuilder().setItemId(itemId).setQuantity(1))
        .setRequestId("ship-" + orderId)
        .build();
    StringBuilder said = new StringBuilder();
    try {
      charges.withDeadlineAfter(10, TimeUnit.SECONDS).captureItems(request);
    } catch (StatusRuntimeException e) {
      com.google.rpc.Status status = StatusProto.fromThrowable(e);
      for (Any detail : status == null ? java.util.List.<Any>of() : status.getDetailsList()) {
        if (detail.is(ErrorInfo.class)) {          // reason "ORDER_FULFILLED", metadata dr_code
          ErrorInfo info = detail.unpack(ErrorInfo.class);
          said.append(info.getReason()).append(' ').append(info.getMetadataMap());
        } else if (detail.is(BadRequest.class)) {  // getFieldViolations(i).getField()
          BadRequest bad = detail.unpack(BadRequest.class);
          bad.getFieldViolationsList().forEach(v -> said.append(" field ").append(v.getField()));
        } else if (detail.is(RetryInfo.class)) {   // getRetryDelay(): when to try again
          RetryInfo retry = detail.unpack(RetryInfo.class);
          said.append(" retry after ").append(retry.getRetryDelay().getSeconds()).append(" s");
        }
      }
    } finally {
      channel.shutdownNow();
    }
    return said.toString();
  }
}
