//! Traces over OTLP/HTTP with protobuf: the `batch` and `route` spans, exported when
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (tracing-opentelemetry and opentelemetry-otlp). Unset: no exporter, nothing more at
//! start.
//!
//! The standard variables are honoured by the SDK itself: `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` (the service name defaults to `sqs-forwarder`),
//! `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`. They are checked here first, so a bad value fails at
//! start in one line naming it. A batch span continues its first source message's
//! W3C `traceparent` ([`continue_trace`]), so one trace runs through the hop.
//!
//! The exporter's requests run on the worker's Tokio runtime (the SDK's batch processor
//! has a thread of its own): the SDK's hyper client, with rustls, on the runtime's
//! handle. [`flush`] at shutdown and after each Lambda invocation.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The provider, kept to flush it.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The service name when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names
/// one.
pub const SERVICE_NAME: &str = "sqs-forwarder";

/// The samplers the SDK knows (`OTEL_TRACES_SAMPLER`).
const SAMPLERS: &[&str] = &[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// Where traces go, as the environment says: the variable and the URL; `None`: off.
pub fn endpoint(var: &dyn Fn(&str) -> Option<String>) -> Option<(&'static str, String)> {
    let set = |name: &'static str| {
        var(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (name, v))
    };
    set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
        set("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|(name, base)| (name, format!("{}/v1/traces", base.trim_end_matches('/'))))
    })
}

/// The settings checked, and what `check` says of them: `traces: off`, or where they go,
/// the service name and the sampler. A bad value: one line naming the variable.
pub fn describe(var: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let Some((name, url)) = endpoint(var) else {
        return Ok("off".to_string());
    };
    match url.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
        _ => return Err(format!("{name}: {url:?} is not an http(s) URL")),
    }
    let sampler = var("OTEL_TRACES_SAMPLER").filter(|s| !s.is_empty());
    if let Some(s) = &sampler {
        if !SAMPLERS.contains(&s.as_str()) {
            return Err(format!(
                "OTEL_TRACES_SAMPLER: {s:?} is not a sampler; expected one of {}",
                SAMPLERS.join(", ")
            ));
        }
        if s.ends_with("traceidratio") {
            let arg = var("OTEL_TRACES_SAMPLER_ARG");
            if !arg
                .as_deref()
                .and_then(|a| a.trim().parse::<f64>().ok())
                .is_some_and(|r| (0.0..=1.0).contains(&r))
            {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER_ARG: {arg:?} is not a ratio from 0 to 1, which {s} needs"
                ));
            }
        }
    }
    if let Some(t) = var("OTEL_EXPORTER_OTLP_TIMEOUT").filter(|t| !t.is_empty()) {
        if t.trim().parse::<u64>().is_err() {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_TIMEOUT: {t:?} is not a number of milliseconds"
            ));
        }
    }
    let sampler = match (sampler, var("OTEL_TRACES_SAMPLER_ARG")) {
        (Some(s), Some(arg)) if s.ends_with("traceidratio") => format!("{s} {arg}"),
        (Some(s), _) => s,
        (None, _) => "parentbased_always_on".to_string(),
    };
    Ok(format!(
        "OTLP/HTTP to {url}, service {}, sampler {sampler}",
        service_name(var)
    ))
}

/// The service name: `OTEL_SERVICE_NAME`, else `OTEL_RESOURCE_ATTRIBUTES`' `service.name`,
/// else [`SERVICE_NAME`].
fn service_name(var: &dyn Fn(&str) -> Option<String>) -> String {
    var("OTEL_SERVICE_NAME")
        .filter(|s| !s.is_empty())
        .or_else(|| {
            var("OTEL_RESOURCE_ATTRIBUTES")?
                .split(',')
                .find_map(|kv| kv.trim().strip_prefix("service.name=").map(str::to_string))
        })
        .unwrap_or_else(|| SERVICE_NAME.to_string())
}

/// The SDK's hyper client, each request on the runtime's handle: the batch processor
/// polls it from its own thread, where no Tokio reactor runs.
#[derive(Debug)]
struct OnRuntime {
    /// The SDK's hyper client (rustls, the system's roots).
    client: opentelemetry_http::hyper::HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    >,
    /// The worker's runtime.
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await
            .map_err(|e| Box::new(e) as HttpError)?
    }
}

