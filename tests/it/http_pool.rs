//! The HTTP connection pool knobs reach the SDK's client
//! (`FORWARDER_HTTP_POOL_IDLE_TIMEOUT`, `FORWARDER_HTTP_POOL_MAX_IDLE`): connections
//! are reused while idle less than the timeout, and reopened after it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_sqs::config::{Credentials, Region};
use sqs_forwarder::aws::{sdk_loader_with, HttpPool};

use crate::helpers::*;

/// Connections a client opened for: two calls, a pause of `idle`, a third call.
async fn connections(pool: HttpPool, idle: Duration) -> u64 {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let queue = create_queue(&client, &unique("pool"), 30).await;
    let upstream = endpoint().trim_start_matches("http://").to_string();
    let (proxy, switch) = tcp_proxy(Duration::ZERO, upstream).await;
    let sdk = sdk_loader_with(Duration::from_secs(10), pool)
        .endpoint_url(format!("http://{proxy}"))
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .load()
        .await;
    let through = aws_sdk_sqs::Client::new(&sdk);
    let call = || through.get_queue_attributes().queue_url(&queue).send();
    call().await.unwrap();
    call().await.unwrap();
    tokio::time::sleep(idle).await;
    call().await.unwrap();
    switch.accepted.load(Ordering::Relaxed)
}

#[tokio::test]
async fn idle_connections_are_reused_within_the_timeout_and_closed_after_it() {
    let short = HttpPool {
        max_idle_per_host: 4,
        idle_timeout: Duration::from_secs(1),
    };
    assert_eq!(connections(short, Duration::from_millis(2500)).await, 2);
    let long = HttpPool {
        max_idle_per_host: 4,
        idle_timeout: Duration::from_secs(30),
    };
    assert_eq!(connections(long, Duration::from_millis(2500)).await, 1);
}
