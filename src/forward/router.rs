//! Which forwarder an event goes through: per project, per organization (with its
//! projects' overrides), or the default; the precedence is
//! [`crate::config::routes::resolve`]'s.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::Forwarder;
use crate::config::routes::{resolve, Organization, RouteKey, Skip};

/// How often each destination's `MaximumMessageSize` is read again.
pub const LIMIT_REFRESH: Duration = Duration::from_secs(60);

/// One forwarder per destination, shared by the projects routed to it.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Projects not listed; `None`: their events are skipped.
    default: Option<Arc<Forwarder>>,
    /// Listed projects.
    projects: HashMap<u64, Arc<Forwarder>>,
    /// Organizations' routes and their projects' overrides.
    organizations: HashMap<u64, Organization<Arc<Forwarder>>>,
    /// When the destinations' message size limits are read again; shared by every clone.
    limits: LimitClock,
}

impl Router {
    /// Every event to one forwarder.
    pub fn single(forwarder: Forwarder) -> Self {
        Self {
            default: Some(Arc::new(forwarder)),
            ..Self::default()
        }
    }

    /// A router from routes already built.
    pub fn new(default: Option<Arc<Forwarder>>, projects: HashMap<u64, Arc<Forwarder>>) -> Self {
        Self {
            default,
            projects,
            organizations: HashMap::new(),
            limits: LimitClock::read_now(),
        }
    }

    /// A router for a default route, per-project and per-organization routes:
    /// `make(route, is_default)` gives each distinct route's forwarder once (built, or
    /// kept from the routes in force), and projects routed to the same one share it (one
    /// client, one pause state, one rate of probes).
    pub async fn build<'r, R, E, F>(
        default: Option<&'r R>,
        projects: impl IntoIterator<Item = (u64, &'r R)>,
        organizations: impl IntoIterator<Item = (u64, &'r Organization<R>)>,
        mut make: F,
    ) -> Result<Router, E>
    where
        R: Eq + Hash + 'r,
        F: AsyncFnMut(&'r R, bool) -> Result<Arc<Forwarder>, E>,
    {
        let mut built: HashMap<&'r R, Arc<Forwarder>> = HashMap::new();
        let mut get = async |route: &'r R, is_default: bool| -> Result<Arc<Forwarder>, E> {
            if let Some(f) = built.get(route) {
                return Ok(f.clone());
            }
            let forwarder = make(route, is_default).await?;
            built.insert(route, forwarder.clone());
            Ok(forwarder)
        };
        let default = match default {
            Some(route) => Some(get(route, true).await?),
            None => None,
        };
        let mut by_project = HashMap::new();
        for (project, route) in projects {
            by_project.insert(project, get(route, false).await?);
        }
        let mut by_organization = HashMap::new();
        for (id, org) in organizations {
            let mut projects = HashMap::new();
            for (project, route) in &org.projects {
                let built = match route {
                    Some(route) => Some(get(route, false).await?),
                    None => None,
                };
                projects.insert(*project, built);
            }
            by_organization.insert(
                id,
                Organization {
                    route: get(&org.route, false).await?,
                    enroll_new_projects: org.enroll_new_projects,
                    projects,
                },
            );
        }
        let mut router = Router::new(default, by_project);
        router.organizations = by_organization;
        Ok(router)
    }

    /// The forwarder of a project whatever its organization (`projects.P` or the
    /// default), if it has one.
    pub fn route(&self, project_id: u64) -> Option<&Arc<Forwarder>> {
        self.projects.get(&project_id).or(self.default.as_ref())
    }

    /// The forwarder an event of `organization` and `project` goes through, or why it
    /// is skipped ([`resolve`]).
    pub fn resolve(&self, organization: u64, project: u64) -> Result<&Arc<Forwarder>, Skip> {
        resolve(
            &self.projects,
            &self.organizations,
            self.default.as_ref(),
            organization,
            project,
        )
        .map(|(_, forwarder)| forwarder)
    }

    /// The forwarder of the route at `key`, if there is one.
    pub fn at(&self, key: RouteKey) -> Option<&Arc<Forwarder>> {
        match key {
            RouteKey::Default => self.default.as_ref(),
            RouteKey::Project(p) => self.projects.get(&p),
            RouteKey::Organization(o) => self.organizations.get(&o).map(|org| &org.route),
            RouteKey::OrganizationProject(o, p) => self
                .organizations
                .get(&o)
                .and_then(|org| org.projects.get(&p))
                .and_then(Option::as_ref),
        }
    }

    /// The default route's forwarder.
    pub fn default_route(&self) -> Option<&Arc<Forwarder>> {
        self.default.as_ref()
    }

    /// Every distinct forwarder, the default's first.
    pub fn forwarders(&self) -> Vec<&Arc<Forwarder>> {
        let mut all: Vec<&Arc<Forwarder>> = Vec::new();
        let organizations = self
            .organizations
            .values()
            .flat_map(|org| std::iter::once(&org.route).chain(org.projects.values().flatten()));
        for f in self
            .default
            .iter()
            .chain(self.projects.values())
            .chain(organizations)
        {
            if !all.iter().any(|seen| Arc::ptr_eq(seen, f)) {
                all.push(f);
            }
        }
        all
    }

    /// Reads each destination's `MaximumMessageSize` again if that was done over
    /// [`LIMIT_REFRESH`] ago (one try each, every route at once; a failure keeps the
    /// route's bound). A queue whose owner lowered its limit then gets its oversized
    /// events offloaded (or dead-lettered as oversized) instead of refused by SQS.
    pub async fn refresh_limits(&self) {
        if !self.limits.due() {
            return;
        }
        let forwarders = self.forwarders();
        futures_util::future::join_all(forwarders.iter().map(|f| f.refresh_limit())).await;
    }
}

/// When a queue's `MaximumMessageSize` is read again: at most every [`LIMIT_REFRESH`],
/// by one caller at a time (shared by every clone). A clock never read is due at once.
#[derive(Debug, Clone, Default)]
pub(crate) struct LimitClock(Arc<Mutex<Option<Instant>>>);

impl LimitClock {
    /// A clock read just now (by the healthcheck at start).
    pub(crate) fn read_now() -> Self {
        Self(Arc::new(Mutex::new(Some(Instant::now()))))
    }

    /// Whether it is time to read again; if so, the time is taken by this caller.
    pub(crate) fn due(&self) -> bool {
        let Ok(mut read_at) = self.0.try_lock() else {
            return false;
        };
        if read_at.is_some_and(|at| at.elapsed() < LIMIT_REFRESH) {
            return false;
        }
        *read_at = Some(Instant::now());
        true
    }
}

/// The router in force, shared by every clone of a pipeline and swapped whole when the
/// routes file is reloaded ([`crate::reload`]). Each batch takes the router in force when
/// it starts and keeps it to the end, so a batch in work finishes on the routes it
/// started with.
#[derive(Debug, Clone)]
pub struct SharedRouter {
    /// The router in force.
    current: Arc<RwLock<Arc<Router>>>,
}

impl SharedRouter {
    /// `router` in force.
    pub fn new(router: Router) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(router))),
        }
    }

    /// The router in force now.
    pub fn current(&self) -> Arc<Router> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `router` in force for every batch that starts from now on; the one before.
    pub fn replace(&self, router: Router) -> Arc<Router> {
        let new = Arc::new(router);
        match self.current.write() {
            Ok(mut current) => std::mem::replace(&mut *current, new),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), new),
        }
    }
}
