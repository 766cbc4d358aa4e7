//! Kafka's ACL model, kept small (SPEC §8): entries name a principal (or
//! `User:*`), a resource (topic, group or the cluster) by literal name (`*` for
//! all) or by prefix, the operations, and allow or deny. Deny wins; what no
//! entry allows is denied; superusers are allowed everything.
//!
//! As in Kafka, `describe` is implied by `read`, `write`, `delete` and `alter`,
//! and creating a topic is allowed by `create` on the topic or on the cluster.

use std::collections::HashMap;

use crate::service::{Action, Resource};

/// What an entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    Topic = 0,
    Group = 1,
    Cluster = 2,
}

/// How an entry's name matches a resource's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// The exact name; `*` matches every name.
    Literal,
    /// Every name that starts with the entry's name.
    Prefixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Allow,
    Deny,
}

/// An ACL operation as configured (`all` covers every one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclOperation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    All,
}

impl AclOperation {
    pub fn parse(s: &str) -> Option<AclOperation> {
        Some(match s.to_ascii_lowercase().as_str() {
            "read" => AclOperation::Read,
            "write" => AclOperation::Write,
            "create" => AclOperation::Create,
            "delete" => AclOperation::Delete,
            "alter" => AclOperation::Alter,
            "describe" => AclOperation::Describe,
            "all" => AclOperation::All,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            AclOperation::Read => bit(Action::Read),
            AclOperation::Write => bit(Action::Write),
            AclOperation::Create => bit(Action::Create),
            AclOperation::Delete => bit(Action::Delete),
            AclOperation::Alter => bit(Action::Alter),
            AclOperation::Describe => bit(Action::Describe),
            AclOperation::All => u8::MAX,
        }
    }
}

fn bit(action: Action) -> u8 {
    match action {
        Action::Read => 1,
        Action::Write => 2,
        Action::Create => 4,
        Action::Delete => 8,
        Action::Alter => 16,
        Action::Describe => 32,
    }
}

/// One `[[acl]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    /// `User:NAME` or `User:*`.
    pub principal: String,
    pub resource: ResourceType,
    pub name: String,
    pub pattern: Pattern,
    pub operations: Vec<AclOperation>,
    pub permission: Permission,
}

#[derive(Debug, Clone)]
struct Rule {
    resource: ResourceType,
    name: String,
    pattern: Pattern,
    ops: u8,
    deny: bool,
}

impl Rule {
    fn matches(&self, resource: ResourceType, name: &str) -> bool {
        self.resource == resource
            && match self.pattern {
                Pattern::Literal => self.name == "*" || self.name == name,
                Pattern::Prefixed => name.starts_with(&self.name),
            }
    }
}

/// Decisions already taken, per resource kind and name: for each action a
/// "known" bit and an "allowed" bit. Rebuilt (empty) with the ACLs on reload.
#[derive(Debug, Default)]
struct Decisions([parking_lot::RwLock<HashMap<String, u16>>; 3]);

/// How many names a decision cache holds before it is emptied.
const MAX_DECISIONS: usize = 10_000;

impl Decisions {
    fn get(&self, kind: ResourceType, name: &str, action: Action) -> Option<bool> {
        let known = self.0[kind as usize].read().get(name).copied()?;
        let b = u16::from(bit(action));
        (known & b != 0).then_some(known & (b << 8) != 0)
    }

    fn put(&self, kind: ResourceType, name: &str, action: Action, allowed: bool) {
        let mut map = self.0[kind as usize].write();
        if map.len() >= MAX_DECISIONS && !map.contains_key(name) {
            map.clear();
        }
        let b = u16::from(bit(action));
        let entry = map.entry(name.to_owned()).or_insert(0);
        *entry |= b | if allowed { b << 8 } else { 0 };
    }
}

/// One principal's entries, and the decisions taken from them.
#[derive(Debug, Default)]
struct Rules {
    rules: Vec<Rule>,
    decided: Decisions,
}

/// The entries, indexed by principal, for decisions on every request. A
/// decision is taken once per principal, resource and action, then remembered
/// (so that the cost of a request does not grow with the number of entries).
#[derive(Debug, Default)]
pub struct Acls {
    by_principal: HashMap<String, Rules>,
    everyone: Vec<Rule>,
    /// Decisions for principals with no entry of their own (only `User:*` applies).
    others: Decisions,
    superusers: Vec<String>,
}

/// Actions whose grant also grants `describe` (Kafka's implication).
const IMPLIES_DESCRIBE: u8 = 1 | 2 | 8 | 16;

impl Acls {
    pub fn new(entries: &[AclEntry], superusers: &[String]) -> Acls {
        let mut acls = Acls { superusers: superusers.to_vec(), ..Acls::default() };
        for e in entries {
            let rule = Rule {
                resource: e.resource,
                name: e.name.clone(),
                pattern: e.pattern,
                ops: e.operations.iter().fold(0, |m, o| m | o.bits()),
                deny: e.permission == Permission::Deny,
            };
            if e.principal == "User:*" {
                acls.everyone.push(rule);
            } else {
                acls.by_principal.entry(e.principal.clone()).or_default().rules.push(rule);
            }
        }
        acls
    }

