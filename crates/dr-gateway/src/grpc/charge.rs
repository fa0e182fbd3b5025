//! `ChargeService`: read charges, look up capture failures, capture / cancel items.
//!
//! Capture and cancel go through `POST /fulfillments` (the core's [`Fulfiller`], same
//! validation and idempotency as CreateFulfillment). With `wait`, the RPC then holds
//! until the capture / cancel events of that fulfillment arrive in the event log
//! (`crate::events::outcomes`) or the deadline passes.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::fulfillment::tracking_command;
use super::request;
use crate::auth::Caller;
use crate::digital_river::models::Fulfillment;
use crate::digital_river::Client;
use crate::domain::fulfillments::{Fulfiller, FulfillmentCommand, ItemCommand, MAX_QUANTITY};
use crate::domain::ids::check_id;
use crate::domain::{orders, payments};
use crate::domain::{FieldViolation, ServiceError};
use crate::events::outcomes::{self, Correlation, OperationKind, Outcomes};
use crate::events::{EventLog, Tail};
use crate::pb::v1 as pb;
use crate::pb::v1::charge_service_server::ChargeService;

/// How long `wait` holds a call that has no deadline.
pub const DEFAULT_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The service implementation.
#[derive(Debug, Clone)]
pub struct ChargeApi {
    client: Client,
    fulfiller: Fulfiller,
    /// The event log `wait` reads outcomes from; without one, `wait` is UNIMPLEMENTED.
    events: Option<Arc<dyn EventLog>>,
}

impl ChargeApi {
    /// A service calling DR through `client` and fulfilling through `fulfiller`.
    pub fn new(client: Client, fulfiller: Fulfiller) -> Self {
        Self {
            client,
            fulfiller,
            events: None,
        }
    }

    /// Lets `wait` read capture / cancel outcomes from `log`.
    pub fn with_events(mut self, log: Arc<dyn EventLog>) -> Self {
        self.events = Some(log);
        self
    }

    /// Positions a reader at the end of the log *before* the POST, so no outcome
    /// event can slip past; `None` when `wait` is off.
    async fn tail_for_wait(&self, wait: bool) -> Result<Option<Tail>, Status> {
        if !wait {
            return Ok(None);
        }
        let Some(log) = &self.events else {
            return Err(Status::unimplemented(
                "wait needs the event stream, which this gateway runs without",
            ));
        };
        let last = log.bounds().await.map_err(|e| {
            tracing::error!(error = %e, "event log unavailable for wait");
            super::status::event_log_unavailable(
                "event log unavailable; retry without wait or later",
            )
        })?;
        Ok(Some(Tail::new(log.clone(), last.last)))
    }
}

/// Waits for the outcomes of `created`'s operations of `kind`, until `deadline`
/// (or [`DEFAULT_MAX_WAIT`]).
async fn wait_outcomes(
    client: &Client,
    tail: Option<Tail>,
    created: &Fulfillment,
    kind: OperationKind,
    deadline: Option<std::time::Instant>,
) -> Result<(Vec<pb::ChargeOperationOutcome>, bool), Status> {
    let Some(mut tail) = tail else {
        return Ok((Vec::new(), false));
    };
    // why: read DR's current charge state once the tail is running. A replayed
    // request_id's events predate the tail, and the read names every operation the
    // fulfillment started, even on a second charge whose events are still to come.
    let opts = crate::digital_river::CallOptions {
        deadline,
        request_id: None,
    };
    let (known, currency) = match client.get_order(&created.order_id, &opts).await {
        Ok(mut order) => {
            let currency = order.currency.clone().unwrap_or_default();
            let charges = order
                .take_payment()
                .0
                .into_iter()
                .map(|c| convert::charge(c, &currency))
                .collect::<Vec<_>>();
            (charges, currency)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the order's charges; waiting on events only");
            (Vec::new(), String::new())
        }
    };
    let correlation = Correlation {
        kind,
        fulfillment_id: created.id.clone(),
        operation_ids: created.charge_operation_ids.clone(),
    };
    let until = deadline
        .map(tokio::time::Instant::from_std)
        .unwrap_or_else(|| tokio::time::Instant::now() + DEFAULT_MAX_WAIT);
    let Outcomes {
        operations,
        settled,
    } = outcomes::wait_for_outcomes(&mut tail, &correlation, &known, &currency, until)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "event log failed while waiting for outcomes");
            super::status::event_log_unavailable(
                "event log unavailable while waiting; the fulfillment was created",
            )
        })?;
    let outcomes = operations
        .into_iter()
        .map(|o| pb::ChargeOperationOutcome {
            charge_id: o.charge_id,
            operation: Some(o.operation),
        })
        .collect();
    Ok((outcomes, settled))
}

