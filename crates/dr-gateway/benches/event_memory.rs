//! Event-log memory benchmark: the process's RSS with the in-memory event log full,
//! against the byte bound it was given (`--event-log-max-bytes`). Run with
//! `cargo bench --bench event_memory` (optionally `-- --bound-mib N`).
//!
//! Why: the bound must be true — a log told to hold 256 MiB must not grow the
//! process by much more, or a pod sized by it is OOM-killed. Timed or sized unit
//! tests are banned, so this binary prints the figures next to a baseline measured in
//! the same run: the events' own bytes (what DR sent) held at that moment.
//!
//! Each configuration runs in a child process (this binary with `--child`), so one
//! run's freed memory does not hide in the next one's RSS:
//! 1. **held events**: DR-shaped events of about 1 KB (three kinds: a charge
//!    capture, an accepted order, a fulfillment), all distinct, appended through
//!    the real encoder (typed payload, `Struct`, pre-encoded response) until the
//!    byte bound has dropped as many again; dedup keeps only the held events' ids;
//! 2. **with the dedup index**: the same with the default dedup bound (200 000
//!    ids of dropped events remembered), which is bounded by count, not bytes.
//!
//! RSS is `VmRSS` from `/proc/self/status` after the fill minus before it.

use std::process::{Command, ExitCode};
use std::sync::Arc;

use bytes::Bytes;
use dr_gateway::clock::SystemClock;
use dr_gateway::events::{Envelope, EventEncoder, EventLog, MemoryLog, MemoryLogConfig};
use dr_gateway::grpc::event_stream::decode_payload;
use serde_json::json;

