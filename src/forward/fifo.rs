//! The message group of each event, from `FORWARDER_MESSAGE_GROUP_ID`: order on a FIFO
//! destination, tenant fairness on a standard one (SQS fair queues).

use crate::event::Event;

/// A literal group id, or a template with `{project_id}` and `{organization_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupTemplate(String);

impl std::str::FromStr for GroupTemplate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err(
                "is empty; expected a group id or a template like project-{project_id}".into(),
            );
        }
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{s:?} has an unclosed '{{'"))?;
            let name = &rest[open + 1..open + close];
            if name != "project_id" && name != "organization_id" {
                return Err(format!(
                    "{s:?} uses {{{name}}}; only {{project_id}} and {{organization_id}} are known"
                ));
            }
            rest = &rest[open + close + 1..];
        }
        // SQS takes `!` to `~` in a group id: no space, no control or non-ASCII
        // character. Refused here, at start, not by every send later.
        if let Some(bad) = s.chars().find(|c| !('!'..='~').contains(c)) {
            return Err(format!(
                "{s:?} holds {bad:?}; a message group id takes only the characters ! to ~ (letters, digits, punctuation)"
            ));
        }
        // A rendered id may be up to 128 characters; ids are at most 19 digits.
        if s.len() > 90 {
            return Err(format!(
                "{s:?} is too long; a message group id has at most 128 characters"
            ));
        }
        Ok(GroupTemplate(s.to_string()))
    }
}

impl GroupTemplate {
    /// The group id of an event.
    pub fn render(&self, event: &Event<'_>) -> String {
        self.0
            .replace("{project_id}", &event.project_id.to_string())
            .replace("{organization_id}", &event.organization_id.to_string())
    }

    /// The template as configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_validates() {
        let body = r#"{"event_id":"0123456789abcdef0123456789abcdef","project_id":12,"organization_id":3}"#;
        let event = crate::event::decode(body).unwrap();
        let t: GroupTemplate = "org-{organization_id}/p-{project_id}".parse().unwrap();
        assert_eq!(t.render(&event), "org-3/p-12");
        let literal: GroupTemplate = "events".parse().unwrap();
        assert_eq!(literal.render(&event), "events");
        assert!("{team}".parse::<GroupTemplate>().is_err());
        assert!("p-{project_id".parse::<GroupTemplate>().is_err());
        assert!("".parse::<GroupTemplate>().is_err());
        assert!("tenant {project_id}".parse::<GroupTemplate>().is_err());
        assert!("café".parse::<GroupTemplate>().is_err());
        assert!("a/b:{organization_id}!".parse::<GroupTemplate>().is_ok());
    }
}
