//! Payment sources: which source a charge takes money from.

use super::ServiceError;
use crate::digital_river::models::{Charge, Source};
use crate::digital_river::{CallOptions, Client, Error};

/// The source `charge` is on (`GET /sources/{sourceId}`); `None` when the charge names
/// no source or DR no longer has it.
pub async fn source_of(
    client: &Client,
    charge: &Charge,
    opts: &CallOptions,
) -> Result<Option<Source>, ServiceError> {
    let Some(source_id) = charge.source_id.as_deref().filter(|id| !id.is_empty()) else {
        return Ok(None);
    };
    match client.get_source(source_id, opts).await {
        Ok(source) => Ok(Some(source)),
        // why: the charge itself was read; a source DR does not return leaves the
        // charge without one rather than failing the whole read.
        Err(Error::Api { status: 404, .. }) => {
            tracing::warn!(source_id = %crate::telemetry::capped(source_id), "DR has no source for the charge's sourceId");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
