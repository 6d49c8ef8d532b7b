//! Per-project routes (`FORWARDER_ROUTES_FILE`): which destination each project's events
//! go to, as Sentry's per-project plugin configuration, on one worker.
//!
//! ```toml
//! [default]                      # optional: projects not listed below
//! queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/events"
//!
//! [projects.42]
//! queue_url = "https://sqs.eu-west-1.amazonaws.com/210987654321/acme.fifo"
//! region = "eu-west-1"
//! message_group_id = "project-{project_id}"
//! s3_bucket = "acme-large-events"
//! s3_offload = "always"          # optional: oversized (default) or always
//! s3_sse = "aws:kms"             # optional: AES256 or aws:kms (default: the bucket's)
//! s3_kms_key_id = "alias/acme-events"   # optional, with aws:kms
//! credentials = { role_arn = "arn:aws:iam::210987654321:role/forwarder", external_id = "x" }
//! exclude_fields = ["user.ip_address", "request.cookies"]   # or include_fields = [...]
//! filter = { level = ["error", "fatal"], "tags.customer" = "acme" }
//! pack = "ndjson"                # optional: many events per message, one per line
//! pack_compression = "gzip"      # optional, with s3_offload = "always": gzip objects
//!
//! [projects.43]
//! queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/other"
//! credentials = { profile = "other-account" }
//! ```
//!
//! The same in JSON: `{"default": {...}, "projects": {"42": {...}}}`. Without a default,
//! events of projects not listed are skipped and counted (`skip_unconfigured`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use crate::forward::GroupTemplate;

const VAR: &str = "FORWARDER_ROUTES_FILE";

/// Where a route's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CredentialSource {
    /// The default AWS chain (environment, profile, web identity, instance role).
    DefaultChain,
    /// A named profile of the AWS config files.
    Profile(String),
    /// A role assumed with STS, from the default chain's credentials.
    AssumeRole {
        /// The role's ARN.
        role_arn: String,
        /// The external id the role's trust policy asks for, if any.
        external_id: Option<String>,
    },
}

/// One destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The queue.
    pub queue_url: String,
    /// Its region; `None`: the worker's (`AWS_REGION`).
    pub region: Option<String>,
    /// The message group: order on a FIFO queue, the tenant on a standard (fair) one.
    pub message_group: Option<GroupTemplate>,
    /// Where oversized events go.
    pub s3_bucket: Option<String>,
    /// Which events go to the bucket; `None`: as `FORWARDER_S3_OFFLOAD` says.
    pub s3_offload: Option<crate::forward::OffloadMode>,
    /// How its objects are encrypted (`s3_sse`, `s3_kms_key_id`); `None`: as
    /// `FORWARDER_S3_SSE` and `FORWARDER_S3_KMS_KEY_ID` say.
    pub s3_encryption: Option<crate::forward::S3Encryption>,
    /// Whose credentials send.
    pub credentials: CredentialSource,
    /// The fields it receives (`exclude_fields` / `include_fields`); `None`: as
    /// `FORWARDER_EXCLUDE_FIELDS` / `FORWARDER_INCLUDE_FIELDS` say.
    pub fields: Option<crate::event::fields::FieldRules>,
    /// The events it receives (`filter`); `None`: as `FORWARDER_FILTER` says.
    pub filter: Option<crate::event::fields::Filter>,
    /// Whether its messages pack many events (`pack`); `None`: as `FORWARDER_PACK` says.
    pub pack: Option<crate::forward::Pack>,
    /// How its packs' S3 objects are stored (`pack_compression`); `None`: as
    /// `FORWARDER_PACK_COMPRESSION` says.
    pub pack_compression: Option<crate::forward::PackCompression>,
}

/// Every project's destination.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routes {
    /// Projects not listed; `None`: they are skipped.
    pub default: Option<Route>,
    /// Listed projects.
    pub projects: HashMap<u64, Route>,
}

impl Routes {
    /// Every route with its key: `None` for the default, else the project id; the
    /// default first.
    pub fn keyed(&self) -> impl Iterator<Item = (Option<u64>, &Route)> {
        self.default
            .iter()
            .map(|r| (None, r))
            .chain(self.projects.iter().map(|(p, r)| (Some(*p), r)))
    }

    /// The route of a project.
    pub fn route(&self, project_id: u64) -> Option<&Route> {
        self.projects.get(&project_id).or(self.default.as_ref())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    default: Option<RouteSpec>,
    #[serde(default)]
    projects: BTreeMap<String, RouteSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    queue_url: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    message_group_id: Option<String>,
    #[serde(default)]
    s3_bucket: Option<String>,
    #[serde(default)]
    s3_offload: Option<String>,
    /// `AES256` or `aws:kms`.
    #[serde(default)]
    s3_sse: Option<String>,
    /// The KMS key of `aws:kms`.
    #[serde(default)]
    s3_kms_key_id: Option<String>,
    #[serde(default)]
    credentials: Option<CredentialsSpec>,
    #[serde(default)]
    exclude_fields: Vec<String>,
    #[serde(default)]
    include_fields: Vec<String>,
    #[serde(default)]
    filter: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    pack: Option<String>,
    #[serde(default)]
    pack_compression: Option<String>,
}

/// A filter's accepted values: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsSpec {
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    role_arn: Option<String>,
    #[serde(default)]
    external_id: Option<String>,
}