const MIB: usize = 1024 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let bound_mib = args
        .iter()
        .position(|a| a == "--bound-mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(64);
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let dedup = args.get(i + 1).map(String::as_str) == Some("dedup");
        return child(bound_mib * MIB, dedup);
    }
    println!("event_memory: in-memory event log, byte bound {bound_mib} MiB, ~1 KB events");
    println!();
    println!("| run | held events | bound | counted by the log | RSS growth | RSS / bound | RSS per held event | DR's bytes per held event (baseline) | RSS / DR's bytes |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (mode, label) in [
        ("held", "held events"),
        ("dedup", "+ dedup index (200 000 ids)"),
    ] {
        let out = Command::new(&args[0])
            .args(["--child", mode, "--bound-mib", &bound_mib.to_string()])
            .output();
        match out {
            Ok(out) if out.status.success() => {
                let line = String::from_utf8_lossy(&out.stdout);
                println!("| {label} {}", line.trim());
            }
            Ok(out) => {
                eprintln!(
                    "event_memory: child failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("event_memory: cannot run the child: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The `n`th of three DR event kinds, about 1 KB each, every id distinct.
fn event(n: usize) -> Bytes {
    let id = |tag: &str| format!("{tag}{n:08}-4a1a-4bfb-bd80-ea5d8492739b");
    let order_id = format!("{:08}0336", 10_000_000 + n);
    let body = match n % 3 {
        0 => json!({
            "id": id("e"), "type": "order.charge.capture.complete",
            "createdTime": "2024-03-02T16:52:01.180061Z", "liveMode": false,
            "webhookIds": [id("w")], "digitalriverVersion": "2021-12-13",
            "data": {"object": {
                "id": id("c"), "createdTime": "2024-03-02T16:50:23Z", "currency": "USD",
                "amount": 37.81, "state": "capturable", "orderId": order_id, "captured": true,
                "captures": [
                    {"id": id("k"), "createdTime": "2024-03-02T16:50:37Z", "amount": 25.21,
                     "state": "complete", "fulfillmentId": format!("ful_{}", id("f"))},
                    {"id": id("l"), "createdTime": "2024-03-02T16:51:37Z", "amount": 12.60,
                     "state": "pending", "fulfillmentId": format!("ful_{}", id("g"))}],
                "refunded": false, "sourceId": id("s"), "paymentSessionId": id("p"),
                "type": "customer_initiated", "liveMode": false}}
        }),
        1 => json!({
            "id": id("e"), "type": "order.accepted",
            "createdTime": "2024-03-02T16:52:01.180061Z", "liveMode": false,
            "data": {"object": {
                "id": order_id, "upstreamId": format!("shop-{n}"), "currency": "USD",
                "totalAmount": 58.89, "subtotal": 53.12, "totalTax": 5.77, "state": "accepted",
                "email": format!("buyer{n}@example.com"), "locale": "en_US",
                "items": [
                    {"id": format!("{order_id}1"), "skuId": id("sku"), "productDetails": {"name": "Widget"},
                     "amount": 26.89, "quantity": 1, "tax": {"rate": 0.0725, "amount": 1.95}},
                    {"id": format!("{order_id}2"), "skuId": id("skv"), "productDetails": {"name": "Gadget"},
                     "amount": 26.23, "quantity": 2, "tax": {"rate": 0.0725, "amount": 3.82}}],
                "shipTo": {"address": {"line1": "10380 Bren Road W", "city": "Minnetonka",
                           "postalCode": "55343", "state": "MN", "country": "US"}}}}
        }),
        _ => json!({
            "id": id("e"), "type": "fulfillment.created",
            "createdTime": "2024-03-02T16:52:01.180061Z", "liveMode": false,
            "data": {"object": {
                "id": format!("ful_{}", id("f")), "createdTime": "2024-03-02T16:52:00Z",
                "orderId": order_id, "shipmentId": format!("ship-{n}"),
                "trackingCompany": "Fedex", "trackingNumber": format!("Z{n:012}"),
                "trackingUrl": format!("http://www.fedex.com/Tracking?tracknumbers=Z{n:012}"),
                "items": [
                    {"itemId": format!("{order_id}1"), "skuId": id("sku"), "quantity": 1, "cancelQuantity": 0},
                    {"itemId": format!("{order_id}2"), "skuId": id("skv"), "quantity": 2, "cancelQuantity": 0}],
                "metadata": {"requestId": id("r"), "warehouse": "MSP"}, "liveMode": false}}
        }),
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

fn child(bound: usize, dedup: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let encoder = EventEncoder::with_payload_decoder(Arc::new(decode_payload));
        let mut config = MemoryLogConfig {
            max_events: usize::MAX,
            max_bytes: bound,
            ..MemoryLogConfig::default()
        };
        if !dedup {
            config.dedup_max_ids = 0;
        }
        let log = MemoryLog::new(config, encoder, Arc::new(SystemClock));
        // Warm up the allocator and the encoder with a few events, then measure.
        const WARM_UP: u64 = 30;
        for n in 0..WARM_UP as usize {
            let _ = log.append(parse(event(usize::MAX - n))).await;
        }
        let before = rss_bytes();
        let raw_average = (0..30).map(|n| event(n).len()).sum::<usize>() / 30;
        let appended = 3 * bound / raw_average;
        for n in 0..appended {
            if log.append(parse(event(n))).await.is_err() {
                eprintln!("append failed");
                return ExitCode::FAILURE;
            }
        }
        let after = rss_bytes();
        let Ok(bounds) = log.bounds().await else {
            return ExitCode::FAILURE;
        };
        let held = (bounds.last + 1 - bounds.first) as usize;
        let mut raw_held = 0;
        let mut after_seq = bounds.first.saturating_sub(1);
        while let Ok(page) = log.read_after(after_seq, 1000).await {
            let Some(last) = page.last() else { break };
            after_seq = last.seq;
            // why: the log keeps no copy of DR's bytes; the events are generated
            // from their index, so the bytes DR sent for each held one are known.
            raw_held += page
                .iter()
                .filter(|e| e.seq > WARM_UP)
                .map(|e| event((e.seq - WARM_UP - 1) as usize).len())
                .sum::<usize>();
        }
        let growth = after.saturating_sub(before);
        println!(
            "| {held} | {} MiB | {:.1} MiB | {:.1} MiB | {:.2} | {:.0} B | {:.0} B | {:.1} |",
            bound / MIB,
            log.held_bytes() as f64 / MIB as f64,
            growth as f64 / MIB as f64,
            growth as f64 / bound as f64,
            growth as f64 / held as f64,
            raw_held as f64 / held as f64,
            growth as f64 / raw_held as f64,
        );
        ExitCode::SUCCESS
    })
}

fn parse(raw: Bytes) -> Envelope {
    match Envelope::parse(raw) {
        Ok(env) => env,
        Err(e) => panic!("a DR-shaped event parses: {e}"),
    }
}
