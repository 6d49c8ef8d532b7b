//! An HTTP client for the SDK that answers every request from a function, in-process:
//! SQS (or S3) without a network, for tests that exercise the real SDK's parsing and the
//! forwarder's decisions in milliseconds. Nothing in the worker uses it.

use std::sync::Arc;
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;

/// What the fake answers: a status, headers and a body; or a connection failure.
pub type Answer = Result<http::Response<String>, String>;

/// The request as the fake sees it: its `X-Amz-Target` action (`SendMessageBatch`, …)
/// and its body.
#[derive(Debug, Clone)]
pub struct FakeRequest {
    /// The action, from `X-Amz-Target` (empty for S3).
    pub action: String,
    /// The request body, as text.
    pub body: String,
}

type Respond = dyn Fn(FakeRequest) -> Answer + Send + Sync;
type Delay = dyn Fn(&str) -> Duration + Send + Sync;

/// The client (see the module).
#[derive(Clone)]
struct FakeHttp {
    /// Answers each request.
    respond: Arc<Respond>,
    /// How long each action takes to answer: a long poll, a slow network.
    delay: Arc<Delay>,
}

impl std::fmt::Debug for FakeHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeHttp")
    }
}

/// An HTTP client whose every request gets `respond(request)`.
pub fn client_fn(
    respond: impl Fn(FakeRequest) -> Answer + Send + Sync + 'static,
) -> SharedHttpClient {
    delayed_client_fn(|_| Duration::ZERO, respond)
}

/// As [`client_fn`], each answer given `delay(action)` later (a call that is dropped
/// meanwhile, as a cancelled long poll, is never answered).
pub fn delayed_client_fn(
    delay: impl Fn(&str) -> Duration + Send + Sync + 'static,
    respond: impl Fn(FakeRequest) -> Answer + Send + Sync + 'static,
) -> SharedHttpClient {
    SharedHttpClient::new(FakeHttp {
        respond: Arc::new(respond),
        delay: Arc::new(delay),
    })
}

impl HttpConnector for FakeHttp {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let action = request
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or_default()
            .to_string();
        let body = request
            .body()
            .bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let delay = (self.delay)(&action);
        let answer = match (self.respond)(FakeRequest { action, body }) {
            Ok(response) => HttpResponse::try_from(response.map(SdkBody::from))
                .map_err(|e| ConnectorError::other(e.into(), None)),
            Err(reason) => Err(ConnectorError::io(reason.into())),
        };
        if delay.is_zero() {
            return HttpConnectorFuture::ready(answer);
        }
        HttpConnectorFuture::new(async move {
            tokio::time::sleep(delay).await;
            answer
        })
    }
}

impl HttpClient for FakeHttp {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

/// An SQS client on the fake, with test credentials and SDK retries off (as the worker's).
pub fn sqs_client(
    respond: impl Fn(FakeRequest) -> Answer + Send + Sync + 'static,
) -> aws_sdk_sqs::Client {
    sqs_client_on(client_fn(respond))
}

/// An SQS client on `http` (as [`sqs_client`]; `http` from [`delayed_client_fn`], say).
pub fn sqs_client_on(http: SharedHttpClient) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            None,
            None,
            "fake",
        ))
        .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled())
        .http_client(http)
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// A JSON-protocol answer of SQS: 200 with `body`.
pub fn ok(body: impl Into<String>) -> Answer {
    answer(200, None, body.into())
}

/// A JSON-protocol error of SQS: `status`, the error `code` (as the query-compatible
/// header and the body's `__type` carry it).
pub fn error(status: u16, code: &str) -> Answer {
    answer(
        status,
        Some(format!("{code};Sender")),
        format!(r#"{{"__type":"com.amazonaws.sqs#{code}","message":"fake"}}"#),
    )
}

fn answer(status: u16, query_error: Option<String>, body: String) -> Answer {
    let mut builder = http::Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.0");
    if let Some(q) = query_error {
        builder = builder.header("x-amzn-query-error", q);
    }
    builder.body(body).map_err(|e| e.to_string())
}
