//! The retry decision on real SDK errors: recorded SQS error responses parsed by the
//! real SDK client, and real connection failures and timeouts.

use std::time::Duration;

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use sqs_forwarder::aws::{fake, AwsError};
use sqs_forwarder::outcome::ErrorClass;

/// A client whose every call gets this recorded response.
fn replaying(
    status: u16,
    query_error: Option<&'static str>,
    body: &'static str,
) -> aws_sdk_sqs::Client {
    fake::sqs_client(move |_req| {
        let mut resp = http::Response::builder()
            .status(status)
            .header("content-type", "application/x-amz-json-1.0");
        if let Some(q) = query_error {
            resp = resp.header("x-amzn-query-error", q);
        }
        resp.body(body.to_string()).map_err(|e| e.to_string())
    })
}

async fn send_error(client: &aws_sdk_sqs::Client) -> AwsError {
    let err = client
        .send_message()
        .queue_url("https://sqs.us-east-1.amazonaws.com/123456789012/q")
        .message_body("{}")
        .send()
        .await
        .expect_err("the recorded response is an error");
    AwsError::from_sdk(sqs_forwarder::outcome::Operation::Send, err)
}

#[tokio::test]
async fn recorded_sqs_errors_are_classified_by_code() {
    let cases: &[(u16, Option<&'static str>, &'static str, ErrorClass, &str)] = &[
        (
            400,
            Some("ThrottlingException;Sender"),
            r#"{"__type":"com.amazon.coral.availability#ThrottlingException","message":"Rate exceeded"}"#,
            ErrorClass::Throttled,
            "ThrottlingException",
        ),
        (
            400,
            Some("RequestThrottled;Sender"),
            r#"{"__type":"com.amazonaws.sqs#RequestThrottled","message":"Request is throttled."}"#,
            ErrorClass::Throttled,
            "RequestThrottled",
        ),
        (
            500,
            None,
            r#"{"__type":"com.amazon.coral.service#InternalFailure","message":"We encountered an internal error."}"#,
            ErrorClass::ServerError,
            "InternalFailure",
        ),
        (
            503,
            None,
            r#"{"__type":"com.amazon.coral.service#ServiceUnavailable","message":"Service unavailable"}"#,
            ErrorClass::ServerError,
            "ServiceUnavailable",
        ),
        (
            403,
            Some("InvalidClientTokenId;Sender"),
            r#"{"__type":"com.amazon.coral.service#UnrecognizedClientException","message":"The security token included in the request is invalid."}"#,
            ErrorClass::AccessDenied,
            "InvalidClientTokenId",
        ),
        (
            403,
            Some("AccessDenied;Sender"),
            r#"{"__type":"com.amazon.coral.service#AccessDeniedException","message":"User is not authorized to perform: sqs:sendmessage"}"#,
            ErrorClass::AccessDenied,
            "AccessDenied",
        ),
        (
            403,
            None,
            r#"{"__type":"com.amazon.coral.service#InvalidAccessKeyId","message":"The AWS access key Id you provided does not exist in our records."}"#,
            ErrorClass::AccessDenied,
            "InvalidAccessKeyId",
        ),
        (
            400,
            Some("AWS.SimpleQueueService.NonExistentQueue;Sender"),
            r#"{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"The specified queue does not exist."}"#,
            ErrorClass::QueueNotFound,
            "AWS.SimpleQueueService.NonExistentQueue",
        ),
        (
            400,
            Some("InvalidMessageContents;Sender"),
            r#"{"__type":"com.amazonaws.sqs#InvalidMessageContents","message":"Invalid characters found."}"#,
            ErrorClass::MessageRejected,
            "InvalidMessageContents",
        ),
        (
            400,
            Some("MissingParameter;Sender"),
            r#"{"__type":"com.amazon.coral.service#MissingParameter","message":"The request must contain the parameter MessageGroupId."}"#,
            ErrorClass::MissingMessageGroupId,
            "MissingParameter",
        ),
    ];
    for &(status, query, body, want, code) in cases {
        let err = send_error(&replaying(status, query, body)).await;
        assert_eq!(err.class, want, "{status} {body}: {err}");
        assert_eq!(err.code.as_deref(), Some(code), "{body}");
        assert_eq!(
            err.class.is_retryable(),
            matches!(want, ErrorClass::Throttled | ErrorClass::ServerError)
        );
    }
}

#[tokio::test]
async fn an_unreadable_5xx_is_retried() {
    let err = send_error(&replaying(502, None, "<html>Bad Gateway</html>")).await;
    assert!(err.class.is_retryable(), "{err}");
}

fn real_client(endpoint: &str, attempt: Duration) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(attempt)
                .build(),
        )
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

#[tokio::test]
async fn a_refused_connection_is_retried() {
    // Bind then drop a listener: its port now refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = send_error(&real_client(
        &format!("http://127.0.0.1:{port}"),
        Duration::from_secs(5),
    ))
    .await;
    assert_eq!(err.class, ErrorClass::Connection, "{err}");
}

#[tokio::test]
async fn a_silent_server_times_out_and_is_retried() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket); // accept, never answer
        }
    });
    let err = send_error(&real_client(
        &format!("http://{addr}"),
        Duration::from_millis(300),
    ))
    .await;
    assert_eq!(err.class, ErrorClass::Timeout, "{err}");
}

#[test]
fn sqs_error_display_holds_no_credentials() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(send_error(&replaying(
        403,
        Some("InvalidClientTokenId;Sender"),
        r#"{"__type":"com.amazon.coral.service#UnrecognizedClientException","message":"The security token included in the request is invalid."}"#,
    )));
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains("secret"), "{shown}");
        assert!(!shown.contains("AKIDEXAMPLE"), "{shown}");
    }
}
