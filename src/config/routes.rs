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
//!
//! [organizations.7]              # organization 7's projects (Sentry's organization-level forwarder)
//! queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/org-7"
//! enroll_new_projects = false    # optional (default true): only the projects listed below
//!
//! [organizations.7.projects.8]   # merged key by key over the organization's route
//! message_group_id = "project-{project_id}"
//!
//! [organizations.7.projects.9]
//! enabled = false                # left out: skipped, never the default's
//! ```
//!
//! Which route an event takes ([`Routes::resolve`]), first match wins: `projects.P`; its
//! organization's override `organizations.O.projects.P` (or skipped, `enabled = false`);
//! its organization's route `organizations.O` (or skipped, `enroll_new_projects = false`);
//! `default`. The same in JSON: `{"default": {...}, "projects": {"42": {...}},
//! "organizations": {"7": {..., "projects": {"8": {...}}}}}`. Without a default, events
//! of projects no route takes are skipped and counted (`skip_unconfigured`).

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
    /// Projects no other route takes; `None`: they are skipped.
    pub default: Option<Route>,
    /// Listed projects, whatever their organization.
    pub projects: HashMap<u64, Route>,
    /// Organizations' routes (Sentry's organization-level Data Forwarder).
    pub organizations: HashMap<u64, Organization<Route>>,
}

/// An organization's route, its projects' overrides, and whether projects it does not
/// list are forwarded. Generic over what a route is: [`Route`] here, a forwarder in the
/// [`crate::forward::Router`], which resolves the same way ([`resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization<R> {
    /// The organization's own route.
    pub route: R,
    /// `enroll_new_projects` (default true): whether its projects not listed under it
    /// take its route; if not, they are skipped.
    pub enroll_new_projects: bool,
    /// Its listed projects: the route merged from the organization's and the project's
    /// keys, or `None` where the project is switched off (`enabled = false`).
    pub projects: HashMap<u64, Option<R>>,
}

/// Why an event no route takes is skipped: a typed label of [`crate::outcome`].
pub use crate::outcome::Skip;

/// The route an event of `organization` and `project` takes, and where it stands, first
/// match winning: `projects.P`; the organization's override of P (or skipped if switched
/// off); the organization's route (or skipped if it does not enroll unlisted projects);
/// the default. An organization with a route never falls through to the default.
pub fn resolve<'a, R>(
    projects: &'a HashMap<u64, R>,
    organizations: &'a HashMap<u64, Organization<R>>,
    default: Option<&'a R>,
    organization: u64,
    project: u64,
) -> Result<(RouteKey, &'a R), Skip> {
    if let Some(route) = projects.get(&project) {
        return Ok((RouteKey::Project(project), route));
    }
    match organizations.get(&organization) {
        Some(org) => match org.projects.get(&project) {
            Some(Some(route)) => Ok((RouteKey::OrganizationProject(organization, project), route)),
            Some(None) => Err(Skip::ProjectDisabled),
            None if org.enroll_new_projects => {
                Ok((RouteKey::Organization(organization), &org.route))
            }
            None => Err(Skip::NotEnrolled),
        },
        None => default
            .map(|route| (RouteKey::Default, route))
            .ok_or(Skip::Unconfigured),
    }
}

/// Where a route stands in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKey {
    /// `[default]`.
    Default,
    /// `[projects.P]`.
    Project(u64),
    /// `[organizations.O]`.
    Organization(u64),
    /// `[organizations.O.projects.P]` (one switched on).
    OrganizationProject(u64, u64),
}

impl RouteKey {
    /// Its table in the file: `default`, `projects.42`, `organizations.7.projects.8`.
    pub fn at(self) -> String {
        match self {
            RouteKey::Default => "default".into(),
            RouteKey::Project(p) => format!("projects.{p}"),
            RouteKey::Organization(o) => format!("organizations.{o}"),
            RouteKey::OrganizationProject(o, p) => format!("organizations.{o}.projects.{p}"),
        }
    }
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteKey::Default => f.write_str("default"),
            RouteKey::Project(p) => write!(f, "project {p}"),
            RouteKey::Organization(o) => write!(f, "organization {o}"),
            RouteKey::OrganizationProject(o, p) => write!(f, "organization {o} project {p}"),
        }
    }
}

impl Routes {
    /// Every route with where it stands: the default first, then projects, then
    /// organizations, each followed by its projects switched on.
    pub fn keyed(&self) -> impl Iterator<Item = (RouteKey, &Route)> {
        let mut orgs: Vec<(&u64, &Organization<Route>)> = self.organizations.iter().collect();
        orgs.sort_by_key(|(o, _)| **o);
        let mut projects: Vec<(&u64, &Route)> = self.projects.iter().collect();
        projects.sort_by_key(|(p, _)| **p);
        let organizations = orgs.into_iter().flat_map(|(o, org)| {
            let mut listed: Vec<(&u64, &Option<Route>)> = org.projects.iter().collect();
            listed.sort_by_key(|(p, _)| **p);
            std::iter::once((RouteKey::Organization(*o), &org.route)).chain(
                listed.into_iter().filter_map(move |(p, r)| {
                    r.as_ref()
                        .map(|r| (RouteKey::OrganizationProject(*o, *p), r))
                }),
            )
        });
        self.default
            .iter()
            .map(|r| (RouteKey::Default, r))
            .chain(
                projects
                    .into_iter()
                    .map(|(p, r)| (RouteKey::Project(*p), r)),
            )
            .chain(organizations)
    }

