//! Who is asking, and what each operation needs: the single place where every
//! request from every transport is authorized.
//!
//! [`Operation`] names each operation the service offers once; [`Operation::requires`]
//! is one exhaustive `match` from an operation to the permissions it needs (SPEC §8's
//! route → operation table), so an operation added without a decision does not
//! compile. The decision is the ACLs' ([`crate::auth::Security`]); with
//! authentication off every principal is `User:ANONYMOUS` and everything is allowed.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::auth::quota::{Slot, Throttle};
use crate::auth::{AuthSettings, Security};
use crate::error::Result;

/// The authenticated identity behind a request: Kafka's `User:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(Cow<'static, str>);

impl Principal {
    /// Everyone, while authentication is off. Built for every request: no allocation.
    pub fn anonymous() -> Principal {
        Principal(Cow::Borrowed("User:ANONYMOUS"))
    }

    pub fn user(name: &str) -> Principal {
        Principal(Cow::Owned(format!("User:{name}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a transport knows about the request it is serving.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub principal: Principal,
    /// When the credentials stop holding (seconds since the epoch): a stream
    /// authenticated with a JWT is closed then (4401).
    pub expires_at: Option<u64>,
    /// How this transport takes a quota's debt: refused (REST) or delayed (streams).
    pub throttle: Throttle,
    /// The request's place under the principal's `max_connections`, held for
    /// as long as any copy of the context lives (a stream's whole life).
    pub slot: Option<Arc<Slot>>,
}

impl RequestCtx {
    pub fn anonymous() -> RequestCtx {
        RequestCtx { principal: Principal::anonymous(), expires_at: None, throttle: Throttle::Reject, slot: None }
    }

    /// The same principal, taking quota debts by waiting (a stream's frames).
    pub fn delayed(&self) -> RequestCtx {
        RequestCtx { throttle: Throttle::Delay, ..self.clone() }
    }
}

/// What an ACL entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    Topic(&'a str),
    Group(&'a str),
    Cluster,
}

/// Kafka's ACL operations, as far as gregor uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
}

impl Action {
    /// The name ACLs and error messages use.
    pub fn name(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Create => "create",
            Action::Delete => "delete",
            Action::Alter => "alter",
            Action::Describe => "describe",
        }
    }
}

/// Every operation the service layer offers, whatever transport it came through.
#[derive(Debug, Clone, Copy)]
pub enum Operation<'a> {
    /// Lists only the topics the principal may describe (filtered per topic).
    ListTopics,
    CreateTopic(&'a str),
    DescribeTopic(&'a str),
    AlterTopic(&'a str),
    DeleteTopic(&'a str),
    /// REST produce, a WebSocket `produce` frame.
    Produce(&'a str),
    /// A partition read or long-poll, a topic stream, an offset lookup by time.
    ReadTopic(&'a str),
    ListGroups,
    DescribeGroup(&'a str),
    DeleteGroup(&'a str),
    /// Join (REST or a group stream): the group and each subscribed topic.
    JoinGroup {
        group: &'a str,
        topics: &'a [String],
    },
    /// Poll, heartbeat, leave, a group stream's fetches: the group.
    ConsumeGroup(&'a str),
    /// Commit or ack offsets, reset them: the group and each topic named.
    CommitOffsets {
        group: &'a str,
        topics: &'a [&'a str],
    },
    /// `/metrics`.
    DescribeCluster,
    /// Read a Schema Registry subject (its versions, schemas, level). Subjects follow
    /// Confluent's TopicNameStrategy: `<topic>-key` and `<topic>-value` are covered by the
    /// topic's ACLs (`describe`), any other subject by the cluster's.
    ReadSubject(&'a str),
    /// Register a schema under a subject: `write` on its topic (what a producer that
    /// auto-registers holds), else `alter` on the cluster.
    RegisterSchema(&'a str),
    /// Delete a subject or a version, set or remove its level: `alter` on its topic, else on
    /// the cluster. The global level is the cluster's.
    AlterSubject(&'a str),
    /// Set the global compatibility level.
    AlterCluster,
}

/// The topic a subject belongs to under Confluent's TopicNameStrategy.
pub fn subject_topic(subject: &str) -> Option<&str> {
    subject.strip_suffix("-value").or_else(|| subject.strip_suffix("-key")).filter(|t| !t.is_empty())
}

impl<'a> Operation<'a> {
    /// The permissions this operation needs: all of them, on each resource.
    pub fn requires(&self) -> Vec<(Resource<'a>, Action)> {
        let mut out = Vec::new();
        let _ = self.each_requirement(|r, a| {
            out.push((r, a));
            Ok::<(), ()>(())
        });
        out
    }

    /// Calls `f` with each permission the operation needs, stopping at the first
    /// error (no allocation: this runs for every request).
    pub fn each_requirement<E>(&self, mut f: impl FnMut(Resource<'a>, Action) -> Result<(), E>) -> Result<(), E> {
        use Action as A;
        use Resource as R;
        match *self {
            // Filtered per topic by the caller; the listing itself needs nothing.
            Operation::ListTopics | Operation::ListGroups => Ok(()),
            Operation::CreateTopic(t) => f(R::Topic(t), A::Create),
            Operation::DescribeTopic(t) => f(R::Topic(t), A::Describe),
            Operation::AlterTopic(t) => f(R::Topic(t), A::Alter),
            Operation::DeleteTopic(t) => f(R::Topic(t), A::Delete),
            Operation::Produce(t) => f(R::Topic(t), A::Write),
            Operation::ReadTopic(t) => f(R::Topic(t), A::Read),
            Operation::DescribeGroup(g) => f(R::Group(g), A::Describe),
            Operation::DeleteGroup(g) => f(R::Group(g), A::Delete),
            Operation::JoinGroup { group, topics } => {
                f(R::Group(group), A::Read)?;
                topics.iter().try_for_each(|t| f(R::Topic(t.as_str()), A::Read))
            }
            Operation::ConsumeGroup(g) => f(R::Group(g), A::Read),
            Operation::CommitOffsets { group, topics } => {
                f(R::Group(group), A::Read)?;
                topics.iter().try_for_each(|t| f(R::Topic(t), A::Read))
            }
            Operation::DescribeCluster => f(R::Cluster, A::Describe),
            Operation::ReadSubject(s) => match subject_topic(s) {
                Some(t) => f(R::Topic(t), A::Describe),
                None => f(R::Cluster, A::Describe),
            },
            Operation::RegisterSchema(s) => match subject_topic(s) {
                Some(t) => f(R::Topic(t), A::Write),
                None => f(R::Cluster, A::Alter),
            },
            Operation::AlterSubject(s) => match subject_topic(s) {
                Some(t) => f(R::Topic(t), A::Alter),
                None => f(R::Cluster, A::Alter),
            },
            Operation::AlterCluster => f(R::Cluster, A::Alter),
        }
    }
}

/// Decides whether a request's principal may do an operation: the service's one
/// authorization point, over the reloadable [`Security`] state.
#[derive(Debug, Clone)]
pub struct Authorizer(Arc<Security>);

impl Authorizer {
    pub fn new(security: Arc<Security>) -> Authorizer {
        Authorizer(security)
    }

    /// Checks every permission `op` needs ([`Operation::requires`]).
    pub fn check(&self, ctx: &RequestCtx, op: Operation<'_>) -> Result<()> {
        self.0.check(&ctx.principal, op)
    }

    pub fn security(&self) -> &Arc<Security> {
        &self.0
    }
}

impl Default for Authorizer {
    /// Authentication off: everyone is allowed everything.
    fn default() -> Self {
        Authorizer(Arc::new(Security::new(&AuthSettings::default())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC §8's route → operation table.
    #[test]
    fn operations_need_what_the_spec_says() {
        use Action as A;
        use Resource as R;
        let topics = ["a".to_owned(), "b".to_owned()];
        let named = ["a"];
        let cases: Vec<(Operation<'_>, Vec<(Resource<'_>, Action)>)> = vec![
            (Operation::CreateTopic("t"), vec![(R::Topic("t"), A::Create)]),
            (Operation::DescribeTopic("t"), vec![(R::Topic("t"), A::Describe)]),
            (Operation::AlterTopic("t"), vec![(R::Topic("t"), A::Alter)]),
            (Operation::DeleteTopic("t"), vec![(R::Topic("t"), A::Delete)]),
            (Operation::Produce("t"), vec![(R::Topic("t"), A::Write)]),
            (Operation::ReadTopic("t"), vec![(R::Topic("t"), A::Read)]),
            (
                Operation::JoinGroup { group: "g", topics: &topics },
                vec![(R::Group("g"), A::Read), (R::Topic("a"), A::Read), (R::Topic("b"), A::Read)],
            ),
            (Operation::ConsumeGroup("g"), vec![(R::Group("g"), A::Read)]),
            (
                Operation::CommitOffsets { group: "g", topics: &named },
                vec![(R::Group("g"), A::Read), (R::Topic("a"), A::Read)],
            ),
            (Operation::DescribeGroup("g"), vec![(R::Group("g"), A::Describe)]),
            (Operation::DeleteGroup("g"), vec![(R::Group("g"), A::Delete)]),
            (Operation::DescribeCluster, vec![(R::Cluster, A::Describe)]),
        ];
        for (op, want) in cases {
            assert_eq!(op.requires(), want, "{op:?}");
        }
        assert!(Authorizer::default().check(&RequestCtx::anonymous(), Operation::DeleteTopic("x")).is_ok());
        assert_eq!(RequestCtx::anonymous().principal.as_str(), "User:ANONYMOUS");
    }
}