/// Which quantity the charge items set.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operation {
    Capture,
    Cancel,
}

fn items(items: Vec<pb::ChargeItem>, op: Operation) -> Result<Vec<ItemCommand>, ServiceError> {
    let violations: Vec<_> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let problem = if item.quantity <= 0 {
                "must be positive".to_owned()
            } else if item.quantity > MAX_QUANTITY {
                format!("must be at most {MAX_QUANTITY}")
            } else {
                return None;
            };
            Some(FieldViolation::new(format!("items[{i}].quantity"), problem))
        })
        .collect();
    if !violations.is_empty() {
        return Err(ServiceError::InvalidArgument(violations));
    }
    Ok(items
        .into_iter()
        .map(|i| ItemCommand {
            item_id: i.item_id,
            quantity: if op == Operation::Capture {
                i.quantity
            } else {
                0
            },
            cancel_quantity: if op == Operation::Cancel {
                i.quantity
            } else {
                0
            },
            shipment_item_id: i.shipment_item_id,
        })
        .collect())
}

#[tonic::async_trait]
impl ChargeService for ChargeApi {
    async fn get_charge(
        &self,
        req: Request<pb::GetChargeRequest>,
    ) -> Result<Response<pb::GetChargeResponse>, Status> {
        let opts = request::call_options(&req);
        let id = req.into_inner().charge_id;
        check_id("charge_id", &id)?;
        let charge = self
            .client
            .get_charge(&id, &opts)
            .await
            .map_err(ServiceError::from)?;
        // why: a charge names only its source's id; which kind it is (card or store
        // credit) is what a customer notice needs (DR's "Capturing and cancelling
        // charges" page reads GET /sources/{sourceId} for it).
        let source = payments::source_of(&self.client, &charge, &opts).await?;
        let currency = charge.currency.clone().unwrap_or_default();
        let mut out = convert::charge(charge, "");
        out.source = source.map(|source| convert::payment_source(source, &currency));
        Ok(Response::new(pb::GetChargeResponse { charge: Some(out) }))
    }