    /// The route of a project, whatever its organization: `projects.P` or the default.
    pub fn route(&self, project_id: u64) -> Option<&Route> {
        self.projects.get(&project_id).or(self.default.as_ref())
    }

    /// The route an event of `organization` and `project` takes, and where it stands
    /// ([`resolve`]).
    pub fn resolve(&self, organization: u64, project: u64) -> Result<(RouteKey, &Route), Skip> {
        resolve(
            &self.projects,
            &self.organizations,
            self.default.as_ref(),
            organization,
            project,
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    default: Option<RouteSpec>,
    #[serde(default)]
    projects: BTreeMap<String, RouteSpec>,
    /// Read as tables first: a project's keys are merged over its organization's before
    /// either is read as a route.
    #[serde(default)]
    organizations: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
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
        let id = id_of(path, &format!("projects.{key}"), &key, "a project")?;
        projects.insert(id, route(path, &format!("projects.{key}"), spec)?);
    }
    let mut organizations = HashMap::new();
    for (key, table) in spec.organizations {
        let at = format!("organizations.{key}");
        let id = id_of(path, &at, &key, "an organization")?;
        organizations.insert(id, organization(path, &at, table)?);
    }
    if default.is_none() && projects.is_empty() && organizations.is_empty() {
        return Err(error(
            path,
            "has no route: give [default], [projects.ID] or [organizations.ID]",
        ));
    }
    Ok(Routes {
        default,
        projects,
        organizations,
    })
}

/// The id a table is keyed by: a positive integer.
fn id_of(path: &Path, at: &str, key: &str, what: &str) -> Result<u64, ConfigError> {
    key.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| error(path, format!("{at}: {what} id must be a positive integer")))
}

/// An organization's table: its route, `enroll_new_projects`, and `projects`, each
/// merged key by key over the organization's keys (`enabled = false` switches one off).
fn organization(
    path: &Path,
    at: &str,
    mut table: serde_json::Map<String, serde_json::Value>,
) -> Result<Organization<Route>, ConfigError> {
    let enroll_new_projects = match table.remove("enroll_new_projects") {
        None => true,
        Some(serde_json::Value::Bool(b)) => b,
        Some(other) => {
            return Err(error(
                path,
                format!("{at}.enroll_new_projects: {other} is not true or false"),
            ))
        }
    };
    let listed = match table.remove("projects") {
        None => serde_json::Map::new(),
        Some(serde_json::Value::Object(listed)) => listed,
        Some(other) => {
            return Err(error(
                path,
                format!("{at}.projects: {other} is not a table"),
            ))
        }
    };
    let own = route_from_table(path, at, table.clone())?;
    let mut projects = HashMap::new();
    for (key, value) in listed {
        let here = format!("{at}.projects.{key}");
        let id = id_of(path, &here, &key, "a project")?;
        let serde_json::Value::Object(mut overrides) = value else {
            return Err(error(path, format!("{here}: {value} is not a table")));
        };
        let enabled = match overrides.remove("enabled") {
            None => true,
            Some(serde_json::Value::Bool(b)) => b,
            Some(other) => {
                return Err(error(
                    path,
                    format!("{here}.enabled: {other} is not true or false"),
                ))
            }
        };
        let mut merged = table.clone();
        merged.extend(overrides);
        let route = route_from_table(path, &here, merged)?;
        projects.insert(id, enabled.then_some(route));
    }
    Ok(Organization {
        route: own,
        enroll_new_projects,
        projects,
    })
}