fn error(path: &Path, problem: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        var: VAR,
        problem: format!("{}: {problem}", path.display()).replace('\n', " "),
    }
}

/// Reads and validates a routes file (`.toml` or `.json`).
pub fn load(path: &Path) -> Result<Routes, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| error(path, format!("cannot be read: {e}")))?;
    parse(path, &text)
}

/// Validates the text of a routes file; `path` decides the format and names errors.
pub fn parse(path: &Path, text: &str) -> Result<Routes, ConfigError> {
    let spec: FileSpec = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => toml::from_str(text).map_err(|e| error(path, e.message()))?,
        Some("json") => serde_json::from_str(text).map_err(|e| error(path, e))?,
        _ => return Err(error(path, "must end in .toml or .json")),
    };
    let default = spec
        .default
        .map(|r| route(path, "default", r))
        .transpose()?;
    let mut projects = HashMap::new();
    for (key, spec) in spec.projects {
        let id = key
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| {
                error(
                    path,
                    format!("projects.{key}: a project id must be a positive integer"),
                )
            })?;
        projects.insert(id, route(path, &format!("projects.{key}"), spec)?);
    }
    if default.is_none() && projects.is_empty() {
        return Err(error(path, "has no route: give [default] or [projects.ID]"));
    }
    Ok(Routes { default, projects })
}

fn route(path: &Path, at: &str, spec: RouteSpec) -> Result<Route, ConfigError> {
    let mut problems = Vec::new();
    let queue_url =
        super::queue_url(VAR, Some(&spec.queue_url), &mut problems).ok_or_else(|| {
            error(
                path,
                format!("{at}.queue_url: {:?} is not a queue URL", spec.queue_url),
            )
        })?;
    let message_group: Option<GroupTemplate> =
        parsed(path, at, "message_group_id", spec.message_group_id)?;
    let s3_bucket = spec.s3_bucket.filter(|b| !b.is_empty());
    let s3_offload: Option<crate::forward::OffloadMode> =
        parsed(path, at, "s3_offload", spec.s3_offload)?;
    if s3_offload == Some(crate::forward::OffloadMode::Always) && s3_bucket.is_none() {
        return Err(error(
            path,
            format!("{at}.s3_offload: is \"always\", but the route has no s3_bucket"),
        ));
    }
    let s3_encryption = match (&spec.s3_sse, &spec.s3_kms_key_id) {
        (None, None) => None,
        (sse, key) => Some(
            crate::forward::S3Encryption::from_settings(sse.as_deref(), key.as_deref())
                .map_err(|(which, e)| error(path, format!("{at}.s3_{which}: {e}")))?,
        ),
    };
    let fields = crate::event::fields::FieldRules::new(&spec.exclude_fields, &spec.include_fields)
        .map_err(|e| error(path, format!("{at}: {e}")))?;
    let filter = crate::event::fields::Filter::new(spec.filter.into_iter().map(|(k, v)| {
        let values = match v {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        };
        (k, values)
    }))
    .map_err(|e| error(path, format!("{at}.filter: {e}")))?;
    Ok(Route {
        queue_url,
        region: spec.region.filter(|r| !r.is_empty()),
        message_group,
        s3_bucket,
        s3_offload,
        s3_encryption,
        credentials: credentials(path, at, spec.credentials)?,
        fields,
        filter,
        pack: parsed(path, at, "pack", spec.pack)?,
        pack_compression: parsed(path, at, "pack_compression", spec.pack_compression)?,
    })
}

/// A route's optional setting `key`, parsed; a bad value is an error naming it.
fn parsed<T>(
    path: &Path,
    at: &str,
    key: &str,
    value: Option<String>,
) -> Result<Option<T>, ConfigError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    value
        .map(|v| v.parse::<T>())
        .transpose()
        .map_err(|e| error(path, format!("{at}.{key}: {e}")))
}

