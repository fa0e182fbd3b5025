//! `FulfillmentService`: fulfill / cancel items, read fulfillments and orders.

use tonic::{Request, Response, Status};

use super::convert;
use super::request::{self, decode_page_token, encode_page_token, page_size, required};
use crate::auth::Caller;
use crate::digital_river::models::{ItemRef, UpdateFulfillment};
use crate::digital_river::{Client, FulfillmentQuery};
use crate::domain::fulfillments::{Fulfiller, FulfillmentCommand, ItemCommand, TrackingCommand};
use crate::domain::ids::{check_id, check_text};
use crate::domain::orders::{self, OrderKey};
use crate::domain::ServiceError;
use crate::pb::v1 as pb;
use crate::pb::v1::fulfillment_service_server::FulfillmentService;

/// The service implementation.
#[derive(Debug, Clone)]
pub struct FulfillmentApi {
    client: Client,
    fulfiller: Fulfiller,
}

impl FulfillmentApi {
    /// A service calling DR through `client` and creating through `fulfiller`.
    pub fn new(client: Client, fulfiller: Fulfiller) -> Self {
        Self { client, fulfiller }
    }
}

/// The tracking message as the domain wants it (`None` when empty).
pub fn tracking_command(tracking: Option<pb::Tracking>) -> Option<TrackingCommand> {
    tracking
        .filter(|t| !(t.company.is_empty() && t.number.is_empty() && t.url.is_empty()))
        .map(|t| TrackingCommand {
            company: t.company,
            number: t.number,
            url: t.url,
        })
}

/// Most fulfillment ids one ListFulfillments may filter by (DR's largest page).
pub const MAX_LIST_IDS: usize = 100;

/// Checks ListFulfillments' filters before they become DR's query.
fn list_filters_are_valid(r: &pb::ListFulfillmentsRequest) -> Result<(), ServiceError> {
    if !r.order_id.is_empty() {
        check_id("order_id", &r.order_id)?;
    }
    if r.ids.len() > MAX_LIST_IDS {
        return Err(ServiceError::invalid(
            "ids",
            format!("at most {MAX_LIST_IDS} ids"),
        ));
    }
    for (i, id) in r.ids.iter().enumerate() {
        check_id(&format!("ids[{i}]"), id)?;
    }
    check_text("sku_id", &r.sku_id)?;
    check_text("tracking_company", &r.tracking_company)?;
    check_text("tracking_number", &r.tracking_number)
}

#[tonic::async_trait]
impl FulfillmentService for FulfillmentApi {
    async fn create_fulfillment(
        &self,
        req: Request<pb::CreateFulfillmentRequest>,
    ) -> Result<Response<pb::CreateFulfillmentResponse>, Status> {
        let deadline = request::deadline(req.metadata());
        let caller = Caller::identity_of(&req);
        let r = req.into_inner();
        let command = FulfillmentCommand {
            order_id: r.order_id,
            items: r
                .items
                .into_iter()
                .map(|i| ItemCommand {
                    item_id: i.item_id,
                    quantity: i.quantity,
                    cancel_quantity: i.cancel_quantity,
                    shipment_item_id: i.shipment_item_id,
                })
                .collect(),
            shipment_id: r.shipment_id,
            tracking: tracking_command(r.tracking),
            metadata: r.metadata,
            request_id: r.request_id,
            caller,
        };
        let created = self.fulfiller.create(command, deadline).await?;
        Ok(Response::new(pb::CreateFulfillmentResponse {
            fulfillment: Some(convert::fulfillment(created)),
        }))
    }

