//! DR's per-key rate limit: a sliding one-second window per secret key, 429
//! `too_many_requests` with `Retry-After` past it, nothing processed.
//!
//! The counts asserted are the ones observed, not fixed numbers: a machine that
//! stalls for a second lets a burst straddle two windows.

use dr_sandbox::{RateLimit, RateLimitSettings, SandboxConfig};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::TestSandbox;

/// One answer of a burst: status, Retry-After, body.
type Answer = (u16, Option<String>, Value);

/// Sends `n` GETs of `path` at once with `key`.
async fn burst(sb: &TestSandbox, key: &str, path: &str, n: usize) -> Vec<Answer> {
    let calls = (0..n).map(|_| async {
        let r = sb
            .client
            .request(Method::GET, format!("{}{path}", sb.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = r.status().as_u16();
        (status, retry_after, r.json().await.unwrap_or(Value::Null))
    });
    futures::future::join_all(calls).await
}

fn count(answers: &[Answer], status: u16) -> usize {
    answers.iter().filter(|a| a.0 == status).count()
}

#[tokio::test]
async fn past_the_per_key_limit_dr_surface_calls_get_429_with_retry_after() {
    let sb = TestSandbox::start().await;
    let state = sb
        .control()
        .set_rate_limit(&RateLimitSettings {
            enabled: true,
            live_per_second: Some(50),
            test_per_second: Some(4),
        })
        .await
        .unwrap();
    assert!(state.enabled);
    assert_eq!((state.live_per_second, state.test_per_second), (50, 4));

    let answers = burst(&sb, "sk_test_one", "/orders/none", 12).await;
    let limited = count(&answers, 429);
    // At most 4 in any second: 12 at once cannot all pass unless spread over 3 s.
    assert!(limited >= 1, "{answers:?}");
    assert_eq!(
        count(&answers, 404) + limited,
        12,
        "admitted calls were processed (no such order), refused ones not"
    );
    for (status, retry_after, body) in answers.iter().filter(|a| a.0 == 429) {
        assert_eq!((*status, retry_after.as_deref()), (429, Some("1")));
        assert_eq!(body["type"], "too_many_requests");
        assert_eq!(body["errors"][0]["code"], "too_many_requests");
    }

    // Another key has its own window, and a live key its own (higher) limit.
    let other = burst(&sb, "sk_test_two", "/orders/none", 4).await;
    assert_eq!(count(&other, 404), 4, "{other:?}");
    let live = burst(&sb, "sk_live_three", "/orders/none", 20).await;
    assert_eq!(count(&live, 404), 20, "{live:?}");

    // The control surface is not limited, and counts what happened.
    let state = sb.control().rate_limit().await.unwrap();
    assert_eq!(state.limited, limited as u64);
    assert_eq!(state.admitted, (12 - limited + 4 + 20) as u64);
    let logged = sb
        .control()
        .requests(Some("GET"), Some("/orders/*"))
        .await
        .unwrap();
    assert_eq!(logged.len(), 12 + 4 + 20);
    assert_eq!(logged.iter().filter(|r| r.rate_limited).count(), limited);
    sb.stop().await;
}

#[tokio::test]
async fn a_rate_limited_post_creates_nothing_and_turning_the_limit_off_admits_all() {
    let sb = TestSandbox::start_with(SandboxConfig {
        rate_limit: Some(RateLimit {
            live_per_second: 1,
            test_per_second: 1,
        }),
        ..SandboxConfig::default()
    })
    .await;
    let order = sb.simple_order(10, "100").await;
    let oid = order["id"].as_str().unwrap().to_owned();
    let body =
        json!({"orderId": oid, "items": [{"itemId": order["items"][0]["id"], "quantity": 1}]});
    let mut created = 0;
    let mut refused = false;
    for _ in 0..5 {
        match sb.fulfill(body.clone()).await.0 {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused = true;
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused, "1/s: back-to-back POSTs must draw a 429");

    sb.control()
        .set_rate_limit(&RateLimitSettings::off())
        .await
        .unwrap();
    let (status, list) = sb.get(&format!("/fulfillments?orderId={oid}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        created,
        "the refused POST fulfilled nothing"
    );
    let again = burst(&sb, "sk_test_one", "/orders/none", 10).await;
    assert_eq!(count(&again, 404), 10, "off admits everything");
    let state = sb.control().rate_limit().await.unwrap();
    assert!(!state.enabled);
    assert_eq!(state.limited, 1);
    sb.stop().await;
}