/// A route from its keys, read as a `[projects.P]` table is.
fn route_from_table(
    path: &Path,
    at: &str,
    table: serde_json::Map<String, serde_json::Value>,
) -> Result<Route, ConfigError> {
    let spec: RouteSpec = serde_json::from_value(serde_json::Value::Object(table))
        .map_err(|e| error(path, format!("{at}: {e}")))?;
    route(path, at, spec)
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

    /// Sentry's organization-level forwarder: the precedence, the merge of a project's
    /// keys over its organization's, and the two skips that never fall to the default.
    #[test]
    fn organization_routes_take_their_projects_in_order_of_precedence() {
        let toml = format!(
            r#"
[default]
queue_url = "{Q}-default"

[projects.1]
queue_url = "{Q}-p1"

[organizations.7]
queue_url = "{Q}-org7"
s3_bucket = "org7-big"

[organizations.7.projects.8]
message_group_id = "p-{{project_id}}"

[organizations.7.projects.9]
enabled = false

[organizations.7.projects.1]
queue_url = "{Q}-never"

[organizations.5]
queue_url = "{Q}-org5"
enroll_new_projects = false

[organizations.5.projects.6]
queue_url = "{Q}-org5-p6"
"#
        );
        let routes = parse(Path::new("r.toml"), &toml).unwrap();
        let to = |o, p| {
            routes
                .resolve(o, p)
                .map(|(key, r)| (key.at(), r.queue_url.clone()))
        };
        // 1. projects.P, whatever the organization (its override included).
        assert_eq!(to(7, 1), Ok(("projects.1".into(), format!("{Q}-p1"))));
        // 2. The organization's override, merged over its route's keys.
        assert_eq!(
            to(7, 8),
            Ok(("organizations.7.projects.8".into(), format!("{Q}-org7")))
        );
        let (_, merged) = routes.resolve(7, 8).unwrap();
        assert_eq!(merged.s3_bucket.as_deref(), Some("org7-big"), "inherited");
        assert_eq!(
            merged.message_group.as_ref().map(|g| g.as_str()),
            Some("p-{project_id}"),
            "its own"
        );
        assert_eq!(
            to(5, 6),
            Ok(("organizations.5.projects.6".into(), format!("{Q}-org5-p6")))
        );
        // 3. The organization's route, for projects it does not list.
        assert_eq!(
            to(7, 100),
            Ok(("organizations.7".into(), format!("{Q}-org7")))
        );
        // Skipped, never the default's: switched off, or not enrolled.
        assert_eq!(to(7, 9), Err(Skip::ProjectDisabled));
        assert_eq!(to(5, 100), Err(Skip::NotEnrolled));
        // 4. The default, for organizations without a route.
        assert_eq!(to(3, 100), Ok(("default".into(), format!("{Q}-default"))));
        let no_default = parse(
            Path::new("r.toml"),
            &format!("[organizations.7]\nqueue_url = \"{Q}\"\n"),
        )
        .unwrap();
        assert_eq!(
            no_default.resolve(3, 100).map(|(k, _)| k),
            Err(Skip::Unconfigured)
        );
        // Every route, listed once, the switched-off project not among them.
        let keys: Vec<String> = routes.keyed().map(|(k, _)| k.at()).collect();
        assert_eq!(
            keys,
            [
                "default",
                "projects.1",
                "organizations.5",
                "organizations.5.projects.6",
                "organizations.7",
                "organizations.7.projects.1",
                "organizations.7.projects.8"
            ]
        );
        // JSON says the same.
        let json = format!(
            r#"{{"organizations":{{"7":{{"queue_url":"{Q}","enroll_new_projects":false,
                "projects":{{"8":{{"enabled":false}},"9":{{"region":"eu-west-1"}}}}}}}}}}"#
        );
        let routes = parse(Path::new("r.json"), &json).unwrap();
        assert_eq!(
            routes.resolve(7, 8).map(|(k, _)| k),
            Err(Skip::ProjectDisabled)
        );
        assert_eq!(routes.resolve(7, 1).map(|(k, _)| k), Err(Skip::NotEnrolled));
        let (_, nine) = routes.resolve(7, 9).unwrap();
        assert_eq!(
            (nine.queue_url.as_str(), nine.region.as_deref()),
            (Q, Some("eu-west-1"))
        );
    }

    #[test]
    fn a_bad_organization_table_fails_in_one_line_naming_where() {
        for (text, says) in [
            (format!("[organizations.x]\nqueue_url = \"{Q}\"\n"), "organizations.x: an organization id must be a positive integer"),
            (format!("[organizations.7]\nqueue_url = \"{Q}\"\nenroll_new_projects = \"no\"\n"), "organizations.7.enroll_new_projects: \"no\" is not true or false"),
            (format!("[organizations.7]\nqueue_url = \"{Q}\"\n[organizations.7.projects.8]\nenabled = 0\n"), "organizations.7.projects.8.enabled: 0 is not true or false"),
            (format!("[organizations.7]\nqueue = \"{Q}\"\n"), "organizations.7: unknown field `queue`"),
            (format!("[organizations.7]\nqueue_url = \"{Q}\"\n[organizations.7.projects.8]\nqueue_url = \"nope\"\n"), "organizations.7.projects.8.queue_url"),
            (format!("[organizations.7]\nqueue_url = \"{Q}\"\n[organizations.7.projects.0]\nenabled = false\n"), "organizations.7.projects.0: a project id must be a positive integer"),
        ] {
            let err = parse(Path::new("r.toml"), &text).unwrap_err().to_string();
            assert!(err.starts_with("FORWARDER_ROUTES_FILE: r.toml: "), "{err}");
            assert!(err.contains(says), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
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
