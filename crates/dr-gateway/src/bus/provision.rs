//! Start-up provisioning: create the event stream and the KV buckets when missing,
//! bring their settings in line when they differ, and never delete or recreate
//! anything (that would wipe events and change the log id).
//!
//! Every replica runs this at start; the calls are idempotent, and a replica that
//! loses the creation race simply reads what the winner created.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::{CreateStreamErrorKind, GetStreamErrorKind},
    kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
    ErrorCode,
};

use super::{timed, Bus, BusError};

/// The event stream's settings for `bus`.
pub fn event_stream_config(bus: &Bus) -> stream::Config {
    let c = bus.config();
    stream::Config {
        name: c.stream.clone(),
        description: Some("dr-gateway: Digital River webhook events (one per DR event id)".into()),
        subjects: vec![format!("{}.>", c.stream)],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        max_age: c.max_age,
        max_bytes: c
            .max_bytes
            .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        max_messages: -1,
        max_messages_per_subject: -1,
        // why: retention must only ever drop the oldest events, so the log stays the
        // contiguous range first..=last its contract promises.
        discard: DiscardPolicy::Old,
        deny_delete: true,
        duplicate_window: c.duplicate_window,
        num_replicas: c.replicas,
        ..Default::default()
    }
}

/// The `KV_<bucket>` stream a key-value bucket with one value per key, no history
/// and `ttl` retention (zero: entries never expire) has: what async-nats' `create_key_value` would create, built by
/// hand because that call fails against nats-server 2.9 (see the module docs above).
pub fn kv_stream_config(bucket: &str, ttl: Duration, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(format!("dr-gateway key-value bucket {bucket}")),
        subjects: vec![format!("$KV.{bucket}.>")],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        max_messages_per_subject: 1,
        max_messages: -1,
        max_bytes: -1,
        max_age: ttl,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        discard: DiscardPolicy::New,
        // why: the server's default (2 min) must not exceed max_age (zero: no
        // expiry, so the default fits); KV never sets a Nats-Msg-Id, so the window
        // only has to be valid.
        duplicate_window: if ttl.is_zero() {
            Duration::from_secs(120)
        } else {
            ttl.min(Duration::from_secs(120))
        },
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Creates the stream for `desired` or updates its settings; returns the stream.
pub async fn ensure_stream(bus: &Bus, desired: stream::Config) -> Result<stream::Stream, BusError> {
    let js = bus.jetstream();
    let timeout = bus.config().request_timeout * 4;
    let name = desired.name.clone();
    match tokio::time::timeout(timeout, js.get_stream(&name)).await {
        Err(_) => Err(BusError::Timeout(format!("looking up stream {name}"))),
        Ok(Ok(existing)) => {
            let info = existing.cached_info().clone();
            if let Some(update) = settings_update(&info.config, &desired)? {
                tracing::info!(stream = %name, "stream settings differ; updating in place");
                timed(
                    timeout,
                    &format!("updating stream {name}"),
                    js.update_stream(update),
                )
                .await?;
            }
            timed(
                timeout,
                &format!("reading stream {name}"),
                js.get_stream(&name),
            )
            .await
        }
        Ok(Err(e)) if is_stream_not_found(&e.kind()) => {
            tracing::info!(stream = %name, "creating stream");
            match tokio::time::timeout(timeout, js.create_stream(desired)).await {
                Err(_) => Err(BusError::Timeout(format!("creating stream {name}"))),
                Ok(Ok(stream)) => Ok(stream),
                // Another replica created it first: use theirs.
                Ok(Err(e)) if is_name_taken(&e.kind()) => {
                    timed(
                        timeout,
                        &format!("reading stream {name}"),
                        js.get_stream(&name),
                    )
                    .await
                }
                Ok(Err(e)) => Err(BusError::js(format!("creating stream {name}"), e)),
            }
        }
        Ok(Err(e)) => Err(BusError::js(format!("looking up stream {name}"), e)),
    }
}

/// Creates (or checks) the `KV_<bucket>` stream, then opens it as a KV store.
pub async fn ensure_kv(bus: &Bus, bucket: &str, ttl: Duration) -> Result<kv::Store, BusError> {
    let config = kv_stream_config(bucket, ttl, bus.config().replicas);
    ensure_stream(bus, config).await?;
    timed(
        bus.config().request_timeout * 4,
        &format!("opening bucket {bucket}"),
        bus.jetstream().get_key_value(bucket),
    )
    .await
}

fn is_stream_not_found(kind: &GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn is_name_taken(kind: &CreateStreamErrorKind) -> bool {
    matches!(kind, CreateStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NAME_EXIST)
}

/// The config to send when `existing` differs from `desired` in a setting this
/// gateway owns; `None` when nothing needs changing. Settings JetStream cannot change
/// in place (storage type) are an error rather than a silent recreate.
fn settings_update(
    existing: &stream::Config,
    desired: &stream::Config,
) -> Result<Option<stream::Config>, BusError> {
    if existing.storage != desired.storage {
        return Err(BusError::Incompatible {
            stream: existing.name.clone(),
            detail: format!(
                "storage {:?} but {:?} is wanted",
                existing.storage, desired.storage
            ),
        });
    }
    if existing.retention != desired.retention {
        return Err(BusError::Incompatible {
            stream: existing.name.clone(),
            detail: format!(
                "retention {:?} but {:?} is wanted",
                existing.retention, desired.retention
            ),
        });
    }
    let mut update = existing.clone();
    update.subjects = desired.subjects.clone();
    update.max_age = desired.max_age;
    update.max_bytes = desired.max_bytes;
    update.max_messages = desired.max_messages;
    update.max_messages_per_subject = desired.max_messages_per_subject;
    update.discard = desired.discard;
    update.deny_delete = desired.deny_delete;
    update.deny_purge = desired.deny_purge;
    update.allow_rollup = desired.allow_rollup;
    update.allow_direct = desired.allow_direct;
    update.duplicate_window = desired.duplicate_window;
    update.num_replicas = desired.num_replicas;
    let mut subjects_a = existing.subjects.clone();
    let mut subjects_b = update.subjects.clone();
    subjects_a.sort();
    subjects_b.sort();
    let same = subjects_a == subjects_b
        && existing.max_age == update.max_age
        && existing.max_bytes == update.max_bytes
        && existing.max_messages == update.max_messages
        && existing.max_messages_per_subject == update.max_messages_per_subject
        && existing.discard == update.discard
        && existing.deny_delete == update.deny_delete
        && existing.deny_purge == update.deny_purge
        && existing.allow_rollup == update.allow_rollup
        && existing.allow_direct == update.allow_direct
        && existing.duplicate_window == update.duplicate_window
        && existing.num_replicas == update.num_replicas;
    Ok((!same).then_some(update))
}

/// Convenience for tests and tools: the JetStream context's view of a stream's state.
pub async fn stream_state(bus: &Bus, name: &str) -> Result<stream::State, BusError> {
    let timeout = bus.config().request_timeout;
    let js: &jetstream::Context = bus.jetstream();
    let stream = timed(timeout, "looking up stream", js.get_stream(name)).await?;
    Ok(stream.cached_info().state.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> stream::Config {
        stream::Config {
            name: "S".into(),
            subjects: vec!["S.>".into()],
            max_age: Duration::from_secs(60),
            storage: StorageType::File,
            ..Default::default()
        }
    }

    #[test]
    fn equal_settings_need_no_update() {
        assert!(settings_update(&base(), &base()).unwrap().is_none());
    }

    #[test]
    fn changed_retention_is_updated_in_place_keeping_other_settings() {
        let mut existing = base();
        existing.description = Some("kept".into());
        let mut desired = base();
        desired.max_age = Duration::from_secs(120);
        desired.max_bytes = 1000;
        let update = settings_update(&existing, &desired).unwrap().unwrap();
        assert_eq!(update.max_age, Duration::from_secs(120));
        assert_eq!(update.max_bytes, 1000);
        assert_eq!(update.description.as_deref(), Some("kept"));
    }

    #[test]
    fn a_different_storage_type_is_refused_not_recreated() {
        let mut existing = base();
        existing.storage = StorageType::Memory;
        assert!(matches!(
            settings_update(&existing, &base()),
            Err(BusError::Incompatible { .. })
        ));
    }
}