    async fn get_payment_source(
        &self,
        req: Request<pb::GetPaymentSourceRequest>,
    ) -> Result<Response<pb::GetPaymentSourceResponse>, Status> {
        let opts = request::call_options(&req);
        let id = req.into_inner().source_id;
        check_id("source_id", &id)?;
        let source = self
            .client
            .get_source(&id, &opts)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::GetPaymentSourceResponse {
            source: Some(convert::payment_source(source, "")),
        }))
    }

    async fn list_order_charges(
        &self,
        req: Request<pb::ListOrderChargesRequest>,
    ) -> Result<Response<pb::ListOrderChargesResponse>, Status> {
        let opts = request::call_options(&req);
        let id = req.into_inner().order_id;
        check_id("order_id", &id)?;
        let order = self
            .client
            .get_order(&id, &opts)
            .await
            .map_err(ServiceError::from)?;
        let o = convert::order(order);
        Ok(Response::new(pb::ListOrderChargesResponse {
            order_id: o.id,
            charges: o.charges,
            total_amount: o.total_amount,
            captured_amount: o.captured_amount,
            cancelled_amount: o.cancelled_amount,
            available_to_refund_amount: o.available_to_refund_amount,
            order_state: o.state,
            refunded_amount: o.refunded_amount,
        }))
    }

    async fn get_capture_failure(
        &self,
        req: Request<pb::GetCaptureFailureRequest>,
    ) -> Result<Response<pb::GetCaptureFailureResponse>, Status> {
        let opts = request::call_options(&req);
        let r = req.into_inner();
        check_id("charge_id", &r.charge_id)?;
        check_id("capture_id", &r.capture_id)?;
        let charge = self
            .client
            .get_charge(&r.charge_id, &opts)
            .await
            .map_err(ServiceError::from)?;
        let capture = orders::failed_capture(&charge, &r.capture_id)?;
        let currency = charge.currency.as_deref().unwrap_or_default();
        Ok(Response::new(pb::GetCaptureFailureResponse {
            charge_id: charge.id.clone(),
            capture_id: capture.id.clone(),
            failure_code: capture.failure_code.clone().unwrap_or_default(),
            failure_message: capture.failure_message.clone().unwrap_or_default(),
            fulfillment_id: capture.fulfillment_id.clone().unwrap_or_default(),
            amount: convert::amount(currency, &capture.amount),
            order_id: charge.order_id.clone().unwrap_or_default(),
        }))
    }

    async fn capture_items(
        &self,
        req: Request<pb::CaptureItemsRequest>,
    ) -> Result<Response<pb::CaptureItemsResponse>, Status> {
        let deadline = request::deadline(req.metadata());
        let caller = Caller::identity_of(&req);
        let r = req.into_inner();
        let command = FulfillmentCommand {
            order_id: r.order_id,
            items: items(r.items, Operation::Capture)?,
            shipment_id: r.shipment_id,
            tracking: tracking_command(r.tracking),
            metadata: r.metadata,
            request_id: r.request_id,
            caller,
        };
        let (fulfillment, outcomes, settled) = self
            .fulfill_and_wait(command, OperationKind::Capture, r.wait, deadline)
            .await?;
        Ok(Response::new(pb::CaptureItemsResponse {
            fulfillment: Some(fulfillment),
            outcomes,
            settled,
        }))
    }

    async fn cancel_items(
        &self,
        req: Request<pb::CancelItemsRequest>,
    ) -> Result<Response<pb::CancelItemsResponse>, Status> {
        let deadline = request::deadline(req.metadata());
        let caller = Caller::identity_of(&req);
        let r = req.into_inner();
        let command = FulfillmentCommand {
            order_id: r.order_id,
            items: items(r.items, Operation::Cancel)?,
            shipment_id: r.shipment_id,
            tracking: None,
            metadata: r.metadata,
            request_id: r.request_id,
            caller,
        };
        let (fulfillment, outcomes, settled) = self
            .fulfill_and_wait(command, OperationKind::Cancel, r.wait, deadline)
            .await?;
        Ok(Response::new(pb::CancelItemsResponse {
            fulfillment: Some(fulfillment),
            outcomes,
            settled,
        }))
    }
}

impl ChargeApi {
    /// Creates the fulfillment (idempotently) and, with `wait`, waits for the
    /// outcomes of its operations of `kind`.
    async fn fulfill_and_wait(
        &self,
        command: FulfillmentCommand,
        kind: OperationKind,
        wait: bool,
        deadline: Option<std::time::Instant>,
    ) -> Result<(pb::Fulfillment, Vec<pb::ChargeOperationOutcome>, bool), Status> {
        // why: the log reader starts before the POST, so no outcome event slips past.
        let tail = self.tail_for_wait(wait).await?;
        let created = self.fulfiller.create(command, deadline).await?;
        let (outcomes, settled) =
            wait_outcomes(&self.client, tail, &created, kind, deadline).await?;
        Ok((convert::fulfillment(created), outcomes, settled))
    }
}