/// Where a route's credentials come from: the default chain, a profile, or a role to
/// assume (with an optional external id); never both a profile and a role.
fn credentials(
    path: &Path,
    at: &str,
    spec: Option<CredentialsSpec>,
) -> Result<CredentialSource, ConfigError> {
    Ok(match spec {
        None => CredentialSource::DefaultChain,
        Some(CredentialsSpec {
            profile: Some(p),
            role_arn: None,
            external_id: None,
        }) => CredentialSource::Profile(p),
        Some(CredentialsSpec {
            profile: None,
            role_arn: Some(role_arn),
            external_id,
        }) => {
            if !role_arn.starts_with("arn:") {
                return Err(error(
                    path,
                    format!("{at}.credentials.role_arn: {role_arn:?} is not an ARN"),
                ));
            }
            CredentialSource::AssumeRole {
                role_arn,
                external_id,
            }
        }
        Some(CredentialsSpec {
            profile: None,
            role_arn: None,
            external_id: None,
        }) => CredentialSource::DefaultChain,
        Some(_) => {
            return Err(error(
                path,
                format!(
                "{at}.credentials: give either profile, or role_arn (with an optional external_id)"
            ),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: &str = "https://sqs.us-east-1.amazonaws.com/1/q";

    #[test]
    fn a_route_packs_and_a_bad_pack_is_refused_naming_the_route() {
        let path = Path::new("r.toml");
        let routes = parse(
            path,
            &format!(
                "[default]\nqueue_url = \"{Q}\"\npack = \"ndjson\"\npack_compression = \"gzip\"\n"
            ),
        )
        .unwrap();
        let default = routes.default.unwrap();
        assert_eq!(default.pack, Some(crate::forward::Pack::Ndjson));
        assert_eq!(
            default.pack_compression,
            Some(crate::forward::PackCompression::Gzip)
        );
        for (text, says) in [
            ("pack = \"csv\"", "default.pack: \"csv\" is not a packing"),
            (
                "pack_compression = \"zip\"",
                "default.pack_compression: \"zip\" is not",
            ),
        ] {
            let err =
                parse(path, &format!("[default]\nqueue_url = \"{Q}\"\n{text}\n")).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn toml_and_json_give_the_same_routes() {
        let toml = format!(
            r#"
[default]
queue_url = "{Q}"

[projects.42]
queue_url = "{Q}.fifo"
region = "eu-west-1"
message_group_id = "p-{{project_id}}"
s3_bucket = "big"
s3_offload = "always"
credentials = {{ role_arn = "arn:aws:iam::1:role/r", external_id = "x" }}

[projects.43]
queue_url = "{Q}"
credentials = {{ profile = "other" }}
"#
        );
        let json = format!(
            r#"{{"default":{{"queue_url":"{Q}"}},"projects":{{
                "42":{{"queue_url":"{Q}.fifo","region":"eu-west-1","message_group_id":"p-{{project_id}}","s3_bucket":"big","s3_offload":"always",
                       "credentials":{{"role_arn":"arn:aws:iam::1:role/r","external_id":"x"}}}},
                "43":{{"queue_url":"{Q}","credentials":{{"profile":"other"}}}}}}}}"#
        );
        let a = parse(Path::new("r.toml"), &toml).unwrap();
        let b = parse(Path::new("r.json"), &json).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.route(42).unwrap().region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            a.route(42).unwrap().s3_offload,
            Some(crate::forward::OffloadMode::Always)
        );
        assert_eq!(
            a.route(43).unwrap().s3_offload,
            None,
            "as the worker's setting"
        );
        assert_eq!(
            a.route(42).unwrap().credentials,
            CredentialSource::AssumeRole {
                role_arn: "arn:aws:iam::1:role/r".into(),
                external_id: Some("x".into())
            }
        );
        assert_eq!(
            a.route(43).unwrap().credentials,
            CredentialSource::Profile("other".into())
        );
        assert_eq!(a.route(7).unwrap().queue_url, Q, "the default");
    }

    #[test]
    fn invalid_files_fail_in_one_line_naming_the_variable() {
        let cases = [
            ("r.toml", "[default]\nqueue_url = 1\n"),
            ("r.toml", "[default]\nqueue = \"x\"\n"),
            ("r.toml", format!("[projects.abc]\nqueue_url = \"{Q}\"\n").leak() as &str),
            ("r.toml", "[default]\nqueue_url = \"not-a-url\"\n"),
            ("r.toml", format!("[default]\nqueue_url = \"{Q}\"\nmessage_group_id = \"{{team}}\"\n").leak()),
            ("r.toml", format!("[default]\nqueue_url = \"{Q}\"\ncredentials = {{ profile = \"a\", role_arn = \"arn:x\" }}\n").leak()),
            ("r.toml", format!("[default]\nqueue_url = \"{Q}\"\ns3_offload = \"always\"\n").leak()),
            ("r.toml", format!("[default]\nqueue_url = \"{Q}\"\ns3_bucket = \"b\"\ns3_offload = \"sometimes\"\n").leak()),
            ("r.json", "{\"default\": "),
            ("r.yaml", "default: {}"),
            ("r.toml", ""),
        ];
        for (name, text) in cases {
            let err = parse(Path::new(name), text)
                .err()
                .unwrap_or_else(|| panic!("{text} parsed"));
            let line = err.to_string();
            assert!(line.starts_with("FORWARDER_ROUTES_FILE: "), "{line}");
            assert_eq!(line.lines().count(), 1, "{line}");
        }
    }
}
