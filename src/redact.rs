//! Secrets out of URLs, for every log line, error and Debug output: the one place that
//! knows how. A leaf: it depends on nothing of the crate, so settings (`config`) and the
//! parts that hold URLs (`indexer`) both use it.

/// The URL with the password of its userinfo replaced by `***`, and the value of every
/// query parameter not named in `safe` (compared lower-cased) replaced by `***`; a
/// fragment is dropped. `scheme://user:***@host/path?sslmode=require&password=***`.
pub fn url(url: &str, safe: &[&str]) -> String {
    let url = url.split('#').next().unwrap_or_default();
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = userinfo(base);
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _)) if !safe.contains(&name.to_ascii_lowercase().as_str()) => {
                    format!("{name}=***")
                }
                _ => param.to_string(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

/// `scheme://user:***@host/…`: the password of the userinfo masked.
fn userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{}{}{}", &url[..scheme_end + 3], masked, &rest[at..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_unsafe_parameters_never_show() {
        assert_eq!(url("redis://:pw@h:1/2", &[]), "redis://:***@h:1/2");
        assert_eq!(url("rediss://u:pw@h:1", &[]), "rediss://u:***@h:1");
        assert_eq!(url("redis://h:1", &[]), "redis://h:1");
        assert_eq!(
            url("redis://h:1/0?password=pw#x", &[]),
            "redis://h:1/0?password=***"
        );
        assert_eq!(
            url(
                "postgres://u:p@h/db?sslmode=require&password=p",
                &["sslmode"]
            ),
            "postgres://u:***@h/db?sslmode=require&password=***"
        );
        assert_eq!(url("sqlite:data/x.db", &[]), "sqlite:data/x.db");
    }
}