/// The tracer of the OTLP exporter, if the environment asks for one; its provider is
/// kept for [`flush`]. Must run within the Tokio runtime.
pub fn tracer() -> Result<Option<SdkTracer>, String> {
    let var = |name: &str| std::env::var(name).ok();
    describe(&var)?;
    if endpoint(&var).is_none() {
        return Ok(None);
    }
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: no runtime for the exporter: {e}"))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: no TLS roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let timeout = var("OTEL_EXPORTER_OTLP_TIMEOUT")
        .and_then(|t| t.trim().parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis);
    let client = OnRuntime {
        client: opentelemetry_http::hyper::HyperClient::new(connector, timeout, None),
        runtime,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(timeout)
        .with_http_client(client)
        .build()
        .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
    let resource = Resource::builder()
        .with_service_name(service_name(&var))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("sqs-forwarder");
    let _ = PROVIDER.set(provider);
    Ok(Some(tracer))
}

/// Exports the spans that ended and waits for it (a few seconds at most): at shutdown and
/// after each Lambda invocation. Nothing without an exporter.
pub async fn flush() {
    let Some(provider) = PROVIDER.get() else {
        return;
    };
    let provider = provider.clone();
    // The flush blocks its thread until the export (on the runtime) is done.
    let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    if let Ok(Err(err)) = flushed {
        tracing::warn!(%err, "traces not flushed");
    }
}

/// Makes `span` continue the trace of the first W3C `traceparent` (with its
/// `tracestate`) among `contexts`; the others become its links. Nothing without an
/// exporter, or without a valid `traceparent`.
pub fn continue_trace<'a>(
    span: &tracing::Span,
    contexts: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) {
    if PROVIDER.get().is_none() {
        return;
    }
    use opentelemetry::trace::TraceContextExt;
    let propagator = TraceContextPropagator::new();
    let mut parent = None;
    for (traceparent, tracestate) in contexts {
        let mut carrier = HashMap::with_capacity(2);
        carrier.insert("traceparent".to_string(), traceparent.to_string());
        if let Some(state) = tracestate {
            carrier.insert("tracestate".to_string(), state.to_string());
        }
        let cx = propagator.extract(&carrier);
        let remote = cx.span().span_context().clone();
        if !remote.is_valid() {
            continue;
        }
        if parent.is_none() {
            let _ = span.set_parent(cx);
            parent = Some(());
        } else {
            span.add_link(remote);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn unset_is_off_and_the_traces_endpoint_wins_over_the_base() {
        assert_eq!(describe(&env(&[])).unwrap(), "off");
        let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")];
        assert_eq!(
            endpoint(&env(&base)).unwrap().1,
            "http://collector:4318/v1/traces"
        );
        let both = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://other:4318/traces",
            ),
        ];
        assert_eq!(endpoint(&env(&both)).unwrap().1, "http://other:4318/traces");
        assert_eq!(
            describe(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment=prod,service.name=fwd"
                ),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ]))
            .unwrap(),
            "OTLP/HTTP to http://c:4318/v1/traces, service fwd, sampler traceidratio 0.25"
        );
    }

    #[test]
    fn a_bad_setting_names_its_variable() {
        let e = |pairs: &[(&str, &str)]| describe(&env(pairs)).unwrap_err();
        assert!(e(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")])
            .starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: "));
        let url = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert!(
            e(&[url, ("OTEL_TRACES_SAMPLER", "sometimes")]).starts_with("OTEL_TRACES_SAMPLER: ")
        );
        assert!(
            e(&[url, ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")])
                .starts_with("OTEL_TRACES_SAMPLER_ARG: ")
        );
        assert!(e(&[
            url,
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2")
        ])
        .starts_with("OTEL_TRACES_SAMPLER_ARG: "));
        assert!(e(&[url, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")])
            .starts_with("OTEL_EXPORTER_OTLP_TIMEOUT: "));
    }
}
