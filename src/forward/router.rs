//! Which forwarder an event goes through: per project, or the default.

use std::collections::HashMap;
use std::sync::Arc;

use super::Forwarder;

/// One forwarder per destination, shared by the projects routed to it.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Projects not listed; `None`: their events are skipped.
    default: Option<Arc<Forwarder>>,
    /// Listed projects.
    projects: HashMap<u64, Arc<Forwarder>>,
}

impl Router {
    /// Every event to one forwarder.
    pub fn single(forwarder: Forwarder) -> Self {
        Self {
            default: Some(Arc::new(forwarder)),
            projects: HashMap::new(),
        }
    }

    /// A router from routes already built.
    pub fn new(default: Option<Arc<Forwarder>>, projects: HashMap<u64, Arc<Forwarder>>) -> Self {
        Self { default, projects }
    }

    /// The forwarder of a project, if it has a route.
    pub fn route(&self, project_id: u64) -> Option<&Arc<Forwarder>> {
        self.projects.get(&project_id).or(self.default.as_ref())
    }

    /// The default route's forwarder.
    pub fn default_route(&self) -> Option<&Arc<Forwarder>> {
        self.default.as_ref()
    }
}
