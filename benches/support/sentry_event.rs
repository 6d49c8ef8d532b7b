//! Sentry-like events for the benches: what a typical error event looks like on the
//! wire, so the decoder scans what it scans in production (not a padded string).

/// A Sentry-like error event of about `size` bytes: the first `tag_count` of 12 tags,
/// contexts, an SDK block, breadcrumbs, and an exception whose stack trace grows to the
/// size.
pub fn sentry_event(n: usize, size: usize, tag_count: usize) -> String {
    let tags = [
        ("environment", "production".to_string()),
        ("level", "error".to_string()),
        ("release", "backend@24.11.0".to_string()),
        ("server_name", format!("web-{}", n % 8)),
        (
            "transaction",
            "/api/0/projects/{org}/{project}/events/".to_string(),
        ),
        ("browser", "Chrome 131".to_string()),
        ("browser.name", "Chrome".to_string()),
        ("os", "Linux".to_string()),
        ("os.name", "Linux".to_string()),
        ("runtime", "CPython 3.12.7".to_string()),
        ("url", "https://example.com/checkout/confirm".to_string()),
        ("user", format!("id:{}", n % 100)),
    ];
    let tags: Vec<String> = tags
        .iter()
        .take(tag_count)
        .map(|(k, v)| format!("[\"{k}\",\"{v}\"]"))
        .collect();
    let head = format!(
        r#"{{"event_id":"{n:032x}","project_id":42,"organization_id":7,"platform":"python","timestamp":"2026-11-22T10:00:00.123Z","level":"error","logger":"django.request","transaction":"/api/0/checkout/","server_name":"web-3","release":"backend@24.11.0","environment":"production","message":"ZeroDivisionError: division by zero","tags":[{}],"contexts":{{"os":{{"name":"Linux","version":"6.1"}},"runtime":{{"name":"CPython","version":"3.12.7"}},"trace":{{"trace_id":"4c79f60c11214eb38604f4ae0781bfb2","span_id":"fa90fdead5f74053","op":"http.server"}}}},"sdk":{{"name":"sentry.python.django","version":"2.19.0","integrations":["django","logging","stdlib","threading"]}},"user":{{"id":"{}","ip_address":"10.0.0.1"}},"request":{{"method":"POST","url":"https://example.com/api/0/checkout/","headers":{{"Content-Type":"application/json","User-Agent":"Mozilla/5.0 (X11; Linux x86_64)"}}}},"breadcrumbs":{{"values":[{{"timestamp":1763805599.1,"category":"query","message":"SELECT \"orders\".\"id\" FROM \"orders\" WHERE \"orders\".\"user_id\" = %s"}}]}},"exception":{{"values":[{{"type":"ZeroDivisionError","value":"division by zero","stacktrace":{{"frames":["#,
        tags.join(","),
        n % 100
    );
    let mut body = head;
    let mut i = 0;
    loop {
        let frame = format!(
            r#"{{"filename":"app/views/checkout_{i}.py","function":"confirm_order_{i}","module":"app.views.checkout","lineno":{},"colno":13,"in_app":true,"context_line":"    total = amount / quantity  # frame {i}","pre_context":["def confirm_order(request):","    amount = request.data[\"amount\"]"],"post_context":["    return Response(total)"],"vars":{{"amount":"100","quantity":"0"}}}}"#,
            100 + i
        );
        if body.len() + frame.len() + 8 > size && i > 0 {
            break;
        }
        if i > 0 {
            body.push(',');
        }
        body.push_str(&frame);
        i += 1;
    }
    body.push_str("]}}]}}");
    body
}
