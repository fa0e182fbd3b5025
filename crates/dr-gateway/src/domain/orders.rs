//! Order lookup for fulfillment: find an order by DR id or by the caller's own id,
//! and work out per line item what is already fulfilled, cancelled or still open.

use std::collections::HashMap;

use super::ServiceError;
use crate::digital_river::models::{Charge, ChargeOperation, Order};
use crate::digital_river::{CallOptions, Client, FulfillmentQuery};

/// How the caller names the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderKey {
    /// DR order id.
    DrId(String),
    /// The caller's own order id (DR `upstreamId`).
    UpstreamId(String),
}

/// Units fulfilled and cancelled so far for one line item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemProgress {
    /// Units fulfilled.
    pub fulfilled: i64,
    /// Units cancelled.
    pub cancelled: i64,
}

/// Reads the order `key` names.
pub async fn find_order(
    client: &Client,
    key: &OrderKey,
    opts: &CallOptions,
) -> Result<Order, ServiceError> {
    match key {
        OrderKey::DrId(id) => Ok(client.get_order(id, opts).await?),
        OrderKey::UpstreamId(upstream_id) => {
            let page = client.list_orders_by_upstream_id(upstream_id, opts).await?;
            // why: filter again locally, in case DR ignores an unknown filter.
            let mut matching: Vec<Order> = page
                .data
                .into_iter()
                .filter(|o| o.upstream_id.as_deref() == Some(upstream_id.as_str()))
                .collect();
            match matching.len() {
                0 => Err(ServiceError::NotFound {
                    resource_type: "order",
                    id: upstream_id.clone(),
                    message: format!("no Digital River order has upstreamId {upstream_id:?}"),
                }),
                1 => Ok(matching.remove(0)),
                n => Err(ServiceError::FailedPrecondition {
                    reason: "AMBIGUOUS_UPSTREAM_ID",
                    subject: upstream_id.clone(),
                    description: format!(
                        "{n} Digital River orders have upstreamId {upstream_id:?} ({}); look one up by order_id",
                        matching.iter().map(|o| o.id.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                }),
            }
        }
    }
}

/// Sums the order's fulfillments per line item (all pages).
pub async fn fulfillment_progress(
    client: &Client,
    order_id: &str,
    opts: &CallOptions,
) -> Result<HashMap<String, ItemProgress>, ServiceError> {
    let mut progress: HashMap<String, ItemProgress> = HashMap::new();
    let mut query = FulfillmentQuery {
        order_id: Some(order_id.to_owned()),
        limit: Some(100),
        ..Default::default()
    };
    loop {
        let page = client.list_fulfillments(&query, opts).await?;
        for item in page.data.iter().flat_map(|f| f.items.iter()) {
            let entry = progress.entry(item.item_id.clone()).or_default();
            // why: DR's numbers; saturate rather than wrap on absurd ones.
            entry.fulfilled = entry.fulfilled.saturating_add(item.quantity);
            entry.cancelled = entry.cancelled.saturating_add(item.cancel_quantity);
        }
        match (page.has_more, page.data.last()) {
            (true, Some(last)) => query.starting_after = Some(last.id.clone()),
            _ => return Ok(progress),
        }
    }
}

/// The failed capture `capture_id` of `charge`, as the "Capturing and cancelling charges" page's failure lookup finds it.
pub fn failed_capture<'a>(
    charge: &'a Charge,
    capture_id: &str,
) -> Result<&'a ChargeOperation, ServiceError> {
    let capture = charge
        .captures
        .iter()
        .find(|c| c.id == capture_id)
        .ok_or_else(|| ServiceError::NotFound {
            resource_type: "capture",
            id: capture_id.to_owned(),
            message: format!("charge {} has no capture {capture_id}", charge.id),
        })?;
    if capture.state.as_deref() != Some("failed") {
        return Err(ServiceError::NotFound {
            resource_type: "capture_failure",
            id: capture_id.to_owned(),
            message: format!(
                "capture {capture_id} of charge {} did not fail (state {})",
                charge.id,
                capture.state.as_deref().unwrap_or("unknown")
            ),
        });
    }
    Ok(capture)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge() -> Charge {
        serde_json::from_str(
            r#"{"id":"ch1","captures":[
                {"id":"ok","state":"complete"},
                {"id":"bad","state":"failed","failureCode":"failed-request","failureMessage":"Failed to operate on charge"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn finds_a_failed_capture() {
        let c = charge();
        let cap = failed_capture(&c, "bad").unwrap();
        assert_eq!(cap.failure_code.as_deref(), Some("failed-request"));
    }

    #[test]
    fn a_missing_or_successful_capture_is_not_found() {
        let c = charge();
        assert!(matches!(
            failed_capture(&c, "nope"),
            Err(ServiceError::NotFound {
                resource_type: "capture",
                ..
            })
        ));
        assert!(matches!(
            failed_capture(&c, "ok"),
            Err(ServiceError::NotFound {
                resource_type: "capture_failure",
                ..
            })
        ));
    }
}