    pub fn is_superuser(&self, principal: &str) -> bool {
        self.superusers.iter().any(|s| s == principal)
    }

    /// Whether `principal` may do `action` on `resource`.
    pub fn allows(&self, principal: &str, resource: Resource<'_>, action: Action) -> bool {
        if self.is_superuser(principal) {
            return true;
        }
        let own = self.by_principal.get(principal);
        let decided = own.map_or(&self.others, |r| &r.decided);
        let own = own.map(|r| r.rules.as_slice()).unwrap_or_default();
        let allowed = |resource: Resource<'_>, action: Action| {
            let (kind, name) = match resource {
                Resource::Topic(t) => (ResourceType::Topic, t),
                Resource::Group(g) => (ResourceType::Group, g),
                Resource::Cluster => (ResourceType::Cluster, "kafka-cluster"),
            };
            if let Some(known) = decided.get(kind, name, action) {
                return known;
            }
            let want = bit(action);
            let (mut allow, mut deny) = (false, false);
            for rule in own.iter().chain(&self.everyone).filter(|r| r.matches(kind, name)) {
                if rule.deny {
                    deny |= rule.ops & want != 0;
                } else {
                    allow |= rule.ops & want != 0 || (action == Action::Describe && rule.ops & IMPLIES_DESCRIBE != 0);
                }
            }
            let verdict = allow && !deny;
            decided.put(kind, name, action, verdict);
            verdict
        };
        match (resource, action) {
            // Kafka: CreateTopics needs CREATE on the topic or on the cluster.
            (Resource::Topic(_), Action::Create) => {
                allowed(resource, action) || allowed(Resource::Cluster, Action::Create)
            }
            _ => allowed(resource, action),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(principal: &str, resource: ResourceType, name: &str, pattern: Pattern, ops: &[AclOperation]) -> AclEntry {
        AclEntry {
            principal: principal.into(),
            resource,
            name: name.into(),
            pattern,
            operations: ops.to_vec(),
            permission: Permission::Allow,
        }
    }

    #[test]
    fn literal_prefixed_wildcard_deny_and_superusers() {
        use AclOperation as O;
        use Pattern::{Literal, Prefixed};
        use ResourceType::{Cluster, Group, Topic};
        let mut deny = entry("User:alice", Topic, "orders-secret", Literal, &[O::All]);
        deny.permission = Permission::Deny;
        let acls = Acls::new(
            &[
                entry("User:alice", Topic, "orders", Prefixed, &[O::Read, O::Write]),
                deny,
                entry("User:alice", Group, "workers", Literal, &[O::Read]),
                entry("User:*", Topic, "public", Literal, &[O::Read]),
                entry("User:bob", Topic, "*", Literal, &[O::Describe]),
                entry("User:ops", Cluster, "kafka-cluster", Literal, &[O::Create]),
            ],
            &["User:admin".to_owned()],
        );
        let t = Resource::Topic;
        assert!(acls.allows("User:alice", t("orders"), Action::Write));
        assert!(acls.allows("User:alice", t("orders-eu"), Action::Read), "prefixed");
        assert!(!acls.allows("User:alice", t("orders-secret"), Action::Read), "deny wins over a prefixed allow");
        assert!(acls.allows("User:alice", t("orders"), Action::Describe), "implied by read/write");
        assert!(!acls.allows("User:alice", t("orders"), Action::Delete));
        assert!(!acls.allows("User:alice", t("invoices"), Action::Read), "no entry: denied");
        assert!(acls.allows("User:alice", Resource::Group("workers"), Action::Read));
        assert!(!acls.allows("User:alice", Resource::Group("workers-2"), Action::Read), "literal is exact");
        assert!(acls.allows("User:carol", t("public"), Action::Read), "User:* covers everyone");
        assert!(acls.allows("User:ANONYMOUS", t("public"), Action::Read));
        assert!(!acls.allows("User:carol", t("public"), Action::Write));
        assert!(acls.allows("User:bob", t("anything"), Action::Describe), "literal * matches all names");
        assert!(!acls.allows("User:bob", t("anything"), Action::Read), "describe does not imply read");
        assert!(acls.allows("User:ops", t("new-topic"), Action::Create), "create on the cluster creates topics");
        assert!(!acls.allows("User:ops", t("new-topic"), Action::Delete));
        assert!(acls.allows("User:admin", Resource::Cluster, Action::Alter), "superuser");
        assert!(!acls.allows("User:alice", Resource::Cluster, Action::Describe));
        // Asked again, from the remembered decisions: the same answers.
        assert!(acls.allows("User:alice", t("orders"), Action::Write));
        assert!(!acls.allows("User:alice", t("orders-secret"), Action::Read));
        assert!(acls.allows("User:alice", t("orders"), Action::Describe));
        assert!(!acls.allows("User:alice", t("orders"), Action::Delete));
        assert!(acls.allows("User:carol", t("public"), Action::Read));
        assert!(!acls.allows("User:carol", t("public"), Action::Write));
        assert!(acls.allows("User:ops", t("new-topic"), Action::Create));
    }
}