    async fn get_fulfillment(
        &self,
        req: Request<pb::GetFulfillmentRequest>,
    ) -> Result<Response<pb::GetFulfillmentResponse>, Status> {
        let opts = request::call_options(&req);
        let id = req.into_inner().fulfillment_id;
        check_id("fulfillment_id", &id)?;
        let f = self
            .client
            .get_fulfillment(&id, &opts)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::GetFulfillmentResponse {
            fulfillment: Some(convert::fulfillment(f)),
        }))
    }

    async fn list_fulfillments(
        &self,
        req: Request<pb::ListFulfillmentsRequest>,
    ) -> Result<Response<pb::ListFulfillmentsResponse>, Status> {
        let opts = request::call_options(&req);
        let r = req.into_inner();
        list_filters_are_valid(&r)?;
        let time = |t: &Option<prost_types::Timestamp>| {
            t.as_ref().and_then(|t| {
                chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
                    .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            })
        };
        let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
        let mut query = FulfillmentQuery {
            order_id: non_empty(&r.order_id),
            ids: r.ids.clone(),
            sku_id: non_empty(&r.sku_id),
            tracking_company: non_empty(&r.tracking_company),
            tracking_number: non_empty(&r.tracking_number),
            created_gte: time(&r.create_time_start),
            created_lt: time(&r.create_time_end),
            limit: page_size(r.page_size)?,
            starting_after: None,
        };
        let filters = format!("{query:?}");
        query.starting_after = decode_page_token(&r.page_token, &filters)?;
        let page = self
            .client
            .list_fulfillments(&query, &opts)
            .await
            .map_err(ServiceError::from)?;
        let next_page_token = match (page.has_more, page.data.last()) {
            (true, Some(last)) => encode_page_token(&last.id, &filters),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListFulfillmentsResponse {
            fulfillments: page.data.into_iter().map(convert::fulfillment).collect(),
            next_page_token,
        }))
    }

    async fn update_fulfillment_tracking(
        &self,
        req: Request<pb::UpdateFulfillmentTrackingRequest>,
    ) -> Result<Response<pb::UpdateFulfillmentTrackingResponse>, Status> {
        let opts = request::call_options(&req);
        let r = req.into_inner();
        check_id("fulfillment_id", &r.fulfillment_id)?;
        let Some(tracking) = tracking_command(r.tracking) else {
            return Err(ServiceError::invalid(
                "tracking",
                "set at least one of company, number, url",
            )
            .into());
        };
        for (i, id) in r.item_ids.iter().enumerate() {
            check_id(&format!("item_ids[{i}]"), id)?;
        }
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let body = UpdateFulfillment {
            tracking_company: non_empty(tracking.company),
            tracking_number: non_empty(tracking.number),
            tracking_url: non_empty(tracking.url),
            items: r
                .item_ids
                .into_iter()
                .map(|item_id| ItemRef { item_id })
                .collect(),
        };
        let f = self
            .client
            .update_fulfillment(&r.fulfillment_id, &body, &opts)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::UpdateFulfillmentTrackingResponse {
            fulfillment: Some(convert::fulfillment(f)),
        }))
    }

    async fn get_order(
        &self,
        req: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let opts = request::call_options(&req);
        let key = match req.into_inner().key {
            Some(pb::get_order_request::Key::OrderId(id)) => {
                check_id("order_id", &id)?;
                OrderKey::DrId(id)
            }
            Some(pb::get_order_request::Key::UpstreamId(id)) => {
                required("upstream_id", &id)?;
                check_text("upstream_id", &id)?;
                OrderKey::UpstreamId(id)
            }
            None => return Err(ServiceError::invalid("key", "set order_id or upstream_id").into()),
        };
        let order = orders::find_order(&self.client, &key, &opts).await?;
        let progress = orders::fulfillment_progress(&self.client, &order.id, &opts).await?;
        let mut out = convert::order(order);
        for item in &mut out.items {
            let p = progress.get(&item.id).copied().unwrap_or_default();
            item.fulfilled_quantity = p.fulfilled;
            item.cancelled_quantity = p.cancelled;
            item.open_quantity = item
                .quantity
                .saturating_sub(p.fulfilled)
                .saturating_sub(p.cancelled)
                .max(0);
        }
        Ok(Response::new(pb::GetOrderResponse { order: Some(out) }))
    }
}
